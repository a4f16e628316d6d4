//! Unit tests against a scripted fake store: the exact messages the client sends (libplasma's
//! reference counting), fd bookkeeping, and replies no real store should send, which must
//! come back as errors rather than panics or hangs.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::JoinHandle;

use super::*;
use crate::digest::object_digest;
use crate::fdpass;
use crate::protocol::{
    Encoder, FrameDecoder, HEADER_LEN, MessageType, ObjectSpec, PlasmaError, Reply, Request,
    decode_request,
};

const SEG: i32 = 4;
const SEG_BYTES: u64 = 1 << 16;

fn id(n: u8) -> ObjectId {
    ObjectId([n; 20])
}

/// The store side of one connection.
struct Peer {
    sock: UnixStream,
    dec: FrameDecoder,
    enc: Encoder,
    segment: File,
    log: Vec<Request>,
}

impl Peer {
    fn next(&mut self) -> Option<Request> {
        loop {
            if let Some(f) = self.dec.next_frame().unwrap() {
                let req = decode_request(f.msg_type, f.body).unwrap();
                self.log.push(req.clone());
                return Some(req);
            }
            let mut b = [0u8; 1];
            match self.sock.read(&mut b).unwrap() {
                0 => return None,
                _ => self.dec.extend(&b),
            }
        }
    }

    fn reply(&mut self, r: &Reply) {
        let mut out = Vec::new();
        self.enc.reply(r, &mut out);
        self.sock.write_all(&out).unwrap();
    }

    fn send_segment(&mut self) {
        fdpass::send_fd(&self.sock, self.segment.as_fd()).unwrap();
    }
}

fn spec(offset: u64, data: u64, meta: u64) -> ObjectSpec {
    ObjectSpec {
        segment_index: SEG,
        data_offset: offset,
        data_size: data,
        metadata_offset: offset.wrapping_add(data),
        metadata_size: meta,
        device_num: 0,
    }
}

/// Starts a fake store that answers Connect itself and every other request with `handle`,
/// until the client hangs up; joining returns every request it saw.
fn fake<F>(mut handle: F) -> (tempfile::TempDir, PathBuf, JoinHandle<Vec<Request>>)
where
    F: FnMut(&mut Peer, &Request) + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let segment = tempfile::tempfile().unwrap();
        segment.set_len(SEG_BYTES + 8).unwrap();
        let mut p = Peer {
            sock,
            dec: FrameDecoder::new(1 << 20),
            enc: Encoder::new(),
            segment,
            log: Vec::new(),
        };
        while let Some(req) = p.next() {
            match req {
                Request::Connect => p.reply(&Reply::Connect {
                    memory_capacity: 1000,
                }),
                r => handle(&mut p, &r),
            }
        }
        p.log
    });
    (dir, path, t)
}

fn connect(path: &PathBuf) -> Client {
    Client::connect_with_retries(path, 0, Duration::ZERO).unwrap()
}

/// A store that keeps one object per create, placed at 64-byte steps, and answers like
/// the reference for create, seal, get, release and delete.
fn simple_store() -> impl FnMut(&mut Peer, &Request) + Send + 'static {
    let mut sent = false;
    let mut objects: Vec<(ObjectId, ObjectSpec, bool)> = Vec::new();
    move |p, req| match req {
        Request::Create {
            object_id,
            data_size,
            metadata_size,
            ..
        } => {
            let off = 64 * (objects.len() as u64 + 1);
            let s = spec(off, *data_size, *metadata_size);
            objects.push((*object_id, s, false));
            p.reply(&Reply::Create {
                object_id: *object_id,
                spec: s,
                error: PlasmaError::Ok,
                store_fd: SEG,
                mmap_size: SEG_BYTES as i64 + 8,
            });
            if !sent {
                sent = true;
                p.send_segment();
            }
        }
        Request::Seal { object_id, .. } => {
            for o in objects.iter_mut().filter(|o| o.0 == *object_id) {
                o.2 = true;
            }
            p.reply(&Reply::Seal {
                object_id: *object_id,
                error: PlasmaError::Ok,
            });
        }
        Request::Get { object_ids, .. } => {
            let objs: Vec<Option<ObjectSpec>> = object_ids
                .iter()
                .map(|i| objects.iter().find(|o| o.0 == *i && o.2).map(|o| o.1))
                .collect();
            let any = objs.iter().any(Option::is_some);
            p.reply(&Reply::Get {
                object_ids: object_ids.clone(),
                objects: objs,
                store_fds: if any { vec![SEG] } else { vec![] },
                mmap_sizes: if any {
                    vec![SEG_BYTES as i64 + 8]
                } else {
                    vec![]
                },
            });
            if any && !sent {
                sent = true;
                p.send_segment();
            }
        }
        Request::Delete { object_ids } => p.reply(&Reply::Delete {
            object_ids: object_ids.clone(),
            errors: vec![PlasmaError::Ok; object_ids.len()],
        }),
        Request::Contains { object_id } => p.reply(&Reply::Contains {
            object_id: *object_id,
            has_object: false,
        }),
        Request::Abort { object_id } => p.reply(&Reply::Abort {
            object_id: *object_id,
        }),
        Request::List => p.reply(&Reply::List { objects: vec![] }),
        Request::Release { .. } => {}
        other => panic!("fake store got {other:?}"),
    }
}

fn kinds(log: &[Request]) -> Vec<MessageType> {
    log.iter().map(Request::message_type).collect()
}

#[test]
fn client_and_buffers_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Client>();
    check::<ObjectBuffer>();
    check::<MutableBuffer>();
    check::<Error>();
}

#[test]
fn create_drop_seal_sends_one_release_after_the_seal_with_the_digest() {
    use MessageType as T;
    let (_dir, path, store) = fake(simple_store());
    let c = connect(&path);
    assert_eq!(c.capacity(), 1000);
    let mut b = c.create(id(1), 16, b"MD").unwrap();
    b.copy_from_slice(&[0xAB; 16]);
    assert_eq!(b.metadata(), b"MD");
    drop(b);
    c.seal(id(1)).unwrap();
    c.disconnect();
    let log = store.join().unwrap();
    assert_eq!(
        kinds(&log),
        [
            T::ConnectRequest,
            T::CreateRequest,
            T::SealRequest,
            T::ReleaseRequest
        ]
    );
    assert_eq!(
        log[2],
        Request::Seal {
            object_id: id(1),
            digest: [0x68, 0x4b, 0x4b, 0x84, 0x49, 0xf6, 0x02, 0xd2]
        }
    );
}

#[test]
fn local_references_are_counted_and_the_store_hears_only_the_last_release() {
    use MessageType as T;
    let (_dir, path, store) = fake(simple_store());
    let c = connect(&path);
    let b = c.create(id(1), 3, b"").unwrap().seal().unwrap();
    // Served locally: the client already uses it.
    let g = c.get(&[id(1), id(1)], 0).unwrap();
    assert!(g.iter().all(Option::is_some));
    drop(b);
    drop(g);
    // Asked from the store once, although requested twice.
    let g = c.get(&[id(1), id(2), id(1)], 0).unwrap();
    assert!(g[0].is_some() && g[1].is_none() && g[2].is_some());
    // In use: deleting is deferred until the last release.
    c.delete(&[id(1)]).unwrap();
    assert!(c.contains(id(1)).unwrap());
    drop(g);
    c.disconnect();
    let log = store.join().unwrap();
    assert_eq!(
        kinds(&log),
        [
            T::ConnectRequest,
            T::CreateRequest,
            T::SealRequest,
            T::ReleaseRequest,
            T::GetRequest,
            T::ReleaseRequest,
            T::DeleteRequest,
        ]
    );
    assert_eq!(
        log[4],
        Request::Get {
            object_ids: vec![id(1), id(2)],
            timeout_ms: 0
        }
    );
}

#[test]
fn the_segment_fd_is_received_once_and_the_stream_stays_in_step() {
    let (_dir, path, store) = fake(simple_store());
    let c = connect(&path);
    for n in 1..=3 {
        let mut b = c.create(id(n), 4, &[n]).unwrap();
        b.copy_from_slice(&[n; 4]);
        drop(b.seal().unwrap());
    }
    let got = c.get(&[id(1), id(2), id(3)], 0).unwrap();
    for (n, g) in (1..=3).zip(&got) {
        let g = g.as_ref().unwrap();
        assert_eq!((g.data(), g.metadata()), (&[n; 4][..], &[n][..]));
    }
    assert_eq!(c.list().unwrap(), vec![]);
    drop(got);
    c.disconnect();
    store.join().unwrap();
}

#[test]
fn local_refusals_send_nothing() {
    use MessageType as T;
    let (_dir, path, store) = fake(simple_store());
    let c = connect(&path);
    assert!(matches!(c.seal(id(9)), Err(Error::ObjectNotFound(_))));
    assert!(matches!(c.abort(id(9)), Err(Error::ObjectNotFound(_))));
    let b = c.create(id(1), 1, b"").unwrap();
    assert!(matches!(c.seal(id(1)), Err(Error::ObjectInUse(_))));
    assert!(matches!(c.abort(id(1)), Err(Error::ObjectInUse(_))));
    assert!(matches!(
        c.get(&[id(1)], -1),
        Err(Error::ObjectNotSealed(_))
    ));
    assert!(c.get(&[id(1)], 0).unwrap()[0].is_none());
    let b = b.seal().unwrap();
    assert!(matches!(c.seal(id(1)), Err(Error::AlreadySealed(_))));
    assert!(matches!(c.abort(id(1)), Err(Error::AlreadySealed(_))));
    drop(b);
    c.disconnect();
    let log = store.join().unwrap();
    assert_eq!(
        kinds(&log),
        [
            T::ConnectRequest,
            T::CreateRequest,
            T::SealRequest,
            T::ReleaseRequest
        ]
    );
}

#[test]
fn abort_after_the_buffer_is_gone() {
    use MessageType as T;
    let (_dir, path, store) = fake(simple_store());
    let c = connect(&path);
    c.create(id(1), 1, b"").unwrap().abort().unwrap();
    assert!(matches!(c.abort(id(1)), Err(Error::ObjectNotFound(_))));
    c.disconnect();
    let log = store.join().unwrap();
    assert_eq!(
        kinds(&log),
        [T::ConnectRequest, T::CreateRequest, T::AbortRequest]
    );
}

/// Connects to a store that answers the first request after Connect with `answer`, and
/// returns what that request gave and whether the client still works afterwards.
fn after_bad_reply<T: std::fmt::Debug>(
    answer: impl FnOnce(&mut Peer, &Request) + Send + 'static,
    call: impl FnOnce(&Client) -> Result<T, Error>,
) -> Error {
    let mut answer = Some(answer);
    let (_dir, path, store) = fake(move |p, r| match answer.take() {
        Some(a) => a(p, r),
        None => p.reply(&Reply::List { objects: vec![] }),
    });
    let c = connect(&path);
    let err = call(&c).expect_err("a bad reply must fail");
    if err.is_fatal() {
        assert!(!c.is_connected(), "{err}");
        assert!(matches!(c.list(), Err(Error::Disconnected { .. })));
    } else {
        assert!(c.list().is_ok(), "{err}");
    }
    c.disconnect();
    store.join().unwrap();
    err
}

#[test]
fn malformed_replies_are_errors_that_close_the_connection() {
    let e = after_bad_reply(
        |p, _| p.sock.write_all(&[1; HEADER_LEN]).unwrap(),
        |c| c.list(),
    );
    assert!(matches!(e, Error::Protocol(_)), "{e}");

    let e = after_bad_reply(|p, _| p.reply(&Reply::Evict { num_bytes: 1 }), |c| c.list());
    assert!(matches!(e, Error::UnexpectedReply { .. }), "{e}");

    let e = after_bad_reply(
        |p, _| {
            let mut out = Vec::new();
            crate::protocol::write_frame(&mut out, MessageType::ListReply, &[0xff; 7]);
            p.sock.write_all(&out).unwrap()
        },
        |c| c.list(),
    );
    assert!(matches!(e, Error::Protocol(_)), "{e}");

    let e = after_bad_reply(
        |p, _| p.sock.shutdown(std::net::Shutdown::Both).unwrap(),
        |c| c.list(),
    );
    assert!(matches!(e, Error::Disconnected { .. }), "{e}");

    let e = after_bad_reply(
        |p, _| {
            p.reply(&Reply::Contains {
                object_id: id(2),
                has_object: true,
            })
        },
        |c| c.contains(id(1)),
    );
    assert!(matches!(e, Error::BadReply(_)), "{e}");
}

#[test]
fn objects_outside_their_segment_or_in_unknown_segments_are_refused() {
    let get = |objects: Vec<Option<ObjectSpec>>, fds: Vec<i32>| {
        move |p: &mut Peer, r: &Request| {
            let Request::Get { object_ids, .. } = r else {
                panic!()
            };
            let sizes = fds.iter().map(|_| SEG_BYTES as i64 + 8).collect::<Vec<_>>();
            p.reply(&Reply::Get {
                object_ids: object_ids[..objects.len()].to_vec(),
                objects,
                store_fds: fds.clone(),
                mmap_sizes: sizes,
            });
            for _ in &fds {
                p.send_segment();
            }
        }
    };
    let e = after_bad_reply(get(vec![Some(spec(SEG_BYTES - 8, 8, 1))], vec![SEG]), |c| {
        c.get(&[id(1)], 0)
    });
    assert!(matches!(e, Error::BadReply(_)), "{e}");
    let e = after_bad_reply(get(vec![Some(spec(64, u64::MAX - 1, 2))], vec![SEG]), |c| {
        c.get(&[id(1)], 0)
    });
    assert!(matches!(e, Error::BadReply(_)), "{e}");
    let e = after_bad_reply(get(vec![Some(spec(64, 8, 0))], vec![]), |c| {
        c.get(&[id(1)], 0)
    });
    assert!(matches!(e, Error::BadReply(_)), "{e}");
    let e = after_bad_reply(get(vec![], vec![]), |c| c.get(&[id(1)], 0));
    assert!(matches!(e, Error::BadReply(_)), "{e}");
}

#[test]
fn a_create_reply_that_does_not_match_the_request_is_refused() {
    let create = |s: ObjectSpec| {
        move |p: &mut Peer, r: &Request| {
            let Request::Create { object_id, .. } = r else {
                panic!()
            };
            p.reply(&Reply::Create {
                object_id: *object_id,
                spec: s,
                error: PlasmaError::Ok,
                store_fd: SEG,
                mmap_size: SEG_BYTES as i64 + 8,
            });
            p.send_segment();
        }
    };
    let mut s = spec(64, 10, 2);
    s.metadata_offset += 1;
    let e = after_bad_reply(create(s), |c| c.create(id(1), 10, b"ab"));
    assert!(matches!(e, Error::BadReply(_)), "{e}");
    let e = after_bad_reply(create(spec(64, 11, 2)), |c| c.create(id(1), 10, b"ab"));
    assert!(matches!(e, Error::BadReply(_)), "{e}");
    let e = after_bad_reply(create(spec(SEG_BYTES, 10, 2)), |c| {
        c.create(id(1), 10, b"ab")
    });
    assert!(matches!(e, Error::BadReply(_)), "{e}");
}

#[test]
fn store_error_codes_map_to_typed_errors_and_keep_the_connection() {
    let e = after_bad_reply(
        |p, r| {
            let Request::Create { object_id, .. } = r else {
                panic!()
            };
            p.reply(&Reply::Create {
                object_id: *object_id,
                spec: ObjectSpec::default(),
                error: PlasmaError::ObjectExists,
                store_fd: 0,
                mmap_size: 0,
            })
        },
        |c| c.create(id(1), 10, b""),
    );
    assert!(
        matches!(e, Error::ObjectExists(Some(i)) if i == id(1)),
        "{e}"
    );
    let e = after_bad_reply(
        |p, _| {
            p.reply(&Reply::CreateAndSeal {
                error: PlasmaError::OutOfMemory,
            })
        },
        |c| c.create_and_seal(id(1), b"x", b""),
    );
    assert!(matches!(e, Error::OutOfMemory(Some(_))), "{e}");
    let e = after_bad_reply(
        |p, _| {
            p.reply(&Reply::CreateAndSealBatch {
                error: PlasmaError::ObjectInUse,
            })
        },
        |c| c.create_and_seal_batch(&[(id(1), b"x", b"")]),
    );
    assert!(matches!(e, Error::StoreError { .. }), "{e}");
    let e = after_bad_reply(
        |p, _| {
            p.reply(&Reply::SetOptions {
                error: PlasmaError::OutOfMemory,
            })
        },
        |c| c.set_options("me", 5),
    );
    assert!(matches!(e, Error::QuotaRefused { .. }), "{e}");
}

#[test]
fn batch_and_create_and_seal_send_correct_digests() {
    let (_dir, path, store) = fake(|p, r| match r {
        Request::CreateAndSeal { .. } => p.reply(&Reply::CreateAndSeal {
            error: PlasmaError::Ok,
        }),
        _ => p.reply(&Reply::CreateAndSealBatch {
            error: PlasmaError::Ok,
        }),
    });
    let c = connect(&path);
    c.create_and_seal(id(1), b"data", b"m").unwrap();
    c.create_and_seal_batch(&[(id(2), b"two", b""), (id(3), b"", b"three")])
        .unwrap();
    c.create_and_seal_batch(&[]).unwrap();
    c.disconnect();
    let log = store.join().unwrap();
    let Request::CreateAndSeal { digest, .. } = &log[1] else {
        panic!()
    };
    assert_eq!(*digest, object_digest(b"data", b"m"));
    let Request::CreateAndSealBatch { objects, .. } = &log[2] else {
        panic!()
    };
    assert_eq!(objects[0].digest, object_digest(b"two", b""));
    assert_eq!(objects[1].digest, object_digest(b"", b"three"));
    assert_eq!(log.len(), 3, "an empty batch sends nothing");
}

#[test]
fn connect_failure_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody-here.sock");
    let e = Client::connect_with_retries(&path, 2, Duration::from_millis(1)).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }));
    assert!(
        e.to_string()
            .starts_with(&format!("could not connect to socket {}", path.display())),
        "{e}"
    );
}

#[test]
fn write_all_sends_the_digest_of_what_it_copied_and_a_later_write_recomputes_it() {
    let (_dir, path, store) = fake(simple_store());
    let c = connect(&path);
    // Copied and hashed in one pass: the reference client's digest of 0xAB * 16 + "MD".
    let mut b = c.create(id(1), 16, b"MD").unwrap();
    b.write_all(&[0xAB; 16], 4);
    drop(b.seal().unwrap());
    // Written again after write_all: the digest must follow the bytes, not the copy.
    let mut b = c.create(id(2), 16, b"MD").unwrap();
    b.write_all(&[0; 16], 4);
    b.copy_from_slice(&[0xAB; 16]);
    drop(b.seal().unwrap());
    c.disconnect();
    let log = store.join().unwrap();
    let digests: Vec<_> = log
        .iter()
        .filter_map(|r| match r {
            Request::Seal { digest, .. } => Some(*digest),
            _ => None,
        })
        .collect();
    let reference = [0x68, 0x4b, 0x4b, 0x84, 0x49, 0xf6, 0x02, 0xd2];
    assert_eq!(digests, [reference, reference]);
}
