//! `--persist` hooks of the store (the log itself is [`crate::persist`]): recording seals and
//! deletes before they are acknowledged, adopting the objects recovered at start-up, and
//! checking a recovered object's bytes against its digest on its first get.
//!
//! Only objects in the main segment are recorded: fallback segments (`--fallback-dir`) are
//! unlinked files that do not outlive the store, so their objects cannot either.

use std::collections::hash_map::Entry;

use crate::persist::SealRecord;
use crate::protocol::ObjectId;

use super::table::{Object, State};
use super::{SEGMENT_ID, Sink, Store};

impl Store {
    /// Enters the objects recovered from the persist log into the empty store: sealed,
    /// unreferenced, in the global LRU list in the order they were sealed. `persist::open`
    /// gives distinct ids.
    pub(super) fn adopt(&mut self, records: Vec<SealRecord>, verified: bool) {
        self.objects.index.reserve(records.len());
        self.objects.slab.reserve(records.len());
        let mut order = Vec::with_capacity(records.len());
        for r in records {
            let object = Object {
                state: State::Sealed,
                segment: SEGMENT_ID,
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

    /// The record of a sealed object in the main segment.
    fn seal_record(&self, object_id: ObjectId) -> Option<SealRecord> {
        self.objects
            .get(&object_id)
            .filter(|o| o.segment == SEGMENT_ID)
            .map(|o| seal_record(object_id, o))
    }

    /// Records newly sealed objects (before their seal is acknowledged).
    pub(super) fn persist_seals(&mut self, ids: &[ObjectId]) {
        if self.persist.is_none() {
            return;
        }
        let records: Vec<SealRecord> = ids.iter().filter_map(|id| self.seal_record(*id)).collect();
        if records.is_empty() {
            return;
        }
        if let Some(p) = self.persist.as_mut() {
            p.record_seals(&records, &self.segment);
        }
        self.maybe_compact();
    }

    /// Records that a sealed object left the segment.
    pub(super) fn persist_delete(&mut self, object_id: ObjectId) {
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
                .filter(|(_, o)| o.state == State::Sealed && o.segment == SEGMENT_ID)
                .map(|(id, o)| seal_record(*id, o));
            p.compact(live);
        }
    }

    /// For a sealed object: `false` if it was recovered after a restart and its bytes do not
    /// match its digest, in which case it is dropped. Checked once per recovered object.
    pub(super) fn recovered_intact(&mut self, object_id: ObjectId, out: &mut impl Sink) -> bool {
        if self.persist.is_none() {
            return true;
        }
        let Some(o) = self.objects.get_mut(&object_id).filter(|o| o.unverified) else {
            return true;
        };
        o.unverified = false;
        let record = seal_record(object_id, o);
        // A restore from the external store may have put it in a fallback segment.
        let segment = o.segment;
        let intact = match (self.persist.as_ref(), self.segment_by_id(segment)) {
            (Some(p), Some(seg)) => p.verify(&record, seg),
            _ => true,
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
