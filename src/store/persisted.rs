//! `--persist` hooks of the store (the log itself is [`crate::persist`]): recording seals and
//! deletes before they are acknowledged, adopting the objects recovered at start-up, and
//! checking a recovered object's bytes against its digest on its first get.
//!
//! Only objects in the main segment are recorded: fallback segments (`--fallback-dir`) are
//! unlinked files that do not outlive the store, so their objects cannot either. Objects
//! evicted to a persistent spill directory (`-e file://` inside the `--persist` directory) are
//! recorded too, as evicted: they come back in [`State::Evicted`] and are restored from their
//! spill files on get. At start-up an evicted record without its spill file, and a spill file
//! without its record, are dropped.

use std::collections::HashSet;
use std::collections::hash_map::Entry;
use std::io;

use log::{info, warn};

use crate::external::{ExternalStore, persistent_dirs_under};
use crate::persist::SealRecord;
use crate::protocol::ObjectId;

use super::table::{Object, State};
use super::{SEGMENT_ID, Sink, Store};

impl Store {
    /// The objects whose spill files a persistent spill directory held at start-up.
    pub(super) fn spill_files_found(&self) -> HashSet<ObjectId> {
        self.external
            .as_ref()
            .map(ExternalStore::found)
            .unwrap_or_default()
    }

    /// Enters the objects recovered from the persist log into the empty store: sealed,
    /// unreferenced, in the global LRU list in the order they were sealed, or evicted if
    /// their spill file is there. `persist::open` gives distinct ids.
    pub(super) fn adopt(
        &mut self,
        records: Vec<SealRecord>,
        verified: bool,
        mut files: HashSet<ObjectId>,
    ) {
        self.objects.index.reserve(records.len());
        self.objects.slab.reserve(records.len());
        let mut order = Vec::with_capacity(records.len());
        // `files`: the spill files found at start-up; those left at the end have no record.
        let mut lost = Vec::new();
        let mut spilled = 0u64;
        for r in records {
            if r.spilled {
                if !files.remove(&r.object_id) {
                    lost.push(r.object_id);
                    continue;
                }
                spilled += 1;
                // Checked once it is back in memory (the spill file's own checksum is checked
                // as it is read).
                let object = recovered(&r, State::Evicted, 0, None, true);
                self.objects.insert(r.object_id, object);
                continue;
            }
            let object = recovered(&r, State::Sealed, r.offset, Some(self.next_lru), !verified);
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
        self.reconcile_spill(spilled, lost, files);
    }

    /// Refuses to start when evicted objects would be dropped for want of their spill files
    /// while those files are in another spill directory under the `--persist` directory (the
    /// store was started before with another `-e`, or none): the objects are not lost, the
    /// flags are wrong.
    pub(super) fn check_spill_tier(
        &self,
        records: &[SealRecord],
        files: &HashSet<ObjectId>,
    ) -> io::Result<()> {
        let Some(p) = self.persist.as_ref() else {
            return Ok(());
        };
        if !records.iter().any(|r| r.spilled) {
            return Ok(());
        }
        let ours = self
            .external
            .as_ref()
            .filter(|e| e.is_persistent())
            .and_then(|e| e.spill_path());
        let lost: Vec<&SealRecord> = records
            .iter()
            .filter(|r| r.spilled && !files.contains(&r.object_id))
            .collect();
        if lost.is_empty() {
            return Ok(());
        }
        for other in persistent_dirs_under(p.dir()) {
            if Some(other.as_path()) == ours {
                continue;
            }
            let held = lost
                .iter()
                .filter(|r| other.join(r.object_id.hex()).exists())
                .count();
            if held > 0 {
                let parent = other.parent().unwrap_or(&other);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} holds {held} objects evicted to {}: start with -e file://{} to keep \
                         them (or remove that directory to drop them)",
                        p.dir().display(),
                        other.display(),
                        parent.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Drops the evicted objects whose spill file is gone (`lost`), and removes the spill
    /// files no record names (`orphans`: spilled by a store killed before it recorded the
    /// eviction, or restored by one killed before it removed the file).
    fn reconcile_spill(&mut self, spilled: u64, lost: Vec<ObjectId>, orphans: HashSet<ObjectId>) {
        for (i, id) in lost.iter().enumerate() {
            if i < 10 {
                warn!("persist: the spill file of evicted object {id} is gone; dropping it");
            }
            self.persist_delete(*id);
        }
        if lost.len() > 10 {
            warn!(
                "persist: {} evicted objects dropped in all: their spill files are gone",
                lost.len()
            );
        }
        if let Some(e) = self.external.as_mut() {
            if !orphans.is_empty() {
                info!(
                    "persist: removing {} spill files that no record names",
                    orphans.len()
                );
            }
            for id in orphans {
                e.remove(id);
            }
        }
        if spilled > 0 {
            info!("persist: {spilled} recovered objects are in the spill directory");
        }
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
        self.persist_records(&records);
    }

    /// Records the seal records of newly sealed objects of the main segment.
    pub(super) fn persist_records(&mut self, records: &[SealRecord]) {
        if records.is_empty() {
            return;
        }
        if let Some(p) = self.persist.as_mut() {
            p.record_seals(records, &self.segment);
        }
        self.maybe_compact();
    }

    /// Records that an object moved to the persistent spill directory.
    pub(super) fn persist_evicted(&mut self, object_id: ObjectId) {
        if self.persist.is_none() {
            return;
        }
        let Some(record) = self
            .objects
            .get(&object_id)
            .map(|o| seal_record(object_id, o))
        else {
            return;
        };
        if let Some(p) = self.persist.as_mut() {
            p.record_evicted(&record);
        }
        self.maybe_compact();
    }

    /// Whether evicted objects are recorded (they outlive the store in the spill tier).
    pub(super) fn spill_persists(&self) -> bool {
        self.persist.is_some() && self.external.as_ref().is_some_and(|e| e.is_persistent())
    }

    /// Records that a sealed object left the store.
    pub(super) fn persist_delete(&mut self, object_id: ObjectId) {
        if let Some(p) = self.persist.as_mut() {
            p.record_delete(object_id);
            self.maybe_compact();
        }
    }

    fn maybe_compact(&mut self) {
        let spill = self.spill_persists();
        let Some(p) = self.persist.as_mut() else {
            return;
        };
        if p.wants_compaction() {
            let live = self
                .objects
                .iter()
                .filter(|(_, o)| {
                    (o.state == State::Sealed && o.segment == SEGMENT_ID)
                        || (spill && o.state == State::Evicted)
                })
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

/// The table entry of an object recovered from the persist log: unreferenced, unowned.
fn recovered(
    r: &SealRecord,
    state: State,
    offset: u64,
    lru_seq: Option<u64>,
    unverified: bool,
) -> Object {
    Object {
        state,
        segment: SEGMENT_ID,
        offset,
        data_size: r.data_size,
        metadata_size: r.metadata_size,
        create_time: r.create_time,
        construct_duration: r.construct_duration,
        digest: Some(r.digest),
        ref_count: 0,
        owner: None,
        lru_seq,
        unverified,
    }
}

/// What the persist log records about a sealed object.
pub(super) fn seal_record(object_id: ObjectId, o: &Object) -> SealRecord {
    SealRecord {
        object_id,
        offset: o.offset,
        data_size: o.data_size,
        metadata_size: o.metadata_size,
        digest: o.digest.unwrap_or_default(),
        create_time: o.create_time,
        construct_duration: o.construct_duration,
        spilled: o.state == State::Evicted,
    }
}
