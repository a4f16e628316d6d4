//! Buffers over objects in shared memory. Each holds one local reference to its object and
//! gives it back when dropped (libplasma's `Release`): the store hears about it when the
//! client's last reference to the object goes.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::memory::{MutRegion, Region};
use super::state::split;
use super::{Error, Shared};
use crate::digest::copy_and_digest_prepared;
use crate::protocol::{Digest, ObjectId};

/// Keeps the shared memory under a buffer mapped for as long as it lives, whatever happens to
/// the buffer or the client (even after a failed seal or a disconnect). It holds no reference
/// to the object, so the store may reuse the bytes once the object is gone: it only
/// guarantees that a raw pointer into them stays dereferenceable, for bindings that hand such
/// pointers to foreign code (the Python buffer protocol).
#[derive(Clone)]
pub struct MappingGuard {
    _region: Region,
}

impl fmt::Debug for MappingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappingGuard").finish_non_exhaustive()
    }
}

/// One local reference to an object, released on drop.
struct Lease {
    shared: Arc<Shared>,
    id: ObjectId,
    /// This lease belongs to the creator's writable buffer.
    writer: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if self.writer {
            inner.clear_writer(self.id);
        }
        inner.release(self.id);
    }
}

/// The writable data of an object this client created and has not sealed yet.
///
/// Derefs to the data bytes (`&mut [u8]`). The metadata given to
/// [`Client::create`](super::Client::create) is already in place after the data.
/// Finish with [`MutableBuffer::seal`] (or drop the buffer, then
/// [`Client::seal`](super::Client::seal)), or give the object up with
/// [`MutableBuffer::abort`].
///
/// Dropping the buffer gives back its reference, but the object stays unsealed and held by
/// this client until it is sealed or aborted (or the client disconnects, which aborts it).
pub struct MutableBuffer {
    lease: Lease,
    region: MutRegion,
    data_len: usize,
    /// The digest of the current contents, when [`MutableBuffer::write_all`] computed it
    /// while copying (any other write access forgets it).
    digest: Option<Digest>,
    /// Whether the first write access happened (large objects are faulted in then).
    touched: bool,
}

/// Objects of at least this many data bytes have their pages faulted in on the first write
/// access ([`Region::populate`]); below it one madvise costs more than the faults it
/// saves.
const POPULATE_THRESHOLD: usize = 4 << 20;

impl MutableBuffer {
    pub(super) fn new(
        shared: Arc<Shared>,
        id: ObjectId,
        region: MutRegion,
        data_len: usize,
    ) -> MutableBuffer {
        MutableBuffer {
            lease: Lease {
                shared,
                id,
                writer: true,
            },
            region,
            data_len,
            digest: None,
            touched: false,
        }
    }

    /// Whether this is the first write access and the object large enough to fault in first
    /// (once per buffer).
    fn first_large_write(&mut self) -> bool {
        let first = !self.touched;
        self.touched = true;
        first && self.data_len >= POPULATE_THRESHOLD
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.lease.id
    }

    /// The data bytes.
    pub fn data(&self) -> &[u8] {
        let bytes = self.region.bytes();
        bytes.get(..self.data_len).unwrap_or(bytes)
    }

    /// The data bytes, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.digest = None;
        if self.first_large_write() {
            // Fresh memory is faulted in at once rather than page by page.
            self.region.populate();
        }
        let bytes = self.region.bytes_mut();
        let n = self.data_len.min(bytes.len());
        &mut bytes[..n]
    }

    /// Copies `src` into the data (the first `min(src.len(), data length)` bytes), with up to
    /// `threads` threads for large copies, computing the object's digest in the same pass, so
    /// that [`MutableBuffer::seal`] need not read the data again.
    ///
    /// Large data is faulted in part by part, each part by the thread that copies it.
    pub fn write_all(&mut self, src: &[u8], threads: usize) {
        let data_len = self.data_len;
        let populate = self.first_large_write();
        let view = self.region.view();
        let prepare = move |offset: usize, part: &mut [u8]| {
            if populate {
                view.populate(offset, part);
            }
        };
        let bytes = self.region.bytes_mut();
        let split = data_len.min(bytes.len());
        let (data, metadata) = bytes.split_at_mut(split);
        let complete = src.len() >= data.len();
        let digest = copy_and_digest_prepared(data, src, metadata, threads, &prepare);
        // A short source leaves the rest of the data as it was: the digest must cover it too.
        self.digest = complete.then_some(digest);
    }

    /// The metadata bytes (written by create).
    pub fn metadata(&self) -> &[u8] {
        self.region.bytes().get(self.data_len..).unwrap_or_default()
    }

    /// Keeps this buffer's memory mapped beyond the buffer's own life (see [`MappingGuard`]).
    pub fn mapping_guard(&self) -> MappingGuard {
        MappingGuard {
            _region: self.region.view(),
        }
    }

    /// Seals the object (sending its digest) and returns a read-only buffer that keeps this
    /// client's reference to it; drop that buffer to release it.
    pub fn seal(self) -> Result<ObjectBuffer, Error> {
        self.seal_as(None)
    }

    /// Like [`MutableBuffer::seal`], but sends `digest` as the object's digest instead of
    /// computing it: for a copy of an object from elsewhere (the Flight gateway), which keeps
    /// the digest its creator computed.
    pub fn seal_with_digest(self, digest: Digest) -> Result<ObjectBuffer, Error> {
        self.seal_as(Some(digest))
    }

    fn seal_as(mut self, given: Option<Digest>) -> Result<ObjectBuffer, Error> {
        let id = self.lease.id;
        {
            let mut inner = self.lease.shared.lock();
            inner.clear_writer(id);
            self.lease.writer = false;
            inner.seal_with(id, given.or(self.digest))?;
        }
        let MutableBuffer {
            lease,
            region,
            data_len,
            ..
        } = self;
        Ok(ObjectBuffer {
            lease,
            region: region.into_shared(),
            data_len,
        })
    }

    /// Drops the buffer and aborts the object: the store frees it, and the id can be created
    /// again.
    pub fn abort(self) -> Result<(), Error> {
        let shared = Arc::clone(&self.lease.shared);
        let id = self.lease.id;
        drop(self);
        shared.lock().abort(id)
    }
}

impl Deref for MutableBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.data()
    }
}

impl DerefMut for MutableBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.data_mut()
    }
}

impl fmt::Debug for MutableBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutableBuffer")
            .field("id", &self.lease.id)
            .field("data_size", &self.data_len)
            .field("metadata_size", &self.metadata().len())
            .finish()
    }
}

/// A sealed object, read-only. Derefs to the data bytes.
///
/// Holds one reference to the object (so the store will not evict or delete it), and
/// releases it when dropped. It also keeps the segment mapped, so it stays readable even
/// after its client disconnects.
pub struct ObjectBuffer {
    lease: Lease,
    region: Region,
    data_len: usize,
}

impl ObjectBuffer {
    pub(super) fn new(
        shared: Arc<Shared>,
        id: ObjectId,
        region: Region,
        data_len: usize,
    ) -> ObjectBuffer {
        ObjectBuffer {
            lease: Lease {
                shared,
                id,
                writer: false,
            },
            region,
            data_len,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.lease.id
    }

    /// The data bytes.
    pub fn data(&self) -> &[u8] {
        split(&self.region, self.data_len).0
    }

    /// The metadata bytes.
    pub fn metadata(&self) -> &[u8] {
        split(&self.region, self.data_len).1
    }
}

impl Deref for ObjectBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.data()
    }
}

impl AsRef<[u8]> for ObjectBuffer {
    fn as_ref(&self) -> &[u8] {
        self.data()
    }
}

impl fmt::Debug for ObjectBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBuffer")
            .field("id", &self.lease.id)
            .field("data_size", &self.data_len)
            .field("metadata_size", &self.metadata().len())
            .finish()
    }
}
