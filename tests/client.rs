//! The blocking client against a real store daemon (see `common`): every client call, with
//! its observable effect on the store. Run against pyarrow 11's `plasma-store-server` with
//! `PLASMA_STORE_BIN=.../plasma-store-server cargo test --test client`.
//!
//! Only behaviour the reference store shares is tested here, and nothing the reference
//! crashes on.

mod common;

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::{Store, eventually, info, next_notification, oid, pattern, pyarrow_python};
use plasma_store::client::{Client, Error};
use plasma_store::digest::object_digest;

const MEM: u64 = 10_000_000;

#[test]
fn connect_reports_the_capacity() {
    let store = Store::start(MEM);
    let a = store.client();
    let b = store.client();
    assert_eq!(a.capacity(), MEM);
    assert_eq!(b.capacity(), MEM);
    assert!(a.is_connected());
    store.stop();
}

#[test]
fn connect_to_a_missing_socket_retries_then_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    let t = Instant::now();
    let e = Client::connect_with_retries(&path, 3, Duration::from_millis(20)).unwrap_err();
    assert!(
        t.elapsed() >= Duration::from_millis(60),
        "three pauses between four attempts"
    );
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("could not connect to socket {}", path.display())),
        "{e}"
    );
}

#[test]
fn create_write_seal_then_another_client_gets_the_bytes() {
    let store = Store::start(MEM);
    let (a, b) = (store.client(), store.client());
    let id = oid(1);
    let data = pattern(1, 1000);
    let mut buf = a.create(id, data.len() as u64, b"meta").unwrap();
    assert_eq!(buf.len(), 1000);
    assert_eq!(buf.metadata(), b"meta", "create writes the metadata");
    buf.data_mut().copy_from_slice(&data);
    let sealed = buf.seal().unwrap();
    assert_eq!(sealed.data(), &data[..]);

    let got = b.get(&[id], -1).unwrap();
    let got = got[0].as_ref().expect("sealed");
    assert_eq!(got.id(), id);
    assert_eq!(got.data(), &data[..]);
    assert_eq!(got.metadata(), b"meta");

    let i = info(&b, id).unwrap();
    assert_eq!((i.data_size, i.metadata_size), (1000, 4));
    assert_eq!(i.ref_count, 2, "the creator's buffer and the getter's");
    assert_eq!(i.digest, Some(object_digest(&data, b"meta")));
    store.stop();
}

#[test]
fn seal_by_id_after_dropping_the_buffer_leaves_the_object_unreferenced() {
    let store = Store::start(MEM);
    let c = store.client();
    let id = oid(2);
    let mut buf = c.create(id, 8, b"").unwrap();
    buf.copy_from_slice(b"abcdefgh");
    assert!(
        matches!(c.seal(id), Err(Error::ObjectInUse(i)) if i == id),
        "the writable buffer is still alive"
    );
    drop(buf);
    let before = info(&c, id).unwrap();
    assert_eq!(before.ref_count, 1, "create's reference lasts until seal");
    assert_eq!(before.digest, None);
    c.seal(id).unwrap();
    let after = info(&c, id).unwrap();
    assert_eq!(after.ref_count, 0);
    assert_eq!(after.digest, Some(object_digest(b"abcdefgh", b"")));
    // Released: the client no longer knows it (as in libplasma) ...
    assert!(matches!(c.seal(id), Err(Error::ObjectNotFound(_))));
    // ... and while it holds it, it knows it is sealed. Neither reaches the store.
    let _held = c.get(&[id], 0).unwrap();
    assert!(matches!(c.seal(id), Err(Error::AlreadySealed(_))));
    store.stop();
}

/// Digests pyarrow 11 computes (`PlasmaClient.hash`) for the same contents, captured with the
/// reference client; they cover both of its hashing schemes (below and from 1 MiB of data).
#[test]
fn digests_equal_pyarrow_11s() {
    let store = Store::start(MEM);
    let c = store.client();
    let big: Vec<u8> = (0..(2 << 20) + 3).map(|i| (i * 7 % 251) as u8).collect();
    let exact: Vec<u8> = (0..1 << 20).map(|i| (i * 13 % 256) as u8).collect();
    let below: Vec<u8> = (0..(1 << 20) - 1).map(|i| (i % 256) as u8).collect();
    let cases: [(&[u8], &[u8], &str); 5] = [
        (&[0xAB; 16], b"MD", "684b4b8449f602d2"),
        (&big, b"meta", "cf2e1f90060d3c80"),
        (&exact, b"", "8e31025c4b55f435"),
        (b"", b"", "99e9d85137db46ef"),
        (&below, b"x", "631b0191d8b2a6d8"),
    ];
    for (n, (data, meta, hex)) in cases.iter().enumerate() {
        let want: Vec<u8> = (0..8)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(object_digest(data, meta)[..], want[..], "case {n}");

        let id = oid(n as u32);
        let mut buf = c.create(id, data.len() as u64, meta).unwrap();
        buf.copy_from_slice(data);
        drop(buf.seal().unwrap());
        assert_eq!(
            info(&c, id).unwrap().digest.unwrap()[..],
            want[..],
            "case {n}"
        );

        let id2 = oid(100 + n as u32);
        c.create_and_seal(id2, data, meta).unwrap();
        assert_eq!(
            info(&c, id2).unwrap().digest.unwrap()[..],
            want[..],
            "case {n}"
        );
    }
    store.stop();
}

/// Runs pyarrow 11's client against the same store, if a Python with it is available.
#[test]
fn pyarrow_and_this_client_read_each_others_objects() {
    let Some(python) = pyarrow_python() else {
        eprintln!("skipped: no Python with pyarrow.plasma (set PLASMA_PYTHON)");
        return;
    };
    let store = Store::start(MEM);
    let c = store.client();
    let ours = oid(1);
    let theirs = oid(2);
    let data = pattern(9, 5000);
    c.create_and_seal(ours, &data, b"rust").unwrap();
    let script = r#"
import sys, pyarrow.plasma as plasma
sock, ours, theirs = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
c = plasma.connect(sock)
o = plasma.ObjectID(ours)
[(meta, buf)] = c.get_buffers([o], timeout_ms=5000, with_meta=True)
print(c.hash(o).hex(), bytes(meta).decode(), bytes(buf).hex())
del meta, buf
t = plasma.ObjectID(theirs)
b = c.create(t, 100, b"python")
memoryview(b).cast("B")[:] = bytes(range(100))
c.seal(t)
del b
c.disconnect()
"#;
    let out = std::process::Command::new(python)
        .args(["-W", "ignore", "-c", script])
        .arg(&store.socket)
        .arg(ours.hex())
        .arg(theirs.hex())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    let digest_hex: String = object_digest(&data, b"rust")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(fields[0], digest_hex, "pyarrow's hash of our object");
    assert_eq!(fields[1], "rust");
    let data_hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(fields[2], data_hex);

    let expected: Vec<u8> = (0..100).collect();
    let got = c.get(&[theirs], 5000).unwrap();
    let got = got[0].as_ref().expect("sealed by pyarrow");
    assert_eq!(
        (got.data(), got.metadata()),
        (&expected[..], &b"python"[..])
    );
    assert_eq!(
        info(&c, theirs).unwrap().digest,
        Some(object_digest(&expected, b"python"))
    );
    store.stop();
}

#[test]
fn create_of_an_existing_id_is_object_exists() {
    let store = Store::start(MEM);
    let (a, b) = (store.client(), store.client());
    let unsealed = oid(1);
    let sealed = oid(2);
    let _w = a.create(unsealed, 10, b"").unwrap();
    a.create_and_seal(sealed, b"x", b"").unwrap();
    for c in [&a, &b] {
        for id in [unsealed, sealed] {
            let e = c.create(id, 10, b"").unwrap_err();
            assert!(
                matches!(e, Error::ObjectExists(Some(i)) if i == id),
                "{e:?}"
            );
            assert!(e.to_string().contains("already exists"), "{e}");
            let e = c.create_and_seal(id, b"y", b"").unwrap_err();
            assert!(matches!(e, Error::ObjectExists(Some(_))), "{e:?}");
        }
    }
    assert!(
        a.is_connected() && b.is_connected(),
        "store errors keep the connection"
    );
    store.stop();
}

#[test]
fn create_beyond_the_capacity_is_out_of_memory_but_the_capacity_fits() {
    let store = Store::start(MEM);
    let c = store.client();
    let e = c.create(oid(1), MEM + 1, b"").unwrap_err();
    assert!(
        matches!(e, Error::OutOfMemory(Some(i)) if i == oid(1)),
        "{e:?}"
    );
    let e = c.create(oid(1), MEM, b"m").unwrap_err();
    assert!(
        matches!(e, Error::OutOfMemory(_)),
        "metadata counts too: {e:?}"
    );
    let e = c
        .create_and_seal(oid(1), &vec![0; MEM as usize + 1], b"")
        .unwrap_err();
    assert!(matches!(e, Error::OutOfMemory(_)), "{e:?}");

    let mut all = c.create(oid(1), MEM, b"").unwrap();
    all[MEM as usize - 1] = 1;
    all.abort().unwrap();
    assert!(c.list().unwrap().is_empty());
    store.stop();
}

#[test]
fn create_without_eviction_fails_where_eviction_makes_room() {
    let store = Store::start(1_000_000);
    let c = store.client();
    for n in 0..9 {
        c.create_and_seal(oid(n), &pattern(n as u8, 100_000), b"")
            .unwrap();
    }
    let e = c
        .create_with_eviction(oid(100), 150_000, b"", false)
        .unwrap_err();
    assert!(matches!(e, Error::OutOfMemory(_)), "{e:?}");
    assert_eq!(c.list().unwrap().len(), 9, "nothing was evicted");

    let buf = c
        .create_with_eviction(oid(100), 150_000, b"", true)
        .unwrap();
    drop(buf);
    // The reference frees max(shortfall, 20% of capacity), oldest first.
    for n in 0..2 {
        assert!(info(&c, oid(n)).is_none(), "object {n} evicted");
    }
    for n in 2..9 {
        assert!(info(&c, oid(n)).is_some(), "object {n} kept");
    }
    store.stop();
}

#[test]
fn contains_is_true_only_for_sealed_objects() {
    let store = Store::start(MEM);
    let (a, b) = (store.client(), store.client());
    let id = oid(1);
    assert!(!a.contains(id).unwrap(), "missing");
    let buf = a.create(id, 4, b"").unwrap();
    assert!(!a.contains(id).unwrap(), "unsealed, asked by its creator");
    assert!(
        !b.contains(id).unwrap(),
        "unsealed, asked by another client"
    );
    let held = buf.seal().unwrap();
    assert!(a.contains(id).unwrap());
    assert!(b.contains(id).unwrap());
    drop(held);
    assert!(a.contains(id).unwrap(), "still there once released");
    store.stop();
}

#[test]
fn get_with_timeout_zero_answers_at_once_in_request_order() {
    let store = Store::start(MEM);
    let c = store.client();
    c.create_and_seal(oid(1), b"one", b"1").unwrap();
    c.create_and_seal(oid(3), b"three", b"").unwrap();
    let _unsealed = store.client().create(oid(4), 4, b"").unwrap();
    let t = Instant::now();
    let got = c.get(&[oid(3), oid(2), oid(1), oid(4)], 0).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].as_ref().unwrap().data(), b"three");
    assert!(got[1].is_none(), "missing");
    assert_eq!(got[2].as_ref().unwrap().metadata(), b"1");
    assert!(got[3].is_none(), "unsealed counts as missing");
    assert!(c.get(&[], 0).unwrap().is_empty());
    store.stop();
}

#[test]
fn get_with_a_positive_timeout_waits_for_it_then_gives_up() {
    let store = Store::start(MEM);
    let c = store.client();
    c.create_and_seal(oid(1), b"here", b"").unwrap();
    let t = Instant::now();
    let got = c.get(&[oid(1), oid(2)], 300).unwrap();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(got[0].is_some() && got[1].is_none());
    store.stop();
}

#[test]
fn a_waiting_get_is_satisfied_by_a_seal_from_another_thread() {
    let store = Store::start(MEM);
    let creator = store.client();
    let (forever, bounded, sentinel) = (oid(1), oid(2), oid(3));
    let mut w1 = creator.create(forever, 5, b"m").unwrap();
    let mut w2 = creator.create(bounded, 3, b"").unwrap();
    w1.copy_from_slice(b"hello");
    w2.copy_from_slice(b"bye");
    creator.create_and_seal(sentinel, b"s", b"").unwrap();

    // Each getter also asks for the sealed sentinel, on which the store takes a reference as
    // soon as it registers the get: that is how the creator knows both gets are waiting.
    let waiter = |id, timeout_ms| {
        let client = store.client();
        std::thread::spawn(move || {
            let t = Instant::now();
            let got = client.get(&[id, sentinel], timeout_ms).unwrap();
            let waited = t.elapsed();
            let [Some(obj), Some(s)] = &got[..] else {
                panic!("not all sealed: {got:?}")
            };
            assert_eq!(s.data(), b"s");
            (obj.data().to_vec(), obj.metadata().to_vec(), waited)
        })
    };
    let a = waiter(forever, -1);
    let b = waiter(bounded, 20_000);
    eventually("both gets to be registered", || {
        info(&creator, sentinel).unwrap().ref_count == 2
    });
    assert!(!a.is_finished() && !b.is_finished(), "both are waiting");
    drop(w1.seal().unwrap());
    drop(w2.seal().unwrap());
    let (data, meta, _) = a.join().unwrap();
    assert_eq!((&data[..], &meta[..]), (&b"hello"[..], &b"m"[..]));
    let (data, _, waited) = b.join().unwrap();
    assert_eq!(data, b"bye");
    assert!(
        waited < Duration::from_secs(10),
        "answered at the seal: {waited:?}"
    );
    store.stop();
}

#[test]
fn buffers_release_their_object_when_dropped() {
    let store = Store::start(MEM);
    let (a, b) = (store.client(), store.client());
    let id = oid(1);
    a.create_and_seal(id, b"shared", b"").unwrap();
    assert_eq!(info(&b, id).unwrap().ref_count, 0);
    let first = b.get(&[id], 0).unwrap();
    let second = b.get(&[id], 0).unwrap();
    assert_eq!(
        info(&b, id).unwrap().ref_count,
        1,
        "one store reference per client"
    );
    let from_a = a.get(&[id], 0).unwrap();
    assert_eq!(info(&b, id).unwrap().ref_count, 2);
    drop(first);
    assert_eq!(info(&b, id).unwrap().ref_count, 2, "b still holds a buffer");
    drop(second);
    assert_eq!(
        info(&b, id).unwrap().ref_count,
        1,
        "b's last buffer released it"
    );
    drop(from_a);
    assert_eq!(info(&a, id).unwrap().ref_count, 0);
    store.stop();
}

#[test]
fn abort_frees_an_unsealed_object_and_the_id_can_be_reused() {
    let store = Store::start(MEM);
    let c = store.client();
    let id = oid(1);
    let buf = c.create(id, 1000, b"meta").unwrap();
    assert!(
        matches!(c.abort(id), Err(Error::ObjectInUse(_))),
        "buffer alive"
    );
    buf.abort().unwrap();
    assert!(c.list().unwrap().is_empty());
    assert!(c.debug_string().unwrap().contains("allocated bytes: 0\n"));

    drop(c.create(id, 10, b"").unwrap());
    assert_eq!(info(&c, id).unwrap().data_size, 10, "the id is free again");
    c.abort(id).unwrap();
    assert!(info(&c, id).is_none());
    assert!(matches!(c.abort(id), Err(Error::ObjectNotFound(_))));

    let sealed = c.create(id, 1, b"").unwrap().seal().unwrap();
    drop(sealed);
    assert!(
        matches!(c.abort(id), Err(Error::ObjectNotFound(_))),
        "released"
    );
    let _held = c.get(&[id], 0).unwrap();
    assert!(matches!(c.abort(id), Err(Error::AlreadySealed(_))));
    store.stop();
}

#[test]
fn evict_frees_unreferenced_objects_oldest_first() {
    let store = Store::start(MEM);
    let c = store.client();
    for n in 0..4 {
        c.create_and_seal(oid(n), &pattern(n as u8, 1000), b"")
            .unwrap();
    }
    let held = c.get(&[oid(0)], 0).unwrap();
    assert_eq!(c.evict(1000).unwrap(), 1000);
    assert!(
        info(&c, oid(1)).is_none(),
        "the oldest unreferenced object went first"
    );
    assert_eq!(
        c.evict(1500).unwrap(),
        2000,
        "whole objects until the target is met"
    );
    let left: Vec<_> = c.list().unwrap().into_iter().map(|i| i.object_id).collect();
    assert_eq!(left, vec![oid(0)], "referenced objects are never evicted");
    assert_eq!(c.evict(1).unwrap(), 0);
    assert!(
        c.debug_string()
            .unwrap()
            .contains("(global lru) bytes evicted: 3000")
    );
    drop(held);
    assert_eq!(c.evict(1).unwrap(), 1000);
    assert!(c.list().unwrap().is_empty());
    store.stop();
}

#[test]
fn refresh_moves_objects_away_from_eviction() {
    let store = Store::start(MEM);
    let c = store.client();
    for n in 0..3 {
        c.create_and_seal(oid(n), &[n as u8; 100], b"").unwrap();
    }
    c.refresh(&[oid(0), oid(77)]).unwrap();
    assert_eq!(c.evict(1).unwrap(), 100);
    assert!(info(&c, oid(0)).is_some(), "refreshed");
    assert!(info(&c, oid(1)).is_none(), "now the least recently used");
    c.refresh(&[]).unwrap();
    store.stop();
}

#[test]
fn delete_removes_free_objects_and_defers_objects_in_use() {
    let store = Store::start(MEM);
    let (a, b) = (store.client(), store.client());
    let (free, elsewhere, here) = (oid(1), oid(2), oid(3));
    for id in [free, elsewhere, here] {
        a.create_and_seal(id, b"doomed", b"").unwrap();
    }
    a.delete(&[free, oid(99)]).unwrap();
    assert!(!a.contains(free).unwrap());

    let held_by_b = b.get(&[elsewhere], 0).unwrap();
    a.delete(&[elsewhere]).unwrap();
    assert!(info(&b, elsewhere).is_some(), "in use by b");
    drop(held_by_b);
    assert!(info(&b, elsewhere).is_none(), "deleted at b's release");

    let held_here = a.get(&[here], 0).unwrap();
    a.delete(&[here]).unwrap();
    assert!(info(&a, here).is_some(), "in use by a");
    assert_eq!(held_here[0].as_ref().unwrap().data(), b"doomed");
    drop(held_here);
    assert!(info(&a, here).is_none(), "deleted after a's release");
    store.stop();
}

#[test]
fn list_describes_unsealed_and_sealed_objects() {
    let store = Store::start(MEM);
    let c = store.client();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = now();
    let w = c.create(oid(1), 100, b"abc").unwrap();
    c.create_and_seal(oid(2), b"sealed", b"").unwrap();
    let after = now();
    let mut list = c.list().unwrap();
    list.sort_by_key(|i| i.object_id);
    assert_eq!(list.len(), 2);
    let (u, s) = (&list[0], &list[1]);
    assert_eq!(
        (u.object_id, u.data_size, u.metadata_size),
        (oid(1), 100, 3)
    );
    assert_eq!((u.ref_count, u.digest, u.construct_duration), (1, None, -1));
    // The reference stamps time(NULL), which reads the coarse clock: up to a tick behind
    // SystemTime::now(), so across a second boundary it may say the second before `before`.
    assert!(
        (before - 1..=after).contains(&u.create_time),
        "{before} {u:?} {after}"
    );
    assert_eq!((s.data_size, s.metadata_size, s.ref_count), (6, 0, 0));
    assert_eq!(s.digest, Some(object_digest(b"sealed", b"")));
    assert!(s.construct_duration >= 0);
    assert!(!s.is_deletion);
    drop(w);
    store.stop();
}

#[test]
fn set_options_gives_a_quota_that_debug_string_reports() {
    let store = Store::start(MEM);
    let (a, b, c) = (store.client(), store.client(), store.client());
    a.set_options("client_x", 1_000_000).unwrap();
    let e = a.set_options("client_x", 1_000).unwrap_err();
    assert!(
        matches!(e, Error::QuotaRefused { quota: 1_000, .. }),
        "set once: {e:?}"
    );
    let e = b.set_options("greedy", 7_000_000).unwrap_err();
    assert!(
        matches!(e, Error::QuotaRefused { .. }),
        "over 70% in total: {e:?}"
    );
    c.set_options("client_y", 2_000_000).unwrap();

    a.create_and_seal(oid(1), &[1; 1000], b"").unwrap();
    let report = b.debug_string().unwrap();
    for line in [
        "num clients with quota: 2",
        "allocation limit: 10000000",
        "(global lru) capacity: 7000000",
        "(client_x) capacity: 1000000",
        "(client_x) num objects: 1",
        "(client_y) capacity: 2000000",
    ] {
        assert!(report.lines().any(|l| l == line), "{line:?} in\n{report}");
    }
    store.stop();
}

#[test]
fn debug_string_tracks_allocation() {
    let store = Store::start(MEM);
    let c = store.client();
    let report = c.debug_string().unwrap();
    assert!(
        report.starts_with("num clients with quota: 0\n"),
        "{report}"
    );
    assert!(report.contains("\nallocated bytes: 0\n"), "{report}");
    assert!(
        report.contains("\n(global lru) capacity: 10000000\n"),
        "{report}"
    );
    c.create_and_seal(oid(1), &[0; 1200], b"ab").unwrap();
    let report = c.debug_string().unwrap();
    assert!(report.contains("\nallocated bytes: 1202\n"), "{report}");
    assert!(
        report.contains("\n(global lru) num objects: 1\n"),
        "{report}"
    );
    store.stop();
}

#[test]
fn create_and_seal_stores_an_unreferenced_sealed_object() {
    let store = Store::start(MEM);
    let c = store.client();
    let id = oid(1);
    c.create_and_seal(id, b"payload", b"md").unwrap();
    let i = info(&c, id).unwrap();
    assert_eq!((i.data_size, i.metadata_size, i.ref_count), (7, 2, 0));
    assert_eq!(i.digest, Some(object_digest(b"payload", b"md")));
    let got = c.get(&[id], 0).unwrap();
    let got = got[0].as_ref().unwrap();
    assert_eq!((got.data(), got.metadata()), (&b"payload"[..], &b"md"[..]));
    store.stop();
}

#[test]
fn create_and_seal_batch_is_all_or_nothing_with_correct_digests() {
    let store = Store::start(MEM);
    let c = store.client();
    let watcher = store.client();
    let mut sub = watcher.subscribe().unwrap();
    // A second subscriber read raw, to see the message boundaries.
    let raw_watcher = store.client();
    let raw_sub = raw_watcher.subscribe().unwrap();
    let batch: Vec<(_, Vec<u8>, Vec<u8>)> = (1..=3)
        .map(|n| {
            (
                oid(n),
                pattern(n as u8, 100 * n as usize),
                vec![n as u8; n as usize],
            )
        })
        .collect();
    let refs: Vec<_> = batch
        .iter()
        .map(|(id, d, m)| (*id, &d[..], &m[..]))
        .collect();
    c.create_and_seal_batch(&refs).unwrap();
    for (id, d, m) in &batch {
        let i = info(&c, *id).unwrap();
        assert_eq!(
            i.digest,
            Some(object_digest(d, m)),
            "libplasma 11 gets these wrong"
        );
        assert_eq!(i.ref_count, 0);
        let n = next_notification(&mut sub);
        assert_eq!(
            (n.object_id, n.data_size),
            (*id, d.len() as i64),
            "in batch order"
        );
        assert_eq!(n.digest, Some(object_digest(d, m)));
    }
    let got = c.get(&[oid(2)], 0).unwrap();
    assert_eq!(got[0].as_ref().unwrap().metadata(), &[2, 2]);

    // The store sends the batch as one notification holding all three infos.
    let mut raw = std::fs::File::from(raw_sub.as_fd().try_clone_to_owned().unwrap());
    let mut len = [0u8; 8];
    raw.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u64::from_ne_bytes(len) as usize];
    raw.read_exact(&mut body).unwrap();
    let infos = plasma_store::protocol::decode_notification(&body).unwrap();
    let ids: Vec<_> = infos.iter().map(|i| i.object_id).collect();
    assert_eq!(ids, vec![oid(1), oid(2), oid(3)]);

    let e = c
        .create_and_seal_batch(&[(oid(10), b"new", b""), (oid(1), b"dup", b"")])
        .unwrap_err();
    assert!(matches!(e, Error::ObjectExists(None)), "{e:?}");
    assert!(info(&c, oid(10)).is_none(), "the whole batch failed");
    c.create_and_seal_batch(&[]).unwrap();
    store.stop();
}

#[test]
fn subscribe_reports_existing_objects_seals_deletions_and_evictions() {
    let store = Store::start(MEM);
    let c = store.client();
    let (old, new) = (oid(1), oid(2));
    c.create_and_seal(old, b"before", b"m").unwrap();
    let mut sub = c.subscribe().unwrap();
    assert!(std::os::fd::AsRawFd::as_raw_fd(&sub) >= 0);
    let n = next_notification(&mut sub);
    assert_eq!((n.object_id, n.data_size, n.metadata_size), (old, 6, 1));
    assert!(!n.is_deletion);

    let mut w = c.create(new, 5, b"xy").unwrap();
    w.copy_from_slice(b"fresh");
    drop(w.seal().unwrap());
    // The raw fd works with poll: the seal notification is waiting on it.
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&sub),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(nix::poll::poll(&mut fds, 5000u16).unwrap(), 1);
    let n = next_notification(&mut sub);
    assert_eq!((n.object_id, n.data_size, n.metadata_size), (new, 5, 2));
    assert_eq!(n.digest, Some(object_digest(b"fresh", b"xy")));

    c.delete(&[new]).unwrap();
    let n = next_notification(&mut sub);
    assert_eq!((n.object_id, n.is_deletion), (new, true));

    assert_eq!(c.evict(1).unwrap(), 7);
    let n = next_notification(&mut sub);
    assert_eq!((n.object_id, n.is_deletion), (old, true));
    store.stop();
}

#[test]
fn a_second_subscription_on_one_connection_is_refused() {
    let store = Store::start(MEM);
    let c = store.client();
    let _sub = c.subscribe().unwrap();
    assert!(matches!(c.subscribe(), Err(Error::AlreadySubscribed)));
    c.create_and_seal(oid(1), b"ok", b"").unwrap();
    let mut other = store.client().subscribe().unwrap();
    assert_eq!(next_notification(&mut other).object_id, oid(1));
    store.stop();
}

#[test]
fn a_subscription_ends_when_its_client_disconnects() {
    let store = Store::start(MEM);
    let c = store.client();
    let mut sub = c.subscribe().unwrap();
    c.disconnect();
    sub.set_read_timeout(Some(common::WAIT)).unwrap();
    assert!(sub.next().is_none());
    store.stop();
}

#[test]
fn disconnect_drops_references_and_aborts_unsealed_objects() {
    let store = Store::start(MEM);
    let (a, b) = (store.client(), store.client());
    let (sealed, unsealed) = (oid(1), oid(2));
    b.create_and_seal(sealed, b"kept", b"").unwrap();
    let held = a.get(&[sealed], 0).unwrap();
    let writer = a.create(unsealed, 10, b"").unwrap();
    assert_eq!(info(&b, sealed).unwrap().ref_count, 1);

    a.disconnect();
    assert!(!a.is_connected());
    assert!(matches!(a.list(), Err(Error::Disconnected { .. })));
    assert!(matches!(
        a.get(&[sealed], 0),
        Err(Error::Disconnected { .. })
    ));
    eventually("the store to see the disconnect", || {
        let list = b.list().unwrap();
        list.iter().all(|i| i.object_id != unsealed)
            && list
                .iter()
                .any(|i| i.object_id == sealed && i.ref_count == 0)
    });
    // Buffers outlive the connection; dropping them now sends nothing.
    assert_eq!(held[0].as_ref().unwrap().data(), b"kept");
    drop(held);
    drop(writer);
    a.disconnect();
    assert_eq!(info(&b, sealed).unwrap().ref_count, 0);
    store.stop();
}

#[test]
fn a_buffer_keeps_its_connection_and_mapping_after_the_client_is_dropped() {
    let store = Store::start(MEM);
    let a = store.client();
    let b = store.client();
    a.create_and_seal(oid(1), b"still here", b"").unwrap();
    let held = a.get(&[oid(1)], 0).unwrap();
    drop(a);
    assert_eq!(
        info(&b, oid(1)).unwrap().ref_count,
        1,
        "the buffer keeps the reference"
    );
    assert_eq!(held[0].as_ref().unwrap().data(), b"still here");
    drop(held);
    eventually("the release", || info(&b, oid(1)).unwrap().ref_count == 0);
    store.stop();
}

#[test]
fn one_client_can_be_shared_by_threads() {
    let store = Store::start(MEM);
    let c = store.client();
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for n in 0..10 {
                    let id = oid(t * 100 + n);
                    let data = pattern((t * 10 + n) as u8, 64);
                    if n % 2 == 0 {
                        c.create_and_seal(id, &data, b"").unwrap();
                    } else {
                        let mut w = c.create(id, 64, b"").unwrap();
                        w.copy_from_slice(&data);
                        drop(w.seal().unwrap());
                    }
                    let got = c.get(&[id], 0).unwrap();
                    assert_eq!(got[0].as_ref().unwrap().data(), &data[..]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let list = c.list().unwrap();
    assert_eq!(list.len(), 40);
    assert!(list.iter().all(|i| i.ref_count == 0 && i.digest.is_some()));
    store.stop();
}

#[test]
fn empty_objects_and_metadata_only_objects() {
    let store = Store::start(MEM);
    let c = store.client();
    let empty = c.create(oid(1), 0, b"").unwrap().seal().unwrap();
    let meta_only = c
        .create(oid(2), 0, b"only metadata")
        .unwrap()
        .seal()
        .unwrap();
    let other = store.client();
    let got = other.get(&[oid(1), oid(2)], 0).unwrap();
    assert_eq!(got[0].as_ref().unwrap().data(), b"");
    assert_eq!(got[0].as_ref().unwrap().metadata(), b"");
    assert_eq!(got[1].as_ref().unwrap().data(), b"");
    assert_eq!(got[1].as_ref().unwrap().metadata(), b"only metadata");
    assert_eq!(empty.len(), 0);
    assert_eq!(meta_only.metadata(), b"only metadata");
    assert_eq!(
        info(&c, oid(2)).unwrap().digest,
        Some(object_digest(b"", b"only metadata"))
    );
    store.stop();
}

#[test]
fn gets_of_own_unsealed_objects_do_not_wait_forever() {
    let store = Store::start(MEM);
    let c = store.client();
    let w = c.create(oid(1), 4, b"").unwrap();
    let e = c.get(&[oid(1)], -1).unwrap_err();
    assert!(
        matches!(e, Error::ObjectNotSealed(i) if i == oid(1)),
        "{e:?}"
    );
    assert!(c.get(&[oid(1)], 0).unwrap()[0].is_none());
    drop(w.seal().unwrap());
    assert!(c.get(&[oid(1)], -1).unwrap()[0].is_some());
    store.stop();
}

#[test]
fn seal_and_abort_of_objects_this_client_did_not_create_are_refused_locally() {
    // The reference store aborts on these; the client must never send them.
    let store = Store::start(MEM);
    let (a, b) = (store.client(), store.client());
    let _w = a.create(oid(1), 4, b"").unwrap();
    a.create_and_seal(oid(2), b"x", b"").unwrap();
    for id in [oid(1), oid(2), oid(3)] {
        assert!(matches!(b.seal(id), Err(Error::ObjectNotFound(i)) if i == id));
        assert!(matches!(b.abort(id), Err(Error::ObjectNotFound(i)) if i == id));
    }
    assert!(b.is_connected());
    store.stop();
}
