//! The object store proper: the object table, the lifecycle of objects, references, pending
//! gets and their deadlines. No sockets here.
//!
//! The [`crate::server`] event loop turns each decoded request into one call of
//! [`Store::handle`], and everything the store has to say goes out through a [`Sink`]: replies
//! (each optionally followed by segment fds) and notifications. That keeps the store a plain,
//! single-threaded state machine which unit tests drive directly.
//!
//! Semantics follow the original Plasma store (see `PROTOCOL.md` §4–§9), except where the
//! original crashed, leaked or hung: those cases get a log line and a harmless answer instead.
//!
//! The policies live in their own modules, as in the original: `eviction.rs` (the quota-aware
//! LRU, the external store) beside the object table (`table.rs`) and the request handling here.

mod create_queue;
mod eviction;
mod fallback;
mod persisted;
mod table;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, warn};

use crate::arena::Arena;
use crate::external::ExternalStore;
use crate::metrics::StoreCounters;
use crate::persist::{Persist, PersistConfig};
use crate::protocol::{
    BatchObject, Digest, ObjectId, ObjectInfo, ObjectSpec, PlasmaError, Reply, Request,
};
use crate::pulls::Pulls;
use crate::shm::{SEGMENT_BASE, Segment, SegmentOptions};

use create_queue::{CreateQueue, CreateRequest, Refusal};
pub use eviction::format_g;
use eviction::{Lru, Quota, choose_victims};
use fallback::Fallback;
use table::{Object, ObjectTable, State, deletion_info, seal_info};

/// before [`Store::disconnect`] has run for it.
pub type ClientId = usize;

/// The id of the one shared-memory segment. Segment ids are never reused.
pub const SEGMENT_ID: i32 = 1;

/// Where the store's output goes.
pub trait Sink {
    /// Queue `reply` for `client`.
    fn reply(&mut self, client: ClientId, reply: &Reply);
    /// Queue the fd of `segment` for `client`, right after the replies queued so far.
    fn send_segment(&mut self, client: ClientId, segment: i32);
    /// Push one notification (one message holding `infos`) to every subscriber.
    fn notify(&mut self, infos: &[ObjectInfo]);
    /// Tell the registered gateway that gets wait for these objects, which the store does not
    /// hold (see [`crate::pulls`]). Sinks that have no gateway ignore it.
    fn gateway_miss(&mut self, _object_ids: &[ObjectId]) {}
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
    /// How long a create that does not fit may wait for memory (`--create-wait`); zero
    /// answers at once, as the original.
    pub create_wait: Duration,
    /// Where objects shared memory cannot hold go (`--fallback-dir`); none: they fail.
    pub fallback_dir: Option<PathBuf>,
    /// Most bytes of objects in the fallback tier (`--fallback-limit`).
    pub fallback_limit: Option<u64>,
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
            create_wait: Duration::ZERO,
            fallback_dir: None,
            fallback_limit: None,
            persist: None,
        }
    }
}

/// What the store keeps per client.
#[derive(Debug, Default)]
struct ClientState {
    /// Objects this client holds a reference to (a set: at most one reference per object).
    refs: HashSet<ObjectId>,
    /// Its get requests that are still waiting.
    gets: HashSet<u64>,
    /// The segments whose fds went to this client already.
    segments_sent: Vec<i32>,
    /// Name from SetOptions.
    name: Option<String>,
    /// Quota from SetOptions.
    quota: Option<Quota>,
    /// Its creates waiting for memory.
    creates: usize,
    /// Payload bytes of its create-and-seals waiting for memory.
    create_bytes: u64,
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
    /// Objects the gateway was asked to pull from other machines.
    pulls: Pulls,
    external: Option<ExternalStore>,
    /// Bytes of objects some client holds.
    pinned_bytes: u64,
    /// Quota-owned objects some client holds.
    owned_pinned: usize,
    /// Eviction and external-store figures, for the metrics page.
    counters: StoreCounters,
    /// Creates waiting for memory.
    create_queue: CreateQueue,
    /// Disk-backed segments for objects shared memory cannot hold.
    fallback: Option<Fallback>,
    /// The record of sealed objects kept with `--persist`.
    persist: Option<Persist>,
    /// Objects in the table that are created and not sealed (kept as states change, so
    /// that a metrics scrape need not count the table).
    created_objects: usize,
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
        let open_external = |persist: Option<(&std::path::Path, bool)>| {
            config
                .external_store
                .as_deref()
                .map(|e| ExternalStore::open_for(e, config.spill_limit, persist))
                .transpose()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        };
        let mut external = match config.persist {
            None => open_external(None)?,
            // After the --persist directory is locked (and made): a spill directory inside it
            // is part of it.
            Some(_) => None,
        };
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
        if let Some(p) = &persist {
            external = open_external(Some((p.dir(), p.syncs())))?;
        }
        let fallback = config
            .fallback_dir
            .clone()
            .map(|dir| Fallback::new(dir, config.fallback_limit, SEGMENT_ID + 1))
            .transpose()?;
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
            pulls: Pulls::default(),
            external,
            pinned_bytes: 0,
            owned_pinned: 0,
            counters: StoreCounters::default(),
            create_queue: CreateQueue::new(config.create_wait),
            fallback,
            persist,
            created_objects: 0,
        };
        if let Some((objects, verified)) = recovered {
            let files = store.spill_files_found();
            store.check_spill_tier(&objects, &files)?;
            store.adopt(objects, verified, files);
        }
        Ok(store)
    }

    /// The shared-memory segment with this id, to send its fd.
    pub fn segment_fd(&self, id: i32) -> Option<BorrowedFd<'_>> {
        self.segment_by_id(id).map(Segment::fd)
    }

    /// The shared-memory segment or a fallback segment.
    fn segment_by_id(&self, id: i32) -> Option<&Segment> {
        if id == SEGMENT_ID {
            Some(&self.segment)
        } else {
            self.fallback.as_ref().and_then(|f| f.segment(id))
        }
    }

    /// The `mmap_size` clients are told for a segment.
    fn mmap_size_of(&self, id: i32) -> i64 {
        self.segment_by_id(id)
            .map_or(0, |s| i64::try_from(s.mmap_size()).unwrap_or(i64::MAX))
    }

    /// Gives back an object's block in its segment.
    fn free_block(&mut self, object_id: ObjectId, segment: i32, offset: u64, size: u64) {
        if segment == SEGMENT_ID {
            if let Err(e) = self.arena.free(offset) {
                warn!("freeing {object_id} at {offset}: {e}");
            }
        } else if let Some(f) = self.fallback.as_mut() {
            f.free(segment, offset, size);
        }
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

    /// The capacity (`-m`).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Eviction and external-store counters.
    pub fn counters(&self) -> StoreCounters {
        self.counters
    }

    /// Objects created and not sealed, and sealed ones (in memory or evicted to the
    /// external store). Kept as objects change state: O(1), for scrapes.
    pub fn objects_by_state(&self) -> (usize, usize) {
        (
            self.created_objects,
            self.objects.len() - self.created_objects,
        )
    }

    /// Bytes (data + metadata) of the objects in shared memory. O(1).
    pub fn used_bytes(&self) -> u64 {
        self.arena.allocated_bytes()
    }

    /// Gets waiting for objects. O(1).
    pub fn waiting_gets(&self) -> usize {
        self.gets.len()
    }

    /// Creates waiting for memory (`--create-wait`).
    pub fn waiting_creates(&self) -> usize {
        self.create_queue.len()
    }

    /// Bytes reserved for objects in the fallback tier, and its segments (`--fallback-dir`).
    pub fn fallback_usage(&self) -> (u64, usize) {
        self.fallback
            .as_ref()
            .map_or((0, 0), |f| (f.allocated(), f.segments()))
    }

    /// The remote pulls asked of the gateway (for metrics).
    pub fn pulls(&self) -> &Pulls {
        &self.pulls
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

    /// The earliest deadline of a waiting get or create, for the poll timeout.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.prune_deadlines();
        while let Some(Reverse((when, get))) = self.deadlines.peek().copied() {
            if self.gets.contains_key(&get) || self.create_queue.contains(get) {
                return Some(when);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Drops the deadlines of gets and creates that are gone (answered, or their client
    /// went away) once they outnumber the live ones: only the earliest is popped as it comes
    /// due, so clients that park waits and disconnect would otherwise grow the heap until
    /// each stale deadline passes. Amortised O(1) per deadline pushed.
    fn prune_deadlines(&mut self) {
        let live = self.gets.len() + self.create_queue.len();
        if self.deadlines.len() > 2 * live + 64 {
            let (gets, creates) = (&self.gets, &self.create_queue);
            self.deadlines
                .retain(|Reverse((_, id))| gets.contains_key(id) || creates.contains(*id));
        }
    }

    /// Answers every waiting get or create whose deadline has passed.
    pub fn expire(&mut self, now: Instant, out: &mut impl Sink) {
        while let Some(Reverse((when, get))) = self.deadlines.peek().copied() {
            if when > now {
                break;
            }
            self.deadlines.pop();
            if !self.expire_create(get, out) {
                self.finish_get(get, out);
            }
        }
        self.serve_waiting_creates(out);
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
            } => {
                if device_num != 0 {
                    warn!(
                        "client {client}: create with device_num {device_num}, but GPU memory is \
                         not supported"
                    );
                    out.reply(
                        client,
                        &Reply::Create {
                            object_id,
                            spec: ObjectSpec::default(),
                            error: PlasmaError::OutOfMemory,
                            store_fd: 0,
                            mmap_size: 0,
                        },
                    );
                } else {
                    let request = CreateRequest::Create {
                        object_id,
                        evict_if_full,
                        data_size,
                        metadata_size,
                    };
                    self.submit_create(client, request, now, out);
                }
            }
            Request::CreateAndSeal {
                object_id,
                evict_if_full,
                data,
                metadata,
                digest,
            } => {
                let objects = vec![BatchObject {
                    object_id,
                    data,
                    metadata,
                    digest,
                }];
                let request = CreateRequest::Seal {
                    evict_if_full,
                    objects,
                    batch: false,
                };
                self.submit_create(client, request, now, out);
            }
            Request::CreateAndSealBatch {
                evict_if_full,
                objects,
            } => {
                let request = CreateRequest::Seal {
                    evict_if_full,
                    objects,
                    batch: true,
                };
                self.submit_create(client, request, now, out);
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
                let victims = choose_victims(&mut self.lru, &mut self.objects, num_bytes, None);
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
            // The server accepts these only from the registered gateway.
            Request::GatewayPullFailed { object_ids } => self.pulls.failed(&object_ids),
            Request::GatewayInfo { object_ids } => {
                let objects = object_ids
                    .iter()
                    .filter_map(|id| {
                        self.objects
                            .get(id)
                            .filter(|o| o.state != State::Created)
                            .map(|o| o.info(*id))
                    })
                    .collect();
                out.reply(client, &Reply::GatewayInfo { objects });
            }
            // Handled by the server (they concern the connection, not the store).
            Request::Disconnect
            | Request::GatewayRegister
            | Request::Subscribe
            | Request::Unsubscribe
            | Request::Data { .. } => {}
        }
        self.serve_waiting_creates(out);
    }

    /// A gateway registered (`true`) or its connection went away (`false`): from now on
    /// waiting gets for objects not held here are (or no longer are) reported to it.
    pub fn set_gateway(&mut self, registered: bool) {
        self.pulls.set_registered(registered);
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
        if state.creates > 0 {
            self.forget_creates(client);
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
        self.serve_waiting_creates(out);
    }

    /// Answers a successful Create: the creator's reference, the spec, the segment's fd.
    fn reply_created(&mut self, client: ClientId, object_id: ObjectId, out: &mut impl Sink) {
        self.add_ref(client, object_id);
        let spec = self
            .objects
            .get(&object_id)
            .map(Object::spec)
            .unwrap_or_default();
        let segment = spec.segment_index;
        out.reply(
            client,
            &Reply::Create {
                object_id,
                spec,
                error: PlasmaError::Ok,
                store_fd: segment,
                mmap_size: self.mmap_size_of(segment),
            },
        );
        self.send_segment_once(client, segment, out);
    }

    fn send_segment_once(&mut self, client: ClientId, segment: i32, out: &mut impl Sink) {
        if let Some(c) = self.clients.get_mut(&client)
            && !c.segments_sent.contains(&segment)
        {
            c.segments_sent.push(segment);
            out.send_segment(client, segment);
        }
    }

    /// Allocates and enters a new CREATED object (without any reference).
    fn create_object(
        &mut self,
        client: ClientId,
        object_id: ObjectId,
        evict_if_full: bool,
        (data_size, metadata_size): (u64, u64),
        fallback: bool,
        out: &mut impl Sink,
    ) -> Result<(), Refusal> {
        if self.objects.contains_key(&object_id) {
            return Err(PlasmaError::ObjectExists.into());
        }
        let Some(size) = data_size.checked_add(metadata_size) else {
            warn!(
                "client {client}: create of {object_id} with sizes {data_size} + {metadata_size} overflows"
            );
            return Err(PlasmaError::OutOfMemory.into());
        };
        if size > self.capacity && !fallback {
            debug!("client {client}: {object_id} of {size} bytes exceeds the capacity");
            return Err(Refusal::NeverFits);
        }
        self.enforce_quota(client, size, evict_if_full, out)?;
        let found = if fallback {
            self.fallback.as_mut().and_then(|f| f.alloc(size))
        } else {
            self.allocate(size, evict_if_full, out)
                .map(|offset| (SEGMENT_ID, offset))
        };
        let Some((segment, offset)) = found else {
            debug!(
                "not enough memory to create the object {object_id}, data_size={data_size}, \
                 metadata_size={metadata_size}"
            );
            return Err(Refusal::Full);
        };
        let owner = self
            .clients
            .get(&client)
            .and_then(|c| c.quota.as_ref())
            .and_then(|_| u32::try_from(client).ok());
        self.created_objects += 1;
        self.objects.insert(
            object_id,
            Object {
                state: State::Created,
                segment,
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
        self.pulls.created(&object_id);
        Ok(())
    }

    fn create_and_seal(
        &mut self,
        client: ClientId,
        evict_if_full: bool,
        objects: &[BatchObject],
        fallback: bool,
        out: &mut impl Sink,
    ) -> Result<(), Refusal> {
        for (i, b) in objects.iter().enumerate() {
            if let Err(e) = self.create_object(
                client,
                b.object_id,
                evict_if_full,
                (b.data.len() as u64, b.metadata.len() as u64),
                fallback,
                out,
            ) {
                // All or nothing: drop what this batch created so far.
                for done in objects.iter().take(i) {
                    self.remove_object(done.object_id);
                }
                return Err(e);
            }
        }
        let mut infos = Vec::with_capacity(objects.len());
        let mut records = Vec::new();
        for b in objects {
            let Some(o) = self.objects.get(&b.object_id) else {
                continue;
            };
            let (offset, data_size) = (o.offset, o.data_size);
            let copied = match self.segment_by_id(o.segment) {
                Some(seg) => seg
                    .write(offset, &b.data)
                    .and_then(|()| seg.write(offset + data_size, &b.metadata)),
                None => Err(io::Error::other("no such segment")),
            };
            let Some(o) = self.objects.get_mut(&b.object_id) else {
                continue;
            };
            if let Err(e) = copied {
                // Cannot happen: the arena only hands out ranges inside the segment.
                warn!("copying {} into the segment failed: {e}", b.object_id);
            }
            o.state = State::Sealed;
            self.created_objects = self.created_objects.saturating_sub(1);
            o.digest = Some(b.digest);
            o.construct_duration = 0;
            infos.push(seal_info(b.object_id, o));
            if self.persist.is_some() && o.segment == SEGMENT_ID {
                records.push(persisted::seal_record(b.object_id, o));
            }
        }
        self.persist_records(&records);
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
        Ok(())
    }

    /// Whether there is a fallback tier.
    fn has_fallback(&self) -> bool {
        self.fallback.is_some()
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
        self.created_objects = self.created_objects.saturating_sub(1);
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
        if self.pulls.registered() {
            let objects = &self.objects;
            let misses = self.pulls.take_misses(
                missing
                    .iter()
                    .copied()
                    .filter(|id| !objects.contains_key(id)),
            );
            if !misses.is_empty() {
                out.gateway_miss(&misses);
            }
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
        // The distinct segments of the objects found, in order of first appearance.
        let mut store_fds: Vec<i32> = Vec::new();
        for spec in objects.iter().flatten() {
            if !store_fds.contains(&spec.segment_index) {
                store_fds.push(spec.segment_index);
            }
        }
        let mmap_sizes = store_fds.iter().map(|&s| self.mmap_size_of(s)).collect();
        out.reply(
            client,
            &Reply::Get {
                object_ids,
                objects,
                store_fds: store_fds.clone(),
                mmap_sizes,
            },
        );
        for segment in store_fds {
            self.send_segment_once(client, segment, out);
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
        if o.state == State::Created {
            self.created_objects = self.created_objects.saturating_sub(1);
        }
        self.create_queue.freed = true;
        if o.ref_count > 0 {
            self.unpin(o.size(), o.owner.is_some());
        }
        self.deferred_deletes.remove(&object_id);
        if o.state == State::Evicted {
            if self.spill_persists() {
                self.persist_delete(object_id);
            }
            if let Some(e) = self.external.as_mut() {
                e.remove(object_id);
            }
            return true;
        }
        self.free_block(object_id, o.segment, o.offset, o.size());
        if o.state == State::Sealed && o.segment == SEGMENT_ID {
            self.persist_delete(object_id);
        }
        true
    }
}
