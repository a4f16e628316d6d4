//! The shared-memory segment: one file (an anonymous memfd, a file created and unlinked in
//! `-d DIR`, or with `--persist DIR` a named file that outlives the store) whose fd is handed
//! to clients, who map it.
//!
//! The store itself does not map the segment: the few bytes it ever moves (a create-and-seal's
//! payload, evictions to and restores from the external store) go through `pwrite`/`pread` on
//! the fd, bounds-checked first. So none of the store's own state lives in this memory, its
//! pages never count against the store's resident memory, and no Rust code can hold a
//! reference into memory that clients write. Huge-page files (hugetlbfs) do not support
//! `write(2)`; only for them the store maps the segment and copies through raw pointers (the
//! one `unsafe` here).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use memmap2::{MmapOptions, MmapRaw};

/// Offset of the first object in a segment. Offset 0 is never handed out, as in the original
/// (its first object sits at 64).
pub const SEGMENT_BASE: u64 = 64;

/// Bytes at the end of the file that clients do not map: a client maps `mmap_size - 8`
/// bytes, exactly as with the original store.
pub const CLIENT_MAP_TAIL: u64 = 8;

/// Size of a huge page for rounding with `-h`.
const HUGE_PAGE: u64 = 2 << 20;

/// One segment.
pub struct Segment {
    /// The id clients know this segment by (never reused).
    id: i32,
    file: File,
    /// The store's own mapping, only for huge-page segments.
    map: Option<MmapRaw>,
    /// Size of the file: the `mmap_size` sent to clients.
    file_size: u64,
}

/// Where and how to create a segment.
#[derive(Debug, Clone, Default)]
pub struct SegmentOptions {
    /// Create an unlinked file in this directory instead of an anonymous memfd.
    pub directory: Option<std::path::PathBuf>,
    /// Back the segment with huge pages.
    pub huge_pages: bool,
}

/// The size of a segment file whose usable area is at least `usable` bytes, in pages of
/// `page` bytes.
fn file_size_for(usable: u64, page: u64) -> io::Result<u64> {
    usable
        .checked_add(SEGMENT_BASE + CLIENT_MAP_TAIL)
        .and_then(|n| n.checked_next_multiple_of(page))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "segment size overflows"))
}

impl Segment {
    /// Opens the named file `path` as a segment, creating it (empty, mode 0600) if missing and
    /// keeping its contents: the shared memory of a store that restarts without losing its
    /// objects. The size stays what it was until [`Segment::resize`].
    pub fn open_file(id: i32, path: &std::path::Path) -> io::Result<Segment> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(path)?;
        let file_size = file.metadata()?.len();
        Ok(Segment {
            id,
            file,
            map: None,
            file_size,
        })
    }

    /// The usable length a segment created or resized for `usable` bytes ends up with.
    pub fn usable_len_for(usable: u64) -> io::Result<u64> {
        Ok(file_size_for(usable, 4096)? - SEGMENT_BASE - CLIENT_MAP_TAIL)
    }

    /// Grows or shrinks the file so that its usable area is [`Segment::usable_len_for`]
    /// `usable`. Bytes below the new end are kept; the caller makes sure no object lies
    /// beyond it. Only for segments no client has mapped yet.
    pub fn resize(&mut self, usable: u64) -> io::Result<()> {
        let file_size = file_size_for(usable, 4096)?;
        self.file.set_len(file_size)?;
        self.file_size = file_size;
        Ok(())
    }

    /// Writes the segment's dirty pages to the file's storage (for `--persist-sync`).
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Creates a segment whose usable object area (from [`SEGMENT_BASE`]) is at least
    /// `usable` bytes.
    pub fn create(id: i32, usable: u64, opts: &SegmentOptions) -> io::Result<Segment> {
        let page = if opts.huge_pages { HUGE_PAGE } else { 4096 };
        let file_size = file_size_for(usable, page)?;
        if opts.huge_pages {
            check_huge_pages(file_size)?;
        }
        let fd = match &opts.directory {
            None => {
                let mut flags = nix::sys::memfd::MFdFlags::MFD_CLOEXEC;
                if opts.huge_pages {
                    flags |= nix::sys::memfd::MFdFlags::MFD_HUGETLB;
                }
                nix::sys::memfd::memfd_create("plasma", flags)?
            }
            Some(dir) => {
                let (fd, path) = nix::unistd::mkstemp(&dir.join("plasmaXXXXXX"))?;
                // Unlinked at once: nothing is left in the directory however the store exits.
                nix::unistd::unlink(&path)?;
                fd
            }
        };
        let file = File::from(fd);
        file.set_len(file_size)?;
        let len = usize::try_from(file_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
        // For huge pages, mapping also reserves the pages: it fails now rather than with a
        // SIGBUS on first touch.
        let map = if opts.huge_pages {
            Some(MmapOptions::new().len(len).map_raw(&file)?)
        } else {
            None
        };
        Ok(Segment {
            id,
            file,
            map,
            file_size,
        })
    }

    /// The id clients know this segment by.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// The file size, sent to clients as `mmap_size`.
    pub fn mmap_size(&self) -> u64 {
        self.file_size
    }

    /// The usable object area: offsets `[SEGMENT_BASE, SEGMENT_BASE + usable_len())`.
    pub fn usable_len(&self) -> u64 {
        self.file_size
            .saturating_sub(SEGMENT_BASE + CLIENT_MAP_TAIL)
    }

    /// A duplicate of the segment's fd, for a helper that works on the file on its own
    /// (the background warm-up).
    pub fn duplicate_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        self.file.as_fd().try_clone_to_owned()
    }

    /// The fd to hand to clients.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<usize> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.file_size.saturating_sub(CLIENT_MAP_TAIL) => {
                Ok(offset as usize)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {offset}+{len} outside segment {}", self.id),
            )),
        }
    }

    /// Copies `data` into the segment at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = self.check(offset, data.len())?;
        let Some(map) = &self.map else {
            return self.file.write_all_at(data, offset);
        };
        // SAFETY: `check` proved `start + data.len()` lies inside the mapping, which lives as
        // long as `self`. The destination is shared memory that clients may touch at the same
        // time, so no Rust reference is formed to it: a raw copy of plain bytes cannot create
        // an invalid value, and `data` (our own memory) cannot overlap the mapping's pages.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_mut_ptr().add(start), data.len());
        }
        Ok(())
    }

    /// Copies `out.len()` bytes from the segment at `offset` into `out`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let start = self.check(offset, out.len())?;
        let Some(map) = &self.map else {
            return self.file.read_exact_at(out, offset);
        };
        // SAFETY: as in `write`: the range is inside the live mapping, bytes are copied raw
        // without forming a reference into shared memory, and `out` is our own memory.
        unsafe {
            std::ptr::copy_nonoverlapping(map.as_ptr().add(start), out.as_mut_ptr(), out.len());
        }
        Ok(())
    }
}

/// Fails with a clear message when the system cannot back `bytes` with huge pages (mapping
/// would fail with a bare ENOMEM, or the store would die of SIGBUS on first touch).
fn check_huge_pages(bytes: u64) -> io::Result<()> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let free = field("HugePages_Free:").unwrap_or(0);
    let page_kib = field("Hugepagesize:").unwrap_or(2048);
    let needed = bytes.div_ceil(page_kib * 1024);
    if free < needed {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "huge pages requested (-h) for {bytes} bytes: that takes {needed} huge pages of \
                 {page_kib} kB, but only {free} are free (HugePages_Free in /proc/meminfo); \
                 reserve more with `sysctl vm.nr_hugepages=N`, or start without -h"
            ),
        ));
    }
    Ok(())
}

/// Makes a range of a segment file resident (allocates its pages) without mapping it, so that
/// clients' first writes there are minor faults instead of page allocations.
pub(crate) fn populate(fd: impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    let to_off = |v: u64| {
        i64::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))
    };
    nix::fcntl::fallocate(
        fd,
        nix::fcntl::FallocateFlags::empty(),
        to_off(offset)?,
        to_off(len)?,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_segment_reads_back_and_bounds_are_checked() {
        let s = Segment::create(1, 10_000, &SegmentOptions::default()).unwrap();
        assert!(s.usable_len() >= 10_000);
        assert_eq!(s.mmap_size() % 4096, 0);
        s.write(SEGMENT_BASE, b"hello").unwrap();
        let mut out = [0u8; 5];
        s.read(SEGMENT_BASE, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        let end = s.mmap_size() - CLIENT_MAP_TAIL;
        assert!(s.write(end - 1, b"ab").is_err());
        assert!(s.write(u64::MAX, b"a").is_err());
        s.write(end - 2, b"ab").unwrap();
    }

    #[test]
    fn named_segment_keeps_its_bytes_across_opens_and_resizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut s = Segment::open_file(3, &path).unwrap();
        assert_eq!(s.usable_len(), 0);
        assert!(
            s.write(SEGMENT_BASE, b"x").is_err(),
            "an empty file has no room"
        );
        s.resize(10_000).unwrap();
        assert_eq!(s.usable_len(), Segment::usable_len_for(10_000).unwrap());
        s.write(SEGMENT_BASE + 100, b"kept").unwrap();
        drop(s);
        let mut s = Segment::open_file(3, &path).unwrap();
        s.resize(100_000).unwrap();
        let mut out = [0u8; 4];
        s.read(SEGMENT_BASE + 100, &mut out).unwrap();
        assert_eq!(&out, b"kept");
        s.resize(1).unwrap();
        assert_eq!(s.mmap_size(), 4096);
        s.read(SEGMENT_BASE + 100, &mut out).unwrap();
        assert_eq!(&out, b"kept");
    }

    #[test]
    fn directory_segment_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SegmentOptions {
            directory: Some(dir.path().to_path_buf()),
            huge_pages: false,
        };
        let s = Segment::create(2, 4096, &opts).unwrap();
        s.write(SEGMENT_BASE, &[7; 100]).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
