//! The offset allocator for the shared segment: it decides which byte ranges of the segment
//! hold which object, and nothing else.
//!
//! An [`Arena`] manages the offsets `[base, base + capacity)` and hands out 64-byte aligned
//! blocks whose lengths are multiples of 64 bytes, with best-fit placement and immediate
//! coalescing of free neighbours (the policy dlmalloc uses for large chunks).
//!
//! Unlike dlmalloc, the arena never reads or writes the memory it manages. All bookkeeping
//! (block boundaries, sizes, the free lists) lives in ordinary Rust collections on the store's
//! heap. The managed memory is mapped read-write by untrusted clients, so any header kept
//! inside it could be overwritten by a client, and the next `free` would then corrupt the
//! store's view of the segment. Here a client can scribble over every byte of the segment and
//! the allocator stays correct; clients only ever learn `(segment, offset, size)`.
//!
//! Layout of the bookkeeping:
//! - `live`: offset → requested size of every allocated block. The block's length is derived
//!   from the requested size ([`ALIGNMENT`] units, at least one), so it is not stored.
//! - `free`: offset → length of every free block, for finding the neighbours of a block being
//!   freed.
//! - `free_by_size`: the set of `(length, offset)` of every free block; best fit is the first
//!   entry at or after `(needed, 0)`: the smallest block that fits, lowest offset on ties.
//!
//! Free blocks are always fully coalesced and, together with the live blocks, tile the whole
//! range. [`Arena::check_invariants`] verifies all of this; tests and fuzz targets call it.
//! Every operation is O(log n) in the number of blocks, and the arena contains no `unsafe`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Alignment of every offset handed out, and the granularity of block lengths.
pub const ALIGNMENT: u64 = 64;

/// Why an arena operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArenaError {
    /// The base offset is not a multiple of [`ALIGNMENT`].
    MisalignedBase(u64),
    /// `base + len` does not fit in a `u64`.
    RangeOverflow {
        /// The requested base offset.
        base: u64,
        /// The requested length.
        len: u64,
    },
    /// No live block starts at this offset (never allocated, already freed, or not a block start).
    NotAllocated(u64),
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArenaError::MisalignedBase(base) => {
                write!(f, "arena base {base} is not a multiple of {ALIGNMENT}")
            }
            ArenaError::RangeOverflow { base, len } => {
                write!(f, "arena range {base}+{len} overflows u64")
            }
            ArenaError::NotAllocated(offset) => {
                write!(f, "no allocated block starts at offset {offset}")
            }
        }
    }
}

impl std::error::Error for ArenaError {}

/// Length of the block that holds `requested` bytes: a whole number of [`ALIGNMENT`] units,
/// at least one (so zero-size requests still get distinct offsets). Saturates at `u64::MAX`,
/// which is not a multiple of [`ALIGNMENT`] and so larger than any arena's capacity.
fn block_len(requested: u64) -> u64 {
    requested
        .max(1)
        .div_ceil(ALIGNMENT)
        .saturating_mul(ALIGNMENT)
}

/// A best-fit allocator over the offsets `[base, base + capacity)`, with all of its bookkeeping
/// outside the managed memory. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Arena {
    /// First managed offset, a multiple of [`ALIGNMENT`].
    base: u64,
    /// Number of managed bytes, a multiple of [`ALIGNMENT`].
    capacity: u64,
    /// Live blocks: offset → requested size. The block length is `block_len(requested)`.
    live: BTreeMap<u64, u64>,
    /// Free blocks: offset → length. Never two adjacent entries.
    free: BTreeMap<u64, u64>,
    /// The free blocks again, as `(length, offset)`, ordered for best fit.
    free_by_size: BTreeSet<(u64, u64)>,
    /// Sum of the requested sizes of the live blocks.
    allocated_bytes: u64,
    /// Sum of the lengths of the live blocks.
    used_bytes: u64,
}

impl Arena {
    /// Creates an arena over `[base, base + len)`, all of it free.
    ///
    /// `base` must be a multiple of [`ALIGNMENT`] and `base + len` must fit in a `u64`;
    /// debug builds assert both. In release builds a bad range is not a panic: the arena
    /// manages the largest aligned part of `[base, min(base + len, u64::MAX))` instead. Use
    /// [`Arena::try_new`] to get an error. A `len` that is not a multiple of [`ALIGNMENT`] is
    /// fine: the last `len % 64` bytes are never handed out, and [`Arena::capacity`] reports
    /// the rounded-down length.
    pub fn new(base: u64, len: u64) -> Arena {
        debug_assert!(
            base.is_multiple_of(ALIGNMENT),
            "arena base {base} is not a multiple of {ALIGNMENT}"
        );
        debug_assert!(
            base.checked_add(len).is_some(),
            "arena range {base}+{len} overflows u64"
        );
        let end = base.saturating_add(len);
        let (base, capacity) = match base.checked_next_multiple_of(ALIGNMENT) {
            Some(start) if start <= end => (start, (end - start) / ALIGNMENT * ALIGNMENT),
            // Not even one aligned offset in range: an empty arena.
            _ => (base / ALIGNMENT * ALIGNMENT, 0),
        };
        let mut arena = Arena {
            base,
            capacity,
            live: BTreeMap::new(),
            free: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            allocated_bytes: 0,
            used_bytes: 0,
        };
        if capacity > 0 {
            arena.insert_free(base, capacity);
        }
        arena
    }

    /// Creates an arena over `[base, base + len)`, or says why the range is invalid: `base`
    /// not a multiple of [`ALIGNMENT`], or `base + len` overflowing. As with [`Arena::new`],
    /// a `len` that is not a multiple of [`ALIGNMENT`] is rounded down.
    pub fn try_new(base: u64, len: u64) -> Result<Arena, ArenaError> {
        if !base.is_multiple_of(ALIGNMENT) {
            return Err(ArenaError::MisalignedBase(base));
        }
        if base.checked_add(len).is_none() {
            return Err(ArenaError::RangeOverflow { base, len });
        }
        Ok(Arena::new(base, len))
    }

    /// Allocates a block of at least `size` bytes and returns its offset, or `None` if no
    /// free block is large enough.
    ///
    /// The block is the smallest free block that fits (lowest offset on ties), cut down to
    /// `size` rounded up to a multiple of [`ALIGNMENT`]. A `size` of 0 still takes one
    /// 64-byte unit, so every live block has a distinct offset.
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        let len = block_len(size);
        let (hole_len, offset) = self.free_by_size.range((len, 0)..).next().copied()?;
        self.remove_free(offset, hole_len);
        if hole_len > len {
            // The rest of the hole stays free. Its right neighbour is live (the hole was
            // coalesced), so it needs no merging.
            self.insert_free(offset + len, hole_len - len);
        }
        self.live.insert(offset, size);
        self.allocated_bytes += size;
        self.used_bytes += len;
        Some(offset)
    }

    /// Frees the live block at `offset` and returns the size it was allocated with. The
    /// block merges with free neighbours at once.
    ///
    /// An offset where no live block starts (never allocated, already freed, or inside a
    /// block) is an error and changes nothing.
    pub fn free(&mut self, offset: u64) -> Result<u64, ArenaError> {
        let size = self
            .live
            .remove(&offset)
            .ok_or(ArenaError::NotAllocated(offset))?;
        let len = block_len(size);
        self.allocated_bytes -= size;
        self.used_bytes -= len;

        let mut start = offset;
        let mut end = offset + len;
        if let Some(next_len) = self.free.get(&end).copied() {
            self.remove_free(end, next_len);
            end += next_len;
        }
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back()
            && prev + prev_len == start
        {
            self.remove_free(prev, prev_len);
            start = prev;
        }
        self.insert_free(start, end - start);
        Ok(size)
    }

    /// First managed offset.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Number of managed bytes: the `len` given at construction, rounded down to a multiple
    /// of [`ALIGNMENT`].
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Sum of the sizes requested for the live blocks (without rounding).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes
    }

    /// Sum of the lengths of the live blocks (requested sizes rounded up to [`ALIGNMENT`]).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Bytes in free blocks: `capacity() - used_bytes()`.
    pub fn free_bytes(&self) -> u64 {
        self.capacity - self.used_bytes
    }

    /// Length of the largest free block (0 if there is none): the largest `size` for which
    /// [`Arena::alloc`] succeeds right now.
    pub fn largest_free_block(&self) -> u64 {
        self.free_by_size.last().map_or(0, |&(len, _)| len)
    }

    /// Number of live (allocated) blocks.
    pub fn live_blocks(&self) -> usize {
        self.live.len()
    }

    /// Number of free blocks; 1 for an empty arena, more means fragmentation.
    pub fn free_block_count(&self) -> usize {
        self.free.len()
    }

    /// Checks every internal invariant and describes the first violation found: blocks are
    /// aligned, non-empty and inside the range; live and free blocks tile the range without
    /// gaps or overlaps; no two free blocks are adjacent; the best-fit index holds exactly
    /// the free blocks; the byte counters match the blocks. O(n log n); meant for tests and
    /// fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        if !self.base.is_multiple_of(ALIGNMENT) || !self.capacity.is_multiple_of(ALIGNMENT) {
            return Err(format!(
                "range {}+{} is not {ALIGNMENT}-aligned",
                self.base, self.capacity
            ));
        }
        let range_end = self
            .base
            .checked_add(self.capacity)
            .ok_or_else(|| format!("range {}+{} overflows", self.base, self.capacity))?;

        // Walk live and free blocks together in offset order. `Some(requested)` marks a live
        // block, `None` a free one.
        let mut live = self
            .live
            .iter()
            .map(|(&offset, &size)| (offset, block_len(size), Some(size)))
            .peekable();
        let mut free = self
            .free
            .iter()
            .map(|(&offset, &len)| (offset, len, None))
            .peekable();
        let mut cursor = self.base;
        let mut previous_free = false;
        let (mut allocated, mut used, mut free_total) = (0u64, 0u64, 0u64);
        loop {
            let take_live = match (live.peek(), free.peek()) {
                (Some(l), Some(f)) => l.0 <= f.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_live { live.next() } else { free.next() };
            let Some((offset, len, requested)) = next else {
                break;
            };
            let kind = if requested.is_some() { "live" } else { "free" };
            if offset != cursor {
                return Err(format!(
                    "{kind} block at {offset} but the previous block ends at {cursor} (gap or overlap)"
                ));
            }
            if len == 0 || !len.is_multiple_of(ALIGNMENT) {
                return Err(format!("{kind} block at {offset} has length {len}"));
            }
            let end = offset
                .checked_add(len)
                .filter(|&end| end <= range_end)
                .ok_or_else(|| {
                    format!("{kind} block {offset}+{len} ends past the arena end {range_end}")
                })?;
            match requested {
                Some(size) => {
                    allocated += size;
                    used += len;
                    previous_free = false;
                }
                None => {
                    if previous_free {
                        return Err(format!("free block at {offset} follows another free block"));
                    }
                    if !self.free_by_size.contains(&(len, offset)) {
                        return Err(format!(
                            "free block {offset}+{len} is missing from the size index"
                        ));
                    }
                    free_total += len;
                    previous_free = true;
                }
            }
            cursor = end;
        }
        if cursor != range_end {
            return Err(format!(
                "blocks end at {cursor}, not at the arena end {range_end}"
            ));
        }
        if self.free_by_size.len() != self.free.len() {
            return Err(format!(
                "size index has {} entries for {} free blocks",
                self.free_by_size.len(),
                self.free.len()
            ));
        }
        if allocated != self.allocated_bytes {
            return Err(format!(
                "allocated_bytes is {} but live blocks request {allocated}",
                self.allocated_bytes
            ));
        }
        if used != self.used_bytes {
            return Err(format!(
                "used_bytes is {} but live blocks span {used}",
                self.used_bytes
            ));
        }
        if used + free_total != self.capacity {
            return Err(format!(
                "used {used} + free {free_total} != capacity {}",
                self.capacity
            ));
        }
        Ok(())
    }

    /// Records a free block in both indexes.
    fn insert_free(&mut self, offset: u64, len: u64) {
        self.free.insert(offset, len);
        self.free_by_size.insert((len, offset));
    }

    /// Forgets a free block in both indexes.
    fn remove_free(&mut self, offset: u64, len: u64) {
        self.free.remove(&offset);
        self.free_by_size.remove(&(len, offset));
    }
}
