//! Waiting creates (`--create-wait MS`): a create or create-and-seal that does not fit even
//! after eviction is held, not answered, until memory frees or its wait runs out.
//!
//! Waiting creates are served strictly in arrival order: while one waits, every later create
//! queues behind it, so a large create is never starved by small ones that would fit. Whenever
//! memory may have become free (an object freed, evicted, or made evictable), the store tries
//! the head of the queue again, and the next, until one still does not fit. A waiting create's
//! deadline sits in the same deadline heap as the gets' (the ids come from one counter); when it
//! passes, the create gets the fallback tier's chance and otherwise `PlasmaStoreFull`
//! (OutOfMemory), exactly the answer it would have had at once without a wait. Only creates
//! wait: every other request, of any client, is handled as it arrives. A client that
//! disconnects is forgotten.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::protocol::{BatchObject, ObjectId, ObjectSpec, PlasmaError, Reply};

use super::{ClientId, Sink, Store};

/// A create request as the store keeps it while it waits.
#[derive(Debug)]
pub(super) enum CreateRequest {
    /// A Create: the client writes the object after the reply.
    Create {
        object_id: ObjectId,
        evict_if_full: bool,
        data_size: u64,
        metadata_size: u64,
    },
    /// A CreateAndSeal (`batch == false`, one object) or CreateAndSealBatch.
    Seal {
        evict_if_full: bool,
        objects: Vec<BatchObject>,
        batch: bool,
    },
}

impl CreateRequest {
    /// Payload bytes the request carries (create-and-seal), held while it waits.
    fn inline_bytes(&self) -> u64 {
        match self {
            CreateRequest::Create { .. } => 0,
            CreateRequest::Seal { objects, .. } => objects
                .iter()
                .map(|b| (b.data.len() + b.metadata.len()) as u64)
                .sum(),
        }
    }

    /// A short description for the log.
    fn describe(&self) -> String {
        match self {
            CreateRequest::Create {
                object_id,
                data_size,
                metadata_size,
                ..
            } => format!("create of {object_id} ({data_size} + {metadata_size} bytes)"),
            CreateRequest::Seal { objects, .. } => format!(
                "create-and-seal of {} objects ({} bytes)",
                objects.len(),
                self.inline_bytes()
            ),
        }
    }
}

/// Why a create was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// It does not fit now, though it might once memory frees.
    Full,
    /// It can never fit in shared memory (larger than the capacity): no use waiting.
    NeverFits,
    /// It cannot be done (exists, too large, over its quota, ...): answer with this error.
    Error(PlasmaError),
}

impl From<PlasmaError> for Refusal {
    fn from(e: PlasmaError) -> Refusal {
        Refusal::Error(e)
    }
}

/// A create waiting for memory.
#[derive(Debug)]
struct Waiting {
    client: ClientId,
    request: CreateRequest,
}

/// The queue of waiting creates.
#[derive(Debug, Default)]
pub(super) struct CreateQueue {
    /// How long a create may wait; zero: answer at once (the original's behaviour).
    pub(super) wait: Duration,
    /// Waiting creates by id; ids grow with arrival, so the first entry is the head.
    waiting: BTreeMap<u64, Waiting>,
    /// Set when memory may have become free since the head last failed.
    pub(super) freed: bool,
}

impl CreateQueue {
    /// An empty queue whose creates wait up to `wait`.
    pub(super) fn new(wait: Duration) -> CreateQueue {
        CreateQueue {
            wait,
            ..CreateQueue::default()
        }
    }

    /// Whether `id` is a waiting create (for the shared deadline heap).
    pub(super) fn contains(&self, id: u64) -> bool {
        self.waiting.contains_key(&id)
    }

    /// Number of waiting creates.
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }
}

impl Store {
    /// Carries out a create now, queues it, or refuses it.
    pub(super) fn submit_create(
        &mut self,
        client: ClientId,
        request: CreateRequest,
        now: Instant,
        out: &mut impl Sink,
    ) {
        let queue = &self.create_queue;
        if queue.waiting.is_empty() || queue.wait.is_zero() {
            match self.attempt_create(client, &request, out) {
                Ok(()) => return,
                Err(Refusal::Error(e)) => return refuse(client, &request, e, out),
                Err(Refusal::NeverFits) => return self.give_up(client, request, out),
                Err(Refusal::Full) if self.create_queue.wait.is_zero() => {
                    return self.give_up(client, request, out);
                }
                // Everything that could be freed was just tried.
                Err(Refusal::Full) => self.create_queue.freed = false,
            }
        }
        let (queued, held) = self
            .clients
            .get(&client)
            .map_or((0, 0), |c| (c.creates, c.create_bytes));
        let bytes = request.inline_bytes();
        if queued >= self.max_pending_gets || held.saturating_add(bytes) > self.capacity {
            // A create-and-seal waits with its payload: bound what one client parks here.
            warn!(
                "client {client} has {queued} creates ({held} bytes) waiting already; refusing \
                 this one"
            );
            return refuse(client, &request, PlasmaError::OutOfMemory, out);
        }
        let id = self.next_get;
        self.next_get += 1;
        if let Some(deadline) = now.checked_add(self.create_queue.wait) {
            self.deadlines.push(Reverse((deadline, id)));
        }
        if let Some(c) = self.clients.get_mut(&client) {
            c.creates += 1;
            c.create_bytes += bytes;
        }
        debug!(
            "client {client}: create waits for memory ({} waiting)",
            self.create_queue.len() + 1
        );
        self.create_queue
            .waiting
            .insert(id, Waiting { client, request });
    }

    /// Serves waiting creates from the head while they fit, if memory may have freed.
    pub(super) fn serve_waiting_creates(&mut self, out: &mut impl Sink) {
        if !self.create_queue.freed || self.create_queue.waiting.is_empty() {
            return;
        }
        while let Some((id, w)) = self.create_queue.waiting.pop_first() {
            let (client, bytes) = (w.client, w.request.inline_bytes());
            match self.attempt_create(client, &w.request, out) {
                Err(Refusal::Full) => {
                    self.create_queue.waiting.insert(id, w);
                    break;
                }
                Err(Refusal::Error(e)) => refuse(client, &w.request, e, out),
                Err(Refusal::NeverFits) => self.give_up(client, w.request, out),
                Ok(()) => {}
            }
            self.unqueued(client, bytes);
        }
        // What the failed attempt itself evicted is already accounted for.
        self.create_queue.freed = false;
    }

    /// Answers a waiting create whose deadline passed. Returns whether `id` was one.
    pub(super) fn expire_create(&mut self, id: u64, out: &mut impl Sink) -> bool {
        let Some(w) = self.create_queue.waiting.remove(&id) else {
            return false;
        };
        self.unqueued(w.client, w.request.inline_bytes());
        // The head may have been the one blocking the others.
        self.create_queue.freed = true;
        self.give_up(w.client, w.request, out);
        true
    }

    /// Takes a create that left the queue off its client's counts.
    fn unqueued(&mut self, client: ClientId, bytes: u64) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.creates = c.creates.saturating_sub(1);
            c.create_bytes = c.create_bytes.saturating_sub(bytes);
        }
    }

    /// Forgets the waiting creates of a client that went away.
    pub(super) fn forget_creates(&mut self, client: ClientId) {
        let before = self.create_queue.waiting.len();
        self.create_queue.waiting.retain(|_, w| w.client != client);
        if self.create_queue.waiting.len() != before {
            self.create_queue.freed = true;
        }
    }

    /// A create that does not fit in shared memory and may wait no longer: the fallback tier
    /// if there is one, else OutOfMemory.
    fn give_up(&mut self, client: ClientId, request: CreateRequest, out: &mut impl Sink) {
        match self.attempt_fallback(client, &request, out) {
            Ok(()) => {}
            Err(Refusal::Error(e)) => refuse(client, &request, e, out),
            Err(Refusal::Full | Refusal::NeverFits) => {
                warn!(
                    "client {client}: not enough memory for its {}: replying OutOfMemory",
                    request.describe()
                );
                refuse(client, &request, PlasmaError::OutOfMemory, out)
            }
        }
    }

    /// Tries to carry out a create in shared memory, answering it if it succeeds.
    fn attempt_create(
        &mut self,
        client: ClientId,
        request: &CreateRequest,
        out: &mut impl Sink,
    ) -> Result<(), Refusal> {
        self.attempt(client, request, false, out)
    }

    /// Tries to carry out a create in the fallback tier, answering it if it succeeds.
    fn attempt_fallback(
        &mut self,
        client: ClientId,
        request: &CreateRequest,
        out: &mut impl Sink,
    ) -> Result<(), Refusal> {
        if !self.has_fallback() {
            return Err(Refusal::Full);
        }
        self.attempt(client, request, true, out)
    }

    /// Carries out a create in shared memory, or in the fallback tier, and answers it.
    fn attempt(
        &mut self,
        client: ClientId,
        request: &CreateRequest,
        fallback: bool,
        out: &mut impl Sink,
    ) -> Result<(), Refusal> {
        match request {
            CreateRequest::Create {
                object_id,
                evict_if_full,
                data_size,
                metadata_size,
            } => {
                self.create_object(
                    client,
                    *object_id,
                    *evict_if_full,
                    (*data_size, *metadata_size),
                    fallback,
                    out,
                )?;
                self.reply_created(client, *object_id, out);
            }
            CreateRequest::Seal {
                evict_if_full,
                objects,
                batch,
            } => {
                self.create_and_seal(client, *evict_if_full, objects, fallback, out)?;
                out.reply(client, &seal_reply(*batch, PlasmaError::Ok));
            }
        }
        Ok(())
    }
}

fn seal_reply(batch: bool, error: PlasmaError) -> Reply {
    if batch {
        Reply::CreateAndSealBatch { error }
    } else {
        Reply::CreateAndSeal { error }
    }
}

/// Answers a create with an error.
fn refuse(client: ClientId, request: &CreateRequest, error: PlasmaError, out: &mut impl Sink) {
    let reply = match request {
        CreateRequest::Create { object_id, .. } => Reply::Create {
            object_id: *object_id,
            spec: ObjectSpec::default(),
            error,
            store_fd: 0,
            mmap_size: 0,
        },
        CreateRequest::Seal { batch, .. } => seal_reply(*batch, error),
    };
    out.reply(client, &reply);
}
