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

/// Page size for [`MutRegion::populate`].
const PAGE: usize = 4096;

/// Granularity of the record of populated memory ([`Segment`]), and the window
/// [`Region::populate`] advises at a time.
const CHUNK: usize = 2 << 20;

/// The kernel maps this many bytes of resident file pages around a read fault
/// (`fault_around_bytes`, 64 KiB unless an administrator changed it): [`touch`] reads one byte
/// per block of this size.
const FAULT_AROUND: usize = 64 << 10;

/// One segment of the store, mapped into this process for as long as anything uses it.
pub struct Segment {
    /// The store's id for this segment.
    id: i32,
    map: MmapRaw,
    /// One bit per [`CHUNK`] of the mapping: set once [`MutRegion::populate`] has
    /// faulted the whole chunk in with `MADV_POPULATE_WRITE`. The page tables stay filled while the mapping lives, so
    /// a later create there needs no madvise (which costs a walk over every page even when
    /// nothing is missing: about 50 ms per GiB).
    populated: Vec<AtomicU64>,
    /// Whether the segment is a tmpfs (shmem) file, whose shared mappings are writable without
    /// write faults once a page is mapped, by a read fault too (see [`Region::populate`]).
    shmem: bool,
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
        let shmem = nix::sys::statfs::fstatfs(&fd)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        drop(fd);
        let chunks = len.div_ceil(CHUNK);
        let populated = (0..chunks.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(Segment {
            id,
            map,
            populated,
            shmem,
        })
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
    /// Faults in, ready for writing, the whole pages of `part`, the bytes of this region from
    /// offset `from` on (the caller's own slice of them),
    /// skipping 2 MiB chunks of the mapping this client populated before (see [`Segment`]), so
    /// rewriting memory an earlier object used costs no madvise. The contents do not change.
    /// Returns whether it was done (or nothing was left to do); a kernel without
    /// `MADV_POPULATE_WRITE` (before 5.14: `EINVAL`) or any other refusal stops it.
    /// Parts of one region may be populated from several threads at once.
    ///
    /// How, 2 MiB at a time: a write fault, or `MADV_POPULATE_WRITE`, maps one page per
    /// fault. A read fault on a file mapping maps the resident pages around it too, 16 per
    /// fault; on a tmpfs segment (the store's memfd, `-d` on a tmpfs) the mapping is shared and
    /// tmpfs tracks no dirty pages, so those pages come mapped writable. Where the store has
    /// made the memory resident (its warm-up, earlier objects), one byte per 64 KiB of `part` is
    /// read (see [`touch`]), through `part`: about 3× faster than
    /// `MADV_POPULATE_WRITE`. Where it has not (`--no-prefault`, right after start-up; told by
    /// `mincore`), read faults would map one page each: those windows, and every window of a
    /// file that tracks dirty pages (the fallback tier on a disk, whose read-mapped pages
    /// would fault again on the first write), are advised `MADV_POPULATE_WRITE`.
    pub fn populate(&self, from: usize, part: &[u8]) -> bool {
        let seg = &self.segment;
        let (from, to) = (from.min(self.len), (from + part.len()).min(self.len));
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
        let mut c = first / CHUNK;
        while c * CHUNK < end {
            if is_done(c) {
                c += 1;
                continue;
            }
            let lo = (c * CHUNK).max(first);
            let hi = ((c + 1) * CHUNK).min(end);
            if seg.shmem && seg.resident(lo, hi) {
                // Not recorded: the sample at the window's ends does not prove its middle
                // resident. Touching again later costs a read per mapped 64 KiB, no fault.
                let at = self.offset + from;
                touch(part.get(lo - at..hi - at).unwrap_or_default());
                c += 1;
                continue;
            }
            if !seg.populate_write(lo, hi) {
                return false;
            }
            // Record the chunk if the advice covered it whole.
            if lo == c * CHUNK
                && hi == (c + 1) * CHUNK
                && let Some(w) = seg.populated.get(c / 64)
            {
                w.fetch_or(1 << (c % 64), Ordering::Relaxed);
            }
            c += 1;
        }
        true
    }
}

impl Segment {
    /// Whether the pages at both ends of the mapping's bytes `[lo, hi)` (page-aligned, inside
    /// it) are resident in the segment file: the first and last 64 KiB of the window stand for
    /// all of it (the store's warm-up goes through memory in order).
    fn resident(&self, lo: usize, hi: usize) -> bool {
        let probe = FAULT_AROUND.min(hi - lo);
        [lo, hi - probe].iter().all(|&at| {
            let mut pages = [0u8; FAULT_AROUND / PAGE];
            let base = self
                .map
                .as_mut_ptr()
                .wrapping_add(at)
                .cast::<libc::c_void>();
            // SAFETY: `[at, at + probe)` lies inside the live mapping (the caller's window,
            // inside a bounds-checked region) and starts on a page; `pages` has room for one
            // byte per page of it (`probe <= FAULT_AROUND`). mincore only reports.
            let r = unsafe { libc::mincore(base, probe, pages.as_mut_ptr()) };
            r == 0 && pages[..probe / PAGE].iter().all(|&p| p & 1 == 1)
        })
    }

    /// `MADV_POPULATE_WRITE` on the mapping's bytes `[lo, hi)` (page-aligned, inside it).
    fn populate_write(&self, lo: usize, hi: usize) -> bool {
        let Some(addr) = std::ptr::NonNull::new(self.map.as_mut_ptr().wrapping_add(lo)) else {
            return false;
        };
        let advice = nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE;
        // SAFETY: `[lo, hi)` lies inside the live mapping (the caller's window, inside a
        // bounds-checked region). The advice only faults pages in, reading and writing
        // nothing: contents are unchanged.
        unsafe { nix::sys::mman::madvise(addr.cast(), hi - lo, advice) }.is_ok()
    }
}

/// Reads one byte in each 64 KiB block of the address space that `bytes` touches, so that a
/// read fault on each maps the resident pages of the whole block ([`Region::populate`]).
pub fn touch(bytes: &[u8]) {
    let start = bytes.as_ptr() as usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        std::hint::black_box(b);
        i = (start + i + 1).next_multiple_of(FAULT_AROUND) - start;
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

    /// Has the kernel map every page of the range for writing now, instead of one page fault
    /// per 4 KiB page while the caller writes: a large write into fresh memory is then bounded
    /// by the copy, not the faults. See [`Region::populate`].
    pub fn populate(&mut self) -> bool {
        self.0.populate(0, self.0.bytes())
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
    fn populate_advises_whole_pages_only_and_changes_no_byte() {
        // A memfd with only one page resident (holding 7s): not resident as a whole, so the
        // madvise path.
        let s = memfd_segment(64 << 10, false);
        MutRegion::new(&s, 8192, 4096).unwrap().bytes_mut().fill(7);
        // Less than one whole page inside the range: nothing to advise.
        let mut small = MutRegion::new(&s, 100, 4000).unwrap();
        assert!(!small.populate());
        // Several pages: faulted in, contents as they were.
        let mut r = MutRegion::new(&s, 100, 40 << 10).unwrap();
        let advised = r.populate();
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
        let bytes = Region::new(&s, 0, 64 << 10).unwrap().bytes().to_vec();
        assert!(bytes[8192..12288].iter().all(|&b| b == 7));
        assert!(bytes[..8192].iter().chain(&bytes[12288..]).all(|&b| b == 0));
    }

    #[test]
    fn chunks_populated_for_writing_are_recorded_and_partial_ones_are_not() {
        let s = memfd_segment(8 << 20, false);
        let bits = |s: &Segment| s.populated[0].load(Ordering::Relaxed);
        // From the middle of chunk 0 to the middle of chunk 3: chunks 1 and 2 are whole.
        let mut r = MutRegion::new(&s, 1 << 20, 6 << 20).unwrap();
        if !r.populate() {
            return; // a kernel without MADV_POPULATE_WRITE records nothing
        }
        assert_eq!(bits(&s), 0b0110);
        // Again: nothing left to do there; the whole segment then fills every chunk (chunks 0
        // and 3 are half resident, so advised too).
        assert!(r.populate());
        assert!(MutRegion::new(&s, 0, 8 << 20).unwrap().populate());
        assert_eq!(bits(&s), 0b1111);
        assert!(r.bytes().iter().all(|&b| b == 0));
        // Resident memory is touched, which records nothing: the sample at the ends of a
        // window does not prove its middle.
        let s = memfd_segment(8 << 20, true);
        assert!(MutRegion::new(&s, 0, 8 << 20).unwrap().populate());
        assert_eq!(bits(&s), 0);
    }

    /// A memfd segment of `bytes`, with its pages made resident (and zeroed) through another
    /// mapping when `resident`, as the store's warm-up does.
    fn memfd_segment(bytes: usize, resident: bool) -> Arc<Segment> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create("populate-test", MFdFlags::MFD_CLOEXEC).unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(bytes as u64 + 8).unwrap();
        if resident {
            let mut warm = unsafe_free_map(&f);
            warm.fill(0);
        }
        Arc::new(Segment::map(9, OwnedFd::from(f), bytes as i64 + 8).unwrap())
    }

    fn unsafe_free_map(f: &std::fs::File) -> memmap2::MmapMut {
        // SAFETY: a private test file that nothing else maps or truncates.
        unsafe { memmap2::MmapMut::map_mut(f).unwrap() }
    }

    /// Minor page faults of the calling thread so far (read into the stack: no allocation,
    /// whose own faults would count).
    fn minor_faults() -> u64 {
        use std::io::Read;
        let mut buf = [0u8; 1024];
        let mut f = std::fs::File::open("/proc/thread-self/stat").unwrap();
        let n = f.read(&mut buf).unwrap();
        let stat = std::str::from_utf8(&buf[..n]).unwrap();
        // The fields after the command's closing parenthesis; minflt is the 10th field.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(7).unwrap().parse().unwrap()
    }

    #[test]
    fn populate_maps_resident_tmpfs_pages_writable_by_touching_them() {
        let s = memfd_segment(8 << 20, true);
        assert!(s.shmem, "a memfd is a tmpfs file");
        let mut r = MutRegion::new(&s, 0, 8 << 20).unwrap();
        let before = minor_faults();
        assert!(r.populate());
        let populating = minor_faults() - before;
        // One read fault per 64 KiB maps the 16 resident pages around it.
        assert!(
            populating <= (8 << 20) / FAULT_AROUND as u64 + 4,
            "{populating} faults"
        );
        let before = minor_faults();
        r.bytes_mut().fill(5);
        let writing = minor_faults() - before;
        assert!(
            writing < 16,
            "{writing} faults writing 2,048 populated pages"
        );
        assert!(r.bytes().iter().all(|&b| b == 5));
    }

    #[test]
    fn populate_writes_in_pages_that_are_not_resident() {
        // Nothing resident: touching would map one page per 64 KiB, so the advice is used.
        let s = memfd_segment(8 << 20, false);
        let mut r = MutRegion::new(&s, 0, 8 << 20).unwrap();
        if !r.populate() {
            return; // a kernel without MADV_POPULATE_WRITE
        }
        let before = minor_faults();
        r.bytes_mut().fill(6);
        let writing = minor_faults() - before;
        assert!(
            writing < 16,
            "{writing} faults writing 2,048 populated pages"
        );
        assert!(s.resident(0, 8 << 20));
    }

    #[test]
    fn touch_reads_a_byte_in_every_block_it_spans() {
        // Blocks of the address space, not of the slice.
        let s = memfd_segment(1 << 20, true);
        let r = Region::new(&s, 0, 1 << 20).unwrap();
        let whole = r.bytes();
        let base = whole.as_ptr() as usize;
        let (from, to) = (FAULT_AROUND - 100, 3 * FAULT_AROUND + 1);
        let blocks = (base + to - 1) / FAULT_AROUND - (base + from) / FAULT_AROUND + 1;
        minor_faults();
        let before = minor_faults();
        touch(&whole[from..to]);
        // One read fault per block (a stray fault of the kernel's own, e.g. on a folio it had
        // locked for a moment, is allowed for: without fault-around this would be 48-64).
        let touching = minor_faults() - before;
        assert!(
            touching.abs_diff(blocks as u64) <= 2,
            "{touching} faults, {blocks} blocks"
        );
        // Every page of those blocks is mapped now; the page after them is not.
        let first = (base + from) / FAULT_AROUND * FAULT_AROUND - base;
        let end = (base + to).next_multiple_of(FAULT_AROUND) - base;
        let before = minor_faults();
        for at in (first..end).step_by(PAGE) {
            std::hint::black_box(whole[at]);
        }
        let reading = minor_faults() - before;
        assert!(reading <= 2, "{reading} faults reading the blocks' pages");
        std::hint::black_box(whole[end]);
        assert!(
            minor_faults() - before > reading,
            "the next block is not mapped"
        );
    }
}
