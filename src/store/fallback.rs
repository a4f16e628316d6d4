//! The fallback tier (`--fallback-dir DIR`, `--fallback-limit BYTES`): objects shared memory
//! cannot hold, even after eviction and waiting, live in disk-backed segments in `DIR`.
//!
//! A fallback segment is an ordinary segment as far as clients know: its fd goes out once per
//! client after the Create or Get reply that first names it, and clients map it whole and keep
//! the mapping while connected. So segments are few and large: a sparse file of
//! [`SEGMENT_BYTES`] (or one object's size, if larger) with its own [`Arena`], kept for the
//! store's lifetime and reused; a new one is made only when no existing one has room.
//!
//! Disk space is reserved with `fallocate` before a create is answered, so a full disk is a
//! `PlasmaStoreFull` and a log line, never a SIGBUS in a client writing into a hole. When an
//! object goes, its blocks are given back with `FALLOC_FL_PUNCH_HOLE` (the file keeps its size,
//! so every client's mapping stays valid). Blocks are page-aligned and whole pages, so punching
//! never touches a neighbour. Files are unlinked as soon as they are created (see
//! [`Segment::create`]): nothing is left in `DIR` however the store exits.

use std::io;
use std::path::PathBuf;

use log::{info, warn};
use nix::fcntl::{FallocateFlags, fallocate};

use crate::arena::Arena;
use crate::shm::{SEGMENT_BASE, Segment, SegmentOptions};

/// Virtual size of a fallback segment (sparse: only reserved blocks take disk space).
pub const SEGMENT_BYTES: u64 = 1 << 30;

/// Granularity of fallback blocks: whole pages, so holes can be punched exactly.
const PAGE: u64 = 4096;

/// One fallback segment and its allocator.
struct FallbackSegment {
    segment: Segment,
    arena: Arena,
}

/// The fallback tier.
pub(super) struct Fallback {
    dir: PathBuf,
    limit: u64,
    segments: Vec<FallbackSegment>,
    /// Id of the next segment made.
    next_id: i32,
    /// Bytes reserved for objects (whole pages).
    allocated: u64,
}

fn pages(size: u64) -> Option<u64> {
    size.max(1).checked_next_multiple_of(PAGE)
}

impl Fallback {
    /// A tier in `dir` holding at most `limit` bytes; segment ids start at `first_id`.
    pub(super) fn new(dir: PathBuf, limit: Option<u64>, first_id: i32) -> io::Result<Fallback> {
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("--fallback-dir {}: not a directory", dir.display()),
            ));
        }
        Ok(Fallback {
            dir,
            limit: limit.unwrap_or(u64::MAX),
            segments: Vec::new(),
            next_id: first_id,
            allocated: 0,
        })
    }

    /// The segment with this id.
    pub(super) fn segment(&self, id: i32) -> Option<&Segment> {
        self.segments
            .iter()
            .map(|s| &s.segment)
            .find(|s| s.id() == id)
    }

    /// Reserves room for `size` bytes: `(segment id, offset)`, or `None` (logged) if the limit
    /// or the disk does not allow it.
    pub(super) fn alloc(&mut self, size: u64) -> Option<(i32, u64)> {
        let len = pages(size)?;
        if self.allocated.saturating_add(len) > self.limit {
            warn!(
                "fallback tier: {size} bytes would exceed --fallback-limit ({} of {} bytes used)",
                self.allocated, self.limit
            );
            return None;
        }
        let found = self
            .segments
            .iter_mut()
            .enumerate()
            .find_map(|(i, s)| s.arena.alloc(len).map(|o| (i, o)));
        let grown = found.is_none();
        let (index, offset) = match found {
            Some(found) => found,
            None => {
                let i = self.grow(len)?;
                let offset = self.segments.get_mut(i)?.arena.alloc(len)?;
                (i, offset)
            }
        };
        let s = self.segments.get_mut(index)?;
        if let Err(e) = reserve(&s.segment, offset, len) {
            warn!(
                "fallback tier: cannot reserve {len} bytes in {}: {e}; replying PlasmaStoreFull",
                self.dir.display()
            );
            if let Err(e) = s.arena.free(offset) {
                warn!("fallback tier: freeing {offset}: {e}");
            }
            // Whatever the failed fallocate did allocate (ext4 keeps a partial allocation on
            // ENOSPC) goes back to the disk.
            punch(&s.segment, offset, len);
            if grown {
                // Made for this object and seen by no client: not kept, and its id is used
                // again, so that failing requests of ever larger sizes pile up neither
                // segments nor ids.
                self.segments.pop();
                self.next_id -= 1;
            }
            return None;
        }
        self.allocated += len;
        Some((s.segment.id(), offset))
    }

    /// Gives back the block at `offset` of segment `id` that holds `size` bytes.
    pub(super) fn free(&mut self, id: i32, offset: u64, size: u64) {
        let Some(s) = self.segments.iter_mut().find(|s| s.segment.id() == id) else {
            warn!("fallback tier: free in unknown segment {id}");
            return;
        };
        if let Err(e) = s.arena.free(offset) {
            warn!("fallback tier: freeing {offset} in segment {id}: {e}");
            return;
        }
        let len = pages(size).unwrap_or(0);
        self.allocated = self.allocated.saturating_sub(len);
        punch(&s.segment, offset, len);
    }

    /// Bytes reserved for objects.
    pub(super) fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Number of fallback segments (files) open.
    pub(super) fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Makes a new segment with room for a block of `len` bytes; returns its index.
    fn grow(&mut self, len: u64) -> Option<usize> {
        let usable = len.checked_add(PAGE)?.max(SEGMENT_BYTES);
        let opts = SegmentOptions {
            directory: Some(self.dir.clone()),
            huge_pages: false,
        };
        let segment = match Segment::create(self.next_id, usable, &opts) {
            Ok(s) => s,
            Err(e) => {
                warn!(
                    "fallback tier: cannot make a segment in {}: {e}",
                    self.dir.display()
                );
                return None;
            }
        };
        // Blocks start on a page (the first page holds nothing) and stay whole pages.
        let end = (SEGMENT_BASE + segment.usable_len()) / PAGE * PAGE;
        let arena = Arena::new(PAGE, end.saturating_sub(PAGE));
        info!(
            "fallback tier: segment {} of {} bytes in {}",
            self.next_id,
            segment.mmap_size(),
            self.dir.display()
        );
        self.next_id += 1;
        self.segments.push(FallbackSegment { segment, arena });
        Some(self.segments.len() - 1)
    }
}

/// Gives the disk blocks of `[offset, offset + len)` back (the file keeps its size, so client
/// mappings stay valid).
fn punch(segment: &Segment, offset: u64, len: u64) {
    let (Ok(at), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let punched = fallocate(
        segment.fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        at,
        n,
    );
    if let Err(e) = punched {
        warn!(
            "fallback tier: cannot punch a hole at {offset} in segment {}: {e}",
            segment.id()
        );
    }
}

/// Allocates the disk blocks of `[offset, offset + len)` now, so that clients writing there
/// can never fault on a full disk.
fn reserve(segment: &Segment, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    fallocate(
        segment.fd(),
        FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )?;
    Ok(())
}
