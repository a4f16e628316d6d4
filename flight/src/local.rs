//! The gateway's handle on its local store: the crate's blocking client, called from tokio on
//! the blocking pool, and the guard of the objects the gateway writes.

use plasma_store::client::{Client, MutableBuffer};
use plasma_store::protocol::{Digest, ObjectId};

use crate::error::GwError;
use crate::tuning;

/// The local store, shared by the Flight service and the pull engine. Every call is one
/// Unix-socket round trip on the blocking pool (the client is blocking and serialises its
/// calls; the gateway never makes a call that waits in the store).
#[derive(Clone, Debug)]
pub struct Local {
    client: Client,
}

impl Local {
    /// Wraps a connected client.
    pub fn new(client: Client) -> Local {
        Local { client }
    }

    /// The client itself, for the blocking parts (the miss thread, drop guards).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `f` with the client on tokio's blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, GwError>
    where
        F: FnOnce(&Client) -> Result<T, GwError> + Send + 'static,
        T: Send + 'static,
    {
        let c = self.client.clone();
        tokio::task::spawn_blocking(move || f(&c)).await?
    }
}

/// An object being written by the gateway (a DoPut or a pull). Dropping it without
/// [`Pending::take`] aborts the object, so however a transfer ends (an error, a client gone,
/// the handler's future dropped by the server) nothing unsealed is left behind.
pub struct Pending {
    buf: Option<MutableBuffer>,
}

impl Pending {
    /// Guards a freshly created object.
    pub fn new(buf: MutableBuffer) -> Pending {
        Pending { buf: Some(buf) }
    }

    /// The writable data.
    pub fn data_mut(&mut self) -> &mut [u8] {
        match self.buf.as_mut() {
            Some(b) => b.data_mut(),
            None => &mut [],
        }
    }

    /// Copies `src` into the data and computes the digest in the same pass (the seal then
    /// sends it instead of reading the object again). Blocking for large data: run it on the
    /// pool.
    pub fn write_all(&mut self, src: &[u8]) {
        if let Some(b) = self.buf.as_mut() {
            b.write_all(src, tuning::COPY_THREADS);
        }
    }

    /// Takes the buffer out to seal it; the guard no longer aborts it.
    fn take(mut self) -> Option<MutableBuffer> {
        self.buf.take()
    }

    /// Seals the object, with `digest` if given (a pulled copy keeps its origin's) or else
    /// the digest of its bytes, and gives the gateway's reference back. Blocking: one round
    /// trip, run it on the pool.
    pub fn seal(self, digest: Option<Digest>) -> Result<(), GwError> {
        let buf = self
            .take()
            .ok_or_else(|| GwError::Internal("no buffer".into()))?;
        let sealed = match digest {
            Some(d) => buf.seal_with_digest(d)?,
            None => buf.seal()?,
        };
        drop(sealed);
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let id = buf.id();
            // One round trip; it may run on a runtime thread, which is acceptable for an
            // abort (rare, ~30 µs). A store that is gone has aborted the object itself.
            if let Err(e) = buf.abort() {
                log::debug!("abort of {id} failed: {e}");
            }
        }
    }
}

/// The info of one sealed object, or `NotFound`.
pub fn info_of(client: &Client, id: ObjectId) -> Result<plasma_store::client::ObjectInfo, GwError> {
    client
        .gateway_info(&[id])?
        .into_iter()
        .find(|o| o.object_id == id)
        .ok_or(GwError::NotFound(id))
}
