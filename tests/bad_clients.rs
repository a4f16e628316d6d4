//! The store never dies of a client: one test per kind of bad client.
//!
//! Every test starts a daemon, stores an object with a well-behaved client, does one bad
//! thing over a raw socket, and ends with [`assert_survived`]: the daemon still runs, a fresh
//! client is answered within 2 s, and the object stored first comes back bit-exact. Where it
//! means something, a test also checks what the bad connection itself saw (closed, or a
//! sensible reply).
//!
//! Run against the reference with
//! `PLASMA_STORE_BIN=.../pyarrow/plasma-store-server.reference cargo test --test bad_clients`:
//! most of these fail there, which is the point (PROTOCOL.md §13). Flags only our daemon has
//! (the limits) are left out for the reference; the one test that is only about such a
//! limit returns early there.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::raw::{
    Daemon, F, Kept, Probe, READ_TIMEOUT, Raw, Rng, assert_survived, body_of, framed, header,
    keep_object, kill9, spawn_ready, table, testing_reference,
};
use plasma_store::client::Client;
use plasma_store::fdpass;
use plasma_store::protocol::{
    MessageType, ObjectId, ObjectInfo, ObjectSpec, PlasmaError, Reply, Request, decode_notification,
};

/// `-m` of every daemon here.
const MEM: u64 = 10_000_000;

/// Every type a client may send, by wire value.
const REQUEST_TYPES: [i64; 19] = [
    0, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 24, 25, 28, 30, 32, 34,
];

/// Every reply type (and the notification type, which never travels on the main socket).
const REPLY_TYPES: [i64; 20] = [
    2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 26, 27, 29, 31, 33, 35, 1001, 1002, 1005,
];

fn start() -> (Daemon, Kept) {
    start_with(&[])
}

fn start_with(ours_only: &[&str]) -> (Daemon, Kept) {
    let d = Daemon::start(MEM, ours_only);
    let kept = keep_object(&d);
    (d, kept)
}

fn oid(n: u8) -> ObjectId {
    ObjectId([n; 20])
}

fn find(c: &mut Raw, id: ObjectId) -> Option<ObjectInfo> {
    c.list().into_iter().find(|o| o.object_id == id)
}

fn kept_size(k: &Kept) -> u64 {
    (k.data.len() + k.metadata.len()) as u64
}

/// Polls `cond` for up to [`READ_TIMEOUT`] (effects of one connection seen from another).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + READ_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one frame with this type and body on a new connection, and probes it.
fn probe_frame(d: &Daemon, msg_type: i64, body: &[u8]) -> Probe {
    let mut c = d.raw();
    c.send_frame(msg_type, body).expect("send");
    c.probe()
}

/// Sends `bytes` on a new connection and checks the store closes it without a reply.
fn assert_closes(d: &Daemon, what: &str, bytes: &[u8]) {
    let mut c = d.raw();
    c.send_raw(bytes).expect("send");
    assert_eq!(c.probe(), Probe::Closed(vec![]), "{what}");
}

/// What our daemon does with a request of type `t` whose body it cannot use: field-less
/// requests ignore their body, everything else costs the connection.
fn expected_for_unusable_body(t: i64) -> Probe {
    match t {
        17 => Probe::Alive(vec![MessageType::ListReply]),
        19 | 23 | 24 => Probe::Alive(vec![]),
        30 => Probe::Alive(vec![MessageType::GetDebugStringReply]),
        _ => Probe::Closed(vec![]),
    }
}

fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .expect("sendmsg with fds");
    assert_eq!(n, bytes.len());
}

// ---- framing ----

#[test]
fn a_wrong_protocol_version_closes_only_that_connection() {
    let (mut d, kept) = start();
    let mut good = d.raw();
    for version in [1i64, -1, 0x14, i64::MAX, i64::MIN] {
        let mut bytes = header(version, 19, 12).to_vec();
        bytes.extend_from_slice(&body_of(&Request::Connect));
        assert_closes(&d, &format!("version {version}"), &bytes);
    }
    assert_eq!(
        good.probe(),
        Probe::Alive(vec![]),
        "other connections go on"
    );
    assert_survived(&mut d, &kept);
}

#[test]
fn unknown_and_negative_message_types_close_the_connection() {
    let (mut d, kept) = start();
    let body = body_of(&Request::Connect);
    for t in [36i64, 37, 99, 999, 1006, i64::MAX, -1, -2, i64::MIN] {
        assert_eq!(probe_frame(&d, t, &body), Probe::Closed(vec![]), "type {t}");
    }
    assert_survived(&mut d, &kept);
}

#[test]
fn every_reply_type_sent_to_the_store_closes_the_connection() {
    let (mut d, kept) = start();
    let body = body_of(&Request::Connect);
    for t in REPLY_TYPES {
        assert_eq!(probe_frame(&d, t, &body), Probe::Closed(vec![]), "type {t}");
    }
    assert_survived(&mut d, &kept);
}

#[test]
fn negative_and_huge_lengths_close_before_allocating() {
    let (mut d, kept) = start();
    for len in [
        -1i64,
        -24,
        i64::MIN,
        i64::MAX,
        1 << 40,
        1 << 33,
        MEM as i64 * 4,
    ] {
        for t in [1i64, 9, 17, 19] {
            let mut c = d.raw();
            c.send_raw(&header(0, t, len)).expect("send");
            // A few body bytes: the store must not wait for the rest before refusing (it
            // may have hung up already).
            let _ = c.send_raw(&[0u8; 100]);
            assert!(c.closed_by_store(), "length {len}, type {t}: not closed");
        }
    }
    assert_survived(&mut d, &kept);
}

#[test]
fn a_truncated_body_then_close_is_a_plain_disconnect() {
    let (mut d, kept) = start();
    let baseline = d.settled_fds();
    for t in [1i64, 9, 17, 19, 23] {
        let mut c = d.raw();
        c.send_raw(&header(0, t, 100)).expect("send");
        c.send_raw(&[7u8; 10]).expect("send");
        drop(c);
    }
    // Half a header, then close.
    let mut c = d.raw();
    c.send_raw(&header(0, 19, 12)[..11]).expect("send");
    drop(c);
    d.assert_fds_return_to(baseline);
    assert_survived(&mut d, &kept);
}

#[test]
fn a_header_left_hanging_does_not_stall_others() {
    let (mut d, kept) = start();
    let mut slow = d.raw();
    let frame = framed(&Request::Contains { object_id: kept.id });
    slow.send_raw(&frame[..10]).expect("send");
    std::thread::sleep(Duration::from_millis(100));
    assert_survived(&mut d, &kept);
    // The frame completes much later and is answered as if nothing happened.
    slow.send_raw(&frame[10..]).expect("send");
    assert_eq!(
        slow.reply(),
        Reply::Contains {
            object_id: kept.id,
            has_object: true
        }
    );
}

#[test]
fn a_body_left_hanging_does_not_stall_others() {
    let (mut d, kept) = start();
    let mut slow = d.raw();
    let frame = framed(&Request::Get {
        object_ids: vec![kept.id, oid(9)],
        timeout_ms: 0,
    });
    let half = 24 + (frame.len() - 24) / 2;
    slow.send_raw(&frame[..half]).expect("send");
    std::thread::sleep(Duration::from_millis(100));
    assert_survived(&mut d, &kept);
    slow.send_raw(&frame[half..]).expect("send");
    let Reply::Get { objects, .. } = slow.reply() else {
        panic!("not a get reply")
    };
    assert_eq!(objects.len(), 2);
    assert!(objects[0].is_some() && objects[1].is_none());
}

// ---- bodies ----

#[test]
fn garbage_bodies_of_every_request_type() {
    let (mut d, kept) = start();
    let mut rng = Rng::new(0x6761_7262);
    for t in REQUEST_TYPES {
        for len in [1usize, 3, 4, 7, 8, 12, 33, 64, 300, 4096] {
            let body = rng.bytes(len);
            assert_eq!(
                probe_frame(&d, t, &body),
                expected_for_unusable_body(t),
                "type {t}, {len} garbage bytes {:02x?}",
                &body[..len.min(16)]
            );
        }
    }
    assert_survived(&mut d, &kept);
}

#[test]
fn empty_bodies_of_every_request_type() {
    let (mut d, kept) = start();
    for t in REQUEST_TYPES {
        assert_eq!(
            probe_frame(&d, t, &[]),
            expected_for_unusable_body(t),
            "type {t}, empty body"
        );
    }
    assert_survived(&mut d, &kept);
}

fn u32_at(b: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes(b[pos..pos + 4].try_into().expect("4 bytes"))
}

fn set_u32(b: &mut [u8], pos: usize, v: u32) {
    b[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
}

/// Position of the root table.
fn root_pos(b: &[u8]) -> usize {
    u32_at(b, 0) as usize
}

/// Position of the root table's vtable.
fn vtable_pos(b: &[u8]) -> usize {
    let t = root_pos(b);
    (t as i64 - i64::from(u32_at(b, t) as i32)) as usize
}

/// Position of the vtable entry of `slot` in the root table.
fn vt_entry(b: &[u8], slot: usize) -> usize {
    vtable_pos(b) + 4 + 2 * slot
}

/// Position of the length prefix of the string or vector in `slot` of the root table.
fn target_pos(b: &[u8], slot: usize) -> usize {
    let e = vt_entry(b, slot);
    let field = root_pos(b) + usize::from(u16::from_le_bytes([b[e], b[e + 1]]));
    field + u32_at(b, field) as usize
}

#[test]
fn flatbuffers_with_offsets_out_of_bounds_close_the_connection() {
    let (mut d, kept) = start();
    let requests: Vec<(i64, Vec<u8>)> = vec![
        (
            1,
            body_of(&Request::Create {
                object_id: oid(1),
                evict_if_full: true,
                data_size: 100,
                metadata_size: 0,
                device_num: 0,
            }),
        ),
        (
            7,
            body_of(&Request::Seal {
                object_id: kept.id,
                digest: [1; 8],
            }),
        ),
        (
            9,
            body_of(&Request::Get {
                object_ids: vec![kept.id, oid(2)],
                timeout_ms: 0,
            }),
        ),
        (15, body_of(&Request::Contains { object_id: kept.id })),
        (
            13,
            body_of(&Request::Delete {
                object_ids: vec![oid(3)],
            }),
        ),
        (
            3,
            body_of(&Request::CreateAndSeal {
                object_id: oid(4),
                evict_if_full: true,
                data: vec![5; 40],
                metadata: vec![],
                digest: [0; 8],
            }),
        ),
    ];
    for (t, good) in &requests {
        let len = good.len();
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        let mut b = good.clone();
        set_u32(&mut b, 0, len as u32 + 64);
        cases.push(("root offset past the end".into(), b));
        let mut b = good.clone();
        set_u32(&mut b, 0, u32::MAX - 3);
        cases.push(("root offset u32::MAX-3".into(), b));
        let mut b = good.clone();
        set_u32(&mut b, 0, len as u32 - 2);
        cases.push(("root table straddling the end".into(), b));
        let t_pos = root_pos(good);
        let mut b = good.clone();
        set_u32(&mut b, t_pos, (t_pos as u32).wrapping_add(1000));
        cases.push(("vtable before the buffer".into(), b));
        let mut b = good.clone();
        set_u32(&mut b, t_pos, (-(len as i32) - 100) as u32);
        cases.push(("vtable past the end".into(), b));
        let mut b = good.clone();
        let vt = vtable_pos(good);
        b[vt..vt + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
        cases.push(("vtable size beyond the buffer".into(), b));
        let mut b = good.clone();
        let e = vt_entry(good, 0);
        b[e..e + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
        cases.push(("field offset beyond the table".into(), b));
        if *t != 13 {
            // Slot 0 is a string (an id) or a vector of strings.
            let p = target_pos(good, 0);
            for bad in [1000u32, 0x7fff_ffff, u32::MAX] {
                let mut b = good.clone();
                set_u32(&mut b, p, bad);
                cases.push((format!("string/vector length {bad}"), b));
            }
            let mut b = good.clone();
            let f = root_pos(good) + usize::from(u16::from_le_bytes([good[e], good[e + 1]]));
            set_u32(&mut b, f, u32::MAX - 8);
            cases.push(("string offset past the end".into(), b));
        }
        for (what, body) in cases {
            assert_eq!(
                probe_frame(&d, *t, &body),
                Probe::Closed(vec![]),
                "type {t}: {what}"
            );
        }
    }
    let mut c = d.raw();
    assert_eq!(c.list().len(), 1, "nothing was created or deleted");
    assert_survived(&mut d, &kept);
}

#[test]
fn requests_missing_required_fields_close_the_connection() {
    let (mut d, kept) = start();
    let digest = F::Bytes(vec![0; 8]);
    let closed: Vec<(&str, i64, Vec<u8>)> = vec![
        (
            "create without object_id",
            1,
            table(&[(1, F::Bool(true)), (2, F::U64(10))]),
        ),
        ("create with no fields", 1, table(&[])),
        (
            "create-and-seal without object_id",
            3,
            table(&[(2, F::Bytes(vec![1; 4])), (4, digest.clone())]),
        ),
        (
            "create-and-seal without digest",
            3,
            table(&[(0, F::Bytes(vec![1; 20])), (2, F::Bytes(vec![1; 4]))]),
        ),
        ("abort without object_id", 5, table(&[])),
        ("seal without object_id", 7, table(&[(1, digest.clone())])),
        (
            "seal without digest",
            7,
            table(&[(0, F::Bytes(kept.id.0.to_vec()))]),
        ),
        ("release without object_id", 11, table(&[])),
        (
            "delete with count 3 and no object_ids",
            13,
            table(&[(0, F::I32(3))]),
        ),
        ("contains without object_id", 15, table(&[])),
        (
            "batch with ids but no data",
            32,
            table(&[
                (0, F::Strs(vec![vec![1; 20]])),
                (3, F::Strs(vec![vec![]])),
                (4, F::Strs(vec![vec![0; 8]])),
            ]),
        ),
        (
            "batch with ids but no digests",
            32,
            table(&[
                (0, F::Strs(vec![vec![1; 20]])),
                (2, F::Strs(vec![vec![]])),
                (3, F::Strs(vec![vec![]])),
            ]),
        ),
        (
            "data request without object_id",
            25,
            table(&[(2, F::I32(80))]),
        ),
    ];
    for (what, t, body) in closed {
        assert_eq!(probe_frame(&d, t, &body), Probe::Closed(vec![]), "{what}");
    }
    // Where an absent field has a meaningful default, a reply is sensible too.
    let answered: Vec<(&str, i64, Vec<u8>, MessageType)> = vec![
        (
            "get without object_ids",
            9,
            table(&[(1, F::I64(0))]),
            MessageType::GetReply,
        ),
        (
            "delete with no fields",
            13,
            table(&[]),
            MessageType::DeleteReply,
        ),
        (
            "evict without num_bytes",
            21,
            table(&[]),
            MessageType::EvictReply,
        ),
        (
            "refresh without object_ids",
            34,
            table(&[]),
            MessageType::RefreshLruReply,
        ),
        (
            "batch with no fields",
            32,
            table(&[]),
            MessageType::CreateAndSealBatchReply,
        ),
    ];
    for (what, t, body, reply) in answered {
        assert_eq!(
            probe_frame(&d, t, &body),
            Probe::Alive(vec![reply]),
            "{what}"
        );
    }
    let mut c = d.raw();
    assert_eq!(c.list().len(), 1, "nothing was created");
    assert_survived(&mut d, &kept);
}

#[test]
fn object_ids_of_the_wrong_length_close_the_connection() {
    let (mut d, kept) = start();
    let digest = || F::Bytes(vec![0; 8]);
    for len in [0usize, 19, 21, 1000] {
        let id = vec![0x11u8; len];
        let good = kept.id.0.to_vec();
        let cases: Vec<(&str, i64, Vec<u8>)> = vec![
            (
                "create",
                1,
                table(&[
                    (0, F::Bytes(id.clone())),
                    (1, F::Bool(true)),
                    (2, F::U64(100)),
                    (3, F::U64(0)),
                ]),
            ),
            (
                "create-and-seal",
                3,
                table(&[
                    (0, F::Bytes(id.clone())),
                    (1, F::Bool(true)),
                    (2, F::Bytes(vec![1; 10])),
                    (3, F::Bytes(vec![])),
                    (4, digest()),
                ]),
            ),
            ("abort", 5, table(&[(0, F::Bytes(id.clone()))])),
            (
                "seal",
                7,
                table(&[(0, F::Bytes(id.clone())), (1, digest())]),
            ),
            (
                "get",
                9,
                table(&[(0, F::Strs(vec![good.clone(), id.clone()])), (1, F::I64(0))]),
            ),
            ("release", 11, table(&[(0, F::Bytes(id.clone()))])),
            (
                "delete",
                13,
                table(&[(0, F::I32(1)), (1, F::Strs(vec![id.clone()]))]),
            ),
            ("contains", 15, table(&[(0, F::Bytes(id.clone()))])),
            (
                "batch",
                32,
                table(&[
                    (0, F::Strs(vec![id.clone()])),
                    (1, F::Bool(true)),
                    (2, F::Strs(vec![vec![1; 10]])),
                    (3, F::Strs(vec![vec![]])),
                    (4, F::Strs(vec![vec![0; 8]])),
                ]),
            ),
            ("refresh", 34, table(&[(0, F::Strs(vec![id.clone()]))])),
            (
                "data request",
                25,
                table(&[
                    (0, F::Bytes(id.clone())),
                    (1, F::Bytes(b"127.0.0.1".to_vec())),
                    (2, F::I32(1234)),
                ]),
            ),
        ];
        for (what, t, body) in cases {
            assert_eq!(
                probe_frame(&d, t, &body),
                Probe::Closed(vec![]),
                "{what} with a {len}-byte id"
            );
        }
    }
    let mut c = d.raw();
    assert_eq!(c.list().len(), 1, "nothing was created");
    assert_survived(&mut d, &kept);
}

#[test]
fn digests_of_the_wrong_size_and_mismatched_batches_close_the_connection() {
    let (mut d, kept) = start();
    let id = || F::Bytes(vec![0x22; 20]);
    let ids = |n: usize| F::Strs((0..n as u8).map(|i| vec![0x30 + i; 20]).collect());
    let strs = |n: usize, len: usize| F::Strs(vec![vec![0; len]; n]);
    let cases: Vec<(&str, i64, Vec<u8>)> = vec![
        (
            "seal, 7-byte digest",
            7,
            table(&[(0, F::Bytes(kept.id.0.to_vec())), (1, F::Bytes(vec![0; 7]))]),
        ),
        (
            "seal, 9-byte digest",
            7,
            table(&[(0, F::Bytes(kept.id.0.to_vec())), (1, F::Bytes(vec![0; 9]))]),
        ),
        (
            "seal, 4096-byte digest",
            7,
            table(&[
                (0, F::Bytes(kept.id.0.to_vec())),
                (1, F::Bytes(vec![0; 4096])),
            ]),
        ),
        (
            "create-and-seal, 0-byte digest",
            3,
            table(&[(0, id()), (2, F::Bytes(vec![1; 8])), (4, F::Bytes(vec![]))]),
        ),
        (
            "create-and-seal, 9-byte digest",
            3,
            table(&[
                (0, id()),
                (2, F::Bytes(vec![1; 8])),
                (4, F::Bytes(vec![0; 9])),
            ]),
        ),
        (
            "batch, 2 ids and 1 data",
            32,
            table(&[
                (0, ids(2)),
                (2, strs(1, 4)),
                (3, strs(2, 0)),
                (4, strs(2, 8)),
            ]),
        ),
        (
            "batch, 2 ids and 3 digests",
            32,
            table(&[
                (0, ids(2)),
                (2, strs(2, 4)),
                (3, strs(2, 0)),
                (4, strs(3, 8)),
            ]),
        ),
        (
            "batch, 1 metadata for 3 ids",
            32,
            table(&[
                (0, ids(3)),
                (2, strs(3, 4)),
                (3, strs(1, 0)),
                (4, strs(3, 8)),
            ]),
        ),
        (
            "batch, a 7-byte digest",
            32,
            table(&[
                (0, ids(2)),
                (2, strs(2, 4)),
                (3, strs(2, 0)),
                (4, F::Strs(vec![vec![0; 8], vec![0; 7]])),
            ]),
        ),
        (
            "delete, count 1000 for 1 id",
            13,
            table(&[(0, F::I32(1000)), (1, ids(1))]),
        ),
        (
            "delete, count -1",
            13,
            table(&[(0, F::I32(-1)), (1, ids(1))]),
        ),
        (
            "delete, count 1 for 3 ids",
            13,
            table(&[(0, F::I32(1)), (1, ids(3))]),
        ),
    ];
    for (what, t, body) in cases {
        assert_eq!(probe_frame(&d, t, &body), Probe::Closed(vec![]), "{what}");
    }
    let mut c = d.raw();
    let objects = c.list();
    assert_eq!(objects.len(), 1, "nothing was created");
    assert_ne!(
        objects[0].digest,
        Some([0; 8]),
        "the kept object was not resealed"
    );
    assert_survived(&mut d, &kept);
}

// ---- requests that make no sense ----

#[test]
fn absurd_creates_are_out_of_memory_without_an_fd() {
    let (mut d, kept) = start();
    let mut c = d.raw();
    let cases: [(&str, u64, u64, i32, bool); 7] = [
        ("u64::MAX data", u64::MAX, 0, 0, true),
        ("u64::MAX metadata", 0, u64::MAX, 0, true),
        (
            "data + metadata overflows",
            u64::MAX / 2 + 1,
            u64::MAX / 2 + 1,
            0,
            true,
        ),
        ("i64::MAX data", i64::MAX as u64, 0, 0, true),
        ("larger than the capacity", MEM + 1, 0, 0, true),
        ("larger than the capacity, no eviction", MEM, 1, 0, false),
        ("device_num 1", 10, 0, 1, true),
    ];
    for (i, (what, data_size, metadata_size, device_num, evict_if_full)) in
        cases.into_iter().enumerate()
    {
        let id = oid(0x40 + i as u8);
        let r = c.call(&Request::Create {
            object_id: id,
            evict_if_full,
            data_size,
            metadata_size,
            device_num,
        });
        assert_eq!(
            r,
            Reply::Create {
                object_id: id,
                spec: ObjectSpec::default(),
                error: PlasmaError::OutOfMemory,
                store_fd: 0,
                mmap_size: 0,
            },
            "{what}"
        );
        // No fd follows a refused create: the next reply comes straight after.
        assert_eq!(c.probe(), Probe::Alive(vec![]), "{what}");
    }
    assert_eq!(c.list().len(), 1, "nothing was created");
    assert_eq!(c.allocated(), kept_size(&kept), "nothing is allocated");
    assert_survived(&mut d, &kept);
}

#[test]
fn seal_of_an_unknown_or_already_sealed_object() {
    let (mut d, kept) = start();
    let mut c = d.raw();
    let digest_before = find(&mut c, kept.id).expect("kept").digest;
    assert_eq!(
        c.call(&Request::Seal {
            object_id: oid(1),
            digest: [1; 8]
        }),
        Reply::Seal {
            object_id: oid(1),
            error: PlasmaError::ObjectNotFound
        }
    );
    assert_eq!(
        c.call(&Request::Seal {
            object_id: kept.id,
            digest: [9; 8]
        }),
        Reply::Seal {
            object_id: kept.id,
            error: PlasmaError::Ok
        },
        "a second seal is answered OK and does nothing"
    );
    assert_eq!(find(&mut c, kept.id).expect("kept").digest, digest_before);
    assert_eq!(c.probe(), Probe::Alive(vec![]));
    assert_survived(&mut d, &kept);
}

#[test]
fn abort_of_objects_the_client_may_not_abort() {
    let (mut d, kept) = start();
    let mut creator = d.raw();
    let r = creator.call(&Request::Create {
        object_id: oid(1),
        evict_if_full: true,
        data_size: 100,
        metadata_size: 0,
        device_num: 0,
    });
    assert!(matches!(
        r,
        Reply::Create {
            error: PlasmaError::Ok,
            ..
        }
    ));
    let mut other = d.raw();
    for id in [oid(1), kept.id, oid(2)] {
        assert_eq!(
            other.call(&Request::Abort { object_id: id }),
            Reply::Abort { object_id: id },
            "abort of {id:?} by a client that did not create it"
        );
    }
    // The creator also cannot abort a sealed object.
    assert_eq!(
        creator.call(&Request::Abort { object_id: kept.id }),
        Reply::Abort { object_id: kept.id }
    );
    assert_eq!(other.probe(), Probe::Alive(vec![]));
    // The unsealed object is still its creator's, who can seal it.
    let o = find(&mut other, oid(1)).expect("still there");
    assert_eq!((o.ref_count, o.digest), (1, None));
    assert_eq!(
        creator.call(&Request::Seal {
            object_id: oid(1),
            digest: [1; 8]
        }),
        Reply::Seal {
            object_id: oid(1),
            error: PlasmaError::Ok
        }
    );
    assert_survived(&mut d, &kept);
}

#[test]
fn release_of_objects_not_held_and_double_release() {
    let (mut d, kept) = start();
    let mut creator = d.raw();
    creator.call(&Request::Create {
        object_id: oid(1),
        evict_if_full: true,
        data_size: 100,
        metadata_size: 0,
        device_num: 0,
    });
    let mut c = d.raw();
    // Not held: sealed, unknown, and another client's unsealed object.
    for id in [kept.id, oid(2), oid(1)] {
        c.send(&Request::Release { object_id: id }).expect("send");
    }
    assert_eq!(c.probe(), Probe::Alive(vec![]));
    assert_eq!(find(&mut c, kept.id).expect("kept").ref_count, 0);
    assert_eq!(find(&mut c, oid(1)).expect("unsealed").ref_count, 1);
    // Held once, released twice (and a third time).
    let Reply::Get { objects, .. } = c.call(&Request::Get {
        object_ids: vec![kept.id],
        timeout_ms: 0,
    }) else {
        panic!("get")
    };
    assert!(objects[0].is_some());
    assert_eq!(find(&mut c, kept.id).expect("kept").ref_count, 1);
    for _ in 0..3 {
        c.send(&Request::Release { object_id: kept.id })
            .expect("send");
    }
    assert_eq!(c.probe(), Probe::Alive(vec![]));
    assert_eq!(find(&mut c, kept.id).expect("kept").ref_count, 0);
    // The creator's unsealed object is still pinned and sealable.
    assert_eq!(
        creator.call(&Request::Seal {
            object_id: oid(1),
            digest: [1; 8]
        }),
        Reply::Seal {
            object_id: oid(1),
            error: PlasmaError::Ok
        }
    );
    assert_survived(&mut d, &kept);
}

#[test]
fn data_transfer_messages_of_the_removed_manager_close_the_connection() {
    let (mut d, kept) = start();
    let request = table(&[
        (0, F::Bytes(kept.id.0.to_vec())),
        (1, F::Bytes(b"127.0.0.1".to_vec())),
        (2, F::I32(12345)),
    ]);
    let reply = table(&[
        (0, F::Bytes(kept.id.0.to_vec())),
        (1, F::U64(10)),
        (2, F::U64(0)),
    ]);
    assert_eq!(
        probe_frame(&d, 25, &request),
        Probe::Closed(vec![]),
        "DataRequest"
    );
    assert_eq!(
        probe_frame(&d, 26, &reply),
        Probe::Closed(vec![]),
        "DataReply"
    );
    assert_survived(&mut d, &kept);
}

#[test]
fn unsubscribe_is_ignored() {
    let (mut d, kept) = start();
    let mut c = d.raw();
    c.send_frame(24, &[]).expect("send");
    c.send_frame(24, &body_of(&Request::Connect)).expect("send");
    assert_eq!(c.probe(), Probe::Alive(vec![]));
    // After subscribing, too.
    let (_mine, theirs) = UnixStream::pair().expect("pair");
    c.send(&Request::Subscribe).expect("send");
    fdpass::send_fd(&c.sock, theirs.as_fd()).expect("send fd");
    c.send_frame(24, &[]).expect("send");
    assert_eq!(c.probe(), Probe::Alive(vec![]));
    assert_survived(&mut d, &kept);
}

#[test]
fn extreme_get_timeouts() {
    let (mut d, kept) = start();
    // Wait "forever" in three spellings; none may stall the store or fire early.
    let mut waiters = Vec::new();
    for timeout_ms in [i64::MAX, i64::MAX / 1000, -1] {
        let mut w = d.raw();
        w.send(&Request::Get {
            object_ids: vec![oid(1)],
            timeout_ms,
        })
        .expect("send");
        waiters.push(w);
    }
    // Other negative timeouts answer at once.
    let mut c = d.raw();
    for timeout_ms in [i64::MIN, -2, -1000] {
        let Reply::Get { objects, .. } = c.call(&Request::Get {
            object_ids: vec![oid(1)],
            timeout_ms,
        }) else {
            panic!("get")
        };
        assert_eq!(objects, vec![None], "timeout {timeout_ms}");
    }
    assert_survived(&mut d, &kept);
    c.put(oid(1), b"at last");
    for mut w in waiters {
        let Reply::Get { objects, .. } = w.reply() else {
            panic!("get")
        };
        assert_eq!(objects[0].map(|s| s.data_size), Some(7));
    }
}

#[test]
fn a_get_of_100000_ids_does_not_stall_the_store() {
    let (mut d, kept) = start();
    // All but one missing, answered at once: 3 MB of request, as many placeholders back.
    let mut ids: Vec<ObjectId> = (0..100_000u32)
        .map(|i| {
            let mut id = [0xee; 20];
            id[..4].copy_from_slice(&i.to_le_bytes());
            ObjectId(id)
        })
        .collect();
    ids[50_000] = kept.id;
    let mut c = d.raw();
    c.send(&Request::Get {
        object_ids: ids,
        timeout_ms: 0,
    })
    .expect("send");
    std::thread::sleep(Duration::from_millis(200));
    assert_survived(&mut d, &kept);
    let Reply::Get { objects, .. } = c.reply() else {
        panic!("get")
    };
    assert_eq!(objects.len(), 100_000);
    assert_eq!(objects.iter().filter(|o| o.is_some()).count(), 1);
}

#[test]
fn absurd_client_options_are_refused() {
    let (mut d, kept) = start();
    let mut c = d.raw();
    for quota in [-1i64, i64::MIN, i64::MAX, MEM as i64] {
        assert_eq!(
            c.call(&Request::SetOptions {
                client_name: b"greedy".to_vec(),
                output_memory_quota: quota,
            }),
            Reply::SetOptions {
                error: PlasmaError::OutOfMemory
            },
            "quota {quota}"
        );
    }
    // A long name that is not UTF-8 is only a name.
    let mut other = d.raw();
    assert_eq!(
        other.call(&Request::SetOptions {
            client_name: vec![0xff; 64 << 10],
            output_memory_quota: 1000,
        }),
        Reply::SetOptions {
            error: PlasmaError::Ok
        }
    );
    assert!(matches!(
        other.call(&Request::GetDebugString),
        Reply::DebugString { .. }
    ));
    assert_survived(&mut d, &kept);
}

// ---- fds ----

#[test]
fn subscribe_without_the_fd_then_a_normal_request() {
    let (mut d, kept) = start();
    let mut c = d.raw();
    let mut bytes = framed(&Request::Subscribe);
    bytes.extend(framed(&Request::Connect));
    c.send_raw(&bytes).expect("send");
    assert_eq!(
        c.reply(),
        Reply::Connect {
            memory_capacity: MEM as i64
        },
        "the request after a subscribe without an fd is answered"
    );
    assert_eq!(c.probe(), Probe::Alive(vec![]));
    // A proper subscription afterwards works.
    let (mine, theirs) = UnixStream::pair().expect("pair");
    c.send(&Request::Subscribe).expect("send");
    fdpass::send_fd(&c.sock, theirs.as_fd()).expect("send fd");
    drop(theirs);
    let infos = read_notification(&mine).expect("the kept object is announced");
    assert_eq!(infos[0].object_id, kept.id);
    assert_survived(&mut d, &kept);
}

/// One notification from a subscription socket (None at end of stream).
fn read_notification(mut sock: &UnixStream) -> Option<Vec<ObjectInfo>> {
    sock.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let mut len = [0u8; 8];
    match sock.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("reading a notification: {e}"),
    }
    let mut body = vec![0u8; u64::from_ne_bytes(len) as usize];
    sock.read_exact(&mut body).expect("notification body");
    Some(decode_notification(&body).expect("notification"))
}

#[test]
fn a_second_subscribe_on_one_connection_keeps_the_first() {
    let (mut d, kept) = start();
    let mut c = d.raw();
    let (first, theirs) = UnixStream::pair().expect("pair");
    c.send(&Request::Subscribe).expect("send");
    fdpass::send_fd(&c.sock, theirs.as_fd()).expect("send fd");
    drop(theirs);
    let (second, theirs) = UnixStream::pair().expect("pair");
    c.send(&Request::Subscribe).expect("send");
    fdpass::send_fd(&c.sock, theirs.as_fd()).expect("send fd");
    drop(theirs);
    assert_eq!(c.probe(), Probe::Alive(vec![]), "framing survived");
    c.put(oid(1), b"new");
    assert_eq!(
        read_notification(&first).expect("kept")[0].object_id,
        kept.id
    );
    assert_eq!(read_notification(&first).expect("new")[0].object_id, oid(1));
    assert_eq!(
        read_notification(&second),
        None,
        "the extra fd is closed, unused"
    );
    assert_survived(&mut d, &kept);
}

#[test]
fn a_subscriber_that_never_reads_its_blocking_socket() {
    // The fd is blocking, as a careless client may pass it (the reference then blocks
    // forever in send); the store must make it non-blocking and drop it on overflow.
    let (mut d, kept) = start_with(&["--max-notification-bytes", "64KiB"]);
    let mut sub = d.raw();
    let (mine, theirs) = UnixStream::pair().expect("pair");
    sub.send(&Request::Subscribe).expect("send");
    fdpass::send_fd(&sub.sock, theirs.as_fd()).expect("send fd");
    drop(theirs);
    let mut c = d.raw();
    let start = Instant::now();
    for i in 0..4000u32 {
        let mut id = [0u8; 20];
        id[..4].copy_from_slice(&i.to_le_bytes());
        c.put(ObjectId(id), b"");
        assert!(matches!(
            c.call(&Request::Delete {
                object_ids: vec![ObjectId(id)]
            }),
            Reply::Delete { .. }
        ));
    }
    eprintln!(
        "8000 notifications to a non-reader took {:?}",
        start.elapsed()
    );
    assert_survived(&mut d, &kept);
    // The subscription was dropped: its socket ends after what fit.
    mine.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let mut total = 0;
    let mut buf = [0u8; 65536];
    loop {
        match (&mine).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => panic!("the notification socket was not closed: {e} after {total} bytes"),
        }
    }
    assert!(total < 8000 * 100, "everything arrived ({total} bytes)");
    assert_eq!(
        sub.probe(),
        Probe::Alive(vec![]),
        "its main connection goes on"
    );
}

#[test]
fn a_subscribe_fd_that_is_not_a_socket() {
    let (mut d, kept) = start();
    let baseline = d.settled_fds();
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    for fd in [devnull.as_fd(), read_end.as_fd(), write_end.as_fd()] {
        let mut c = d.raw();
        c.send(&Request::Subscribe).expect("send");
        fdpass::send_fd(&c.sock, fd).expect("send fd");
        c.put(oid(1), b"x");
        assert!(matches!(
            c.call(&Request::Delete {
                object_ids: vec![oid(1)]
            }),
            Reply::Delete { .. }
        ));
        assert_eq!(c.probe(), Probe::Alive(vec![]));
    }
    d.assert_fds_return_to(baseline);
    assert_survived(&mut d, &kept);
}

#[test]
fn an_fd_sent_with_a_connect_request() {
    let (mut d, kept) = start();
    let baseline = d.settled_fds();
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    let mut c = d.raw();
    send_with_fds(&c.sock, &framed(&Request::Connect), &[devnull.as_raw_fd()]);
    assert_eq!(
        c.reply(),
        Reply::Connect {
            memory_capacity: MEM as i64
        }
    );
    assert_eq!(c.probe(), Probe::Alive(vec![]));
    drop(c);
    d.assert_fds_return_to(baseline);
    assert_survived(&mut d, &kept);
}

#[test]
fn an_fd_sent_as_a_lone_byte_between_frames() {
    let (mut d, kept) = start();
    let baseline = d.settled_fds();
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    let mut c = d.raw();
    assert!(matches!(c.call(&Request::Connect), Reply::Connect { .. }));
    fdpass::send_fd(&c.sock, devnull.as_fd()).expect("send fd");
    // The stray byte now leads the next header: framing is lost, the connection goes.
    assert_eq!(c.probe(), Probe::Closed(vec![]));
    drop(c);
    d.assert_fds_return_to(baseline);
    assert_survived(&mut d, &kept);
}

#[test]
fn a_flood_of_unasked_fds() {
    let (mut d, kept) = start();
    let baseline = d.settled_fds();
    let files: Vec<std::fs::File> = (0..4)
        .map(|_| std::fs::File::open("/dev/null").expect("/dev/null"))
        .collect();
    let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
    let mut c = d.raw();
    let frame = framed(&Request::Connect);
    for _ in 0..200 {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let iov = [std::io::IoSlice::new(&frame)];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        if sendmsg::<()>(
            c.sock.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .is_err()
        {
            break; // the store hung up on us
        }
    }
    // Closed or answered: either way the fds must not pile up in the store.
    let _ = c.probe();
    drop(c);
    d.assert_fds_return_to(baseline);
    assert_survived(&mut d, &kept);
}

// ---- many clients, slow clients ----

#[test]
fn five_hundred_simultaneous_connections() {
    let (mut d, kept) = start();
    let baseline = d.settled_fds();
    let mut conns: Vec<Raw> = (0..500).map(|_| d.raw()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let req = if i % 2 == 0 {
            Request::Contains { object_id: kept.id }
        } else {
            Request::Connect
        };
        c.send(&req).expect("send");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        match c.reply() {
            Reply::Contains { has_object, .. } => assert!(has_object && i % 2 == 0),
            Reply::Connect { .. } => assert!(i % 2 == 1),
            r => panic!("connection {i}: {r:?}"),
        }
    }
    assert_survived(&mut d, &kept);
    drop(conns);
    d.assert_fds_return_to(baseline);
}

#[test]
fn max_connections_refuses_the_excess_and_keeps_serving() {
    if testing_reference() {
        eprintln!("skipped: the reference has no --max-connections");
        return;
    }
    let (mut d, kept) = start_with(&["--max-connections", "16"]);
    d.settled_fds(); // the good client's connection is gone
    let mut held: Vec<Raw> = (0..16).map(|_| d.raw()).collect();
    for c in &mut held {
        assert_eq!(c.probe(), Probe::Alive(vec![]));
    }
    for i in 0..5 {
        let mut extra = d.raw();
        assert_eq!(extra.probe(), Probe::Closed(vec![]), "extra connection {i}");
    }
    for c in &mut held {
        assert_eq!(c.probe(), Probe::Alive(vec![]), "held connections go on");
    }
    // A slot freed is a slot for a new client.
    held.pop();
    eventually("a freed slot to be reusable", || {
        d.raw().probe() == Probe::Alive(vec![])
    });
    // Once the held connections are closed, and the store has seen them go, anyone is
    // served again.
    held.clear();
    eventually("the closed connections' slots to be free", || {
        d.raw().probe() == Probe::Alive(vec![])
    });
    assert_survived(&mut d, &kept);
}

#[test]
fn a_client_that_never_reads_its_replies() {
    let (mut d, kept) = start_with(&["--max-queued-bytes", "1MiB"]);
    let mut c = d.raw();
    for i in 0..50 {
        c.put(oid(i), &[i; 1000]);
    }
    let baseline = d.settled_fds();
    let rss_before = rss_kib(&d);
    let mut flood = d.raw();
    flood.sock.set_nonblocking(true).expect("nonblocking");
    let frame = framed(&Request::List);
    let mut sent = 0usize;
    // Each List reply is several KiB; requests go until every buffer on the way is full.
    for _ in 0..100_000 {
        match flood.sock.write(&frame) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(sent > 0);
    assert_survived(&mut d, &kept);
    assert_eq!(c.list().len(), 51);
    let growth = rss_kib(&d).saturating_sub(rss_before);
    assert!(
        growth < 64 << 10,
        "the store grew by {growth} KiB for one client's unread replies"
    );
    drop(flood);
    drop(c);
    d.assert_fds_return_to(baseline);
    assert_survived(&mut d, &kept);
}

#[test]
fn a_client_that_half_closes_after_pipelining_gets_every_reply() {
    // Requests, then shutdown(SHUT_WR), then the replies are read slowly: the store has
    // seen the end of stream long before it may answer everything (its reply queue is
    // bounded), and must still answer every request before it closes.
    let (mut d, kept) = start_with(&["--max-queued-bytes", "256KiB"]);
    let mut c = d.raw();
    for i in 0..50 {
        c.put(oid(i), &[i; 100]);
    }
    let mut slow = d.raw();
    let mut bytes = Vec::new();
    for _ in 0..1000 {
        bytes.extend(framed(&Request::List));
    }
    slow.send_raw(&bytes).expect("send");
    slow.sock
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..1000 {
        match slow.recv() {
            Ok((Reply::List { objects }, _)) => assert_eq!(objects.len(), 51),
            Ok((r, _)) => panic!("reply {i}: {r:?}"),
            Err(e) => panic!("reply {i} of 1000 never came: {e}"),
        }
    }
    assert!(slow.closed_by_store(), "closed once everything is answered");
    assert_survived(&mut d, &kept);
}

fn rss_kib(d: &Daemon) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", d.pid()))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn pipelined_gets_then_disconnect() {
    let (mut d, kept) = start();
    let mut w = d.raw();
    for (ids, timeout_ms) in [
        (vec![oid(1)], -1),
        (vec![oid(2)], 100_000),
        (vec![oid(1), oid(2)], -1),
        (vec![oid(2), oid(3), oid(2)], -1),
        (vec![kept.id, oid(3)], -1),
    ] {
        w.send(&Request::Get {
            object_ids: ids,
            timeout_ms,
        })
        .expect("send");
    }
    // And far more waiting gets than a client may have pending.
    let mut many = d.raw();
    let mut bytes = Vec::new();
    for i in 0..2000u32 {
        let mut id = [0x77; 20];
        id[..4].copy_from_slice(&i.to_le_bytes());
        bytes.extend(framed(&Request::Get {
            object_ids: vec![ObjectId(id), oid(1)],
            timeout_ms: -1,
        }));
    }
    many.send_raw(&bytes).expect("send");
    std::thread::sleep(Duration::from_millis(200));
    drop(w);
    drop(many);
    assert_survived(&mut d, &kept);
    let mut c = d.raw();
    for i in 1..=3 {
        c.put(oid(i), &[i; 10]);
    }
    assert_eq!(c.probe(), Probe::Alive(vec![]));
    eventually("no reference of the gone client to remain", || {
        c.list().iter().all(|o| o.ref_count == 0)
    });
    assert_survived(&mut d, &kept);
}

#[test]
fn a_get_listing_a_missing_id_twice_then_sealed() {
    let (mut d, kept) = start();
    let mut w = d.raw();
    w.send(&Request::Get {
        object_ids: vec![oid(1), kept.id, oid(1)],
        timeout_ms: -1,
    })
    .expect("send");
    std::thread::sleep(Duration::from_millis(50));
    let mut c = d.raw();
    c.put(oid(1), b"twice");
    let Reply::Get {
        object_ids,
        objects,
        ..
    } = w.reply()
    else {
        panic!("get")
    };
    assert_eq!(object_ids, vec![oid(1), kept.id, oid(1)]);
    assert_eq!(objects[0].map(|s| s.data_size), Some(5));
    assert_eq!(objects[2], objects[0]);
    assert_eq!(
        find(&mut c, oid(1)).expect("sealed").ref_count,
        1,
        "one ref"
    );
    drop(w);
    eventually("the waiter's references to go", || {
        c.list().iter().all(|o| o.ref_count == 0)
    });
    assert_survived(&mut d, &kept);
}

// ---- clients killed at the worst moment ----

#[test]
fn a_client_gone_in_the_middle_of_a_large_message_is_cleaned_up() {
    // The end of a large body and the end of stream arrive together, as when a client is
    // killed while sending a big CreateAndSeal. Repeated: which of the two the store sees
    // first is up to the scheduler.
    let (mut d, kept) = start();
    let baseline = d.settled_fds();
    let mut c = d.raw();
    for i in 0..10 {
        let mut dying = d.raw();
        let Reply::Get { objects, .. } = dying.call(&Request::Get {
            object_ids: vec![kept.id],
            timeout_ms: 0,
        }) else {
            panic!("get")
        };
        assert!(objects[0].is_some());
        assert_eq!(find(&mut c, kept.id).expect("kept").ref_count, 1);
        let mut bytes = header(0, 3, 2 << 20).to_vec();
        bytes.extend(vec![0u8; (1 << 20) + (100 << 10)]);
        dying.send_raw(&bytes).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        dying.send_raw(&[0u8; 1000]).expect("send");
        drop(dying);
        let deadline = Instant::now() + READ_TIMEOUT;
        while find(&mut c, kept.id).expect("kept").ref_count != 0 {
            assert!(
                Instant::now() < deadline,
                "attempt {i}: the connection of a client that is gone still holds its \
                 reference (the store never saw its end of stream)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(c);
    d.assert_fds_return_to(baseline);
    assert_survived(&mut d, &kept);
}

/// Child-process entry: a real client process that does what PLASMA_BAD_CHILD says, prints
/// "ready", and waits to be killed.
#[test]
fn child_client_process() {
    let Ok(mode) = std::env::var("PLASMA_BAD_CHILD") else {
        return;
    };
    let sock = std::env::var("PLASMA_SOCK").expect("PLASMA_SOCK");
    let c = Client::connect_with_retries(&sock, 0, Duration::ZERO).expect("connect");
    match mode.as_str() {
        "create" => {
            let mut buf = c.create(oid(0xc0), 65536, b"meta").expect("create");
            buf.data_mut()[..32768].fill(0xc0);
            println!("ready");
            std::thread::sleep(Duration::from_secs(60));
        }
        "get" => {
            let held = c.get(&[ObjectId([0x4b; 20])], 0).expect("get kept");
            assert!(held[0].is_some());
            println!("ready");
            let _ = c.get(&[oid(0xd0)], -1);
            std::thread::sleep(Duration::from_secs(60));
        }
        m => panic!("unknown mode {m}"),
    }
}

fn child(d: &Daemon, mode: &str) -> std::process::Child {
    spawn_ready(
        "child_client_process",
        &[
            ("PLASMA_BAD_CHILD", mode.to_string()),
            ("PLASMA_SOCK", d.socket.display().to_string()),
        ],
        &d.dir().join(format!("child-{mode}.log")),
    )
}

#[test]
fn a_client_killed_mid_create() {
    let (mut d, kept) = start();
    let mut c = d.raw();
    let mut waiter = d.raw();
    waiter
        .send(&Request::Get {
            object_ids: vec![oid(0xc0)],
            timeout_ms: -1,
        })
        .expect("send");
    let mut p = child(&d, "create");
    assert_eq!(find(&mut c, oid(0xc0)).expect("being created").digest, None);
    kill9(&mut p);
    eventually("the unsealed object to be aborted", || {
        find(&mut c, oid(0xc0)).is_none()
    });
    assert_eq!(c.allocated(), kept_size(&kept));
    assert_survived(&mut d, &kept);
    // The id is free again, and the get waiting for it is answered by its new object.
    c.put(oid(0xc0), b"second life");
    let Reply::Get { objects, .. } = waiter.reply() else {
        panic!("get")
    };
    assert_eq!(objects[0].map(|s| s.data_size), Some(11));
}

#[test]
fn a_client_killed_while_blocked_in_get() {
    let (mut d, kept) = start();
    let mut c = d.raw();
    let mut p = child(&d, "get");
    eventually("the child to hold the kept object", || {
        find(&mut c, kept.id).expect("kept").ref_count == 1
    });
    std::thread::sleep(Duration::from_millis(200));
    kill9(&mut p);
    eventually("the dead client's reference to go", || {
        find(&mut c, kept.id).expect("kept").ref_count == 0
    });
    // Sealing what it waited for reaches nobody and breaks nothing.
    c.put(oid(0xd0), b"late");
    assert_eq!(find(&mut c, oid(0xd0)).expect("sealed").ref_count, 0);
    assert_survived(&mut d, &kept);
}

// ---- noise ----

#[test]
fn a_seeded_random_byte_stream() {
    let (mut d, kept) = start();
    let baseline = d.settled_fds();
    let mut rng = Rng::new(0x7261_6e64);
    let mut total = 0usize;
    let mut conns = 0;
    // Pure noise, 4 MiB in all, in chunks of random size over as many connections as it
    // takes (the store hangs up on each at its first bad header).
    while total < 4 << 20 && conns < 5000 {
        conns += 1;
        let mut c = d.raw();
        let mut on_this = 0;
        while on_this < 256 << 10 {
            let len = 1 + rng.below(8192) as usize;
            let chunk = rng.bytes(len);
            if c.send_raw(&chunk).is_err() {
                break;
            }
            on_this += chunk.len();
        }
        total += on_this;
    }
    // Frames with valid headers and random bodies, 2 MiB more.
    let mut framed_total = 0usize;
    while framed_total < 2 << 20 {
        let mut c = d.raw();
        for _ in 0..64 {
            let t = rng.below(36) as i64;
            let len = rng.below(600) as usize;
            let body = rng.bytes(len);
            if c.send_frame(t, &body).is_err() {
                break;
            }
            framed_total += 24 + body.len();
        }
    }
    eprintln!("{total} noise bytes over {conns} connections, {framed_total} framed");
    assert_survived(&mut d, &kept);
    let mut c = d.raw();
    assert_eq!(c.list().len(), 1);
    drop(c);
    d.assert_fds_return_to(baseline);
}
