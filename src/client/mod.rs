//! A blocking Rust client for the Plasma store: the native way to use the store from Rust,
//! and wire-compatible with both this crate's daemon and the original `plasma-store-server`.
//!
//! ```no_run
//! use plasma_store::client::Client;
//! use plasma_store::protocol::ObjectId;
//!
//! # fn main() -> Result<(), plasma_store::client::Error> {
//! let client = Client::connect("/tmp/plasma.sock")?;
//! let id = ObjectId([7; 20]);
//!
//! // Create an object in shared memory, write it, seal it.
//! let mut buf = client.create(id, 5, b"meta")?;
//! buf.copy_from_slice(b"hello");
//! drop(buf.seal()?);
//!
//! // Any client can now get it (timeout in ms: -1 waits forever, 0 answers at once).
//! let objects = client.get(&[id], 1000)?;
//! let object = objects[0].as_ref().expect("sealed above");
//! assert_eq!(object.data(), b"hello");
//! assert_eq!(object.metadata(), b"meta");
//! # Ok(())
//! # }
//! ```
//!
//! # Model
//!
//! A [`Client`] is one connection. It is `Send + Sync` and cheap to clone (clones share the
//! connection); every call takes the connection's lock for one request/reply exchange, like
//! libplasma's mutex, so a `get` that waits blocks the other users of the same client
//! (dropping one of its buffers included). Use one client per thread for concurrent waits.
//!
//! Objects live in segments of shared memory that the store passes as file descriptors. The
//! client maps each segment once (`mmap_size - 8` bytes, shared, read/write), closes the fd,
//! and keeps the mapping while the client or any buffer into it lives. The bytes are shared
//! with other processes: like every Plasma client, this one relies on the store's contract
//! that an object is written only by its creator before it is sealed, and never after.
//!
//! References follow libplasma: the store keeps at most one reference per client per
//! object, and the client counts locally. Every [`ObjectBuffer`] and [`MutableBuffer`] holds
//! one local reference and gives it back when dropped; when the client's last reference to
//! an object goes, it sends the store one release. [`Client::create`] takes one extra
//! reference that [`Client::seal`] (or [`Client::abort`]) gives back. Objects a client uses
//! cannot be evicted, and deleting them is deferred until the last release.
//!
//! # Differences from libplasma
//!
//! - Where libplasma aborts the process (e.g. a get with timeout -1 on an object the caller
//!   created but did not seal, a malformed reply), this client returns an [`Error`].
//! - Calls the reference store would crash on are refused locally: seal or abort of an
//!   object this client did not create, a second release, a second subscription.
//! - While a [`MutableBuffer`] is alive its object cannot be sealed through
//!   [`Client::seal`] (use [`MutableBuffer::seal`]), so that no shared view of it can
//!   coexist with the writable one in this process.
//! - [`Client::contains`] answers locally only for sealed objects it uses (libplasma also
//!   says `true` for its own unsealed objects; the store says `false`, and so do we).
//! - A get asks the store only for ids it does not use already, once per distinct id.
//! - [`Client::create_and_seal_batch`] sends correct digests (libplasma 11 hashes the wrong
//!   memory there).

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

mod buffer;
mod conn;
mod error;
mod gateway;
mod memory;
mod state;
mod subscription;
#[cfg(test)]
mod tests;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use self::buffer::{MappingGuard, MutableBuffer, ObjectBuffer};
pub use self::error::Error;
pub use self::gateway::GatewayMisses;
pub use self::subscription::Subscription;
pub use crate::protocol::{ObjectId, ObjectInfo};

use self::conn::Conn;
use self::state::Inner;

/// Connection retries of [`Client::connect`], as libplasma's default.
pub const DEFAULT_CONNECT_RETRIES: u32 = 80;

/// Pause between connection attempts of [`Client::connect`], as libplasma's default.
pub const DEFAULT_CONNECT_DELAY: Duration = Duration::from_millis(100);

/// What a client and its buffers share.
struct Shared {
    /// The store's capacity from the ConnectReply.
    capacity: u64,
    inner: Mutex<Inner>,
}

impl Shared {
    /// Locks the state. A panic while it was held (none is expected) leaves nothing half
    /// done that matters more than carrying on, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection to a Plasma store. See the [module documentation](self).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("capacity", &self.shared.capacity)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Client {
    /// Connects to the store listening on the Unix socket `path`, retrying like libplasma
    /// ([`DEFAULT_CONNECT_RETRIES`] more attempts, [`DEFAULT_CONNECT_DELAY`] apart), and asks
    /// for its capacity.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        Client::connect_with_retries(path, DEFAULT_CONNECT_RETRIES, DEFAULT_CONNECT_DELAY)
    }

    /// Like [`Client::connect`], with `retries` more attempts after the first, `delay` apart.
    /// Fails with [`Error::Connect`] ("could not connect to socket PATH").
    pub fn connect_with_retries(
        path: impl AsRef<Path>,
        retries: u32,
        delay: Duration,
    ) -> Result<Client, Error> {
        let path = path.as_ref();
        let mut left = retries;
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if left > 0 => {
                    log::debug!(
                        "connection to plasma socket {} failed ({e}), retrying {left} more times",
                        path.display()
                    );
                    left -= 1;
                    std::thread::sleep(delay);
                }
                Err(source) => {
                    return Err(Error::Connect {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        };
        let mut inner = Inner::new(Conn::new(sock));
        let capacity = inner.connect()?;
        Ok(Client {
            shared: Arc::new(Shared {
                capacity,
                inner: Mutex::new(inner),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// The store's capacity in bytes (its `-m`), as reported when connecting.
    pub fn capacity(&self) -> u64 {
        self.shared.capacity
    }

    /// Whether the connection is still open (see [`Error::Disconnected`]).
    pub fn is_connected(&self) -> bool {
        self.lock().is_connected()
    }

    /// Creates an object of `data_size` bytes of data followed by `metadata`, letting the
    /// store evict unreferenced objects to make room. Returns its writable data; the
    /// metadata is already written.
    ///
    /// Fails with [`Error::ObjectExists`] if the id exists in any state, and
    /// [`Error::OutOfMemory`] if it cannot fit.
    pub fn create(
        &self,
        id: ObjectId,
        data_size: u64,
        metadata: &[u8],
    ) -> Result<MutableBuffer, Error> {
        self.create_with_eviction(id, data_size, metadata, true)
    }

    /// [`Client::create`] with the store's `evict_if_full` flag: with `false` the store makes
    /// one allocation attempt and evicts nothing.
    pub fn create_with_eviction(
        &self,
        id: ObjectId,
        data_size: u64,
        metadata: &[u8],
        evict_if_full: bool,
    ) -> Result<MutableBuffer, Error> {
        let (region, data_len) = self.lock().create(id, data_size, metadata, evict_if_full)?;
        Ok(MutableBuffer::new(
            Arc::clone(&self.shared),
            id,
            region,
            data_len,
        ))
    }

    /// Seals an object this client created: it becomes immutable and visible to every
    /// client, and its digest (of data then metadata, computed as libplasma does) is sent
    /// with it. Gives back the reference create took; buffers of the object keep theirs.
    ///
    /// Fails with [`Error::ObjectNotFound`] if this client did not create it (or already
    /// aborted it), [`Error::AlreadySealed`], or [`Error::ObjectInUse`] while its
    /// [`MutableBuffer`] is alive (use [`MutableBuffer::seal`] then).
    pub fn seal(&self, id: ObjectId) -> Result<(), Error> {
        self.lock().seal(id)
    }

    /// Aborts an unsealed object this client created: the store frees it. Every buffer of
    /// it must be dropped first ([`Error::ObjectInUse`]); see also [`MutableBuffer::abort`].
    pub fn abort(&self, id: ObjectId) -> Result<(), Error> {
        self.lock().abort(id)
    }

    /// Gets sealed objects, one entry per id in order (`None`: not available in time).
    ///
    /// `timeout_ms` is how long the store waits for all of them to be sealed: `-1` forever,
    /// `0` not at all. Each buffer holds a reference to its object until dropped. An
    /// object this client created and has not sealed is `None`, or
    /// [`Error::ObjectNotSealed`] with timeout `-1` (the wait could never end).
    pub fn get(
        &self,
        ids: &[ObjectId],
        timeout_ms: i64,
    ) -> Result<Vec<Option<ObjectBuffer>>, Error> {
        let found = self.lock().get(ids, timeout_ms)?;
        Ok(found
            .into_iter()
            .map(|f| {
                f.map(|(id, region, data_len)| {
                    ObjectBuffer::new(Arc::clone(&self.shared), id, region, data_len)
                })
            })
            .collect())
    }

    /// Whether the store has this object sealed.
    pub fn contains(&self, id: ObjectId) -> Result<bool, Error> {
        self.lock().contains(id)
    }

    /// Deletes objects. Missing ids are ignored. Objects in use (by this client or others)
    /// are deleted when their last reference is released.
    pub fn delete(&self, ids: &[ObjectId]) -> Result<(), Error> {
        self.lock().delete(ids)
    }

    /// Describes every object in the store, sealed or not (unsealed ones have no digest).
    pub fn list(&self) -> Result<Vec<ObjectInfo>, Error> {
        self.lock().list()
    }

    /// Evicts unreferenced objects, least recently used first, until at least `num_bytes`
    /// are freed or none is left; returns the bytes freed.
    pub fn evict(&self, num_bytes: u64) -> Result<u64, Error> {
        self.lock().evict(num_bytes)
    }

    /// Marks objects as recently used, so eviction takes them last.
    pub fn refresh(&self, ids: &[ObjectId]) -> Result<(), Error> {
        self.lock().refresh(ids)
    }

    /// Names this client and gives it a memory quota: objects it creates are then evicted
    /// from its own quota first. Fails with [`Error::QuotaRefused`].
    pub fn set_options(&self, client_name: &str, quota: u64) -> Result<(), Error> {
        self.lock().set_options(client_name, quota)
    }

    /// The store's report on its eviction policy (capacity, use, quotas).
    pub fn debug_string(&self) -> Result<String, Error> {
        self.lock().debug_string()
    }

    /// Creates, writes and seals an object in one exchange (the bytes travel in the
    /// message). The object is left unreferenced.
    pub fn create_and_seal(&self, id: ObjectId, data: &[u8], metadata: &[u8]) -> Result<(), Error> {
        self.lock().create_and_seal(id, data, metadata)
    }

    /// Creates, writes and seals several objects `(id, data, metadata)` in one exchange: all
    /// of them, or none if one fails (the error does not say which).
    pub fn create_and_seal_batch(&self, objects: &[(ObjectId, &[u8], &[u8])]) -> Result<(), Error> {
        self.lock().create_and_seal_batch(objects)
    }

    /// Subscribes to notifications of seals, deletions and evictions. One subscription per
    /// connection ([`Error::AlreadySubscribed`]).
    pub fn subscribe(&self) -> Result<Subscription, Error> {
        let sock = self.lock().subscribe()?;
        Ok(Subscription::new(sock))
    }

    /// Registers this connection as the store's gateway (this store's protocol extension, for
    /// the Flight gateway `plasma_flight`): from now on the store reports, on the returned
    /// [`GatewayMisses`], the objects that waiting gets name and the store does not hold.
    /// Also enables [`Client::gateway_info`] and [`Client::gateway_pull_failed`] on this
    /// connection. Fails with [`Error::GatewayTaken`] while another connection is the gateway.
    pub fn register_gateway(&self) -> Result<GatewayMisses, Error> {
        let sock = self.lock().register_gateway()?;
        Ok(GatewayMisses::new(sock))
    }

    /// Gateway only: tells the store that pulling these objects failed, so that a later get
    /// of them is reported again.
    pub fn gateway_pull_failed(&self, ids: &[ObjectId]) -> Result<(), Error> {
        self.lock().gateway_pull_failed(ids)
    }

    /// Gateway only: sizes, digest and times of those of `ids` that are sealed in the store
    /// (absent ones are left out), without listing the whole store.
    pub fn gateway_info(&self, ids: &[ObjectId]) -> Result<Vec<ObjectInfo>, Error> {
        self.lock().gateway_info(ids)
    }

    /// Closes the connection, as libplasma does (no message): the store drops this client's
    /// references, aborts its unsealed objects and ends its subscription. Buffers stay
    /// readable; dropping them afterwards does nothing. Every later call fails with
    /// [`Error::Disconnected`]. Affects every clone of this client.
    pub fn disconnect(&self) {
        self.lock().close("disconnect() was called".to_string());
    }
}
