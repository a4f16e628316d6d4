//! The store's side of the gateway extension (`schema/EXTENSIONS.md`): registration, misses
//! reported once per object, failure reports, object info, and that no other connection can
//! use or see the extension's messages.

mod common;

use std::thread;
use std::time::Duration;

use common::raw::Raw;
use common::{Store, oid, pattern};
use plasma_store::client::{Error, GatewayMisses};
use plasma_store::digest::object_digest;
use plasma_store::protocol::{MessageType, ObjectId, Request};

const MEM: u64 = 10_000_000;

/// The next miss message, or `None` if none comes within `wait`.
fn miss_within(m: &mut GatewayMisses, wait: Duration) -> Option<Vec<ObjectId>> {
    m.set_read_timeout(Some(wait)).unwrap();
    match m.next_misses() {
        Ok(ids) => ids,
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("miss socket: {e}"),
    }
}

const SOON: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);


/// Registers `c` as the gateway once the store has seen the previous one go (it may not
/// have yet), failing the test after [`common::WAIT`].
fn register_when_free(c: &plasma_store::client::Client) -> GatewayMisses {
    let mut misses = None;
    common::eventually("the gateway slot to be free", || match c.register_gateway() {
        Ok(m) => {
            misses = Some(m);
            true
        }
        Err(Error::GatewayTaken) => {
            thread::sleep(Duration::from_millis(10));
            false
        }
        Err(e) => panic!("{e}"),
    });
    misses.expect("registered")
}
#[test]
fn a_waiting_get_of_an_absent_object_is_reported_once_and_served_by_the_gateway() {
    let store = Store::start(MEM);
    let gw = store.client();
    let mut misses = gw.register_gateway().unwrap();
    let (a, b) = (store.client(), store.client());
    let id = oid(1);
    let data = pattern(1, 5000);
    let digest = [7u8; 8]; // a digest the gateway got from elsewhere, kept as it is

    let waiter_a = {
        let a = a.clone();
        thread::spawn(move || {
            a.get(&[id], 20_000)
                .unwrap()
                .remove(0)
                .map(|b| b.data().to_vec())
        })
    };
    assert_eq!(miss_within(&mut misses, SOON), Some(vec![id]));
    // More gets of the same object: no second transfer is asked for.
    let waiter_b = {
        let b = b.clone();
        thread::spawn(move || b.get(&[id, id], 20_000).unwrap().len())
    };
    assert_eq!(miss_within(&mut misses, QUIET), None);

    let mut buf = gw.create(id, data.len() as u64, b"md").unwrap();
    buf.data_mut().copy_from_slice(&data);
    drop(buf.seal_with_digest(digest).unwrap());

    assert_eq!(waiter_a.join().unwrap().as_deref(), Some(&data[..]));
    assert_eq!(waiter_b.join().unwrap(), 2);
    let info = gw.gateway_info(&[id, oid(2)]).unwrap();
    assert_eq!(info.len(), 1, "absent ids are left out");
    assert_eq!(info[0].object_id, id);
    assert_eq!(info[0].data_size, 5000);
    assert_eq!(info[0].metadata_size, 2);
    assert_eq!(
        info[0].digest,
        Some(digest),
        "the given digest, not a computed one"
    );
    assert_ne!(Some(object_digest(&data, b"md")), info[0].digest);
    store.stop();
}

#[test]
fn only_waiting_gets_of_objects_not_held_at_all_are_misses() {
    let store = Store::start(MEM);
    let gw = store.client();
    let mut misses = gw.register_gateway().unwrap();
    let c = store.client();
    // A get that does not wait, and contains: nothing to pull for.
    assert!(c.get(&[oid(1)], 0).unwrap()[0].is_none());
    assert!(!c.contains(oid(1)).unwrap());
    // An object being created here is not missing either.
    let _unsealed = c.create(oid(2), 10, b"").unwrap();
    let other = store.client();
    assert!(other.get(&[oid(2)], 50).unwrap()[0].is_none());
    assert_eq!(miss_within(&mut misses, QUIET), None);
    // A sealed one is simply served.
    c.create_and_seal(oid(3), b"abc", b"").unwrap();
    assert!(other.get(&[oid(3)], 50).unwrap()[0].is_some());
    assert!(other.get(&[oid(3), oid(4)], 50).unwrap()[1].is_none());
    assert_eq!(miss_within(&mut misses, SOON), Some(vec![oid(4)]));
    assert_eq!(
        gw.gateway_info(&[oid(2)]).unwrap(),
        vec![],
        "unsealed objects are left out"
    );
    store.stop();
}

#[test]
fn a_failed_pull_or_a_gateway_that_goes_lets_the_next_get_ask_again() {
    let store = Store::start(MEM);
    let c = store.client();
    let id = oid(9);
    {
        let gw = store.client();
        let mut misses = gw.register_gateway().unwrap();
        assert!(c.get(&[id], 30).unwrap()[0].is_none());
        assert_eq!(miss_within(&mut misses, SOON), Some(vec![id]));
        assert!(c.get(&[id], 30).unwrap()[0].is_none());
        assert_eq!(miss_within(&mut misses, QUIET), None, "still outstanding");
        gw.gateway_pull_failed(&[id]).unwrap();
        assert!(c.get(&[id], 30).unwrap()[0].is_none());
        assert_eq!(
            miss_within(&mut misses, SOON),
            Some(vec![id]),
            "asked again"
        );
        gw.disconnect();
        assert_eq!(
            miss_within(&mut misses, SOON),
            None,
            "socket closed with the gateway"
        );
    }
    // A new gateway is asked afresh, even though the old one never answered.
    let gw = store.client();
    let mut misses = register_when_free(&gw);
    assert!(c.get(&[id], 30).unwrap()[0].is_none());
    assert_eq!(miss_within(&mut misses, SOON), Some(vec![id]));
    store.stop();
}

#[test]
fn one_gateway_at_a_time() {
    let store = Store::start(MEM);
    let first = store.client();
    let _m = first.register_gateway().unwrap();
    let second = store.client();
    assert!(matches!(
        second.register_gateway(),
        Err(Error::GatewayTaken)
    ));
    assert!(
        second.is_connected(),
        "a refusal is an answer, not a disconnect"
    );
    assert!(matches!(first.register_gateway(), Err(Error::GatewayTaken)));
    drop(_m);
    first.disconnect();
    let m = register_when_free(&second);
    drop(m);
    store.stop();
}

#[test]
fn connections_that_are_not_the_gateway_cannot_use_its_messages() {
    let store = Store::start(MEM);
    let gw = store.client();
    let _m = gw.register_gateway().unwrap();
    for req in [
        Request::GatewayInfo {
            object_ids: vec![oid(1)],
        },
        Request::GatewayPullFailed {
            object_ids: vec![oid(1)],
        },
    ] {
        let mut raw = Raw::connect(&store.socket).unwrap();
        raw.send(&req).unwrap();
        assert!(
            raw.closed_by_store(),
            "{req:?} from a plain client closes it"
        );
    }
    // A registration without its fd is refused, and the connection stays usable.
    let mut raw = Raw::connect(&store.socket).unwrap();
    raw.send(&Request::GatewayRegister).unwrap();
    raw.send(&Request::Connect).unwrap();
    let (reply, _) = raw.recv().unwrap();
    assert_eq!(reply.message_type(), MessageType::GatewayRegisterReply);
    // The gateway itself still works.
    assert_eq!(gw.gateway_info(&[oid(1)]).unwrap(), vec![]);
    store.stop();
}

#[test]
fn a_gateway_that_never_reads_its_misses_is_dropped_not_waited_for() {
    let store = Store::start_with(
        &common::store_bin(),
        MEM,
        &["--max-notification-bytes", "4096"],
    );
    let gw = store.client();
    let _misses = gw.register_gateway().unwrap(); // never read
    let c = store.client();
    for i in 0..400u32 {
        assert!(c.get(&[oid(1000 + i)], 1).unwrap()[0].is_none());
    }
    // The store goes on serving, and let the stuck gateway go.
    common::eventually("the stuck gateway to be dropped", || {
        !gw.is_connected() || gw.gateway_info(&[]).is_err()
    });
    assert!(
        store.log().contains("does not take its misses"),
        "{}",
        store.log()
    );
    c.create_and_seal(oid(1), b"x", b"").unwrap();
    assert!(c.contains(oid(1)).unwrap());
    store.stop();
}
