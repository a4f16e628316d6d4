//! The offset allocator for the shared segment: it decides which byte ranges of the segment
//! hold which object, and nothing else.
//!
//! An [`Arena`] manages the offsets `[base, base + capacity)` and hands out 64-byte aligned
//! blocks whose lengths are multiples of 64 bytes, with best-fit placement and immediate
//! coalescing of free neighbours (much like dlmalloc treats large chunks).
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
//! range. [`Arena::check_invariants`] verifies all of this, for tests and fuzz targets.
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
    /// A block given to [`Arena::with_blocks`] is misaligned, outside the range, out of order
    /// or overlaps the one before it.
    BadBlock {
        /// Its offset.
        offset: u64,
        /// Its requested size.
        size: u64,
    },
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
            ArenaError::BadBlock { offset, size } => write!(
                f,
                "block {offset}+{size} is misaligned, outside the arena, out of order or overlapping"
            ),
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

/// The largest aligned part of `[base, base + len)` (clamped to `u64::MAX`), as `(base,
/// capacity)` with both multiples of [`ALIGNMENT`]. The identity for a valid aligned range.
fn aligned_range(base: u64, len: u64) -> (u64, u64) {
    let end = base.saturating_add(len);
    match base.checked_next_multiple_of(ALIGNMENT) {
        Some(start) if start <= end => (start, (end - start) / ALIGNMENT * ALIGNMENT),
        // Not even one aligned offset in range: an empty arena.
        _ => (base / ALIGNMENT * ALIGNMENT, 0),
    }
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
        let (base, capacity) = aligned_range(base, len);
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

    /// Creates an arena over `[base, base + len)` in which `blocks` (`(offset, requested
    /// size)`, sorted by offset) are already allocated and everything else is free: the
    /// allocator of a segment whose objects survived a restart. Each block must start on an
    /// [`ALIGNMENT`] boundary inside the range, and its whole block length must end inside it
    /// and before the next block; the first block that does not is the error. O(n log n).
    pub fn with_blocks(base: u64, len: u64, blocks: &[(u64, u64)]) -> Result<Arena, ArenaError> {
        let mut arena = Arena::try_new(base, 0)?;
        let (base, capacity) = aligned_range(base, len);
        arena.base = base;
        arena.capacity = capacity;
        let end = base + capacity;
        let mut cursor = base;
        let mut free = Vec::new();
        for &(offset, size) in blocks {
            let block_end = offset.checked_add(block_len(size)).filter(|e| *e <= end);
            let Some(block_end) =
                block_end.filter(|_| offset >= cursor && offset.is_multiple_of(ALIGNMENT))
            else {
                return Err(ArenaError::BadBlock { offset, size });
            };
            if offset > cursor {
                free.push((cursor, offset - cursor));
            }
            arena.allocated_bytes += size;
            arena.used_bytes += block_end - offset;
            cursor = block_end;
        }
        if cursor < end {
            free.push((cursor, end - cursor));
        }
        // Sorted input: the maps are bulk-built.
        arena.live = blocks.iter().copied().collect();
        arena.free_by_size = free.iter().map(|&(o, l)| (l, o)).collect();
        arena.free = free.into_iter().collect();
        Ok(arena)
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

    /// Number of free blocks: 1 when nothing is allocated (0 if the capacity is 0); more
    /// means fragmentation.
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

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    /// Asserts the invariants hold, with the checker's message on failure.
    fn check(arena: &Arena) {
        if let Err(e) = arena.check_invariants() {
            panic!("invariant violated: {e}\n{arena:?}");
        }
    }

    /// All permutations of `items` (fine for the handful used here).
    fn permutations(items: &[u64]) -> Vec<Vec<u64>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first);
                out.push(tail);
            }
        }
        out
    }

    #[test]
    fn with_blocks_rebuilds_the_free_space_around_given_blocks() {
        let mut arena = Arena::with_blocks(64, 64 * 10, &[(128, 100), (320, 0), (576, 64)])
            .expect("valid blocks");
        check(&arena);
        assert_eq!(arena.live_blocks(), 3);
        assert_eq!(arena.allocated_bytes(), 164);
        assert_eq!(arena.used_bytes(), 128 + 64 + 64);
        // Free: 64+64, 256+64, 384+192, 640+64.
        assert_eq!(arena.free_block_count(), 4);
        assert_eq!(arena.largest_free_block(), 192);
        assert_eq!(arena.alloc(150), Some(384));
        assert_eq!(arena.free(128), Ok(100));
        check(&arena);
        assert_eq!(
            Arena::with_blocks(64, 640, &[]).map(|a| a.free_bytes()),
            Ok(640)
        );
        for bad in [
            vec![(100, 1)],             // misaligned
            vec![(0, 1)],               // below the base
            vec![(640, 65)],            // ends past the range
            vec![(128, 100), (192, 1)], // overlaps the block before
            vec![(256, 1), (128, 1)],   // out of order
            vec![(128, u64::MAX)],      // absurd size
        ] {
            assert!(Arena::with_blocks(64, 640, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn new_arena_is_one_free_block() {
        let arena = Arena::new(64, 4 * KIB);
        check(&arena);
        assert_eq!(arena.base(), 64);
        assert_eq!(arena.capacity(), 4 * KIB);
        assert_eq!(arena.free_bytes(), 4 * KIB);
        assert_eq!(arena.largest_free_block(), 4 * KIB);
        assert_eq!(arena.free_block_count(), 1);
        assert_eq!(arena.live_blocks(), 0);
        assert_eq!(arena.used_bytes(), 0);
        assert_eq!(arena.allocated_bytes(), 0);
    }

    #[test]
    fn offsets_are_aligned_and_blocks_rounded_up() {
        let mut arena = Arena::new(128, 64 * KIB);
        let mut expected_offset = 128;
        let mut allocated = 0;
        for size in [1, 63, 64, 65, 127, 128, 129, 1000, 4095, 4096] {
            let offset = arena.alloc(size).unwrap();
            assert_eq!(offset % ALIGNMENT, 0, "size {size}");
            // A fresh arena fills from the bottom, one rounded block after another.
            assert_eq!(offset, expected_offset, "size {size}");
            expected_offset += size.div_ceil(64) * 64;
            allocated += size;
            check(&arena);
        }
        assert_eq!(arena.allocated_bytes(), allocated);
        assert_eq!(arena.used_bytes(), expected_offset - 128);
        assert_eq!(arena.free_bytes(), 64 * KIB - arena.used_bytes());
    }

    #[test]
    fn zero_size_allocs_are_distinct() {
        let mut arena = Arena::new(0, KIB);
        let a = arena.alloc(0).unwrap();
        let b = arena.alloc(0).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.abs_diff(b), ALIGNMENT);
        assert_eq!(arena.allocated_bytes(), 0);
        assert_eq!(arena.used_bytes(), 2 * ALIGNMENT);
        assert_eq!(arena.live_blocks(), 2);
        check(&arena);
        assert_eq!(arena.free(a), Ok(0));
        assert_eq!(arena.free(b), Ok(0));
        assert_eq!(arena.free_block_count(), 1);
        check(&arena);
    }

    #[test]
    fn zero_size_allocs_fill_the_arena() {
        let mut arena = Arena::new(0, 4 * ALIGNMENT);
        let offsets: Vec<u64> = (0..4).map(|_| arena.alloc(0).unwrap()).collect();
        assert_eq!(offsets, [0, 64, 128, 192]);
        assert_eq!(arena.alloc(0), None);
        check(&arena);
    }

    #[test]
    fn exact_fit_of_the_whole_capacity() {
        let mut arena = Arena::new(64, 8 * KIB);
        assert_eq!(arena.alloc(8 * KIB), Some(64));
        check(&arena);
        assert_eq!(arena.free_bytes(), 0);
        assert_eq!(arena.largest_free_block(), 0);
        assert_eq!(arena.free_block_count(), 0);
        assert_eq!(arena.alloc(0), None);
        assert_eq!(arena.alloc(1), None);
        assert_eq!(arena.free(64), Ok(8 * KIB));
        assert_eq!(arena.alloc(8 * KIB + 1), None);
        assert_eq!(arena.alloc(8 * KIB - 63), Some(64));
        assert_eq!(arena.alloc(0), None);
        check(&arena);
    }

    #[test]
    fn freeing_in_every_order_coalesces_to_one_block() {
        // Sizes 1, 2, 3 and 4 units; then the same with a free tail after them.
        for len in [10 * ALIGNMENT, 16 * ALIGNMENT] {
            for order in permutations(&[0, 1, 2, 3]) {
                let mut arena = Arena::new(64, len);
                let offsets: Vec<u64> = (1..=4)
                    .map(|units| arena.alloc(units * ALIGNMENT).unwrap())
                    .collect();
                for &i in &order {
                    let offset = offsets[i as usize];
                    assert_eq!(arena.free(offset), Ok((i + 1) * ALIGNMENT));
                    check(&arena);
                }
                assert_eq!(arena.free_block_count(), 1, "order {order:?}");
                assert_eq!(arena.largest_free_block(), len, "order {order:?}");
                assert_eq!(arena.used_bytes(), 0);
                assert_eq!(arena.alloc(len), Some(64));
            }
        }
    }

    #[test]
    fn freeing_merges_with_both_neighbours() {
        let mut arena = Arena::new(0, 5 * ALIGNMENT);
        let blocks: Vec<u64> = (0..5).map(|_| arena.alloc(64).unwrap()).collect();
        arena.free(blocks[1]).unwrap();
        arena.free(blocks[3]).unwrap();
        assert_eq!(arena.free_block_count(), 2);
        arena.free(blocks[2]).unwrap();
        check(&arena);
        assert_eq!(arena.free_block_count(), 1);
        assert_eq!(arena.largest_free_block(), 3 * ALIGNMENT);
        assert_eq!(arena.alloc(3 * ALIGNMENT), Some(blocks[1]));
    }

    #[test]
    fn double_free_and_unknown_offsets_are_errors() {
        let mut arena = Arena::new(64, 4 * KIB);
        let a = arena.alloc(100).unwrap();
        let b = arena.alloc(100).unwrap();
        assert_eq!(arena.free(a), Ok(100));
        let before = (
            arena.allocated_bytes(),
            arena.used_bytes(),
            arena.live_blocks(),
            arena.free_block_count(),
        );
        let tail = b + 128; // start of the free remainder, never handed out
        for bad in [a, b + 64, b + 1, tail, 0, 63, 64 + 4 * KIB, u64::MAX] {
            assert_eq!(arena.free(bad), Err(ArenaError::NotAllocated(bad)));
            check(&arena);
            let after = (
                arena.allocated_bytes(),
                arena.used_bytes(),
                arena.live_blocks(),
                arena.free_block_count(),
            );
            assert_eq!(after, before, "freeing {bad} changed the arena");
        }
        assert_eq!(arena.free(b), Ok(100));
        assert_eq!(arena.free(b), Err(ArenaError::NotAllocated(b)));
        assert_eq!(arena.free_block_count(), 1);
    }

    #[test]
    fn huge_sizes_return_none() {
        let mut arena = Arena::new(64, 4 * KIB);
        for size in [
            4 * KIB + 1,
            u64::MAX / 2,
            u64::MAX - 64,
            u64::MAX - 63,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(arena.alloc(size), None, "size {size}");
        }
        check(&arena);
        assert_eq!(arena.live_blocks(), 0);

        // The largest possible arena, at the very top of the offset space.
        let mut top = Arena::new(0, u64::MAX);
        assert_eq!(top.capacity(), u64::MAX - 63);
        assert_eq!(top.alloc(u64::MAX), None);
        assert_eq!(top.alloc(u64::MAX - 62), None);
        assert_eq!(top.alloc(u64::MAX - 63), Some(0));
        assert_eq!(top.alloc(0), None);
        check(&top);
        assert_eq!(top.free(0), Ok(u64::MAX - 63));
        let high_base = u64::MAX - 63 - 4 * KIB;
        let mut high = Arena::new(high_base, 4 * KIB + 63);
        let a = high.alloc(4 * KIB - 64).unwrap();
        let b = high.alloc(1).unwrap();
        assert_eq!(b, u64::MAX - 127);
        assert_eq!(high.alloc(0), None);
        check(&high);
        high.free(a).unwrap();
        high.free(b).unwrap();
        check(&high);
    }

    #[test]
    fn best_fit_picks_the_smallest_fitting_hole() {
        // Holes of 3, 1, 2 and 2 units, separated by live one-unit blocks, then a big tail.
        let mut arena = Arena::new(0, 64 * ALIGNMENT);
        let mut holes = Vec::new();
        for units in [3, 1, 2, 2] {
            holes.push(arena.alloc(units * ALIGNMENT).unwrap());
            arena.alloc(0).unwrap();
        }
        for &hole in &holes {
            arena.free(hole).unwrap();
        }
        check(&arena);
        assert_eq!(arena.free_block_count(), 5);
        // Two units: the first of the two 2-unit holes, not the 3-unit one or the tail.
        assert_eq!(arena.alloc(65), Some(holes[2]));
        assert_eq!(arena.alloc(128), Some(holes[3]));
        // One unit: the 1-unit hole.
        assert_eq!(arena.alloc(0), Some(holes[1]));
        // Now only the 3-unit hole and the tail are left; one unit comes from the 3-unit hole.
        assert_eq!(arena.alloc(1), Some(holes[0]));
        assert_eq!(arena.alloc(2 * ALIGNMENT), Some(holes[0] + ALIGNMENT));
        check(&arena);
        assert_eq!(arena.free_block_count(), 1);
    }

    #[test]
    fn try_new_rejects_bad_ranges() {
        assert_eq!(
            Arena::try_new(1, KIB).unwrap_err(),
            ArenaError::MisalignedBase(1)
        );
        assert_eq!(
            Arena::try_new(u64::MAX - 63, 64).unwrap_err(),
            ArenaError::RangeOverflow {
                base: u64::MAX - 63,
                len: 64
            }
        );
        let arena = Arena::try_new(u64::MAX - 63, 63).unwrap();
        assert_eq!(arena.capacity(), 0);
        let arena = Arena::try_new(128, KIB).unwrap();
        assert_eq!((arena.base(), arena.capacity()), (128, KIB));
    }

    #[test]
    fn unaligned_len_is_rounded_down() {
        let mut arena = Arena::new(64, 4 * KIB + 63);
        check(&arena);
        assert_eq!(arena.capacity(), 4 * KIB);
        assert_eq!(arena.alloc(4 * KIB + 1), None);
        assert_eq!(arena.alloc(4 * KIB), Some(64));
    }

    #[test]
    fn empty_arenas_allocate_nothing() {
        for len in [0, 1, 63] {
            let mut arena = Arena::new(64, len);
            check(&arena);
            assert_eq!(arena.capacity(), 0);
            assert_eq!(arena.free_block_count(), 0);
            assert_eq!(arena.largest_free_block(), 0);
            assert_eq!(arena.alloc(0), None);
            assert_eq!(arena.free(64), Err(ArenaError::NotAllocated(64)));
        }
    }

    /// What `new` falls back to in release builds instead of panicking on a bad range.
    #[test]
    fn bad_ranges_are_clamped_to_their_aligned_part() {
        assert_eq!(aligned_range(128, 4 * KIB + 63), (128, 4 * KIB));
        assert_eq!(aligned_range(1, 200), (64, 128));
        assert_eq!(aligned_range(1, 62), (0, 0));
        assert_eq!(aligned_range(u64::MAX - 10, 100), (u64::MAX - 63, 0));
        assert_eq!(aligned_range(u64::MAX - 127, 1000), (u64::MAX - 127, 64));
        assert_eq!(aligned_range(0, u64::MAX), (0, u64::MAX - 63));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not a multiple of 64")]
    fn new_asserts_alignment_in_debug() {
        Arena::new(1, 200);
    }

    #[test]
    fn check_invariants_catches_corruption() {
        let mut arena = Arena::new(0, 16 * ALIGNMENT);
        let a = arena.alloc(64).unwrap();
        let b = arena.alloc(64).unwrap();
        arena.alloc(64).unwrap();
        arena.free(a).unwrap();
        arena.free(b).unwrap();
        check(&arena);

        // Each corruption, and a piece of the message that names what is wrong.
        type Corruption = (&'static str, fn(&mut Arena));
        let corruptions: [Corruption; 9] = [
            ("follows another free block", |a| {
                a.remove_free(0, 128);
                a.insert_free(0, 64);
                a.insert_free(64, 64);
            }),
            ("gap or overlap", |a| {
                // A free block reaching into the live block at 128.
                a.remove_free(0, 128);
                a.insert_free(0, 192);
            }),
            ("gap or overlap", |a| {
                // The live block at 128 grows over the free tail at 192.
                *a.live.get_mut(&128).unwrap() = 128;
                a.allocated_bytes += 127;
                a.used_bytes += 64;
            }),
            ("gap or overlap", |a| a.remove_free(0, 128)),
            ("missing from the size index", |a| {
                a.free_by_size.remove(&(128, 0));
            }),
            ("size index has", |a| {
                a.free_by_size.insert((64, 0));
            }),
            ("allocated_bytes", |a| a.allocated_bytes += 1),
            ("used_bytes", |a| a.used_bytes += 64),
            ("past the arena end", |a| {
                a.remove_free(192, 13 * ALIGNMENT);
                a.insert_free(192, 14 * ALIGNMENT);
            }),
        ];
        for (what, corrupt) in corruptions {
            let mut broken = arena.clone();
            corrupt(&mut broken);
            match broken.check_invariants() {
                Ok(()) => panic!("missed: {what}"),
                Err(e) => assert!(e.contains(what), "expected {what:?}, got {e:?}"),
            }
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            ArenaError::NotAllocated(128).to_string(),
            "no allocated block starts at offset 128"
        );
        assert_eq!(
            ArenaError::MisalignedBase(3).to_string(),
            "arena base 3 is not a multiple of 64"
        );
        assert_eq!(
            ArenaError::RangeOverflow {
                base: 64,
                len: u64::MAX
            }
            .to_string(),
            format!("arena range 64+{} overflows u64", u64::MAX)
        );
    }

    // Property tests: random operation sequences checked step by step against a shadow model.

    use proptest::prelude::*;
    use proptest::sample::Index;

    /// One step of a random run.
    #[derive(Debug, Clone)]
    enum Op {
        /// Allocate this many bytes.
        Alloc(u64),
        /// Free the live block at this index of the model.
        Free(Index),
        /// Free the most recently freed offset again (if it was not reused since).
        DoubleFree,
        /// Free `base + delta`: an error unless a live block starts there.
        FreeAt(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let size = prop_oneof![
            4 => 0u64..=256,
            3 => 0u64..=2048,
            1 => 0u64..=20_000,
            1 => Just(0u64),
            1 => (0u64..=64).prop_map(|d| u64::MAX - d),
        ];
        prop_oneof![
            8 => size.prop_map(Op::Alloc),
            6 => any::<Index>().prop_map(Op::Free),
            1 => Just(Op::DoubleFree),
            1 => (0u64..=20_000).prop_map(Op::FreeAt),
        ]
    }

    /// The model's idea of a block's length, computed independently (in u128) from the arena's.
    fn model_len(size: u64) -> u128 {
        u128::from(size.max(1)).div_ceil(64) * 64
    }

    /// The gaps between the model's live blocks, as `(offset, length)` in offset order: what
    /// the arena's free blocks must be when fully coalesced.
    fn model_gaps(base: u64, capacity: u64, live: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut sorted = live.to_vec();
        sorted.sort_unstable();
        let mut gaps = Vec::new();
        let mut cursor = u128::from(base);
        for (offset, size) in sorted.into_iter().chain([(base + capacity, 0)]) {
            let offset = u128::from(offset);
            assert!(offset >= cursor, "model blocks overlap at {offset}");
            if offset > cursor {
                gaps.push((cursor as u64, (offset - cursor) as u64));
            }
            cursor = offset + model_len(size);
        }
        gaps
    }

    /// Compares everything observable about the arena with the model.
    fn check_against_model(arena: &Arena, live: &[(u64, u64)]) -> Result<(), TestCaseError> {
        if let Err(e) = arena.check_invariants() {
            return Err(TestCaseError::fail(format!("invariant: {e}")));
        }
        let requested: u64 = live.iter().map(|&(_, size)| size).sum();
        let used: u128 = live.iter().map(|&(_, size)| model_len(size)).sum();
        let gaps = model_gaps(arena.base(), arena.capacity(), live);
        prop_assert_eq!(arena.allocated_bytes(), requested);
        prop_assert_eq!(u128::from(arena.used_bytes()), used);
        prop_assert_eq!(arena.free_bytes(), arena.capacity() - arena.used_bytes());
        prop_assert_eq!(arena.live_blocks(), live.len());
        prop_assert_eq!(arena.free_block_count(), gaps.len());
        let largest_gap = gaps.iter().map(|&(_, len)| len).max().unwrap_or(0);
        prop_assert_eq!(arena.largest_free_block(), largest_gap);
        Ok(())
    }

    /// Runs `ops` on a fresh arena over `[base, base + len)`, checking every step against a
    /// shadow model (the list of live `(offset, size)`), then frees everything in an order
    /// picked by `drain` and checks the arena is one free block again.
    fn run(base: u64, len: u64, ops: &[Op], drain: &[Index]) -> Result<(), TestCaseError> {
        let mut arena = Arena::new(base, len);
        let capacity = arena.capacity();
        prop_assert_eq!(capacity, len / 64 * 64);
        let end = u128::from(base) + u128::from(capacity);
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut last_freed: Option<u64> = None;
        check_against_model(&arena, &live)?;

        for op in ops {
            match *op {
                Op::Alloc(size) => {
                    // Best fit over the model's holes: smallest that fits, lowest offset on ties.
                    let gaps = model_gaps(base, capacity, &live);
                    let expected = gaps
                        .iter()
                        .filter(|&&(_, gap)| u128::from(gap) >= model_len(size))
                        .min_by_key(|&&(offset, gap)| (gap, offset))
                        .map(|&(offset, _)| offset);
                    let got = arena.alloc(size);
                    prop_assert_eq!(got, expected, "alloc({}) in gaps {:?}", size, gaps);
                    if let Some(offset) = got {
                        prop_assert_eq!(offset % 64, 0);
                        let block_end = u128::from(offset) + model_len(size);
                        prop_assert!(offset >= base && block_end <= end, "{offset} out of range");
                        for &(other, other_size) in &live {
                            let other_end = u128::from(other) + model_len(other_size);
                            prop_assert!(
                                block_end <= u128::from(other) || other_end <= u128::from(offset),
                                "new block {offset}+{size} overlaps live {other}+{other_size}"
                            );
                        }
                        live.push((offset, size));
                        if last_freed == Some(offset) {
                            last_freed = None;
                        }
                    }
                }
                Op::Free(index) => {
                    if live.is_empty() {
                        continue;
                    }
                    let (offset, size) = live.swap_remove(index.index(live.len()));
                    prop_assert_eq!(arena.free(offset), Ok(size));
                    last_freed = Some(offset);
                }
                Op::DoubleFree => {
                    if let Some(offset) = last_freed
                        && !live.iter().any(|&(o, _)| o == offset)
                    {
                        prop_assert_eq!(arena.free(offset), Err(ArenaError::NotAllocated(offset)));
                    }
                }
                Op::FreeAt(delta) => {
                    let offset = base.wrapping_add(delta);
                    match live.iter().position(|&(o, _)| o == offset) {
                        Some(i) => {
                            let (_, size) = live.swap_remove(i);
                            prop_assert_eq!(arena.free(offset), Ok(size));
                            last_freed = Some(offset);
                        }
                        None => {
                            prop_assert_eq!(
                                arena.free(offset),
                                Err(ArenaError::NotAllocated(offset))
                            );
                        }
                    }
                }
            }
            check_against_model(&arena, &live)?;
            // An arena rebuilt from the live blocks (as after a restart) is the same arena.
            let mut sorted = live.clone();
            sorted.sort_unstable();
            let rebuilt = Arena::with_blocks(base, len, &sorted);
            prop_assert!(rebuilt.is_ok(), "{:?}", rebuilt.err());
            if let Ok(rebuilt) = rebuilt {
                check_against_model(&rebuilt, &live)?;
            }
        }

        for index in drain.iter().cycle() {
            if live.is_empty() {
                break;
            }
            let (offset, size) = live.swap_remove(index.index(live.len()));
            prop_assert_eq!(arena.free(offset), Ok(size));
            check_against_model(&arena, &live)?;
        }
        prop_assert_eq!(arena.used_bytes(), 0);
        prop_assert_eq!(arena.allocated_bytes(), 0);
        prop_assert_eq!(arena.free_block_count(), usize::from(capacity > 0));
        prop_assert_eq!(arena.largest_free_block(), capacity);
        prop_assert_eq!(arena.alloc(capacity), (capacity > 0).then_some(base));
        Ok(())
    }

    /// Bases to test: zero, small, and the very top of the offset space (so `offset + len`
    /// arithmetic would overflow if done carelessly).
    fn base_for(kind: u8, small: u64, len: u64) -> u64 {
        match kind % 3 {
            0 => 0,
            1 => small * 64,
            _ => (u64::MAX - len) / 64 * 64,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Small arenas: allocation failures, exact fits and full coalescing are common.
        #[test]
        fn small_arena_matches_model(
            kind in any::<u8>(),
            small in 0u64..1000,
            len in 0u64..=4096,
            ops in prop::collection::vec(op(), 0..200),
            drain in prop::collection::vec(any::<Index>(), 1..16),
        ) {
            run(base_for(kind, small, len), len, &ops, &drain)?;
        }

        /// Larger arenas: many live blocks and holes at once.
        #[test]
        fn large_arena_matches_model(
            kind in any::<u8>(),
            small in 0u64..1000,
            len in 16_384u64..=262_144,
            ops in prop::collection::vec(op(), 0..400),
            drain in prop::collection::vec(any::<Index>(), 1..16),
        ) {
            run(base_for(kind, small, len), len, &ops, &drain)?;
        }
    }
}
