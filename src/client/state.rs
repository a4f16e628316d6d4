//! The client's state behind its mutex: the connection, the mapped segments, and
//! libplasma's local reference counting (§5.3 of the protocol notes).
//!
//! Every method here runs with the lock held and never drops a buffer, so a buffer's release
//! (which takes the lock) cannot deadlock against it. Methods that produce buffers return
//! their parts, and the caller wraps them after the lock is released.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::Error;
use super::conn::Conn;
use super::memory::{MutRegion, Region, Segment};
use crate::digest::object_digest;
use crate::protocol::{
    BatchObject, Digest, MessageType, ObjectId, ObjectInfo, ObjectSpec, PlasmaError, Reply, Request,
};

/// What [`Inner::get`] found for one requested id: the object's bytes (data then metadata)
/// and the data length.
pub type Found = (ObjectId, Region, usize);

/// One object this client uses (libplasma's `objects_in_use` entry).
#[derive(Debug)]
struct InUse {
    /// Local references: one per live buffer, plus one from create until seal or abort.
    count: usize,
    /// Data followed by metadata.
    region: Region,
    /// Length of the data part of `region`.
    data_len: usize,
    /// Sealed (by this client, or already when it got the object).
    sealed: bool,
    /// The creator's `MutableBuffer` is alive.
    writer: bool,
}

impl InUse {
    fn parts(&self) -> (&[u8], &[u8]) {
        split(&self.region, self.data_len)
    }
}

/// Data and metadata of an object's region.
pub fn split(region: &Region, data_len: usize) -> (&[u8], &[u8]) {
    let bytes = region.bytes();
    bytes.split_at_checked(data_len).unwrap_or((bytes, &[]))
}

/// The state shared by a client and its buffers.
#[derive(Debug)]
pub struct Inner {
    conn: Option<Conn>,
    /// Why `conn` is `None`.
    closed_reason: String,
    /// Every segment the store has sent this client, by the store's id. The store keeps the
    /// same set per connection and sends a segment's fd only once, so the two must agree.
    segments: HashMap<i32, Arc<Segment>>,
    in_use: HashMap<ObjectId, InUse>,
    /// Ids whose deletion waits for this client's last release.
    deferred_deletes: HashSet<ObjectId>,
    /// A subscription was sent on this connection.
    subscribed: bool,
}

fn bad(what: impl Into<String>) -> Error {
    Error::BadReply(what.into())
}

/// The reply did not decode into the variant its type stands for (cannot happen with
/// `decode_reply`, but is not worth a panic).
fn mismatch(r: &Reply) -> Error {
    bad(format!("unexpected {:?} body", r.message_type()))
}

fn size_of(id: ObjectId, data_size: u64, metadata_len: usize) -> Result<u64, Error> {
    u64::try_from(metadata_len)
        .ok()
        .and_then(|m| m.checked_add(data_size))
        .filter(|&t| i64::try_from(t).is_ok())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "object {id}: {data_size} bytes of data plus {metadata_len} of metadata is \
                 more than a store can hold"
            ))
        })
}

impl Inner {
    /// State for a fresh connection.
    pub fn new(conn: Conn) -> Inner {
        Inner {
            conn: Some(conn),
            closed_reason: String::new(),
            segments: HashMap::new(),
            in_use: HashMap::new(),
            deferred_deletes: HashSet::new(),
            subscribed: false,
        }
    }

    fn conn(&mut self) -> Result<&mut Conn, Error> {
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(Error::Disconnected {
                reason: self.closed_reason.clone(),
            }),
        }
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Closes the connection and forgets every object: the store drops this client's
    /// references when it sees the socket close. Mappings stay alive in the buffers that
    /// still use them.
    pub fn close(&mut self, reason: String) {
        if self.conn.take().is_some() {
            log::debug!("plasma client: connection closed: {reason}");
            self.closed_reason = reason;
        }
        self.in_use.clear();
        self.deferred_deletes.clear();
        self.segments.clear();
        self.subscribed = false;
    }

    /// Passes `r` through, closing the connection first if it is a fatal error.
    fn check<T>(&mut self, r: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &r
            && e.is_fatal()
            && self.conn.is_some()
        {
            self.close(format!("closed after an earlier error: {e}"));
        }
        r
    }

    fn call(&mut self, req: &Request) -> Result<Reply, Error> {
        let r = self.conn().and_then(|c| c.call(req));
        self.check(r)
    }

    fn send(&mut self, req: &Request) -> Result<(), Error> {
        let r = self.conn().and_then(|c| c.send(req));
        self.check(r)
    }

    /// The mapping of segment `id`, receiving and mapping its fd first if the store has not
    /// sent it to this client before (the store sends each segment's fd exactly once).
    fn segment(&mut self, id: i32, mmap_size: i64) -> Result<Arc<Segment>, Error> {
        if let Some(s) = self.segments.get(&id) {
            return Ok(Arc::clone(s));
        }
        let fd = self.conn()?.recv_fd()?;
        let segment = Arc::new(Segment::map(id, fd, mmap_size)?);
        self.segments.insert(id, Arc::clone(&segment));
        Ok(segment)
    }

    /// ConnectRequest: the store's capacity.
    pub fn connect(&mut self) -> Result<u64, Error> {
        let r = match self.call(&Request::Connect)? {
            Reply::Connect { memory_capacity } => u64::try_from(memory_capacity)
                .map_err(|_| bad(format!("negative capacity {memory_capacity}"))),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Creates an object; returns its writable region and data length. The metadata is
    /// already written.
    pub fn create(
        &mut self,
        id: ObjectId,
        data_size: u64,
        metadata: &[u8],
        evict_if_full: bool,
    ) -> Result<(MutRegion, usize), Error> {
        size_of(id, data_size, metadata.len())?;
        let req = Request::Create {
            object_id: id,
            evict_if_full,
            data_size,
            metadata_size: metadata.len() as u64,
            device_num: 0,
        };
        let reply = self.call(&req)?;
        let r = self.finish_create(id, data_size, metadata, reply);
        self.check(r)
    }

    fn finish_create(
        &mut self,
        id: ObjectId,
        data_size: u64,
        metadata: &[u8],
        reply: Reply,
    ) -> Result<(MutRegion, usize), Error> {
        let Reply::Create {
            object_id,
            spec,
            error,
            store_fd,
            mmap_size,
        } = reply
        else {
            return Err(mismatch(&reply));
        };
        if error != PlasmaError::Ok {
            // No fd follows an error reply.
            return Err(Error::from_store(
                MessageType::CreateRequest,
                error,
                Some(id),
            ));
        }
        // The fd comes before anything can go wrong, so the stream stays in step.
        let segment = self.segment(store_fd, mmap_size)?;
        let expected = ObjectSpec {
            segment_index: store_fd,
            data_offset: spec.data_offset,
            data_size,
            metadata_offset: spec.data_offset.wrapping_add(data_size),
            metadata_size: metadata.len() as u64,
            device_num: 0,
        };
        if object_id != id || spec != expected || self.in_use.contains_key(&id) {
            return Err(bad(format!(
                "create of {id} answered with object {object_id} at {spec:?} in segment \
                 {store_fd}"
            )));
        }
        let total = data_size + metadata.len() as u64;
        let mut region = MutRegion::new(&segment, spec.data_offset, total).ok_or_else(|| {
            bad(format!(
                "object {id} at {spec:?} lies outside segment {store_fd} ({} bytes)",
                segment.len()
            ))
        })?;
        let data_len = usize::try_from(data_size).map_err(|_| bad("data size"))?;
        if let Some(dst) = region.bytes_mut().get_mut(data_len..) {
            dst.copy_from_slice(metadata);
        }
        self.in_use.insert(
            id,
            InUse {
                // One for the buffer, one held until seal (or abort).
                count: 2,
                region: region.view(),
                data_len,
                sealed: false,
                writer: true,
            },
        );
        Ok((region, data_len))
    }

    /// The creator's `MutableBuffer` is gone (or became a read-only buffer).
    pub fn clear_writer(&mut self, id: ObjectId) {
        if let Some(e) = self.in_use.get_mut(&id) {
            e.writer = false;
        }
    }

    /// Seals an object this client created, sending its digest, and drops the reference
    /// create held for the seal.
    pub fn seal(&mut self, id: ObjectId) -> Result<(), Error> {
        self.seal_with(id, None)
    }

    /// [`Inner::seal`] with the digest already computed over the object's current contents
    /// (by [`crate::digest::copy_and_digest`] while writing them); `None` computes it here.
    pub fn seal_with(&mut self, id: ObjectId, known: Option<Digest>) -> Result<(), Error> {
        self.conn()?;
        let digest = match self.in_use.get(&id) {
            None => return Err(Error::ObjectNotFound(id)),
            Some(e) if e.sealed => return Err(Error::AlreadySealed(id)),
            Some(e) if e.writer => return Err(Error::ObjectInUse(id)),
            Some(e) => known.unwrap_or_else(|| {
                let (data, metadata) = e.parts();
                object_digest(data, metadata)
            }),
        };
        let r = match self.call(&Request::Seal {
            object_id: id,
            digest,
        })? {
            Reply::Seal { object_id, .. } if object_id != id => {
                Err(bad(format!("seal of {id} answered for {object_id}")))
            }
            Reply::Seal { error, .. } if error != PlasmaError::Ok => {
                Err(Error::from_store(MessageType::SealRequest, error, Some(id)))
            }
            Reply::Seal { .. } => Ok(()),
            other => Err(mismatch(&other)),
        };
        self.check(r)?;
        if let Some(e) = self.in_use.get_mut(&id) {
            e.sealed = true;
        }
        self.release(id);
        Ok(())
    }

    /// Drops one local reference; at zero, tells the store (and performs a deletion that
    /// waited for it). Errors close the connection; there is no caller to report them to.
    pub fn release(&mut self, id: ObjectId) {
        if self.conn.is_none() {
            return;
        }
        let Some(e) = self.in_use.get_mut(&id) else {
            log::warn!("plasma client: release of {id}, which this client does not use");
            return;
        };
        e.count = e.count.saturating_sub(1);
        if e.count > 0 {
            return;
        }
        let sealed = e.sealed;
        self.in_use.remove(&id);
        if !sealed {
            // Cannot happen (create's own reference lasts until seal or abort); never release
            // an unsealed object, which would make it evictable in the reference store.
            return;
        }
        let mut r = self.send(&Request::Release { object_id: id });
        if r.is_ok() && self.deferred_deletes.remove(&id) {
            r = self
                .call(&Request::Delete {
                    object_ids: vec![id],
                })
                .map(drop);
        }
        if let Err(e) = r {
            log::warn!("plasma client: release of {id} failed: {e}");
        }
    }

    /// Aborts an unsealed object this client created, once no buffer refers to it.
    pub fn abort(&mut self, id: ObjectId) -> Result<(), Error> {
        self.conn()?;
        match self.in_use.get(&id) {
            None => return Err(Error::ObjectNotFound(id)),
            Some(e) if e.sealed => return Err(Error::AlreadySealed(id)),
            Some(e) if e.count > 1 => return Err(Error::ObjectInUse(id)),
            Some(_) => {}
        }
        let r = match self.call(&Request::Abort { object_id: id })? {
            Reply::Abort { object_id } if object_id == id => Ok(()),
            Reply::Abort { object_id } => {
                Err(bad(format!("abort of {id} answered for {object_id}")))
            }
            other => Err(mismatch(&other)),
        };
        self.check(r)?;
        self.in_use.remove(&id);
        self.deferred_deletes.remove(&id);
        Ok(())
    }

    /// Gets objects: sealed objects this client already uses are served locally, the rest
    /// are asked from the store (once per distinct id). Each `Some` holds one new local
    /// reference, which the caller hands to a buffer.
    pub fn get(&mut self, ids: &[ObjectId], timeout_ms: i64) -> Result<Vec<Option<Found>>, Error> {
        self.conn()?;
        let mut remote = Vec::new();
        let mut asked = HashSet::new();
        for &id in ids {
            match self.in_use.get(&id) {
                Some(e) if e.sealed => {}
                // libplasma aborts the process here; waiting could never end.
                Some(_) if timeout_ms == -1 => return Err(Error::ObjectNotSealed(id)),
                // Our own unsealed object: not available (libplasma warns and says the same).
                Some(_) => {}
                None => {
                    if asked.insert(id) {
                        remote.push(id);
                    }
                }
            }
        }
        let mut found = HashMap::new();
        if !remote.is_empty() {
            let reply = self.call(&Request::Get {
                object_ids: remote.clone(),
                timeout_ms,
            })?;
            let r = self.take_get_reply(&remote, reply);
            found = self.check(r)?;
        }
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(e) = self.in_use.get_mut(&id) {
                if e.sealed {
                    e.count += 1;
                    out.push(Some((id, e.region.clone(), e.data_len)));
                } else {
                    out.push(None);
                }
            } else if let Some((region, data_len)) = found.get(&id) {
                self.in_use.insert(
                    id,
                    InUse {
                        count: 1,
                        region: region.clone(),
                        data_len: *data_len,
                        sealed: true,
                        writer: false,
                    },
                );
                out.push(Some((id, region.clone(), *data_len)));
            } else {
                out.push(None);
            }
        }
        Ok(out)
    }

    fn take_get_reply(
        &mut self,
        asked: &[ObjectId],
        reply: Reply,
    ) -> Result<HashMap<ObjectId, (Region, usize)>, Error> {
        let Reply::Get {
            object_ids,
            objects,
            store_fds,
            mmap_sizes,
        } = reply
        else {
            return Err(mismatch(&reply));
        };
        // First the fds, one per segment new to this client, in list order.
        for (&seg, &size) in store_fds.iter().zip(&mmap_sizes) {
            self.segment(seg, size)?;
        }
        if object_ids.len() < asked.len() {
            return Err(bad(format!(
                "get of {} objects answered with {}",
                asked.len(),
                object_ids.len()
            )));
        }
        let mut found = HashMap::new();
        for ((&want, got), spec) in asked.iter().zip(&object_ids).zip(&objects) {
            if want != *got {
                return Err(bad(format!("get of {want} answered for {got}")));
            }
            if let Some(spec) = spec {
                found.insert(want, self.object_region(want, spec)?);
            }
        }
        Ok(found)
    }

    /// The bytes of a sealed object the store located (metadata right after the data, as
    /// libplasma assumes on get).
    fn object_region(&self, id: ObjectId, spec: &ObjectSpec) -> Result<(Region, usize), Error> {
        if spec.device_num != 0 {
            return Err(bad(format!("object {id} is on device {}", spec.device_num)));
        }
        let segment = self.segments.get(&spec.segment_index).ok_or_else(|| {
            bad(format!(
                "object {id} is in segment {}, which the store never sent",
                spec.segment_index
            ))
        })?;
        let region = spec
            .data_size
            .checked_add(spec.metadata_size)
            .and_then(|total| Region::new(segment, spec.data_offset, total))
            .ok_or_else(|| {
                bad(format!(
                    "object {id} at {spec:?} lies outside segment {} ({} bytes)",
                    spec.segment_index,
                    segment.len()
                ))
            })?;
        let data_len = usize::try_from(spec.data_size).map_err(|_| bad("data size"))?;
        Ok((region, data_len))
    }

    /// Whether the store has the object sealed (answered locally for sealed objects in use).
    pub fn contains(&mut self, id: ObjectId) -> Result<bool, Error> {
        self.conn()?;
        if self.in_use.get(&id).is_some_and(|e| e.sealed) {
            return Ok(true);
        }
        let r = match self.call(&Request::Contains { object_id: id })? {
            Reply::Contains {
                object_id,
                has_object,
            } if object_id == id => Ok(has_object),
            Reply::Contains { object_id, .. } => {
                Err(bad(format!("contains of {id} answered for {object_id}")))
            }
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Deletes objects; those this client uses are deleted after its last release.
    pub fn delete(&mut self, ids: &[ObjectId]) -> Result<(), Error> {
        self.conn()?;
        let mut remote = Vec::new();
        let mut seen = HashSet::new();
        for &id in ids {
            if self.in_use.contains_key(&id) {
                self.deferred_deletes.insert(id);
            } else if seen.insert(id) {
                remote.push(id);
            }
        }
        if remote.is_empty() {
            return Ok(());
        }
        let r = match self.call(&Request::Delete { object_ids: remote })? {
            // libplasma ignores the codes: missing objects are fine, in-use ones are deleted
            // by the store when their last holder releases them.
            Reply::Delete { .. } => Ok(()),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Every object in the store.
    pub fn list(&mut self) -> Result<Vec<ObjectInfo>, Error> {
        let r = match self.call(&Request::List)? {
            Reply::List { objects } => Ok(objects),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Evicts at least `num_bytes` of unreferenced objects; returns the bytes evicted.
    pub fn evict(&mut self, num_bytes: u64) -> Result<u64, Error> {
        let r = match self.call(&Request::Evict { num_bytes })? {
            Reply::Evict { num_bytes } => Ok(num_bytes),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Marks objects as recently used.
    pub fn refresh(&mut self, ids: &[ObjectId]) -> Result<(), Error> {
        let r = match self.call(&Request::RefreshLru {
            object_ids: ids.to_vec(),
        })? {
            Reply::RefreshLru => Ok(()),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Names the client and sets its quota.
    pub fn set_options(&mut self, client_name: &str, quota: u64) -> Result<(), Error> {
        let output_memory_quota = i64::try_from(quota)
            .map_err(|_| Error::InvalidArgument(format!("quota of {quota} bytes")))?;
        let r = match self.call(&Request::SetOptions {
            client_name: client_name.as_bytes().to_vec(),
            output_memory_quota,
        })? {
            Reply::SetOptions {
                error: PlasmaError::Ok,
            } => Ok(()),
            Reply::SetOptions {
                error: PlasmaError::OutOfMemory,
            } => Err(Error::QuotaRefused {
                client_name: client_name.to_string(),
                quota,
            }),
            Reply::SetOptions { error } => Err(Error::StoreError {
                request: MessageType::SetOptionsRequest,
                code: error,
            }),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// The store's eviction-policy report.
    pub fn debug_string(&mut self) -> Result<String, Error> {
        let r = match self.call(&Request::GetDebugString)? {
            Reply::DebugString { debug_string } => Ok(debug_string),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Creates, fills and seals an object in one message.
    pub fn create_and_seal(
        &mut self,
        id: ObjectId,
        data: &[u8],
        metadata: &[u8],
    ) -> Result<(), Error> {
        size_of(id, data.len() as u64, metadata.len())?;
        let req = Request::CreateAndSeal {
            object_id: id,
            evict_if_full: true,
            data: data.to_vec(),
            metadata: metadata.to_vec(),
            digest: object_digest(data, metadata),
        };
        let r = match self.call(&req)? {
            Reply::CreateAndSeal {
                error: PlasmaError::Ok,
            } => Ok(()),
            Reply::CreateAndSeal { error } => Err(Error::from_store(
                MessageType::CreateAndSealRequest,
                error,
                Some(id),
            )),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Creates, fills and seals several objects in one message, all or none.
    pub fn create_and_seal_batch(
        &mut self,
        objects: &[(ObjectId, &[u8], &[u8])],
    ) -> Result<(), Error> {
        self.conn()?;
        if objects.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(objects.len());
        for &(id, data, metadata) in objects {
            size_of(id, data.len() as u64, metadata.len())?;
            batch.push(BatchObject {
                object_id: id,
                data: data.to_vec(),
                metadata: metadata.to_vec(),
                digest: object_digest(data, metadata),
            });
        }
        let req = Request::CreateAndSealBatch {
            evict_if_full: true,
            objects: batch,
        };
        let r = match self.call(&req)? {
            Reply::CreateAndSealBatch {
                error: PlasmaError::Ok,
            } => Ok(()),
            Reply::CreateAndSealBatch { error } => Err(Error::from_store(
                MessageType::CreateAndSealBatchRequest,
                error,
                None,
            )),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Registers this connection as the store's gateway: sends the request and one end of a
    /// new socket pair, for the store's misses; returns the other end.
    pub fn register_gateway(&mut self) -> Result<UnixStream, Error> {
        let ours = self.pass_socket(&Request::GatewayRegister)?;
        let r = self
            .conn()
            .and_then(|c| c.recv(MessageType::GatewayRegisterReply));
        let r = match self.check(r)? {
            Reply::GatewayRegister {
                error: PlasmaError::Ok,
            } => Ok(ours),
            Reply::GatewayRegister {
                error: PlasmaError::ObjectExists,
            } => Err(Error::GatewayTaken),
            Reply::GatewayRegister { error } => Err(Error::from_store(
                MessageType::GatewayRegisterRequest,
                error,
                None,
            )),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Tells the store these pulls failed (gateway only; no reply).
    pub fn gateway_pull_failed(&mut self, ids: &[ObjectId]) -> Result<(), Error> {
        self.send(&Request::GatewayPullFailed {
            object_ids: ids.to_vec(),
        })
    }

    /// Describes the sealed objects among `ids` (gateway only).
    pub fn gateway_info(&mut self, ids: &[ObjectId]) -> Result<Vec<ObjectInfo>, Error> {
        let r = match self.call(&Request::GatewayInfo {
            object_ids: ids.to_vec(),
        })? {
            Reply::GatewayInfo { objects } => Ok(objects),
            other => Err(mismatch(&other)),
        };
        self.check(r)
    }

    /// Subscribes: sends the request and one end of a new socket pair; returns the other.
    pub fn subscribe(&mut self) -> Result<UnixStream, Error> {
        self.conn()?;
        if self.subscribed {
            return Err(Error::AlreadySubscribed);
        }
        let ours = self.pass_socket(&Request::Subscribe)?;
        self.subscribed = true;
        Ok(ours)
    }

    /// Sends `req` and one end of a new socket pair (subscribe, gateway registration);
    /// returns the other end.
    fn pass_socket(&mut self, req: &Request) -> Result<UnixStream, Error> {
        let (ours, theirs) = UnixStream::pair()?;
        // The store writes to its end from its event loop: it must never block there.
        theirs.set_nonblocking(true)?;
        let r = self
            .conn()
            .and_then(|c| c.send(req))
            .and_then(|()| self.conn())
            .and_then(|c| c.send_fd(theirs.as_fd()));
        self.check(r)?;
        Ok(ours)
    }
}
