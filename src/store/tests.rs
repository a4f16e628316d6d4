//! Unit tests of the store, driving it directly through a recording [`Sink`].

use super::*;

/// Everything the store said, in order.
#[derive(Default)]
struct Rec {
    events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Reply(ClientId, Reply),
    Segment(ClientId, i32),
    Notify(Vec<ObjectInfo>),
}

impl Sink for Rec {
    fn reply(&mut self, client: ClientId, reply: &Reply) {
        self.events.push(Event::Reply(client, reply.clone()));
    }
    fn send_segment(&mut self, client: ClientId, segment: i32) {
        self.events.push(Event::Segment(client, segment));
    }
    fn notify(&mut self, infos: &[ObjectInfo]) {
        self.events.push(Event::Notify(infos.to_vec()));
    }
}

impl Rec {
    fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
    fn last_reply(&mut self) -> Reply {
        let events = self.take();
        events
            .into_iter()
            .rev()
            .find_map(|e| match e {
                Event::Reply(_, r) => Some(r),
                _ => None,
            })
            .expect("a reply")
    }
}

fn oid(n: u8) -> ObjectId {
    ObjectId([n; 20])
}

fn store(capacity: u64) -> Store {
    let mut s = Store::new(&StoreConfig::new(capacity)).expect("store");
    for c in 0..4 {
        s.connect(c);
    }
    s
}

fn req(s: &mut Store, rec: &mut Rec, client: ClientId, r: Request) -> Reply {
    s.handle(client, r, Instant::now(), rec);
    rec.last_reply()
}

fn create(s: &mut Store, rec: &mut Rec, client: ClientId, id: ObjectId, size: u64) -> Reply {
    req(
        s,
        rec,
        client,
        Request::Create {
            object_id: id,
            evict_if_full: true,
            data_size: size,
            metadata_size: 0,
            device_num: 0,
        },
    )
}

fn seal(s: &mut Store, rec: &mut Rec, client: ClientId, id: ObjectId) -> Reply {
    req(
        s,
        rec,
        client,
        Request::Seal {
            object_id: id,
            digest: [7; 8],
        },
    )
}

fn put(s: &mut Store, rec: &mut Rec, client: ClientId, id: ObjectId, size: usize) {
    let r = req(
        s,
        rec,
        client,
        Request::CreateAndSeal {
            object_id: id,
            evict_if_full: true,
            data: vec![1; size],
            metadata: vec![],
            digest: [0; 8],
        },
    );
    assert_eq!(
        r,
        Reply::CreateAndSeal {
            error: PlasmaError::Ok
        }
    );
}

fn get(s: &mut Store, rec: &mut Rec, client: ClientId, ids: &[ObjectId], timeout_ms: i64) {
    s.handle(
        client,
        Request::Get {
            object_ids: ids.to_vec(),
            timeout_ms,
        },
        Instant::now(),
        rec,
    );
}

fn release(s: &mut Store, rec: &mut Rec, client: ClientId, id: ObjectId) {
    s.handle(
        client,
        Request::Release { object_id: id },
        Instant::now(),
        rec,
    );
}

fn ids_in_store(s: &mut Store, rec: &mut Rec) -> Vec<(ObjectId, i32)> {
    s.assert_consistent();
    let Reply::List { objects } = req(s, rec, 3, Request::List) else {
        panic!("list reply");
    };
    let mut v: Vec<_> = objects.iter().map(|o| (o.object_id, o.ref_count)).collect();
    v.sort();
    v
}

#[test]
fn create_replies_with_an_aligned_spec_and_sends_the_segment_once() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    let r = create(&mut s, &mut rec, 0, oid(1), 100);
    let Reply::Create {
        spec,
        error,
        store_fd,
        mmap_size,
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(error, PlasmaError::Ok);
    assert_eq!(spec.data_offset % 64, 0);
    assert_eq!(spec.metadata_offset, spec.data_offset + 100);
    assert_eq!((store_fd, spec.segment_index), (SEGMENT_ID, SEGMENT_ID));
    assert_eq!(mmap_size as u64, s.segment().mmap_size());
    s.handle(
        0,
        Request::Create {
            object_id: oid(2),
            evict_if_full: true,
            data_size: 1,
            metadata_size: 0,
            device_num: 0,
        },
        Instant::now(),
        &mut rec,
    );
    let events = rec.take();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Segment(..))),
        "sent twice: {events:?}"
    );
    // An existing id, in any state, is ObjectExists with a zero spec and no fd.
    let r = create(&mut s, &mut rec, 1, oid(1), 5);
    assert!(matches!(
        r,
        Reply::Create {
            error: PlasmaError::ObjectExists,
            store_fd: 0,
            ..
        }
    ));
}

#[test]
fn impossible_creates_are_out_of_memory() {
    let (mut s, mut rec) = (store(1000), Rec::default());
    let oom = |r: Reply| {
        matches!(
            r,
            Reply::Create {
                error: PlasmaError::OutOfMemory,
                ..
            }
        )
    };
    assert!(oom(create(&mut s, &mut rec, 0, oid(1), 1001)));
    assert!(oom(req(
        &mut s,
        &mut rec,
        0,
        Request::Create {
            object_id: oid(2),
            evict_if_full: true,
            data_size: u64::MAX,
            metadata_size: 2,
            device_num: 0,
        }
    )));
    assert!(oom(req(
        &mut s,
        &mut rec,
        0,
        Request::Create {
            object_id: oid(3),
            evict_if_full: true,
            data_size: 1,
            metadata_size: 0,
            device_num: 1,
        }
    )));
    // Exactly the capacity fits.
    assert!(matches!(
        create(&mut s, &mut rec, 0, oid(4), 1000),
        Reply::Create {
            error: PlasmaError::Ok,
            ..
        }
    ));
    assert_eq!(s.stats().allocated, 1000);
}

#[test]
fn seal_notifies_then_wakes_waiters_then_replies() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    get(&mut s, &mut rec, 1, &[oid(1), oid(1)], -1);
    assert!(rec.take().is_empty(), "the get waits");
    create(&mut s, &mut rec, 0, oid(1), 10);
    assert_eq!(
        s.stats().pending_gets,
        1,
        "an unsealed object does not satisfy a get"
    );
    s.handle(
        0,
        Request::Seal {
            object_id: oid(1),
            digest: [9; 8],
        },
        Instant::now(),
        &mut rec,
    );
    let ev = rec.take();
    assert!(matches!(&ev[0], Event::Notify(i) if i.len() == 1 && i[0].digest == Some([9; 8])));
    let Event::Reply(
        1,
        Reply::Get {
            objects, store_fds, ..
        },
    ) = &ev[1]
    else {
        panic!("{ev:?}")
    };
    assert!(objects.iter().all(|o| o.is_some_and(|o| o.data_size == 10)));
    assert_eq!(store_fds, &vec![SEGMENT_ID]);
    assert_eq!(ev[2], Event::Segment(1, SEGMENT_ID));
    assert!(matches!(
        &ev[3],
        Event::Reply(
            0,
            Reply::Seal {
                error: PlasmaError::Ok,
                ..
            }
        )
    ));
    // Duplicates in the get took one reference; the creator holds the other.
    assert_eq!(ids_in_store(&mut s, &mut rec), vec![(oid(1), 2)]);
}

#[test]
fn get_timeouts() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    put(&mut s, &mut rec, 0, oid(1), 5);
    get(&mut s, &mut rec, 1, &[oid(1), oid(2)], 0);
    let Reply::Get { objects, .. } = rec.last_reply() else {
        panic!()
    };
    assert!(objects[0].is_some() && objects[1].is_none());
    // A negative timeout other than -1 answers at once too.
    get(&mut s, &mut rec, 1, &[oid(2)], -5);
    assert!(matches!(rec.last_reply(), Reply::Get { .. }));

    let start = Instant::now();
    s.handle(
        1,
        Request::Get {
            object_ids: vec![oid(2)],
            timeout_ms: 50,
        },
        start,
        &mut rec,
    );
    assert!(rec.take().is_empty());
    assert_eq!(s.next_deadline(), Some(start + Duration::from_millis(50)));
    s.expire(start + Duration::from_millis(49), &mut rec);
    assert!(rec.take().is_empty());
    s.expire(start + Duration::from_millis(50), &mut rec);
    let Reply::Get {
        objects, store_fds, ..
    } = rec.last_reply()
    else {
        panic!()
    };
    assert_eq!((objects, store_fds), (vec![None], vec![]));
    assert_eq!(s.stats().pending_gets, 0);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn absurd_timeouts_and_huge_id_lists() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    // Millions of years away (or unrepresentable): no panic, and the get waits.
    get(&mut s, &mut rec, 1, &[oid(1)], i64::MAX);
    assert!(rec.take().is_empty());
    let far = Instant::now() + Duration::from_secs(1 << 40);
    assert!(s.next_deadline().is_none_or(|d| d > far));
    // Two million ids, all missing, each listed twice: answered promptly.
    let mut ids: Vec<ObjectId> = (0..1_000_000u32)
        .map(|i| {
            let mut b = [0u8; 20];
            b[..4].copy_from_slice(&i.to_le_bytes());
            ObjectId(b)
        })
        .collect();
    ids.extend(ids.clone());
    let start = Instant::now();
    get(&mut s, &mut rec, 2, &ids, 0);
    let Reply::Get { objects, .. } = rec.last_reply() else {
        panic!()
    };
    assert_eq!(objects.len(), 2_000_000);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    s.disconnect(1, &mut rec);
    assert_eq!(s.stats().pending_gets, 0);
}

#[test]
fn release_delete_and_deferred_delete() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    put(&mut s, &mut rec, 0, oid(1), 5);
    get(&mut s, &mut rec, 1, &[oid(1)], 0);
    rec.take();
    let r = req(
        &mut s,
        &mut rec,
        2,
        Request::Delete {
            object_ids: vec![oid(1), oid(9)],
        },
    );
    assert_eq!(
        r,
        Reply::Delete {
            object_ids: vec![oid(1), oid(9)],
            errors: vec![PlasmaError::ObjectInUse, PlasmaError::ObjectNotFound]
        }
    );
    assert_eq!(s.stats().objects, 1);
    release(&mut s, &mut rec, 1, oid(1));
    let ev = rec.take();
    assert!(matches!(&ev[..], [Event::Notify(i)] if i[0].is_deletion && i[0].object_id == oid(1)));
    assert_eq!(s.stats().objects, 0);
    assert_eq!(s.stats().allocated, 0);
    // Releasing again, or something never held, is ignored.
    release(&mut s, &mut rec, 1, oid(1));
    release(&mut s, &mut rec, 1, oid(5));
    assert!(rec.take().is_empty());
}

#[test]
fn a_deferred_delete_does_not_outlive_its_object() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    create(&mut s, &mut rec, 0, oid(1), 5);
    let r = req(
        &mut s,
        &mut rec,
        1,
        Request::Delete {
            object_ids: vec![oid(1)],
        },
    );
    assert!(
        matches!(r, Reply::Delete { errors, .. } if errors == vec![PlasmaError::ObjectNotSealed])
    );
    req(&mut s, &mut rec, 0, Request::Abort { object_id: oid(1) });
    assert_eq!(s.stats().objects, 0);
    // A new object with the same id is not deleted when its last reference goes.
    create(&mut s, &mut rec, 0, oid(1), 5);
    seal(&mut s, &mut rec, 0, oid(1));
    release(&mut s, &mut rec, 0, oid(1));
    assert_eq!(ids_in_store(&mut s, &mut rec), vec![(oid(1), 0)]);
}

#[test]
fn abort_only_by_the_creator_of_an_unsealed_object() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    create(&mut s, &mut rec, 0, oid(1), 5);
    let r = req(&mut s, &mut rec, 1, Request::Abort { object_id: oid(1) });
    assert_eq!(r, Reply::Abort { object_id: oid(1) });
    assert_eq!(s.stats().objects, 1, "a non-creator cannot abort");
    req(&mut s, &mut rec, 1, Request::Abort { object_id: oid(7) });
    seal(&mut s, &mut rec, 0, oid(1));
    req(&mut s, &mut rec, 0, Request::Abort { object_id: oid(1) });
    assert_eq!(s.stats().objects, 1, "a sealed object cannot be aborted");
    create(&mut s, &mut rec, 0, oid(2), 5);
    req(&mut s, &mut rec, 0, Request::Abort { object_id: oid(2) });
    assert_eq!(s.stats().objects, 1);
    assert_eq!(s.stats().allocated, 5);
}

#[test]
fn seal_of_unknown_or_sealed_objects() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    let r = seal(&mut s, &mut rec, 0, oid(1));
    assert_eq!(
        r,
        Reply::Seal {
            object_id: oid(1),
            error: PlasmaError::ObjectNotFound
        }
    );
    create(&mut s, &mut rec, 0, oid(1), 5);
    seal(&mut s, &mut rec, 0, oid(1));
    let r = seal(&mut s, &mut rec, 0, oid(1));
    assert_eq!(
        r,
        Reply::Seal {
            object_id: oid(1),
            error: PlasmaError::Ok
        }
    );
    // The creator's release of an unsealed object is ignored: the object stays pinned.
    create(&mut s, &mut rec, 0, oid(2), 5);
    release(&mut s, &mut rec, 0, oid(2));
    assert!(ids_in_store(&mut s, &mut rec).contains(&(oid(2), 1)));
}

#[test]
fn disconnect_aborts_unsealed_drops_gets_and_references() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    let base = s.stats();
    create(&mut s, &mut rec, 0, oid(1), 100);
    create(&mut s, &mut rec, 0, oid(2), 100);
    seal(&mut s, &mut rec, 0, oid(2));
    get(&mut s, &mut rec, 0, &[oid(3)], -1);
    get(&mut s, &mut rec, 0, &[oid(4)], 1000);
    get(&mut s, &mut rec, 1, &[oid(1)], -1);
    s.disconnect(0, &mut rec);
    assert_eq!(
        s.stats().pending_gets,
        1,
        "only the other client's get is left"
    );
    // The sealed object outlives its creator, unreferenced; the unsealed one is gone.
    assert_eq!(ids_in_store(&mut s, &mut rec), vec![(oid(2), 0)]);
    // The other client's waiter still gets the object if someone creates it later.
    create(&mut s, &mut rec, 2, oid(1), 1);
    seal(&mut s, &mut rec, 2, oid(1));
    s.disconnect(1, &mut rec);
    s.disconnect(2, &mut rec);
    req(
        &mut s,
        &mut rec,
        3,
        Request::Delete {
            object_ids: vec![oid(1), oid(2)],
        },
    );
    let after = s.stats();
    assert_eq!(
        (after.allocated, after.references, after.pending_gets),
        (base.allocated, 0, 0)
    );
    assert_eq!(after.objects, 0);
}

#[test]
fn eviction_takes_the_least_recently_released_first() {
    let (mut s, mut rec) = (store(1000), Rec::default());
    for i in 1..=9 {
        put(&mut s, &mut rec, 0, oid(i), 100);
    }
    // Touch object 1: get and release makes it the most recently used.
    get(&mut s, &mut rec, 1, &[oid(1)], 0);
    release(&mut s, &mut rec, 1, oid(1));
    rec.take();
    // 900 used; 150 more needs 50, and the policy frees at least a fifth (200).
    let r = create(&mut s, &mut rec, 0, oid(20), 150);
    assert!(matches!(
        r,
        Reply::Create {
            error: PlasmaError::Ok,
            ..
        }
    ));
    let ids: Vec<ObjectId> = ids_in_store(&mut s, &mut rec).iter().map(|x| x.0).collect();
    assert!(!ids.contains(&oid(2)) && !ids.contains(&oid(3)), "{ids:?}");
    assert!(ids.contains(&oid(1)) && ids.contains(&oid(4)));
    // Evict: whole objects from the old end until the request is covered.
    let r = req(&mut s, &mut rec, 0, Request::Evict { num_bytes: 150 });
    assert_eq!(r, Reply::Evict { num_bytes: 200 });
    // Left: 6, 7, 8, 9, 1. RefreshLru moves 6 to the young end (5 is gone: ignored), so 7
    // is the oldest now.
    req(
        &mut s,
        &mut rec,
        0,
        Request::RefreshLru {
            object_ids: vec![oid(6), oid(5)],
        },
    );
    rec.take();
    req(&mut s, &mut rec, 0, Request::Evict { num_bytes: 1 });
    let ids: Vec<ObjectId> = ids_in_store(&mut s, &mut rec).iter().map(|x| x.0).collect();
    assert!(
        !ids.contains(&oid(7)) && ids.contains(&oid(6)) && !ids.contains(&oid(5)),
        "{ids:?}"
    );
    // Referenced objects are never evicted: nothing else can go, so this fails.
    let r = create(&mut s, &mut rec, 0, oid(30), 1000);
    assert!(matches!(
        r,
        Reply::Create {
            error: PlasmaError::OutOfMemory,
            ..
        }
    ));
}

#[test]
fn batch_is_all_or_nothing_with_one_notification() {
    let (mut s, mut rec) = (store(10_000), Rec::default());
    put(&mut s, &mut rec, 0, oid(2), 1);
    let obj = |n| BatchObject {
        object_id: oid(n),
        data: vec![n; 3],
        metadata: vec![1],
        digest: [n; 8],
    };
    let r = req(
        &mut s,
        &mut rec,
        0,
        Request::CreateAndSealBatch {
            evict_if_full: true,
            objects: vec![obj(1), obj(2)],
        },
    );
    assert_eq!(
        r,
        Reply::CreateAndSealBatch {
            error: PlasmaError::ObjectExists
        }
    );
    assert_eq!(s.stats().objects, 1);
    s.handle(
        0,
        Request::CreateAndSealBatch {
            evict_if_full: true,
            objects: vec![obj(3), obj(4)],
        },
        Instant::now(),
        &mut rec,
    );
    let ev = rec.take();
    assert!(matches!(&ev[0], Event::Notify(i) if i.len() == 2));
    let mut data = [0u8; 4];
    let Reply::Get { objects, .. } = ({
        get(&mut s, &mut rec, 1, &[oid(4)], 0);
        rec.last_reply()
    }) else {
        panic!()
    };
    let spec = objects[0].expect("sealed");
    s.segment().read(spec.data_offset, &mut data).expect("read");
    assert_eq!(data, [4, 4, 4, 1]);
}

#[test]
fn set_options_and_debug_string() {
    let (mut s, mut rec) = (store(1000), Rec::default());
    let r = req(
        &mut s,
        &mut rec,
        0,
        Request::SetOptions {
            client_name: b"c0".to_vec(),
            output_memory_quota: 500,
        },
    );
    assert_eq!(
        r,
        Reply::SetOptions {
            error: PlasmaError::Ok
        }
    );
    let r = req(
        &mut s,
        &mut rec,
        0,
        Request::SetOptions {
            client_name: b"c0".to_vec(),
            output_memory_quota: 10,
        },
    );
    assert_eq!(
        r,
        Reply::SetOptions {
            error: PlasmaError::OutOfMemory
        },
        "a quota is set once"
    );
    let r = req(
        &mut s,
        &mut rec,
        1,
        Request::SetOptions {
            client_name: b"c1".to_vec(),
            output_memory_quota: 201,
        },
    );
    assert_eq!(
        r,
        Reply::SetOptions {
            error: PlasmaError::OutOfMemory
        },
        "at most 70 % in quotas"
    );
    let Reply::DebugString { debug_string } = req(&mut s, &mut rec, 2, Request::GetDebugString)
    else {
        panic!()
    };
    assert!(
        debug_string.starts_with("num clients with quota: 1\n"),
        "{debug_string}"
    );
    assert!(
        debug_string.contains("(global lru) capacity: 500\n"),
        "{debug_string}"
    );
    assert!(
        debug_string.contains("(c0) capacity: 500\n"),
        "{debug_string}"
    );
    assert!(!debug_string.ends_with('\n'));
}

#[test]
fn format_g_matches_cpp_streams() {
    for (v, s) in [
        (0.0, "0"),
        (90.0, "90"),
        (10.00150, "10.0015"),
        (0.001524, "0.001524"),
        (41.94314, "41.9431"),
        (1e-05, "1e-05"),
        (123456789.0, "1.23457e+08"),
    ] {
        assert_eq!(format_g(v), s);
    }
}

#[cfg(test)]
impl Store {
    /// Recomputes every incrementally kept figure and compares.
    fn assert_consistent(&self) {
        let pinned: u64 = self
            .objects
            .values()
            .filter(|o| o.ref_count > 0)
            .map(Object::size)
            .sum();
        assert_eq!(self.pinned_bytes, pinned, "pinned bytes");
        let owned_pinned = self
            .objects
            .values()
            .filter(|o| o.ref_count > 0 && o.owner.is_some())
            .count();
        assert_eq!(self.owned_pinned, owned_pinned, "owned pinned");
        let created = self
            .objects
            .values()
            .filter(|o| o.state == State::Created)
            .count();
        assert_eq!(self.created_objects, created, "created objects");
        let allocated: u64 = self
            .objects
            .values()
            .filter(|o| o.state != State::Evicted && o.segment == SEGMENT_ID)
            .map(Object::size)
            .sum();
        assert_eq!(self.arena.allocated_bytes(), allocated, "allocated");
        let refs: usize = self.clients.values().map(|c| c.refs.len()).sum();
        assert_eq!(self.stats().references, refs as u64, "references");
        let lru_bytes: u64 = self
            .lru
            .order
            .values()
            .filter_map(|&i| self.objects.id_at(i))
            .filter_map(|id| self.objects.get(&id))
            .map(Object::size)
            .sum();
        assert_eq!(self.lru.bytes, lru_bytes, "global lru bytes");
    }
}

fn waiting_store(capacity: u64, wait_ms: u64) -> Store {
    let mut config = StoreConfig::new(capacity);
    config.create_wait = Duration::from_millis(wait_ms);
    let mut s = Store::new(&config).expect("store");
    for c in 0..4 {
        s.connect(c);
    }
    s
}

fn create_req(id: ObjectId, size: u64) -> Request {
    Request::Create {
        object_id: id,
        evict_if_full: true,
        data_size: size,
        metadata_size: 0,
        device_num: 0,
    }
}

/// The create replies in `events`, as (client, object id, error).
fn create_replies(events: &[Event]) -> Vec<(ClientId, ObjectId, PlasmaError)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Reply(
                c,
                Reply::Create {
                    object_id, error, ..
                },
            ) => Some((*c, *object_id, *error)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_create_that_does_not_fit_waits_for_a_release_in_arrival_order() {
    let mut s = waiting_store(1000, 60_000);
    let mut rec = Rec::default();
    let now = Instant::now();
    // Client 0 holds 800 of 1000 bytes.
    assert!(matches!(
        create(&mut s, &mut rec, 0, oid(1), 800),
        Reply::Create {
            error: PlasmaError::Ok,
            ..
        }
    ));
    seal(&mut s, &mut rec, 0, oid(1));
    // 600 bytes do not fit: client 1 waits; then 100 bytes (which would fit) queue behind it.
    s.handle(1, create_req(oid(2), 600), now, &mut rec);
    s.handle(2, create_req(oid(3), 100), now, &mut rec);
    assert_eq!(create_replies(&rec.take()), vec![]);
    // Other requests go on meanwhile, also those of the waiting clients.
    assert!(matches!(
        req(&mut s, &mut rec, 2, Request::Contains { object_id: oid(1) }),
        Reply::Contains {
            has_object: true,
            ..
        }
    ));
    assert!(s.next_deadline().is_some());
    // The release makes object 1 evictable: both waiting creates are served, in order.
    release(&mut s, &mut rec, 0, oid(1));
    let replies = create_replies(&rec.take());
    assert_eq!(
        replies,
        vec![(1, oid(2), PlasmaError::Ok), (2, oid(3), PlasmaError::Ok)]
    );
    assert_eq!(s.stats().objects, 2);
    s.assert_consistent();
    // Nothing is left to expire.
    s.expire(now + Duration::from_secs(120), &mut rec);
    assert_eq!(create_replies(&rec.take()), vec![]);
}

#[test]
fn a_waiting_create_fails_after_its_wait_and_unblocks_the_queue() {
    let mut s = waiting_store(1000, 500);
    let mut rec = Rec::default();
    let now = Instant::now();
    create(&mut s, &mut rec, 0, oid(1), 800);
    s.handle(1, create_req(oid(2), 600), now, &mut rec);
    s.handle(
        2,
        create_req(oid(3), 100),
        now + Duration::from_millis(100),
        &mut rec,
    );
    assert_eq!(create_replies(&rec.take()), vec![]);
    let deadline = s.next_deadline().expect("a deadline");
    assert_eq!(deadline, now + Duration::from_millis(500));
    s.expire(deadline - Duration::from_millis(1), &mut rec);
    assert_eq!(create_replies(&rec.take()), vec![]);
    // The head gives up; the small create behind it now fits and is served.
    s.expire(deadline, &mut rec);
    assert_eq!(
        create_replies(&rec.take()),
        vec![
            (1, oid(2), PlasmaError::OutOfMemory),
            (2, oid(3), PlasmaError::Ok)
        ]
    );
    assert_eq!(s.next_deadline(), None);
    s.assert_consistent();
}

#[test]
fn a_client_that_disconnects_while_waiting_is_forgotten() {
    let mut s = waiting_store(1000, 60_000);
    let mut rec = Rec::default();
    let now = Instant::now();
    create(&mut s, &mut rec, 0, oid(1), 800);
    s.handle(1, create_req(oid(2), 600), now, &mut rec);
    s.handle(2, create_req(oid(3), 100), now, &mut rec);
    rec.take();
    // The head's client goes: the create behind it is served at once.
    s.disconnect(1, &mut rec);
    assert_eq!(
        create_replies(&rec.take()),
        vec![(2, oid(3), PlasmaError::Ok)]
    );
    // The creator of object 1 goes too: its unsealed object is aborted, nothing waits.
    s.disconnect(0, &mut rec);
    assert_eq!(create_replies(&rec.take()), vec![]);
    assert_eq!(s.next_deadline(), None);
    assert_eq!(s.stats().objects, 1);
    s.assert_consistent();
}

#[test]
fn without_a_wait_a_full_store_answers_at_once() {
    let mut s = store(1000);
    let mut rec = Rec::default();
    create(&mut s, &mut rec, 0, oid(1), 800);
    assert!(matches!(
        create(&mut s, &mut rec, 1, oid(2), 600),
        Reply::Create {
            error: PlasmaError::OutOfMemory,
            ..
        }
    ));
    // Larger than the capacity: never waits, even with a wait configured.
    let mut s = waiting_store(1000, 60_000);
    assert!(matches!(
        create(&mut s, &mut rec, 1, oid(2), 2000),
        Reply::Create {
            error: PlasmaError::OutOfMemory,
            ..
        }
    ));
    assert_eq!(s.next_deadline(), None);
}

fn fallback_store(capacity: u64, dir: &std::path::Path, limit: Option<u64>) -> Store {
    let mut config = StoreConfig::new(capacity);
    config.fallback_dir = Some(dir.to_path_buf());
    config.fallback_limit = limit;
    let mut s = Store::new(&config).expect("store");
    for c in 0..4 {
        s.connect(c);
    }
    s
}

#[test]
fn objects_shared_memory_cannot_hold_go_to_a_fallback_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = fallback_store(1000, dir.path(), Some(3 * 4096));
    let mut rec = Rec::default();
    // Larger than the capacity: a fallback segment, sent once, with its own mmap_size.
    s.handle(0, create_req(oid(1), 5000), Instant::now(), &mut rec);
    let events = rec.take();
    let Some(Event::Reply(
        0,
        Reply::Create {
            spec,
            store_fd,
            mmap_size,
            error: PlasmaError::Ok,
            ..
        },
    )) = events.first().cloned()
    else {
        panic!("create in the fallback tier: {events:?}");
    };
    assert_ne!(store_fd, SEGMENT_ID);
    assert_eq!(spec.segment_index, store_fd);
    assert_eq!(spec.data_offset % 4096, 0);
    assert_eq!(
        mmap_size as u64,
        s.segment_by_id(store_fd).expect("segment").mmap_size()
    );
    assert!(s.segment_fd(store_fd).is_some());
    assert_eq!(events[1..], [Event::Segment(0, store_fd)]);
    // Its disk blocks (two pages) are reserved before the reply.
    let blocks = |s: &Store| {
        let fd = s.segment_fd(store_fd).expect("fd");
        nix::sys::stat::fstat(fd).expect("fstat").st_blocks * 512
    };
    assert!(blocks(&s) >= 8192);
    seal(&mut s, &mut rec, 0, oid(1));
    // Over the limit (two pages used of three): PlasmaStoreFull, nothing reserved.
    assert!(matches!(
        create(&mut s, &mut rec, 1, oid(2), 5000),
        Reply::Create {
            error: PlasmaError::OutOfMemory,
            ..
        }
    ));
    // A get of a shared-memory and a fallback object names both segments, in order.
    put(&mut s, &mut rec, 1, oid(3), 100);
    rec.take();
    get(&mut s, &mut rec, 2, &[oid(3), oid(1), oid(3)], 0);
    let events = rec.take();
    let Some(Event::Reply(
        2,
        Reply::Get {
            store_fds,
            mmap_sizes,
            ..
        },
    )) = events.first()
    else {
        panic!("get reply first");
    };
    assert_eq!(store_fds, &vec![SEGMENT_ID, store_fd]);
    assert_eq!(mmap_sizes[1], mmap_size);
    assert_eq!(
        events[1..],
        [Event::Segment(2, SEGMENT_ID), Event::Segment(2, store_fd)]
    );
    // Deleting gives the space back: the next fallback object reuses the segment.
    release(&mut s, &mut rec, 0, oid(1));
    release(&mut s, &mut rec, 2, oid(1));
    req(
        &mut s,
        &mut rec,
        0,
        Request::Delete {
            object_ids: vec![oid(1)],
        },
    );
    assert_eq!(s.fallback.as_ref().map(|f| f.allocated()), Some(0));
    // The hole is punched: the file keeps its size but holds no blocks.
    assert_eq!(blocks(&s), 0);
    let Reply::Create {
        store_fd: again,
        error: PlasmaError::Ok,
        ..
    } = create(&mut s, &mut rec, 0, oid(4), 9000)
    else {
        panic!("second fallback create");
    };
    assert_eq!(again, store_fd);
    s.assert_consistent();
    // The directory is empty all along: the files are unlinked at once.
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[test]
fn fallback_objects_are_evicted_spilled_and_restored_like_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(1000);
    config.fallback_dir = Some(dir.path().to_path_buf());
    config.external_store = Some("hashtable://fallback-test".into());
    let mut s = Store::new(&config).expect("store");
    s.connect(0);
    let mut rec = Rec::default();
    // A create-and-seal larger than shared memory: written into the fallback tier.
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = req(
        &mut s,
        &mut rec,
        0,
        Request::CreateAndSeal {
            object_id: oid(1),
            evict_if_full: true,
            data: data.clone(),
            metadata: b"m".to_vec(),
            digest: [3; 8],
        },
    );
    assert_eq!(
        r,
        Reply::CreateAndSeal {
            error: PlasmaError::Ok
        }
    );
    let fallback_bytes = |s: &Store| s.fallback.as_ref().map(|f| f.allocated());
    assert_eq!(fallback_bytes(&s), Some(8192));
    // Unheld, so in the LRU list: an eviction spills it and frees its fallback blocks.
    let r = req(&mut s, &mut rec, 0, Request::Evict { num_bytes: 1 });
    assert_eq!(r, Reply::Evict { num_bytes: 5001 });
    assert_eq!(fallback_bytes(&s), Some(0));
    // A get restores it (it cannot fit in shared memory: into the fallback tier again).
    get(&mut s, &mut rec, 0, &[oid(1)], 0);
    let Reply::Get { objects, .. } = rec.last_reply() else {
        panic!("get reply");
    };
    let spec = objects[0].expect("restored");
    assert_ne!(spec.segment_index, SEGMENT_ID);
    let seg = s.segment_by_id(spec.segment_index).expect("segment");
    let mut back = vec![0u8; 5001];
    seg.read(spec.data_offset, &mut back).expect("read");
    assert_eq!(&back[..5000], &data[..]);
    assert_eq!(back[5000], b'm');
    s.assert_consistent();
}

#[test]
fn waiting_create_and_seals_hold_at_most_the_capacity_per_client() {
    let mut s = waiting_store(1000, 60_000);
    let mut rec = Rec::default();
    let now = Instant::now();
    create(&mut s, &mut rec, 0, oid(1), 800);
    let cs = |id, n| Request::CreateAndSeal {
        object_id: id,
        evict_if_full: true,
        data: vec![5; n],
        metadata: vec![],
        digest: [0; 8],
    };
    // 600 bytes wait; another 600 would park 1200 bytes of payload: refused at once.
    s.handle(1, cs(oid(2), 600), now, &mut rec);
    assert_eq!(rec.take(), vec![]);
    s.handle(1, cs(oid(3), 600), now, &mut rec);
    assert_eq!(
        rec.take(),
        vec![Event::Reply(
            1,
            Reply::CreateAndSeal {
                error: PlasmaError::OutOfMemory
            }
        )]
    );
    // The creator aborts: the waiting one is served.
    s.handle(0, Request::Abort { object_id: oid(1) }, now, &mut rec);
    s.handle(1, cs(oid(4), 100), now, &mut rec);
    let replies: Vec<_> = rec
        .take()
        .into_iter()
        .filter(|e| matches!(e, Event::Reply(1, _)))
        .collect();
    assert_eq!(
        replies,
        vec![
            Event::Reply(
                1,
                Reply::CreateAndSeal {
                    error: PlasmaError::Ok
                }
            ),
            Event::Reply(
                1,
                Reply::CreateAndSeal {
                    error: PlasmaError::Ok
                }
            )
        ]
    );
    s.assert_consistent();
}

#[test]
fn fallback_objects_are_not_evicted_to_make_room_in_shared_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = fallback_store(10_000, dir.path(), None);
    let mut rec = Rec::default();
    // oid(1): larger than -m, lives in the fallback tier, sealed and unheld (in the LRU).
    put(&mut s, &mut rec, 0, oid(1), 20_000);
    assert_eq!(s.fallback_usage().0, 20_480);
    // oid(2): fills shared memory and stays held by client 1.
    put(&mut s, &mut rec, 1, oid(2), 9_000);
    get(&mut s, &mut rec, 1, &[oid(2)], 0);
    rec.take();
    // A create of 5000 bytes (evict_if_full) by client 2 cannot fit in shared memory either way.
    let r = create(&mut s, &mut rec, 2, oid(3), 5_000);
    assert!(matches!(r, Reply::Create { .. }), "{r:?}");
    let ids: Vec<ObjectId> = ids_in_store(&mut s, &mut rec)
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert!(
        ids.contains(&oid(1)),
        "the fallback object was deleted, freeing no shared memory"
    );
}

#[test]
fn a_recovered_object_restored_into_the_fallback_tier_is_checked_in_its_own_segment() {
    let pdir = tempfile::tempdir().expect("tempdir");
    let fdir = tempfile::tempdir().expect("tempdir");
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 251) as u8).collect();
    let digest = crate::digest::object_digest(&data, &[]);
    {
        let mut config = StoreConfig::new(10_000);
        config.persist = Some(crate::persist::PersistConfig::new(pdir.path()));
        let mut s = Store::new(&config).expect("store");
        s.connect(0);
        let mut rec = Rec::default();
        let r = req(
            &mut s,
            &mut rec,
            0,
            Request::CreateAndSeal {
                object_id: oid(1),
                evict_if_full: true,
                data: data.clone(),
                metadata: vec![],
                digest,
            },
        );
        assert_eq!(
            r,
            Reply::CreateAndSeal {
                error: PlasmaError::Ok
            }
        );
    }
    let mut config = StoreConfig::new(10_000);
    config.persist = Some(crate::persist::PersistConfig::new(pdir.path()));
    config.fallback_dir = Some(fdir.path().to_path_buf());
    config.external_store = Some("hashtable://review-recovered".into());
    let mut s = Store::new(&config).expect("store");
    for c in 0..4 {
        s.connect(c);
    }
    let mut rec = Rec::default();
    // The recovered object (not yet verified) is evicted to the external store...
    let r = req(&mut s, &mut rec, 0, Request::Evict { num_bytes: 1 });
    assert_eq!(r, Reply::Evict { num_bytes: 5000 });
    // ...shared memory fills with a held object...
    put(&mut s, &mut rec, 1, oid(2), 9_000);
    get(&mut s, &mut rec, 1, &[oid(2)], 0);
    rec.take();
    // ...so a get restores it into the fallback tier. Its bytes are intact there.
    get(&mut s, &mut rec, 0, &[oid(1)], 0);
    let Reply::Get { objects, .. } = rec.last_reply() else {
        panic!("get reply")
    };
    assert!(
        objects[0].is_some(),
        "the restored, intact object was dropped by the digest check"
    );
}

#[test]
fn deadlines_of_clients_that_went_away_do_not_pile_up() {
    let mut s = store(10_000);
    let mut rec = Rec::default();
    s.connect(0);
    // One live get with the earliest deadline keeps the heap's top alive...
    get(&mut s, &mut rec, 0, &[oid(200)], 60_000);
    // ...while clients park gets with later deadlines and go away.
    for c in 1..=50 {
        s.connect(c);
        for i in 0..20u8 {
            get(&mut s, &mut rec, c, &[oid(i)], 3_600_000);
        }
        s.disconnect(c, &mut rec);
        let _ = s.next_deadline();
    }
    assert_eq!(s.gets.len(), 1);
    assert!(
        s.deadlines.len() <= 2 * s.gets.len() + 64 + 20,
        "{} deadlines kept for one live get",
        s.deadlines.len()
    );
    assert!(s.next_deadline().is_some(), "the live get's deadline stays");
}
