//! Mapped segments and the byte ranges of objects inside them. This is the only module of the
//! client with `unsafe` code: it forms Rust slices over shared memory.
//!
//! A [`Segment`] is one store segment mapped read/write and `MAP_SHARED`, exactly
//! `mmap_size - 8` bytes from offset 0, as libplasma maps it. A [`Region`] is a bounds-checked
//! byte range of a segment that keeps the mapping alive through an `Arc`, so a slice handed
//! out by a buffer can never outlive its mapping.
//!
//! Shared memory is also written by other processes, so Rust's aliasing rules hold only by the
//! Plasma contract, which this module relies on:
//! - an object is written only by its creator, and only before it is sealed;
//! - a sealed object is never written again by anyone;
//! - inside this process the client hands out one [`MutRegion`] per created object, and
//!   refuses to seal it (which is what makes shared views of it available) while that
//!   writer is alive.

#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

/// Bytes at the end of a segment file that clients do not map (libplasma's
/// `kMmapRegionsGap`): the client maps `mmap_size - 8` bytes.
pub const UNMAPPED_TAIL: i64 = 8;

/// Page size for [`MutRegion::populate_write`].
const PAGE: usize = 4096;

/// Granularity of the record of populated memory ([`Segment`]).
const CHUNK: usize = 2 << 20;

/// One segment of the store, mapped into this process for as long as anything uses it.
pub struct Segment {
    /// The store's id for this segment.
    id: i32,
    map: MmapRaw,
    /// One bit per [`CHUNK`] of the mapping: set once [`MutRegion::populate_write`] has
    /// faulted the whole chunk in. The page tables stay filled while the mapping lives, so
    /// a later create there needs no madvise (which costs a walk over every page even when
    /// nothing is missing: about 50 ms per GiB).
    populated: Vec<AtomicU64>,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("len", &self.map.len())
            .finish()
    }
}

impl Segment {
    /// Maps `mmap_size - 8` bytes of the segment file `fd` (read/write, shared), then closes
    /// `fd`: the mapping alone keeps the memory.
    pub fn map(id: i32, fd: OwnedFd, mmap_size: i64) -> io::Result<Segment> {
        let len = mmap_size
            .checked_sub(UNMAPPED_TAIL)
            .filter(|&l| l > 0)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= isize::MAX as usize)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("segment {id}: cannot map an mmap_size of {mmap_size} bytes"),
                )
            })?;
        let map = MmapOptions::new().len(len).map_raw(&fd)?;
        drop(fd);
        let chunks = len.div_ceil(CHUNK);
        let populated = (0..chunks.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(Segment { id, map, populated })
    }

    /// Number of mapped bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// A bounds-checked byte range of a mapped segment, for reading.
#[derive(Clone)]
pub struct Region {
    segment: Arc<Segment>,
    offset: usize,
    len: usize,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("segment", &self.segment.id)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl Region {
    /// The range `[offset, offset + len)` of `segment`, or `None` if any of it lies outside
    /// the mapping.
    pub fn new(segment: &Arc<Segment>, offset: u64, len: u64) -> Option<Region> {
        let offset = usize::try_from(offset).ok()?;
        let len = usize::try_from(len).ok()?;
        if offset.checked_add(len)? > segment.len() {
            return None;
        }
        Some(Region {
            segment: Arc::clone(segment),
            offset,
            len,
        })
    }

    /// The bytes of the range.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `offset + len <= segment.len()` was checked in `new`, so the range lies
        // inside a live mapping, which `self.segment` keeps mapped for the slice's lifetime
        // (the mapping is never unmapped or shrunk while an `Arc<Segment>` exists). The
        // pointer is non-null and `u8` needs no alignment. Shared views are only read for
        // sealed objects (immutable by contract) or by the creator before seal while it holds
        // no live `MutRegion` slice (see the module doc), so no one writes these bytes while
        // the slice exists.
        unsafe { std::slice::from_raw_parts(self.segment.map.as_ptr().add(self.offset), self.len) }
    }
}

impl Region {
    /// Faults in, for writing, the whole pages of bytes `[from, to)` of this region
    /// (`MADV_POPULATE_WRITE`, Linux 5.14), skipping 2 MiB chunks of the mapping this client
    /// populated before (see [`Segment`]), so rewriting memory an earlier object used costs
    /// no madvise. The contents do not change. Returns whether the kernel did it (or nothing
    /// was left to do); a kernel without it (`EINVAL`) or any other refusal changes nothing.
    /// Parts of one region may be populated from several threads at once.
    pub fn populate_write(&self, from: usize, to: usize) -> bool {
        let seg = &self.segment;
        let base = seg.map.as_ptr() as usize;
        let (from, to) = (from.min(self.len), to.min(self.len));
        // Offsets in the mapping of the whole pages inside the part.
        let (first, end) = (
            (self.offset + from).next_multiple_of(PAGE),
            (self.offset + to) / PAGE * PAGE,
        );
        if end <= first {
            return false;
        }
        let is_done = |c: usize| {
            seg.populated
                .get(c / 64)
                .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (c % 64)) != 0)
        };
        let mut ok = true;
        let mut c = first / CHUNK;
        while c * CHUNK < end {
            if is_done(c) {
                c += 1;
                continue;
            }
            // A run of chunks not yet populated, clamped to the range.
            let run_start = c;
            while c * CHUNK < end && !is_done(c) {
                c += 1;
            }
            let lo = (run_start * CHUNK).max(first);
            let hi = (c * CHUNK).min(end);
            let Some(addr) = std::ptr::NonNull::new((base + lo) as *mut std::ffi::c_void) else {
                return false;
            };
            // SAFETY: `[from, to)` lies inside this region of a live mapping (bounds checked in
            // `Region::new`; the `Arc<Segment>` keeps it mapped).
            // MADV_POPULATE_WRITE only faults the pages in, writing nothing: memory contents
            // are unchanged.
            let done = unsafe {
                nix::sys::mman::madvise(
                    addr,
                    hi - lo,
                    nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE,
                )
            };
            if done.is_err() {
                ok = false;
                break;
            }
            // Record the chunks the advice covered whole.
            for k in lo.div_ceil(CHUNK)..hi / CHUNK {
                if let Some(w) = seg.populated.get(k / 64) {
                    w.fetch_or(1 << (k % 64), Ordering::Relaxed);
                }
            }
        }
        ok
    }
}

/// The writable range of an object this client created and has not sealed. Not `Clone`: there
/// is exactly one per created object.
#[derive(Debug)]
pub struct MutRegion(Region);

impl MutRegion {
    /// Like [`Region::new`]; the caller must be the object's creator and create only one.
    pub fn new(segment: &Arc<Segment>, offset: u64, len: u64) -> Option<MutRegion> {
        Region::new(segment, offset, len).map(MutRegion)
    }

    /// A read-only view of the same range (for the client's bookkeeping).
    pub fn view(&self) -> Region {
        self.0.clone()
    }

    /// Gives up write access.
    pub fn into_shared(self) -> Region {
        self.0
    }

    /// The bytes of the range.
    pub fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }

    /// Asks the kernel to allocate and map every page of the range for writing now
    /// (`MADV_POPULATE_WRITE`, Linux 5.14), instead of one page fault per 4 KiB page while the
    /// caller writes: a large write into fresh memory is then bounded by the copy, not the
    /// faults. See [`Region::populate_write`].
    pub fn populate_write(&mut self) -> bool {
        self.0.populate_write(0, self.0.len)
    }

    /// The bytes of the range, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let r = &self.0;
        // SAFETY: bounds and liveness as in `Region::bytes` (checked in `Region::new`, kept
        // alive by the `Arc<Segment>`); the mapping is PROT_WRITE. Exclusivity: this object
        // is unsealed and this process created it, so by the Plasma contract no other process
        // touches these bytes; inside this process `MutRegion` is unique per object, the
        // borrow of `&mut self` excludes other slices from it, and the client forms no other
        // slice of an unsealed object while its writer is alive (seal is refused then).
        unsafe { std::slice::from_raw_parts_mut(r.segment.map.as_mut_ptr().add(r.offset), r.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn segment(bytes: usize) -> Arc<Segment> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; bytes + 8]).unwrap();
        Arc::new(Segment::map(4, OwnedFd::from(f), bytes as i64 + 8).unwrap())
    }

    #[test]
    fn maps_all_but_the_last_eight_bytes() {
        let s = segment(4096);
        assert_eq!(s.len(), 4096);
    }

    #[test]
    fn rejects_sizes_that_cannot_be_mapped() {
        for size in [-1, 0, 8] {
            let f = tempfile::tempfile().unwrap();
            assert!(Segment::map(1, OwnedFd::from(f), size).is_err(), "{size}");
        }
    }

    #[test]
    fn regions_are_bounds_checked() {
        let s = segment(4096);
        assert!(Region::new(&s, 0, 4096).is_some());
        assert!(Region::new(&s, 4096, 0).is_some());
        assert!(Region::new(&s, 4096, 1).is_none());
        assert!(Region::new(&s, 1, 4096).is_none());
        assert!(Region::new(&s, u64::MAX, 2).is_none());
    }

    #[test]
    fn writes_through_a_mut_region_are_seen_by_views_and_outlive_the_segment_handle() {
        let s = segment(4096);
        let mut w = MutRegion::new(&s, 64, 16).unwrap();
        w.bytes_mut().copy_from_slice(&[1; 16]);
        let r = w.into_shared();
        drop(s);
        assert_eq!(r.bytes(), &[1; 16]);
        assert_eq!(Region::new(&r.segment, 0, 1).unwrap().bytes(), &[7]);
    }

    #[test]
    fn populate_write_advises_whole_pages_only_and_changes_no_byte() {
        let s = segment(64 << 10);
        // Less than one whole page inside the range: nothing to advise.
        let mut small = MutRegion::new(&s, 100, 4000).unwrap();
        assert!(!small.populate_write());
        // Several pages (on a file whose bytes are 7): faulted in, contents as they were.
        let mut r = MutRegion::new(&s, 100, 40 << 10).unwrap();
        let advised = r.populate_write();
        // Kernels before 5.14 refuse with EINVAL; this one must have it from 5.14 on.
        let release = nix::sys::utsname::uname().unwrap();
        let release = release.release().to_string_lossy().into_owned();
        let mut v = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>());
        let (major, minor) = (v.next(), v.next());
        if let (Some(Ok(major)), Some(Ok(minor))) = (major, minor) {
            assert_eq!(advised, (major, minor) >= (5, 14), "kernel {release}");
        }
        assert!(r.bytes().iter().all(|&b| b == 7));
    }

    #[test]
    fn populated_chunks_are_recorded_and_partial_ones_are_not() {
        let s = segment(8 << 20);
        let bits = |s: &Segment| s.populated[0].load(Ordering::Relaxed);
        // From the middle of chunk 0 to the middle of chunk 3: chunks 1 and 2 are whole.
        let mut r = MutRegion::new(&s, 1 << 20, 6 << 20).unwrap();
        if !r.populate_write() {
            return; // a kernel without MADV_POPULATE_WRITE records nothing
        }
        assert_eq!(bits(&s), 0b0110);
        // Again: nothing left to do there; the whole segment then fills every chunk.
        assert!(r.populate_write());
        assert!(MutRegion::new(&s, 0, 8 << 20).unwrap().populate_write());
        assert_eq!(bits(&s), 0b1111);
        assert!(r.bytes().iter().all(|&b| b == 7));
    }
}
