//! The pull engine: the store reports misses (gets waiting for ids it does not have); for
//! each, find a peer that has the object ([`Locator`]), create it in the local store with
//! the peer's size and metadata, stream its raw form into the created buffer, and seal it
//! with the peer's digest. The store then answers the waiting gets itself. Any failure
//! aborts the object and tells the store (`pull_failed`), so the next get misses again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_flight::decode::FlightDataDecoder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightDescriptor, Ticket};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use plasma_store::client::GatewayMisses;
use plasma_store::protocol::ObjectId;
use tokio::sync::Semaphore;

use crate::error::GwError;
use crate::form;
use crate::local::{Local, Pending};
use crate::peers::{Peer, ms};
use crate::service::{create_for_rows, fill_rows, read_schema};
use crate::tuning;

/// Where an object was found.
#[derive(Debug, Clone)]
pub struct Location {
    /// The peer that has it (or, with a single peer, the only one that can).
    pub peer: Peer,
}

/// Finds which peer holds an object. One implementation today (ask every `--peer`); a
/// directory service (etcd, ...) for large clusters would be another.
#[tonic::async_trait]
pub trait Locator: Send + Sync + 'static {
    /// A peer that has `id` sealed; else an error saying why none was found (what the
    /// peers that did not answer "not found" said).
    async fn locate(&self, id: ObjectId) -> Result<Location, GwError>;
}

/// Asks every peer at once (GetFlightInfo), each within [`tuning::LOOKUP_TIMEOUT`]; the
/// first that has the object wins, the other answers are not waited for.
#[derive(Debug)]
pub struct Broadcast {
    peers: Vec<Peer>,
}

impl Broadcast {
    /// A locator over a static list of peers.
    pub fn new(peers: Vec<Peer>) -> Broadcast {
        Broadcast { peers }
    }
}

#[tonic::async_trait]
impl Locator for Broadcast {
    async fn locate(&self, id: ObjectId) -> Result<Location, GwError> {
        // With one peer there is nothing to choose: its DoGet answers NOT_FOUND itself, so a
        // lookup would only add a round trip to every pull.
        if let [only] = self.peers.as_slice() {
            return Ok(Location { peer: only.clone() });
        }
        let mut asks: FuturesUnordered<_> = self
            .peers
            .iter()
            .map(|p| async move {
                let mut client = p.client.clone();
                let req = FlightDescriptor::new_path(vec![id.hex()]);
                let r =
                    tokio::time::timeout(tuning::LOOKUP_TIMEOUT, client.get_flight_info(req)).await;
                (p, r)
            })
            .collect();
        let mut trouble = Vec::new();
        while let Some((p, r)) = asks.next().await {
            match r {
                Ok(Ok(_)) => return Ok(Location { peer: p.clone() }),
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => {}
                Ok(Err(s)) => trouble.push(format!("{}: {}", p.addr, s.message())),
                Err(_) => trouble.push(format!("{}: no answer in time", p.addr)),
            }
        }
        let mut msg = format!("none of {} peer(s) has the object", self.peers.len());
        if !trouble.is_empty() {
            msg += &format!(" ({})", trouble.join("; "));
        }
        Err(GwError::Peer(msg))
    }
}

/// Runs pulls: one at a time per object, at most [`tuning::MAX_PULL_BYTES_IN_FLIGHT`] bytes
/// of them at once.
pub struct Puller {
    local: Local,
    locator: Arc<dyn Locator>,
    active: Mutex<HashSet<ObjectId>>,
    bytes: Semaphore,
}

impl Puller {
    /// A pull engine filling `local` from what `locator` finds.
    pub fn new(local: Local, locator: Arc<dyn Locator>) -> Arc<Puller> {
        let permits = tuning::MAX_PULL_BYTES_IN_FLIGHT / tuning::PULL_PERMIT_BYTES;
        Arc::new(Puller {
            local,
            locator,
            active: Mutex::new(HashSet::new()),
            bytes: Semaphore::new(permits as usize),
        })
    }

    /// Starts a pull of each id not being pulled already.
    pub fn start(self: &Arc<Self>, ids: Vec<ObjectId>) {
        for id in ids {
            let fresh = self
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id);
            if !fresh {
                continue;
            }
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let t = Instant::now();
                let r = me.pull(id).await;
                // Before reporting a failure: the store may send the id again at once.
                me.forget(id);
                match r {
                    Ok(Some((size, addr))) => {
                        log::info!(
                            "pulled {id} ({size} bytes) from {addr} in {}",
                            ms(t.elapsed())
                        )
                    }
                    Ok(None) => log::debug!("{id} appeared locally while pulling"),
                    Err(e) => {
                        log::warn!("pull of {id} failed: {e}");
                        let r = me
                            .local
                            .run(move |c| Ok(c.gateway_pull_failed(&[id])?))
                            .await;
                        if let Err(e) = r {
                            log::warn!("could not report the failed pull of {id}: {e}");
                        }
                    }
                }
            });
        }
    }

    /// Ends the dedupe of `id`. Called as soon as the object exists locally (from then on the
    /// store sends no miss for it until it is gone again, and then a new pull is right), and
    /// at the end of a pull, before a failure is reported.
    fn forget(&self, id: ObjectId) {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// One pull. `Ok(None)` if the object was created locally by someone else meanwhile.
    async fn pull(&self, id: ObjectId) -> Result<Option<(u64, String)>, GwError> {
        let loc = self.locator.locate(id).await?;
        let mut client = loc.peer.client.clone();
        let ticket = Ticket::new(Bytes::from(form::raw_ticket(id)));
        let response = tokio::time::timeout(tuning::IDLE_TIMEOUT, client.do_get(ticket))
            .await
            .map_err(|_| GwError::Peer(format!("{}: DoGet timed out", loc.peer.addr)))?
            .map_err(|s| GwError::from(FlightError::Tonic(Box::new(s))))?;
        let stream = response
            .into_inner()
            .map(|r| r.map_err(|s| FlightError::Tonic(Box::new(s))));
        let mut d = FlightDataDecoder::new(stream);
        let idle = Some(tuning::IDLE_TIMEOUT);
        let schema = read_schema(&mut d, idle, || {
            GwError::Peer("raw stream without a schema".into())
        })
        .await?;
        if !form::is_opaque(&schema) {
            return Err(GwError::Peer("raw stream not in the opaque form".into()));
        }
        let header = form::parse_header(&schema)?;
        let size = header
            .data_size
            .ok_or_else(|| GwError::Peer("raw stream without plasma.data_size".into()))?;
        // Admission: this pull's share of the bytes in flight, before it takes room in the
        // store. (Until then the stream holds at most its HTTP/2 window.)
        let want = size.clamp(1, tuning::MAX_PULL_BYTES_IN_FLIGHT);
        let permits = want.div_ceil(tuning::PULL_PERMIT_BYTES) as u32;
        let _permit = self
            .bytes
            .acquire_many(permits)
            .await
            .map_err(|_| GwError::Internal("pull semaphore closed".into()))?;
        let metadata = header.metadata;
        let created = self
            .local
            .run(move |c| create_for_rows(c, id, size, &metadata))
            .await;
        self.forget(id);
        let mut pending = match created {
            Ok(buf) => Pending::new(buf),
            Err(GwError::AlreadyExists(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        fill_rows(&mut d, idle, size, &mut pending).await?;
        let digest = header.digest;
        self.local.run(move |_| pending.seal(digest)).await?;
        Ok(Some((size, loc.peer.addr.clone())))
    }
}

/// Feeds the store's misses to `puller` from a dedicated thread (the miss socket is
/// blocking). Returns when the store goes away.
pub fn miss_loop(
    mut source: GatewayMisses,
    puller: Arc<Puller>,
    rt: tokio::runtime::Handle,
) -> String {
    loop {
        match source.next_misses() {
            Ok(None) => return "the store closed the miss socket".to_string(),
            Ok(Some(ids)) => {
                log::debug!("{} miss(es)", ids.len());
                let p = Arc::clone(&puller);
                rt.spawn(async move { p.start(ids) });
            }
            Err(e) => return e.to_string(),
        }
    }
}
