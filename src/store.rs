//! The object store proper: the object table, the lifecycle of objects, references, pending
//! gets and their deadlines, the eviction and quota policy, the external store, and the memory
//! objects live in. No sockets here.
//!
//! The [`crate::server`] event loop turns each decoded request into one call of
//! [`Store::handle`], and everything the store has to say goes out through a [`Sink`]: replies
//! (each optionally followed by segment fds) and notifications. That keeps the store a plain,
//! single-threaded state machine which unit tests drive directly.
//!
//! Semantics follow the original Plasma store (see `PROTOCOL.md` §4–§9), except where the
//! original crashed, leaked or hung: those cases get a log line and a harmless answer instead.
//!
//! Eviction policy, as the original's quota-aware LRU: a sealed object that no client holds is
//! in exactly one LRU list. Objects created by a client with a quota (SetOptions) are owned by
//! it and sit in that client's own list, from creation on, whether held or not; only that
//! client's creates evict them (or demote them to the global list if held). All other
//! unreferenced sealed objects are in the global list, ordered by when they last became
//! unreferenced, and creates that do not fit evict from its old end.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};

use crate::arena::Arena;
use crate::external::ExternalStore;
use crate::persist::{Persist, PersistConfig, SealRecord};
use crate::protocol::{
    BatchObject, Digest, ObjectId, ObjectInfo, ObjectSpec, PlasmaError, Reply, Request,
};
use crate::shm::{SEGMENT_BASE, Segment, SegmentOptions};

/// A connected client, as the server names it. The server guarantees that an id is not reused
/// before [`Store::disconnect`] has run for it.
pub type ClientId = usize;

/// The id of the one shared-memory segment. Segment ids are never reused.
pub const SEGMENT_ID: i32 = 1;

/// The name the original gives a client that never called SetOptions.
const ANONYMOUS: &str = "anonymous_client";

/// Quotas together may leave no less than this share of the capacity to the global LRU.
const GLOBAL_RESERVE: f64 = 0.3;

/// Where the store's output goes.
pub trait Sink {
    /// Queue `reply` for `client`.
    fn reply(&mut self, client: ClientId, reply: &Reply);
    /// Queue the fd of `segment` for `client`, right after the replies queued so far.
    fn send_segment(&mut self, client: ClientId, segment: i32);
    /// Push one notification (one message holding `infos`) to every subscriber.
    fn notify(&mut self, infos: &[ObjectInfo]);
}

/// Store configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The `-m` capacity: the most bytes (data + metadata) that live objects may take.
    pub capacity: u64,
    /// Where and how the segment is created.
    pub segment: SegmentOptions,
    /// Most get requests one client may have waiting at once.
    pub max_pending_gets: usize,
    /// The `-e` endpoint: `hashtable://NAME` or `file:///DIR`.
    pub external_store: Option<String>,
    /// Most bytes the `file://` spill tier may write.
    pub spill_limit: Option<u64>,
    /// `--persist DIR`: keep the segment and a record of its sealed objects in a directory.
    pub persist: Option<PersistConfig>,
}

impl StoreConfig {
    /// A configuration with default limits.
    pub fn new(capacity: u64) -> StoreConfig {
        StoreConfig {
            capacity,
            segment: SegmentOptions::default(),
            max_pending_gets: 1024,
            external_store: None,
            spill_limit: None,
            persist: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Allocated, being written by its creator.
    Created,
    /// Immutable and visible.
    Sealed,
    /// Sealed, but its bytes were moved to the external store; restored on get.
    Evicted,
}

/// One entry of the object table.
#[derive(Debug)]
struct Object {
    state: State,
    /// Where the bytes are in the segment (meaningless while evicted).
    offset: u64,
    data_size: u64,
    metadata_size: u64,
    /// Unix seconds.
    create_time: i64,
    /// Seconds from create to seal; −1 while unsealed.
    construct_duration: i32,
    digest: Option<Digest>,
    /// Number of clients holding a reference (each at most one).
    ref_count: u32,
    /// The quota client whose list this object is in, if any.
    owner: Option<u32>,
    /// Position in its LRU list (the owner's, or the global one).
    lru_seq: Option<u64>,
    /// Recovered by `--persist` after a restart, its digest not checked yet (checked on the
    /// first get).
    unverified: bool,
}

impl Object {
    fn size(&self) -> u64 {
        self.data_size + self.metadata_size
    }

    /// Held by a client, or still being written: never evicted.
    fn pinned(&self) -> bool {
        self.ref_count > 0 || self.state == State::Created
    }

    fn spec(&self) -> ObjectSpec {
        ObjectSpec {
            segment_index: SEGMENT_ID,
            data_offset: self.offset,
            data_size: self.data_size,
            metadata_offset: self.offset + self.data_size,
            metadata_size: self.metadata_size,
            device_num: 0,
        }
    }

    fn info(&self, object_id: ObjectId) -> ObjectInfo {
        ObjectInfo {
            ref_count: i32::try_from(self.ref_count).unwrap_or(i32::MAX),
            create_time: self.create_time,
            construct_duration: i64::from(self.construct_duration),
            ..seal_info(object_id, self)
        }
    }
}

/// The object table: objects in a slab, found through a map from id to slab index. Compared
/// with one map holding the objects, the hash table's scattered buckets are small (an id and
/// an index), and the objects sit densely in the slab, so memory use follows the number of
/// objects rather than the hash table's doubled capacity.
#[derive(Debug, Default)]
struct ObjectTable {
    index: HashMap<ObjectId, usize>,
    slab: slab::Slab<(ObjectId, Object)>,
}

impl ObjectTable {
    fn get(&self, id: &ObjectId) -> Option<&Object> {
        self.index
            .get(id)
            .and_then(|&i| self.slab.get(i))
            .map(|(_, o)| o)
    }

    fn get_mut(&mut self, id: &ObjectId) -> Option<&mut Object> {
        self.index
            .get(id)
            .and_then(|&i| self.slab.get_mut(i))
            .map(|(_, o)| o)
    }

    fn contains_key(&self, id: &ObjectId) -> bool {
        self.index.contains_key(id)
    }

    /// The slab index of an object (stable while the object exists).
    fn index_of(&self, id: &ObjectId) -> Option<u32> {
        self.index.get(id).and_then(|&i| u32::try_from(i).ok())
    }

    /// The id of the object at a slab index.
    fn id_at(&self, index: u32) -> Option<ObjectId> {
        self.slab.get(index as usize).map(|(id, _)| *id)
    }

    /// Enters an object; the caller has checked that the id is new.
    fn insert(&mut self, id: ObjectId, object: Object) {
        let i = self.slab.insert((id, object));
        if let Some(old) = self.index.insert(id, i) {
            self.slab.try_remove(old);
        }
    }

    fn remove(&mut self, id: &ObjectId) -> Option<Object> {
        let i = self.index.remove(id)?;
        self.slab.try_remove(i).map(|(_, o)| o)
    }

    fn len(&self) -> usize {
        self.slab.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&ObjectId, &Object)> {
        self.slab.iter().map(|(_, (id, o))| (id, o))
    }

    fn values(&self) -> impl Iterator<Item = &Object> {
        self.slab.iter().map(|(_, (_, o))| o)
    }
}

/// One LRU list: ids by the time they entered, oldest first.
#[derive(Debug, Default)]
struct Lru {
    /// LRU position → the object's index in the [`ObjectTable`] (4 bytes instead of a
    /// 20-byte id: with a million objects the lists are a large part of the store's memory).
    order: BTreeMap<u64, u32>,
    /// Sum of the sizes of the objects in the list.
    bytes: u64,
    /// Objects chosen for eviction from this list so far.
    evictions: u64,
    /// Their bytes.
    bytes_evicted: u64,
}

/// A client's quota and its own LRU list.
#[derive(Debug)]
struct Quota {
    limit: u64,
    lru: Lru,
}

/// What the store keeps per client.
#[derive(Debug, Default)]
struct ClientState {
    /// Objects this client holds a reference to (a set: at most one reference per object).
    refs: HashSet<ObjectId>,
    /// Its get requests that are still waiting.
    gets: HashSet<u64>,
    /// Whether the segment fd went to this client already.
    segment_sent: bool,
    /// Name from SetOptions.
    name: Option<String>,
    /// Quota from SetOptions.
    quota: Option<Quota>,
}

/// A get request that is waiting for objects to be sealed.
#[derive(Debug)]
struct PendingGet {
    client: ClientId,
    object_ids: Vec<ObjectId>,
    /// One entry per requested id (duplicates included); `None` until available.
    specs: Vec<Option<ObjectSpec>>,
    /// Distinct ids still missing.
    remaining: usize,
}

/// Counters of the store, for the debug report and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Objects in the table (any state).
    pub objects: usize,
    /// Bytes (data + metadata) of objects in memory.
    pub allocated: u64,
    /// Sum over objects of the number of clients referencing them.
    pub references: u64,
    /// Gets waiting.
    pub pending_gets: usize,
}

/// The object store.
pub struct Store {
    capacity: u64,
    max_pending_gets: usize,
    segment: Segment,
    /// The segment's allocator; its `allocated_bytes()` (data + metadata of the objects in
    /// memory) is what `capacity` bounds.
    arena: Arena,
    objects: ObjectTable,
    clients: HashMap<ClientId, ClientState>,
    gets: HashMap<u64, PendingGet>,
    next_get: u64,
    /// Object id → gets waiting for it (each get listed once per distinct id).
    waiters: HashMap<ObjectId, Vec<u64>>,
    /// Deadlines of gets with a timeout; entries of gets already answered are skipped.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The global LRU list.
    lru: Lru,
    /// Source of LRU positions (shared by all lists).
    next_lru: u64,
    /// Ids whose deletion waits for their last reference to go.
    deferred_deletes: HashSet<ObjectId>,
    external: Option<ExternalStore>,
    /// Bytes of objects some client holds.
    pinned_bytes: u64,
    /// Quota-owned objects some client holds.
    owned_pinned: usize,
    /// The record of sealed objects kept with `--persist`.
    persist: Option<Persist>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Room for alignment padding beyond the accounted capacity: every object starts on a
/// 64-byte boundary, so many small objects take more segment space than their sizes.
fn segment_len(capacity: u64) -> u64 {
    capacity
        .saturating_add(capacity / 8)
        .saturating_add(1 << 20)
}

impl Store {
    /// Creates the store, its shared-memory segment and its external store.
    pub fn new(config: &StoreConfig) -> io::Result<Store> {
        if config.capacity == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the capacity must be at least 1 byte",
            ));
        }
        let external = config
            .external_store
            .as_deref()
            .map(|e| ExternalStore::open(e, config.spill_limit))
            .transpose()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (segment, arena, persist, recovered) = match &config.persist {
            None => {
                let segment =
                    Segment::create(SEGMENT_ID, segment_len(config.capacity), &config.segment)?;
                let arena = Arena::new(SEGMENT_BASE, segment.usable_len());
                (segment, arena, None, None)
            }
            Some(p) => {
                let o = crate::persist::open(p, SEGMENT_ID, config.capacity, segment_len)?;
                (
                    o.segment,
                    o.arena,
                    Some(o.persist),
                    Some((o.objects, o.verified)),
                )
            }
        };
        let mut store = Store {
            capacity: config.capacity,
            max_pending_gets: config.max_pending_gets,
            segment,
            arena,
            objects: ObjectTable::default(),
            clients: HashMap::new(),
            gets: HashMap::new(),
            next_get: 0,
            waiters: HashMap::new(),
            deadlines: BinaryHeap::new(),
            lru: Lru::default(),
            next_lru: 0,
            deferred_deletes: HashSet::new(),
            external,
            pinned_bytes: 0,
            owned_pinned: 0,
            persist,
        };
        if let Some((objects, verified)) = recovered {
            store.adopt(objects, verified);
        }
        Ok(store)
    }

    /// The shared-memory segment with this id, to send its fd.
    pub fn segment_fd(&self, id: i32) -> Option<BorrowedFd<'_>> {
        (id == self.segment.id()).then(|| self.segment.fd())
    }

    /// The segment (for its size and for tests).
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        Stats {
            objects: self.objects.len(),
            allocated: self.arena.allocated_bytes(),
            references: self.objects.values().map(|o| u64::from(o.ref_count)).sum(),
            pending_gets: self.gets.len(),
        }
    }

    /// Registers a new client.
    pub fn connect(&mut self, client: ClientId) {
        self.clients.insert(client, ClientState::default());
    }

    /// One notification per sealed object, for a new subscriber.
    pub fn sealed_infos(&self) -> impl Iterator<Item = ObjectInfo> + '_ {
        self.objects
            .iter()
            .filter(|(_, o)| o.state == State::Sealed)
            .map(|(id, o)| seal_info(*id, o))
    }

    /// The earliest deadline of a waiting get, for the poll timeout.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((when, get))) = self.deadlines.peek().copied() {
            if self.gets.contains_key(&get) {
                return Some(when);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Answers every waiting get whose deadline has passed.
    pub fn expire(&mut self, now: Instant, out: &mut impl Sink) {
        while let Some(Reverse((when, get))) = self.deadlines.peek().copied() {
            if when > now {
                break;
            }
            self.deadlines.pop();
            self.finish_get(get, out);
        }
    }

    /// Handles one request of `client`.
    pub fn handle(&mut self, client: ClientId, req: Request, now: Instant, out: &mut impl Sink) {
        match req {
            Request::Connect => out.reply(
                client,
                &Reply::Connect {
                    memory_capacity: i64::try_from(self.capacity).unwrap_or(i64::MAX),
                },
            ),
            Request::Create {
                object_id,
                evict_if_full,
                data_size,
                metadata_size,
                device_num,
            } => self.create(
                client,
                object_id,
                evict_if_full,
                (data_size, metadata_size),
                device_num,
                out,
            ),
            Request::CreateAndSeal {
                object_id,
                evict_if_full,
                data,
                metadata,
                digest,
            } => {
                let objects = [BatchObject {
                    object_id,
                    data,
                    metadata,
                    digest,
                }];
                let error = self.create_and_seal(client, evict_if_full, &objects, out);
                out.reply(client, &Reply::CreateAndSeal { error });
            }
            Request::CreateAndSealBatch {
                evict_if_full,
                objects,
            } => {
                let error = self.create_and_seal(client, evict_if_full, &objects, out);
                out.reply(client, &Reply::CreateAndSealBatch { error });
            }
            Request::Abort { object_id } => {
                self.abort(client, object_id);
                out.reply(client, &Reply::Abort { object_id });
            }
            Request::Seal { object_id, digest } => {
                let error = self.seal(client, object_id, digest, out);
                out.reply(client, &Reply::Seal { object_id, error });
            }
            Request::Get {
                object_ids,
                timeout_ms,
            } => self.get(client, object_ids, timeout_ms, now, out),
            Request::Release { object_id } => self.release(client, object_id, out),
            Request::Delete { object_ids } => {
                let errors = object_ids.iter().map(|id| self.delete(*id, out)).collect();
                out.reply(client, &Reply::Delete { object_ids, errors });
            }
            Request::Contains { object_id } => {
                let has_object = self
                    .objects
                    .get(&object_id)
                    .is_some_and(|o| o.state != State::Created);
                out.reply(
                    client,
                    &Reply::Contains {
                        object_id,
                        has_object,
                    },
                );
            }
            Request::List => {
                let objects = self.objects.iter().map(|(id, o)| o.info(*id)).collect();
                out.reply(client, &Reply::List { objects });
            }
            Request::Evict { num_bytes } => {
                let victims = choose_victims(&mut self.lru, &mut self.objects, num_bytes);
                let num_bytes = self.evict_objects(&victims, out);
                out.reply(client, &Reply::Evict { num_bytes });
            }
            Request::RefreshLru { object_ids } => {
                for id in object_ids {
                    if self.lru_remove(id) {
                        self.lru_insert(id);
                    }
                }
                out.reply(client, &Reply::RefreshLru);
            }
            Request::SetOptions {
                client_name,
                output_memory_quota,
            } => {
                let error = self.set_options(client, client_name, output_memory_quota);
                out.reply(client, &Reply::SetOptions { error });
            }
            Request::GetDebugString => {
                let debug_string = self.debug_string();
                out.reply(client, &Reply::DebugString { debug_string });
            }
            // Handled by the server (they concern the connection, not the store).
            Request::Disconnect
            | Request::Subscribe
            | Request::Unsubscribe
            | Request::Data { .. } => {}
        }
    }

    /// Cleans up after a client that went away, however it went: its quota's objects join
    /// the global list, its unsealed objects are aborted, its waiting gets dropped and its
    /// references released.
    pub fn disconnect(&mut self, client: ClientId, out: &mut impl Sink) {
        let Some(state) = self.clients.remove(&client) else {
            return;
        };
        if let Some(quota) = state.quota {
            // As the original: newest first, each to the young end of the global list.
            for &index in quota.lru.order.values().rev() {
                let Some(id) = self.objects.id_at(index) else {
                    continue;
                };
                self.disown(id);
                if let Some(o) = self.objects.get_mut(&id) {
                    o.lru_seq = None;
                    if !o.pinned() && o.state == State::Sealed {
                        self.lru_insert(id);
                    }
                }
            }
        }
        for get in state.gets {
            self.drop_get(get);
        }
        for id in state.refs {
            let Some(count) = self.drop_ref(id) else {
                continue;
            };
            if self
                .objects
                .get(&id)
                .is_some_and(|o| o.state == State::Created)
            {
                debug!("client {client} disconnected: aborting its unsealed object {id}");
                self.remove_object(id);
            } else if count == 0 {
                self.unreferenced(id, out);
            }
        }
    }

    fn create(
        &mut self,
        client: ClientId,
        object_id: ObjectId,
        evict_if_full: bool,
        (data_size, metadata_size): (u64, u64),
        device_num: i32,
        out: &mut impl Sink,
    ) {
        let fail = |error| Reply::Create {
            object_id,
            spec: ObjectSpec::default(),
            error,
            store_fd: 0,
            mmap_size: 0,
        };
        if device_num != 0 {
            warn!(
                "client {client}: create with device_num {device_num}, but GPU memory is not supported"
            );
            out.reply(client, &fail(PlasmaError::OutOfMemory));
            return;
        }
        let created = self.create_object(
            client,
            object_id,
            evict_if_full,
            data_size,
            metadata_size,
            out,
        );
        if let Err(error) = created {
            out.reply(client, &fail(error));
            return;
        }
        self.add_ref(client, object_id);
        let spec = self
            .objects
            .get(&object_id)
            .map(Object::spec)
            .unwrap_or_default();
        out.reply(
            client,
            &Reply::Create {
                object_id,
                spec,
                error: PlasmaError::Ok,
                store_fd: SEGMENT_ID,
                mmap_size: self.mmap_size(),
            },
        );
        self.send_segment_once(client, out);
    }

    fn mmap_size(&self) -> i64 {
        i64::try_from(self.segment.mmap_size()).unwrap_or(i64::MAX)
    }

    fn send_segment_once(&mut self, client: ClientId, out: &mut impl Sink) {
        if let Some(c) = self.clients.get_mut(&client)
            && !c.segment_sent
        {
            c.segment_sent = true;
            out.send_segment(client, SEGMENT_ID);
        }
    }

    /// Allocates and enters a new CREATED object (without any reference).
    fn create_object(
        &mut self,
        client: ClientId,
        object_id: ObjectId,
        evict_if_full: bool,
        data_size: u64,
        metadata_size: u64,
        out: &mut impl Sink,
    ) -> Result<(), PlasmaError> {
        if self.objects.contains_key(&object_id) {
            return Err(PlasmaError::ObjectExists);
        }
        let Some(size) = data_size.checked_add(metadata_size) else {
            warn!(
                "client {client}: create of {object_id} with sizes {data_size} + {metadata_size} overflows"
            );
            return Err(PlasmaError::OutOfMemory);
        };
        self.enforce_quota(client, size, evict_if_full, out)?;
        let Some(offset) = self.allocate(size, evict_if_full, out) else {
            warn!(
                "not enough memory to create the object {object_id}, data_size={data_size}, \
                 metadata_size={metadata_size}: replying OutOfMemory"
            );
            return Err(PlasmaError::OutOfMemory);
        };
        let owner = self
            .clients
            .get(&client)
            .and_then(|c| c.quota.as_ref())
            .and_then(|_| u32::try_from(client).ok());
        self.objects.insert(
            object_id,
            Object {
                state: State::Created,
                offset,
                data_size,
                metadata_size,
                create_time: unix_now(),
                construct_duration: -1,
                digest: None,
                ref_count: 0,
                owner,
                lru_seq: None,
                unverified: false,
            },
        );
        if owner.is_some() {
            // A quota client's objects count against its quota from creation on.
            self.lru_insert(object_id);
        }
        Ok(())
    }

    /// Makes room for `size` bytes in a quota client's quota, evicting its own unheld objects
    /// and demoting its held ones to the global list, oldest first.
    fn enforce_quota(
        &mut self,
        client: ClientId,
        size: u64,
        evict_if_full: bool,
        out: &mut impl Sink,
    ) -> Result<(), PlasmaError> {
        let Some(quota) = self.clients.get_mut(&client).and_then(|c| c.quota.as_mut()) else {
            return Ok(());
        };
        if size > quota.limit {
            warn!(
                "client {client}: object too large ({size} bytes) to fit in its quota of {} bytes",
                quota.limit
            );
            return Err(PlasmaError::OutOfMemory);
        }
        let remaining = quota.limit.saturating_sub(quota.lru.bytes);
        if remaining >= size {
            return Ok(());
        }
        if !evict_if_full {
            warn!("client {client}: its quota is full and the create may not evict");
            return Err(PlasmaError::OutOfMemory);
        }
        let victims = choose_victims(&mut quota.lru, &mut self.objects, size - remaining);
        let mut evict = Vec::new();
        for (id, size) in victims {
            self.disown(id);
            let Some(o) = self.objects.get(&id) else {
                continue;
            };
            if o.pinned() {
                // Demoted: it joins the global list when its last holder lets go.
                debug!("client {client}: quota full, demoting held object {id}");
            } else {
                evict.push((id, size));
            }
        }
        self.evict_objects(&evict, out);
        Ok(())
    }

    /// Finds room for `size` bytes, evicting least recently used objects if allowed.
    fn allocate(&mut self, size: u64, evict_if_full: bool, out: &mut impl Sink) -> Option<u64> {
        if size > self.capacity {
            return None;
        }
        let mut kept = Vec::new();
        let found = loop {
            if self.arena.allocated_bytes() + size <= self.capacity
                && let Some(offset) = self.arena.alloc(size)
            {
                break Some(offset);
            }
            if !evict_if_full {
                break None;
            }
            // As the original: free what is missing, but at least a fifth of the capacity, so
            // that a run of creates does not evict one object at a time.
            let required = (self.arena.allocated_bytes() + size).saturating_sub(self.capacity);
            let target = required.max(self.capacity / 5);
            let victims = choose_victims(&mut self.lru, &mut self.objects, target);
            info!(
                "there is not enough space to create this object, so evicting {} objects to free \
                 up {} bytes; {} bytes are in use",
                victims.len(),
                victims.iter().map(|v| v.1).sum::<u64>(),
                self.arena.allocated_bytes()
            );
            let freed = self.evict_objects(&victims, out);
            kept.extend(
                victims
                    .iter()
                    .filter(|(id, _)| {
                        self.objects
                            .get(id)
                            .is_some_and(|o| o.state == State::Sealed)
                    })
                    .map(|(id, _)| *id),
            );
            if freed < required || freed == 0 {
                break None;
            }
        };
        // Objects the external store could not take stay in memory, evictable again later.
        for id in kept {
            self.lru_insert(id);
        }
        found
    }

    /// Evicts objects already taken out of their LRU list: to the external store if there is
    /// one (those it refuses stay in memory), else deleted. Returns the bytes freed.
    fn evict_objects(&mut self, victims: &[(ObjectId, u64)], out: &mut impl Sink) -> u64 {
        let mut freed = 0;
        for &(id, size) in victims {
            let Some(external) = self.external.as_mut() else {
                self.delete_now(id, out);
                freed += size;
                continue;
            };
            let Some(o) = self.objects.get_mut(&id) else {
                continue;
            };
            let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(0)];
            let stored = self
                .segment
                .read(o.offset, &mut bytes)
                .and_then(|()| external.put(id, bytes));
            if let Err(e) = stored {
                error!("cannot evict {id} to the external store, keeping it in memory: {e}");
                continue;
            }
            if let Err(e) = self.arena.free(o.offset) {
                warn!("freeing {id} at {}: {e}", o.offset);
            }
            o.state = State::Evicted;
            freed += size;
            self.persist_delete(id);
        }
        freed
    }

    /// Brings an evicted object back into memory. Its bytes leave the external store first,
    /// so that on a full spill disk the objects evicted to make room can take its place. On
    /// failure the object is treated as missing; if its bytes are lost it is removed for good.
    fn restore(&mut self, id: ObjectId, out: &mut impl Sink) -> bool {
        let Some(size) = self.objects.get(&id).map(Object::size) else {
            return false;
        };
        let bytes = match self.external.as_mut().map(|e| e.take(id, size)) {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                error!("the external store lost {id}: {e}; the object is gone");
                self.delete_now(id, out);
                return false;
            }
            None => return false,
        };
        let Some(offset) = self.allocate(size, true, out) else {
            warn!("no memory to restore {id} from the external store");
            if let Some(Err(e)) = self.external.as_mut().map(|e| e.put(id, bytes)) {
                error!("cannot put {id} back into the external store: {e}; the object is gone");
                self.delete_now(id, out);
            }
            return false;
        };
        if let Err(e) = self.segment.write(offset, &bytes) {
            warn!("restoring {id}: {e}");
        }
        if let Some(o) = self.objects.get_mut(&id) {
            o.state = State::Sealed;
            o.offset = offset;
        }
        self.persist_seals(&[id]);
        true
    }

    fn create_and_seal(
        &mut self,
        client: ClientId,
        evict_if_full: bool,
        objects: &[BatchObject],
        out: &mut impl Sink,
    ) -> PlasmaError {
        for (i, b) in objects.iter().enumerate() {
            if let Err(e) = self.create_object(
                client,
                b.object_id,
                evict_if_full,
                b.data.len() as u64,
                b.metadata.len() as u64,
                out,
            ) {
                // All or nothing: drop what this batch created so far.
                for done in objects.iter().take(i) {
                    self.remove_object(done.object_id);
                }
                return e;
            }
        }
        let mut infos = Vec::with_capacity(objects.len());
        for b in objects {
            let Some(o) = self.objects.get_mut(&b.object_id) else {
                continue;
            };
            let copied = self
                .segment
                .write(o.offset, &b.data)
                .and_then(|()| self.segment.write(o.offset + o.data_size, &b.metadata));
            if let Err(e) = copied {
                // Cannot happen: the arena only hands out ranges inside the segment.
                warn!("copying {} into the segment failed: {e}", b.object_id);
            }
            o.state = State::Sealed;
            o.digest = Some(b.digest);
            o.construct_duration = 0;
            infos.push(seal_info(b.object_id, o));
        }
        if self.persist.is_some() {
            let ids: Vec<ObjectId> = objects.iter().map(|b| b.object_id).collect();
            self.persist_seals(&ids);
        }
        out.notify(&infos);
        for b in objects {
            self.wake_waiters(b.object_id, out);
            if self
                .objects
                .get(&b.object_id)
                .is_some_and(|o| o.ref_count == 0)
            {
                self.unreferenced(b.object_id, out);
            }
        }
        PlasmaError::Ok
    }

    fn abort(&mut self, client: ClientId, object_id: ObjectId) {
        let holds = self
            .clients
            .get(&client)
            .is_some_and(|c| c.refs.contains(&object_id));
        match self.objects.get(&object_id) {
            Some(o) if o.state == State::Created && holds => {
                if let Some(c) = self.clients.get_mut(&client) {
                    c.refs.remove(&object_id);
                }
                self.drop_ref(object_id);
                self.remove_object(object_id);
            }
            Some(_) => warn!(
                "client {client}: abort of {object_id}, which it did not create or is sealed; ignored"
            ),
            None => warn!("client {client}: abort of unknown object {object_id}; ignored"),
        }
    }

    fn seal(
        &mut self,
        client: ClientId,
        object_id: ObjectId,
        digest: Digest,
        out: &mut impl Sink,
    ) -> PlasmaError {
        let Some(o) = self.objects.get_mut(&object_id) else {
            warn!("client {client}: seal of unknown object {object_id}");
            return PlasmaError::ObjectNotFound;
        };
        if o.state != State::Created {
            warn!("client {client}: seal of {object_id}, which is already sealed; ignored");
            return PlasmaError::Ok;
        }
        o.state = State::Sealed;
        o.digest = Some(digest);
        o.construct_duration =
            i32::try_from(unix_now().saturating_sub(o.create_time)).unwrap_or(i32::MAX);
        let info = seal_info(object_id, o);
        self.persist_seals(&[object_id]);
        out.notify(&[info]);
        self.wake_waiters(object_id, out);
        PlasmaError::Ok
    }

    fn get(
        &mut self,
        client: ClientId,
        object_ids: Vec<ObjectId>,
        timeout_ms: i64,
        now: Instant,
        out: &mut impl Sink,
    ) {
        let mut specs = Vec::with_capacity(object_ids.len());
        let mut missing: Vec<ObjectId> = Vec::new();
        // Distinct missing ids; a set once the list is long (a get may name millions of ids).
        let mut seen: HashSet<ObjectId> = HashSet::new();
        let long = object_ids.len() > 32;
        for id in &object_ids {
            let mut state = self.objects.get(id).map(|o| o.state);
            if state == Some(State::Evicted) && self.restore(*id, out) {
                state = Some(State::Sealed);
            }
            if state == Some(State::Sealed) && !self.recovered_intact(*id, out) {
                state = None;
            }
            match (state, self.objects.get(id)) {
                (Some(State::Sealed), Some(o)) => {
                    specs.push(Some(o.spec()));
                    self.add_ref(client, *id);
                }
                _ => {
                    specs.push(None);
                    let new = if long {
                        seen.insert(*id)
                    } else {
                        !missing.contains(id)
                    };
                    if new {
                        missing.push(*id);
                    }
                }
            }
        }
        let pending = self.clients.get(&client).map_or(0, |c| c.gets.len());
        if missing.is_empty() || timeout_ms == 0 || timeout_ms < -1 {
            self.reply_get(client, object_ids, specs, out);
            return;
        }
        if pending >= self.max_pending_gets {
            warn!("client {client} has {pending} gets waiting already; answering this one at once");
            self.reply_get(client, object_ids, specs, out);
            return;
        }
        let get = self.next_get;
        self.next_get += 1;
        for id in &missing {
            self.waiters.entry(*id).or_default().push(get);
        }
        // A timeout too far away to represent is as good as none.
        if timeout_ms > 0
            && let Some(deadline) =
                now.checked_add(Duration::from_millis(timeout_ms.unsigned_abs()))
        {
            self.deadlines.push(Reverse((deadline, get)));
        }
        if let Some(c) = self.clients.get_mut(&client) {
            c.gets.insert(get);
        }
        self.gets.insert(
            get,
            PendingGet {
                client,
                object_ids,
                specs,
                remaining: missing.len(),
            },
        );
    }

    fn reply_get(
        &mut self,
        client: ClientId,
        object_ids: Vec<ObjectId>,
        objects: Vec<Option<ObjectSpec>>,
        out: &mut impl Sink,
    ) {
        let any = objects.iter().any(Option::is_some);
        let (store_fds, mmap_sizes) = if any {
            (vec![SEGMENT_ID], vec![self.mmap_size()])
        } else {
            (Vec::new(), Vec::new())
        };
        out.reply(
            client,
            &Reply::Get {
                object_ids,
                objects,
                store_fds,
                mmap_sizes,
            },
        );
        if any {
            self.send_segment_once(client, out);
        }
    }

    /// Fills `object_id` into every get waiting for it and answers the complete ones.
    fn wake_waiters(&mut self, object_id: ObjectId, out: &mut impl Sink) {
        let Some(list) = self.waiters.remove(&object_id) else {
            return;
        };
        let Some(spec) = self.objects.get(&object_id).map(Object::spec) else {
            return;
        };
        for get in list {
            let Some(g) = self.gets.get_mut(&get) else {
                continue;
            };
            for (id, s) in g.object_ids.iter().zip(g.specs.iter_mut()) {
                if *id == object_id {
                    *s = Some(spec);
                }
            }
            g.remaining = g.remaining.saturating_sub(1);
            let (client, done) = (g.client, g.remaining == 0);
            self.add_ref(client, object_id);
            if done {
                self.finish_get(get, out);
            }
        }
    }

    /// Answers a waiting get with what it has, and forgets it.
    fn finish_get(&mut self, get: u64, out: &mut impl Sink) {
        if let Some(g) = self.drop_get(get) {
            self.reply_get(g.client, g.object_ids, g.specs, out);
        }
    }

    /// Forgets a waiting get without answering it.
    fn drop_get(&mut self, get: u64) -> Option<PendingGet> {
        let g = self.gets.remove(&get)?;
        if let Some(c) = self.clients.get_mut(&g.client) {
            c.gets.remove(&get);
        }
        for (id, spec) in g.object_ids.iter().zip(&g.specs) {
            if spec.is_none()
                && let Entry::Occupied(mut e) = self.waiters.entry(*id)
            {
                e.get_mut().retain(|w| *w != get);
                if e.get().is_empty() {
                    e.remove();
                }
            }
        }
        Some(g)
    }

    /// Gives `client` its (single) reference to a sealed or newly created object.
    fn add_ref(&mut self, client: ClientId, object_id: ObjectId) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        if !c.refs.insert(object_id) {
            return;
        }
        let Some(o) = self.objects.get_mut(&object_id) else {
            return;
        };
        o.ref_count += 1;
        if o.ref_count == 1 {
            self.pinned_bytes += o.size();
            if o.owner.is_some() {
                self.owned_pinned += 1;
            } else {
                self.lru_remove(object_id);
            }
        }
    }

    /// Drops one reference to an object, keeping the pinned counters right. Returns the new
    /// count.
    fn drop_ref(&mut self, object_id: ObjectId) -> Option<u32> {
        let o = self.objects.get_mut(&object_id)?;
        if o.ref_count > 0 {
            o.ref_count -= 1;
            if o.ref_count == 0 {
                let (size, owned) = (o.size(), o.owner.is_some());
                self.unpin(size, owned);
                return Some(0);
            }
        }
        Some(o.ref_count)
    }

    /// Takes an object that is no longer held (or no longer exists) out of the pinned
    /// counters.
    fn unpin(&mut self, size: u64, owned: bool) {
        self.pinned_bytes = self.pinned_bytes.saturating_sub(size);
        if owned {
            self.owned_pinned = self.owned_pinned.saturating_sub(1);
        }
    }

    /// Ends a quota client's ownership of an object.
    fn disown(&mut self, object_id: ObjectId) {
        if let Some(o) = self.objects.get_mut(&object_id)
            && o.owner.take().is_some()
            && o.ref_count > 0
        {
            self.owned_pinned = self.owned_pinned.saturating_sub(1);
        }
    }

    fn release(&mut self, client: ClientId, object_id: ObjectId, out: &mut impl Sink) {
        let state = self.objects.get(&object_id).map(|o| o.state);
        if state == Some(State::Created) {
            // The creator's reference pins an unsealed object until seal, abort or disconnect;
            // giving it up here would leave an object nobody can clean up.
            warn!("client {client}: release of unsealed {object_id}; ignored");
            return;
        }
        let held = self
            .clients
            .get_mut(&client)
            .is_some_and(|c| c.refs.remove(&object_id));
        if !held {
            warn!("client {client}: release of {object_id}, which it does not hold; ignored");
            return;
        }
        if self.drop_ref(object_id) == Some(0) {
            self.unreferenced(object_id, out);
        }
    }

    /// A sealed object lost its last reference: delete it if a delete was deferred, else make
    /// it evictable (an owned object stays in its owner's list).
    fn unreferenced(&mut self, object_id: ObjectId, out: &mut impl Sink) {
        if self.deferred_deletes.contains(&object_id) {
            self.delete_now(object_id, out);
        } else if self
            .objects
            .get(&object_id)
            .is_some_and(|o| o.owner.is_none())
        {
            self.lru_insert(object_id);
        }
    }

    /// Puts an object at the young end of its list (its owner's or the global one).
    fn lru_insert(&mut self, object_id: ObjectId) {
        let Some(index) = self.objects.index_of(&object_id) else {
            return;
        };
        let Some(o) = self.objects.get_mut(&object_id) else {
            return;
        };
        let Some(lru) = list_of(&mut self.lru, &mut self.clients, o.owner) else {
            return;
        };
        let seq = self.next_lru;
        self.next_lru += 1;
        o.lru_seq = Some(seq);
        lru.order.insert(seq, index);
        lru.bytes += o.size();
    }

    /// Takes an object out of its list. Returns whether it was in one.
    fn lru_remove(&mut self, object_id: ObjectId) -> bool {
        let Some(o) = self.objects.get_mut(&object_id) else {
            return false;
        };
        let Some(seq) = o.lru_seq.take() else {
            return false;
        };
        let Some(lru) = list_of(&mut self.lru, &mut self.clients, o.owner) else {
            return true;
        };
        lru.order.remove(&seq);
        lru.bytes = lru.bytes.saturating_sub(o.size());
        true
    }

    fn delete(&mut self, object_id: ObjectId, out: &mut impl Sink) -> PlasmaError {
        let Some(o) = self.objects.get(&object_id) else {
            return PlasmaError::ObjectNotFound;
        };
        if o.state == State::Created {
            self.deferred_deletes.insert(object_id);
            return PlasmaError::ObjectNotSealed;
        }
        if o.ref_count > 0 {
            self.deferred_deletes.insert(object_id);
            return PlasmaError::ObjectInUse;
        }
        self.delete_now(object_id, out);
        PlasmaError::Ok
    }

    /// Removes a sealed (or evicted), unreferenced object and tells the subscribers.
    fn delete_now(&mut self, object_id: ObjectId, out: &mut impl Sink) {
        if self.remove_object(object_id) {
            out.notify(&[deletion_info(object_id)]);
        }
    }

    /// Frees an object's memory (or its external copy) and erases every trace of it. Returns
    /// whether it existed.
    fn remove_object(&mut self, object_id: ObjectId) -> bool {
        self.lru_remove(object_id);
        let Some(o) = self.objects.remove(&object_id) else {
            return false;
        };
        if o.ref_count > 0 {
            self.unpin(o.size(), o.owner.is_some());
        }
        self.deferred_deletes.remove(&object_id);
        if o.state == State::Evicted {
            if let Some(e) = self.external.as_mut() {
                e.remove(object_id);
            }
            return true;
        }
        if let Err(e) = self.arena.free(o.offset) {
            warn!("freeing {object_id} at {}: {e}", o.offset);
        }
        if o.state == State::Sealed {
            self.persist_delete(object_id);
        }
        true
    }

    fn set_options(&mut self, client: ClientId, name: Vec<u8>, quota: i64) -> PlasmaError {
        let global = self.global_capacity();
        let Some(c) = self.clients.get_mut(&client) else {
            return PlasmaError::OutOfMemory;
        };
        c.name = Some(String::from_utf8_lossy(&name).into_owned());
        if c.quota.is_some() {
            warn!("client {client}: cannot change the client quota once set");
            return PlasmaError::OutOfMemory;
        }
        let Ok(quota) = u64::try_from(quota) else {
            warn!("client {client}: negative quota {quota}");
            return PlasmaError::OutOfMemory;
        };
        if (global as f64 - quota as f64) < self.capacity as f64 * GLOBAL_RESERVE {
            warn!("client {client}: not enough memory to set a quota of {quota} bytes");
            return PlasmaError::OutOfMemory;
        }
        c.quota = Some(Quota {
            limit: quota,
            lru: Lru::default(),
        });
        info!(
            "adjusting global lru capacity from {global} to {} (max {})",
            global - quota,
            self.capacity
        );
        PlasmaError::Ok
    }

    /// The capacity left to the global LRU after the quotas.
    fn global_capacity(&self) -> u64 {
        let quotas: u64 = self
            .clients
            .values()
            .filter_map(|c| c.quota.as_ref().map(|q| q.limit))
            .sum();
        self.capacity.saturating_sub(quotas)
    }

    /// The eviction policy's report, line for line the original's.
    fn debug_string(&self) -> String {
        // In connection order (the original's order is its hash map's).
        let mut quota_clients: Vec<(ClientId, &ClientState, &Quota)> = self
            .clients
            .iter()
            .filter_map(|(id, c)| c.quota.as_ref().map(|q| (*id, c, q)))
            .collect();
        quota_clients.sort_unstable_by_key(|(id, _, _)| *id);
        let owned: usize = quota_clients
            .iter()
            .map(|(_, _, q)| q.lru.order.len())
            .sum();
        let (owned_pinned, pinned) = (self.owned_pinned, self.pinned_bytes);
        let mut s = format!(
            "num clients with quota: {}\nquota map size: {owned}\npinned quota map size: \
             {owned_pinned}\nallocated bytes: {}\nallocation limit: {}\npinned bytes: {pinned}\n",
            quota_clients.len(),
            self.arena.allocated_bytes(),
            self.capacity
        );
        s += &lru_report(
            "global lru",
            self.global_capacity(),
            self.capacity,
            &self.lru,
        );
        for (_, c, q) in quota_clients {
            s.push('\n');
            s += &lru_report(
                c.name.as_deref().unwrap_or(ANONYMOUS),
                q.limit,
                q.limit,
                &q.lru,
            );
        }
        s
    }
}

/// `--persist` hooks: recording seals and deletes, adopting recovered objects, checking them.
impl Store {
    /// Enters the objects recovered from the persist log into the empty store: sealed,
    /// unreferenced, in the global LRU list in the order they were sealed. `persist::open`
    /// gives distinct ids.
    fn adopt(&mut self, records: Vec<SealRecord>, verified: bool) {
        self.objects.index.reserve(records.len());
        self.objects.slab.reserve(records.len());
        let mut order = Vec::with_capacity(records.len());
        for r in records {
            let object = Object {
                state: State::Sealed,
                offset: r.offset,
                data_size: r.data_size,
                metadata_size: r.metadata_size,
                create_time: r.create_time,
                construct_duration: r.construct_duration,
                digest: Some(r.digest),
                ref_count: 0,
                owner: None,
                lru_seq: Some(self.next_lru),
                unverified: !verified,
            };
            let size = object.size();
            // One hash lookup per object: this runs a million times for a million objects.
            let Entry::Vacant(slot) = self.objects.index.entry(r.object_id) else {
                continue;
            };
            let index = self.objects.slab.insert((r.object_id, object));
            slot.insert(index);
            match u32::try_from(index) {
                Ok(index) => {
                    self.lru.bytes += size;
                    order.push((self.next_lru, index));
                    self.next_lru += 1;
                }
                // Beyond what an LRU list can name (as lru_insert): never evicted.
                Err(_) => {
                    if let Some((_, o)) = self.objects.slab.get_mut(index) {
                        o.lru_seq = None;
                    }
                }
            }
        }
        // Sorted: built in bulk.
        self.lru.order = order.into_iter().collect();
    }

    fn seal_record(&self, object_id: ObjectId) -> Option<SealRecord> {
        self.objects
            .get(&object_id)
            .map(|o| seal_record(object_id, o))
    }

    /// Records newly sealed objects (before their seal is acknowledged).
    fn persist_seals(&mut self, ids: &[ObjectId]) {
        if self.persist.is_none() {
            return;
        }
        let records: Vec<SealRecord> = ids.iter().filter_map(|id| self.seal_record(*id)).collect();
        if let Some(p) = self.persist.as_mut() {
            p.record_seals(&records, &self.segment);
        }
        self.maybe_compact();
    }

    /// Records that a sealed object left the segment.
    fn persist_delete(&mut self, object_id: ObjectId) {
        if let Some(p) = self.persist.as_mut() {
            p.record_delete(object_id);
            self.maybe_compact();
        }
    }

    fn maybe_compact(&mut self) {
        let Some(p) = self.persist.as_mut() else {
            return;
        };
        if p.wants_compaction() {
            let live = self
                .objects
                .iter()
                .filter(|(_, o)| o.state == State::Sealed)
                .map(|(id, o)| seal_record(*id, o));
            p.compact(live);
        }
    }

    /// For a sealed object: `false` if it was recovered after a restart and its bytes do not
    /// match its digest, in which case it is dropped. Checked once per recovered object.
    fn recovered_intact(&mut self, object_id: ObjectId, out: &mut impl Sink) -> bool {
        if self.persist.is_none() {
            return true;
        }
        let Some(o) = self.objects.get_mut(&object_id).filter(|o| o.unverified) else {
            return true;
        };
        o.unverified = false;
        let record = seal_record(object_id, o);
        let intact = match self.persist.as_ref() {
            Some(p) => p.verify(&record, &self.segment),
            None => true,
        };
        if !intact {
            self.delete_now(object_id, out);
        }
        intact
    }
}

/// What the persist log records about a sealed object.
fn seal_record(object_id: ObjectId, o: &Object) -> SealRecord {
    SealRecord {
        object_id,
        offset: o.offset,
        data_size: o.data_size,
        metadata_size: o.metadata_size,
        digest: o.digest.unwrap_or_default(),
        create_time: o.create_time,
        construct_duration: o.construct_duration,
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
        let allocated: u64 = self
            .objects
            .values()
            .filter(|o| o.state != State::Evicted)
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

/// The list an object belongs in: its quota owner's, or the global one. `None` if the owner
/// is gone (its objects were handed to the global list at its disconnect).
fn list_of<'a>(
    global: &'a mut Lru,
    clients: &'a mut HashMap<ClientId, ClientState>,
    owner: Option<u32>,
) -> Option<&'a mut Lru> {
    match owner {
        None => Some(global),
        Some(c) => clients
            .get_mut(&(c as ClientId))
            .and_then(|c| c.quota.as_mut())
            .map(|q| &mut q.lru),
    }
}

/// Takes objects from the old end of `lru` until their sizes reach `target`, and counts them
/// as that list's evictions.
fn choose_victims(lru: &mut Lru, objects: &mut ObjectTable, target: u64) -> Vec<(ObjectId, u64)> {
    let mut victims = Vec::new();
    let mut sum = 0;
    while sum < target {
        let Some((_, index)) = lru.order.pop_first() else {
            break;
        };
        let Some(id) = objects.id_at(index) else {
            continue;
        };
        if let Some(o) = objects.get_mut(&id) {
            o.lru_seq = None;
            lru.bytes = lru.bytes.saturating_sub(o.size());
            sum += o.size();
            victims.push((id, o.size()));
        }
    }
    lru.evictions += victims.len() as u64;
    lru.bytes_evicted += sum;
    victims
}

fn seal_info(object_id: ObjectId, o: &Object) -> ObjectInfo {
    ObjectInfo {
        object_id,
        data_size: i64::try_from(o.data_size).unwrap_or(i64::MAX),
        metadata_size: i64::try_from(o.metadata_size).unwrap_or(i64::MAX),
        digest: o.digest,
        ..ObjectInfo::default()
    }
}

fn deletion_info(object_id: ObjectId) -> ObjectInfo {
    ObjectInfo {
        object_id,
        is_deletion: true,
        ..ObjectInfo::default()
    }
}

/// The five lines the original prints per LRU list.
fn lru_report(name: &str, capacity: u64, original: u64, lru: &Lru) -> String {
    let pct = if original == 0 {
        0.0
    } else {
        100.0 * (1.0 - (capacity as f64 - lru.bytes as f64) / original as f64)
    };
    format!(
        "({name}) capacity: {capacity}\n({name}) used: {}%\n({name}) num objects: {}\n\
         ({name}) num evictions: {}\n({name}) bytes evicted: {}",
        format_g(pct),
        lru.order.len(),
        lru.evictions,
        lru.bytes_evicted
    )
}

/// Formats like C++ streams' default for doubles (`%g`: 6 significant digits, no trailing
/// zeros).
pub fn format_g(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() {
            "0".into()
        } else {
            v.to_string()
        };
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-4..6).contains(&exp) {
        let s = format!("{v:.5e}");
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = trim_zeros(mant);
        let e: i32 = e.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", e.abs());
    }
    let decimals = usize::try_from(5 - exp).unwrap_or(0);
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
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
        assert!(
            matches!(&ev[..], [Event::Notify(i)] if i[0].is_deletion && i[0].object_id == oid(1))
        );
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
}
