//! The object table: each object's state, place and counters, in a slab found through an
//! id-to-index map.

use std::collections::HashMap;

use crate::protocol::{Digest, ObjectId, ObjectInfo, ObjectSpec};

#[cfg(doc)]
use super::SEGMENT_ID;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Allocated, being written by its creator.
    Created,
    /// Immutable and visible.
    Sealed,
    /// Sealed, but its bytes were moved to the external store; restored on get.
    Evicted,
}

/// One entry of the object table.
#[derive(Debug)]
pub(super) struct Object {
    pub(super) state: State,
    /// The segment the bytes are in: [`SEGMENT_ID`] or a fallback segment.
    pub(super) segment: i32,
    /// Where the bytes are in the segment (meaningless while evicted).
    pub(super) offset: u64,
    pub(super) data_size: u64,
    pub(super) metadata_size: u64,
    /// Unix seconds.
    pub(super) create_time: i64,
    /// Seconds from create to seal; −1 while unsealed.
    pub(super) construct_duration: i32,
    pub(super) digest: Option<Digest>,
    /// Number of clients holding a reference (each at most one).
    pub(super) ref_count: u32,
    /// The quota client whose list this object is in, if any.
    pub(super) owner: Option<u32>,
    /// Position in its LRU list (the owner's, or the global one).
    pub(super) lru_seq: Option<u64>,
    /// Recovered by `--persist` after a restart, its digest not checked yet (checked on the
    /// first get).
    pub(super) unverified: bool,
}

impl Object {
    pub(super) fn size(&self) -> u64 {
        self.data_size + self.metadata_size
    }

    /// Held by a client, or still being written: never evicted.
    pub(super) fn pinned(&self) -> bool {
        self.ref_count > 0 || self.state == State::Created
    }

    pub(super) fn spec(&self) -> ObjectSpec {
        ObjectSpec {
            segment_index: self.segment,
            data_offset: self.offset,
            data_size: self.data_size,
            metadata_offset: self.offset + self.data_size,
            metadata_size: self.metadata_size,
            device_num: 0,
        }
    }

    pub(super) fn info(&self, object_id: ObjectId) -> ObjectInfo {
        ObjectInfo {
            ref_count: i32::try_from(self.ref_count).unwrap_or(i32::MAX),
            create_time: self.create_time,
            construct_duration: i64::from(self.construct_duration),
            ..seal_info(object_id, self)
        }
    }
}

/// The object table: objects in a slab, found through a map from id to slab index. Compared
/// with one map holding the objects, the hash table's scattered buckets are small (an id and
/// an index), and the objects sit densely in the slab, so memory use follows the number of
/// objects rather than the hash table's doubled capacity.
#[derive(Debug, Default)]
pub(super) struct ObjectTable {
    pub(super) index: HashMap<ObjectId, usize>,
    pub(super) slab: slab::Slab<(ObjectId, Object)>,
}

impl ObjectTable {
    pub(super) fn get(&self, id: &ObjectId) -> Option<&Object> {
        self.index
            .get(id)
            .and_then(|&i| self.slab.get(i))
            .map(|(_, o)| o)
    }

    pub(super) fn get_mut(&mut self, id: &ObjectId) -> Option<&mut Object> {
        self.index
            .get(id)
            .and_then(|&i| self.slab.get_mut(i))
            .map(|(_, o)| o)
    }

    pub(super) fn contains_key(&self, id: &ObjectId) -> bool {
        self.index.contains_key(id)
    }

    /// The slab index of an object (stable while the object exists).
    pub(super) fn index_of(&self, id: &ObjectId) -> Option<u32> {
        self.index.get(id).and_then(|&i| u32::try_from(i).ok())
    }

    /// The id of the object at a slab index.
    pub(super) fn id_at(&self, index: u32) -> Option<ObjectId> {
        self.slab.get(index as usize).map(|(id, _)| *id)
    }

    /// Enters an object; the caller has checked that the id is new.
    pub(super) fn insert(&mut self, id: ObjectId, object: Object) {
        let i = self.slab.insert((id, object));
        if let Some(old) = self.index.insert(id, i) {
            self.slab.try_remove(old);
        }
    }

    pub(super) fn remove(&mut self, id: &ObjectId) -> Option<Object> {
        let i = self.index.remove(id)?;
        self.slab.try_remove(i).map(|(_, o)| o)
    }

    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&ObjectId, &Object)> {
        self.slab.iter().map(|(_, (id, o))| (id, o))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Object> {
        self.slab.iter().map(|(_, (_, o))| o)
    }
}

pub(super) fn seal_info(object_id: ObjectId, o: &Object) -> ObjectInfo {
    ObjectInfo {
        object_id,
        data_size: i64::try_from(o.data_size).unwrap_or(i64::MAX),
        metadata_size: i64::try_from(o.metadata_size).unwrap_or(i64::MAX),
        digest: o.digest,
        ..ObjectInfo::default()
    }
}

pub(super) fn deletion_info(object_id: ObjectId) -> ObjectInfo {
    ObjectInfo {
        object_id,
        is_deletion: true,
        ..ObjectInfo::default()
    }
}
