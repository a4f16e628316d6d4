//! Eviction policy, as the original's quota-aware LRU: a sealed object that no client holds is
//! in exactly one LRU list. Objects created by a client with a quota (SetOptions) are owned by
//! it and sit in that client's own list, from creation on, whether held or not; only that
//! client's creates evict them (or demote them to the global list if held). All other
//! unreferenced sealed objects are in the global list, ordered by when they last became
//! unreferenced, and creates that do not fit evict from its old end. Evicted objects go to
//! the external store (`-e`) if there is one, and come back from it on get.

use std::collections::{BTreeMap, HashMap};

use log::{debug, error, info, warn};

use crate::protocol::{ObjectId, PlasmaError};

use super::table::{Object, ObjectTable, State};
use super::{ClientId, ClientState, SEGMENT_ID, Sink, Store};

/// The name the original gives a client that never called SetOptions.
const ANONYMOUS: &str = "anonymous_client";

/// Quotas together may leave no less than this share of the capacity to the global LRU.
const GLOBAL_RESERVE: f64 = 0.3;

/// One LRU list: ids by the time they entered, oldest first.
#[derive(Debug, Default)]
pub(super) struct Lru {
    /// LRU position → the object's index in the [`ObjectTable`] (4 bytes instead of a
    /// 20-byte id: with a million objects the lists are a large part of the store's memory).
    pub(super) order: BTreeMap<u64, u32>,
    /// Sum of the sizes of the objects in the list.
    pub(super) bytes: u64,
    /// Objects chosen for eviction from this list so far.
    pub(super) evictions: u64,
    /// Their bytes.
    pub(super) bytes_evicted: u64,
}

/// A client's quota and its own LRU list.
#[derive(Debug)]
pub(super) struct Quota {
    pub(super) limit: u64,
    pub(super) lru: Lru,
}

impl Store {
    /// Makes room for `size` bytes in a quota client's quota, evicting its own unheld objects
    /// and demoting its held ones to the global list, oldest first.
    pub(super) fn enforce_quota(
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
        let victims = choose_victims(&mut quota.lru, &mut self.objects, size - remaining, None);
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
    pub(super) fn allocate(
        &mut self,
        size: u64,
        evict_if_full: bool,
        out: &mut impl Sink,
    ) -> Option<u64> {
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
            // Only objects in shared memory free shared memory: fallback objects stay.
            let victims =
                choose_victims(&mut self.lru, &mut self.objects, target, Some(SEGMENT_ID));
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
    pub(super) fn evict_objects(
        &mut self,
        victims: &[(ObjectId, u64)],
        out: &mut impl Sink,
    ) -> u64 {
        let mut freed = 0;
        for &(id, size) in victims {
            if self.external.is_none() {
                self.delete_now(id, out);
                freed += size;
                self.counters.evicted_objects += 1;
                self.counters.evicted_bytes += size;
                continue;
            }
            let Some((segment, offset)) = self.objects.get(&id).map(|o| (o.segment, o.offset))
            else {
                continue;
            };
            let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(0)];
            let read = match self.segment_by_id(segment) {
                Some(seg) => seg.read(offset, &mut bytes),
                None => Err(std::io::Error::other("no such segment")),
            };
            let stored = read.and_then(|()| match self.external.as_mut() {
                Some(external) => external.put(id, bytes),
                None => Ok(()),
            });
            if let Err(e) = stored {
                error!("cannot evict {id} to the external store, keeping it in memory: {e}");
                continue;
            }
            self.free_block(id, segment, offset, size);
            if let Some(o) = self.objects.get_mut(&id) {
                o.state = State::Evicted;
            }
            // In a persistent spill directory it survives the store (whichever segment it
            // came from); elsewhere it has left the segment for good.
            if self.spill_persists() {
                self.persist_evicted(id);
            } else if segment == SEGMENT_ID {
                self.persist_delete(id);
            }
            freed += size;
            self.counters.evicted_objects += 1;
            self.counters.evicted_bytes += size;
            self.counters.spilled_bytes += size;
        }
        if freed > 0 {
            self.create_queue.freed = true;
        }
        freed
    }

    /// Brings an evicted object back into memory. Its bytes leave the external store first,
    /// so that on a full spill disk the objects evicted to make room can take its place. On
    /// failure the object is treated as missing; if its bytes are lost it is removed for good.
    /// A persistent spill directory keeps the file until the object's new record is written
    /// (the bytes in the segment first, then the record, then the file goes): a store killed
    /// at any point in between still has the object.
    pub(super) fn restore(&mut self, id: ObjectId, out: &mut impl Sink) -> bool {
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
        // Shared memory first (evicting others), else the fallback tier.
        let placed = match self.allocate(size, true, out) {
            Some(offset) => Some((SEGMENT_ID, offset)),
            None => self.fallback.as_mut().and_then(|f| f.alloc(size)),
        };
        let Some((segment, offset)) = placed else {
            warn!("no memory to restore {id} from the external store");
            if let Some(Err(e)) = self.external.as_mut().map(|e| e.put_back(id, bytes)) {
                error!("cannot put {id} back into the external store: {e}; the object is gone");
                self.delete_now(id, out);
            }
            return false;
        };
        let written = match self.segment_by_id(segment) {
            Some(seg) => seg.write(offset, &bytes),
            None => Err(std::io::Error::other("no such segment")),
        };
        if let Err(e) = written {
            warn!("restoring {id}: {e}");
        }
        if let Some(o) = self.objects.get_mut(&id) {
            o.state = State::Sealed;
            o.segment = segment;
            o.offset = offset;
        }
        self.counters.restored_bytes += size;
        if self.spill_persists() {
            if segment == SEGMENT_ID {
                self.persist_seals(&[id]);
            } else {
                // In a fallback segment it no longer survives the store.
                self.persist_delete(id);
            }
            if let Some(e) = self.external.as_mut() {
                e.remove(id);
            }
        } else {
            self.persist_seals(&[id]);
        }
        true
    }
    /// Puts an object at the young end of its list (its owner's or the global one).
    pub(super) fn lru_insert(&mut self, object_id: ObjectId) {
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
        // An object that became evictable may make room for a waiting create.
        self.create_queue.freed = true;
    }

    /// Takes an object out of its list. Returns whether it was in one.
    pub(super) fn lru_remove(&mut self, object_id: ObjectId) -> bool {
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

    pub(super) fn set_options(
        &mut self,
        client: ClientId,
        name: Vec<u8>,
        quota: i64,
    ) -> PlasmaError {
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
    pub(super) fn global_capacity(&self) -> u64 {
        let quotas: u64 = self
            .clients
            .values()
            .filter_map(|c| c.quota.as_ref().map(|q| q.limit))
            .sum();
        self.capacity.saturating_sub(quotas)
    }

    /// The eviction policy's report, line for line the original's.
    pub(super) fn debug_string(&self) -> String {
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

/// The list an object belongs in: its quota owner's, or the global one. `None` if the owner
/// is gone (its objects were handed to the global list at its disconnect).
pub(super) fn list_of<'a>(
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
pub(super) fn choose_victims(
    lru: &mut Lru,
    objects: &mut ObjectTable,
    target: u64,
    only_segment: Option<i32>,
) -> Vec<(ObjectId, u64)> {
    let mut victims = Vec::new();
    let mut sum = 0;
    // Objects passed over (in another segment), put back in place afterwards.
    let mut skipped = Vec::new();
    while sum < target {
        let Some((seq, index)) = lru.order.pop_first() else {
            break;
        };
        let Some(id) = objects.id_at(index) else {
            continue;
        };
        if let Some(o) = objects.get_mut(&id) {
            if only_segment.is_some_and(|s| s != o.segment) {
                skipped.push((seq, index));
                continue;
            }
            o.lru_seq = None;
            lru.bytes = lru.bytes.saturating_sub(o.size());
            sum += o.size();
            victims.push((id, o.size()));
        }
    }
    lru.order.extend(skipped);
    lru.evictions += victims.len() as u64;
    lru.bytes_evicted += sum;
    victims
}
/// The five lines the original prints per LRU list.
pub(super) fn lru_report(name: &str, capacity: u64, original: u64, lru: &Lru) -> String {
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

pub(super) fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}
