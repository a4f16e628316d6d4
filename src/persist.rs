//! `--persist DIR`: a store that restarts without losing its sealed objects.
//!
//! `DIR` holds three files:
//! - `segment`: the shared memory itself, a named file instead of an anonymous memfd. On a
//!   tmpfs (`/dev/shm`) it outlives the process; on a disk it is backed by the page cache and
//!   also outlives a reboot (see `--persist-sync`).
//! - `objects.log`: what the segment holds. An 80-byte header, then fixed-size 80-byte
//!   records (zeros where not written yet), each with its own checksum: a *seal* record (id,
//!   offset, sizes, digest, times) when an object becomes sealed in the segment (or is
//!   restored into it), an *evicted* record (the same without an offset) when it moves to a
//!   spill directory that survives the store (`-e file://` inside `DIR`, see
//!   [`crate::external`]), a *delete* record when it leaves the store (deleted, evicted
//!   without such a spill tier, dropped). Appended before the seal's reply is queued, by a
//!   plain copy into a shared mapping of the log (no system call on the hot path): the bytes
//!   are in the file's page cache at once, which survives SIGKILL and crashes of the process (not a power
//!   loss: that takes `--persist-sync`, which writes the segment and the record to storage
//!   first). The log is extended ahead in steps and the new range allocated (`fallocate`)
//!   before it is mapped, so a full file system is an error at that point, never a SIGBUS;
//!   if extending or mapping fails, appends fall back to `pwrite`. Slots never written are
//!   zeros, which replay skips.
//! - `lock`: `flock`ed for the store's lifetime, holding its pid, so that two stores never use
//!   one directory.
//!
//! Start-up replays the log in order into the live set (a delete cancels the seal before it;
//! a second seal or an evicted record of the same id replaces the first), then trusts nothing
//! in it blindly: a record whose checksum fails is skipped (records are fixed-size, so one bad record costs only
//! the object it describes, and a torn tail only the last write); an object whose range is
//! misaligned, overflows or lies outside the segment file is dropped; when two ranges overlap
//! the later record wins (the store only ever allocates freed memory, so a later seal proves
//! the earlier object's range had been freed: its delete record was lost). Evicted objects
//! take no segment space; the store matches them with the spill files it finds. Every drop is
//! logged. Digests are checked against the bytes on an object's first get, or for all objects
//! before serving with `--persist-verify`; a mismatch drops the object. The arena is rebuilt
//! around the surviving objects, and the log is compacted into a snapshot of them (written
//! aside and renamed over the old one) at start-up when it holds anything else, and while
//! running once it has grown past twice the live records plus [`COMPACT_SLACK`].

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::{error, info, warn};
use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{Flock, FlockArg};
use xxhash_rust::xxh64::xxh64;

use crate::arena::{ALIGNMENT, Arena};
use crate::digest::object_digest_from;
use crate::protocol::{Digest, ObjectId};
use crate::shm::{CLIENT_MAP_TAIL, SEGMENT_BASE, Segment};

/// Length of the log header and of every record.
pub const RECORD_LEN: usize = 80;
/// Records beyond twice the live ones that the log may hold before it is compacted.
pub const COMPACT_SLACK: u64 = 1 << 16;

const LOG_FILE: &str = "objects.log";
const LOG_TEMP: &str = "objects.log.new";
pub const SEGMENT_FILE: &str = "segment";
const LOCK_FILE: &str = "lock";
const MAGIC: &[u8; 16] = b"plasma-store-log";
const VERSION: u32 = 1;
/// Every record starts with these bytes.
const MARK: &[u8; 2] = b"PR";
const KIND_SEAL: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_EVICTED: u8 = 3;
/// Seed of the records' checksums (xxh64 of the first 72 bytes).
const SEED: u64 = 0x706c_6173_6d61_6c67;
/// The log is extended (and allocated) by at least this many record slots at a time.
const GROW_SLOTS: u64 = 16_384;
/// Dropped records logged one by one before only a summary is.
const LOG_DROPS: u64 = 10;

/// `--persist` settings.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// The directory holding the segment, the log and the lock.
    pub dir: PathBuf,
    /// Check every recovered object's digest before serving (`--persist-verify`), rather
    /// than on its first get.
    pub verify: bool,
    /// Write the segment and each record to storage before acknowledging (`--persist-sync`):
    /// survives power loss on a disk, at the cost of two fdatasyncs per seal.
    pub sync: bool,
}

impl PersistConfig {
    /// Persistence in `dir`, digests checked lazily, no syncs.
    pub fn new(dir: impl Into<PathBuf>) -> PersistConfig {
        PersistConfig {
            dir: dir.into(),
            verify: false,
            sync: false,
        }
    }
}

/// What the log says about one sealed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealRecord {
    /// Its id.
    pub object_id: ObjectId,
    /// Where its data starts in the segment (metadata follows the data).
    pub offset: u64,
    /// Bytes of data.
    pub data_size: u64,
    /// Bytes of metadata.
    pub metadata_size: u64,
    /// The digest its creator sealed it with.
    pub digest: Digest,
    /// Unix seconds.
    pub create_time: i64,
    /// Seconds from create to seal.
    pub construct_duration: i32,
    /// The object was evicted to the persistent spill directory: its bytes are in a spill
    /// file, not the segment, and `offset` means nothing (it is recorded as 0).
    pub spilled: bool,
}

impl SealRecord {
    /// Bytes of segment its block spans (the arena's rounding), if the sizes do not overflow.
    fn block_len(&self) -> Option<u64> {
        let size = self.data_size.checked_add(self.metadata_size)?;
        size.max(1).div_ceil(ALIGNMENT).checked_mul(ALIGNMENT)
    }

    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[2] = if self.spilled {
            KIND_EVICTED
        } else {
            KIND_SEAL
        };
        b[4..8].copy_from_slice(&self.construct_duration.to_le_bytes());
        b[8..28].copy_from_slice(&self.object_id.0);
        let offset = if self.spilled { 0 } else { self.offset };
        b[32..40].copy_from_slice(&offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.data_size.to_le_bytes());
        b[48..56].copy_from_slice(&self.metadata_size.to_le_bytes());
        b[56..64].copy_from_slice(&self.digest);
        b[64..72].copy_from_slice(&self.create_time.to_le_bytes());
        seal_checksum(&mut b);
        b
    }
}

/// One decoded log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Seal(SealRecord),
    Delete(ObjectId),
}

fn seal_checksum(b: &mut [u8; RECORD_LEN]) {
    b[..2].copy_from_slice(MARK);
    let sum = xxh64(&b[..72], SEED);
    b[72..].copy_from_slice(&sum.to_le_bytes());
}

fn delete_record(id: ObjectId) -> [u8; RECORD_LEN] {
    let mut b = [0u8; RECORD_LEN];
    b[2] = KIND_DELETE;
    b[8..28].copy_from_slice(&id.0);
    seal_checksum(&mut b);
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Decodes one record slot; `None` for anything but an intact record of a known kind.
fn decode(b: &[u8]) -> Option<Entry> {
    if b.len() != RECORD_LEN || &b[..2] != MARK || b[3] != 0 || b[28..32] != [0; 4] {
        return None;
    }
    if xxh64(&b[..72], SEED) != u64_at(b, 72) {
        return None;
    }
    let mut id = [0u8; 20];
    id.copy_from_slice(&b[8..28]);
    let object_id = ObjectId(id);
    match b[2] {
        kind @ (KIND_SEAL | KIND_EVICTED) => {
            let mut digest = [0u8; 8];
            digest.copy_from_slice(&b[56..64]);
            let mut cd = [0u8; 4];
            cd.copy_from_slice(&b[4..8]);
            Some(Entry::Seal(SealRecord {
                object_id,
                offset: u64_at(b, 32),
                data_size: u64_at(b, 40),
                metadata_size: u64_at(b, 48),
                digest,
                create_time: u64_at(b, 64) as i64,
                construct_duration: i32::from_le_bytes(cd),
                spilled: kind == KIND_EVICTED,
            }))
        }
        KIND_DELETE => Some(Entry::Delete(object_id)),
        _ => None,
    }
}

fn header() -> [u8; RECORD_LEN] {
    let mut h = [0u8; RECORD_LEN];
    h[..16].copy_from_slice(MAGIC);
    h[16..20].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// The recording side of persistence, owned by the store: appends records and compacts.
#[derive(Debug)]
pub struct Persist {
    dir: PathBuf,
    /// The log.
    log: File,
    /// The log mapped (its whole length, allocated ahead): appends are plain copies.
    map: Option<MmapRaw>,
    /// Mapping or extending the log failed: appends use `pwrite` until the next compaction.
    map_failed: bool,
    /// Record slots in the log (every record written, live or not, and failed writes).
    slots: u64,
    /// Seal records of objects still in the segment.
    live: u64,
    sync: bool,
    /// A write failed: the log may miss records until the next compaction.
    stale: bool,
    /// No compaction before the log has this many slots (pushed out after a failure).
    retry_at: u64,
    scratch: Vec<u8>,
    _lock: Flock<File>,
}

/// A store's persistent state, opened and recovered.
pub struct Opened {
    /// The segment, sized for the new capacity, holding the recovered objects.
    pub segment: Segment,
    /// Its allocator, with the recovered objects' blocks allocated.
    pub arena: Arena,
    /// The recorder.
    pub persist: Persist,
    /// The recovered sealed objects, in the order they were sealed.
    pub objects: Vec<SealRecord>,
    /// Whether their digests were checked already (`--persist-verify`); if not, the store
    /// checks each with [`Persist::verify`] before its first get.
    pub verified: bool,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Takes the directory's lock, or says which store holds it.
fn lock(dir: &Path) -> io::Result<Flock<File>> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => {
            locked.set_len(0)?;
            locked.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
            Ok(locked)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use by another plasma_store (pid {}): two stores never share a \
                     --persist directory",
                    dir.display(),
                    pid.trim()
                ),
            ))
        }
        Err((_, e)) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot lock {}: {e}", path.display()),
        )),
    }
}

/// What replaying the log found.
#[derive(Default)]
struct Replay {
    /// Every valid seal record, in log order (its index is its place in that order).
    seals: Vec<SealRecord>,
    /// Indices into `seals` of the live objects (sealed and not deleted since), any order.
    live: Vec<u32>,
    /// Slots up to the last one written (the log's file may be allocated further ahead, with
    /// zeros).
    slots: u64,
    /// All-zero slots before the last written one (a write that never happened).
    holes: u64,
    /// Records that failed their checksum.
    bad: u64,
    /// Bytes at the end that are not a whole record.
    torn: u64,
    /// Seal records whose object was dropped (invalid or conflicting).
    dropped: u64,
}

impl Replay {
    fn drop_object(&mut self, r: &SealRecord, why: &str) {
        self.dropped += 1;
        if self.dropped <= LOG_DROPS {
            warn!(
                "persist: dropping {} ({}+{} bytes at {}): {why}",
                r.object_id, r.data_size, r.metadata_size, r.offset
            );
        }
    }
}

/// No seal record: the event is a delete.
const DELETE: u32 = u32::MAX;

/// Replays the log's records against a segment file of `segment_size` bytes. Sorting the
/// events by id (then by position) instead of replaying them into a hash table keeps this
/// fast for millions of records and immune to ids chosen to collide.
fn replay(log: &[u8], segment_size: u64) -> Replay {
    let mut out = Replay::default();
    let body = log.get(RECORD_LEN..).unwrap_or_default();
    let end = segment_size.saturating_sub(CLIENT_MAP_TAIL);
    let chunks = body.chunks_exact(RECORD_LEN);
    if chunks.remainder().iter().any(|b| *b != 0) {
        out.torn = chunks.remainder().len() as u64;
    }
    let mut zeros = 0;
    // (id, slot, index into seals or DELETE)
    // (the id as integers, slot, index into seals or DELETE): integer keys sort fast.
    let key = |id: &ObjectId| {
        let b = &id.0;
        let mut hi = [0u8; 8];
        let mut mid = [0u8; 8];
        let mut lo = [0u8; 4];
        hi.copy_from_slice(&b[..8]);
        mid.copy_from_slice(&b[8..16]);
        lo.copy_from_slice(&b[16..]);
        (
            u64::from_be_bytes(hi),
            u64::from_be_bytes(mid),
            u32::from_be_bytes(lo),
        )
    };
    let mut events: Vec<((u64, u64, u32), u64, u32)> = Vec::with_capacity(chunks.len());
    for (slot, b) in chunks.enumerate() {
        let slot = slot as u64;
        if b.iter().all(|x| *x == 0) {
            zeros += 1;
            continue;
        }
        out.holes += zeros;
        zeros = 0;
        out.slots = slot + 1;
        match decode(b) {
            None => {
                out.bad += 1;
                if out.bad <= LOG_DROPS {
                    warn!("persist: record {slot} of the log is damaged; skipped");
                }
            }
            Some(Entry::Delete(id)) => events.push((key(&id), slot, DELETE)),
            Some(Entry::Seal(r)) => {
                // An evicted object takes no segment space: only its sizes must make sense.
                let fits = r.block_len().is_some()
                    && (r.spilled
                        || (r
                            .data_size
                            .checked_add(r.metadata_size)
                            .and_then(|s| r.offset.checked_add(s))
                            .is_some_and(|e| e <= end)
                            && r.offset >= SEGMENT_BASE
                            && r.offset.is_multiple_of(ALIGNMENT)));
                let index = u32::try_from(out.seals.len()).ok().filter(|i| *i != DELETE);
                match index {
                    Some(i) if fits => {
                        events.push((key(&r.object_id), slot, i));
                        out.seals.push(r);
                    }
                    _ => out.drop_object(&r, "its range is not inside the segment file"),
                }
            }
        }
    }
    events.sort_unstable_by_key(|e| (e.0, e.1));
    let mut live = Vec::with_capacity(out.seals.len());
    for group in events.chunk_by(|a, b| a.0 == b.0) {
        let mut current: Option<u32> = None;
        for &(_, _, event) in group {
            if event == DELETE {
                current = None;
                continue;
            }
            if let Some(old) = current.replace(event) {
                // An eviction or a restore replaces the record before it; a seal after a
                // seal means a delete record was lost.
                let old = out.seals[old as usize];
                if !old.spilled && !out.seals[event as usize].spilled {
                    out.drop_object(&old, "sealed again later (a lost delete record)");
                }
            }
        }
        live.extend(current);
    }
    out.live = live;
    out
}

/// The live objects of a replay, as indices into `replay.seals`: those in the segment without
/// overlaps (the later record wins), in offset order, and the evicted ones (in a spill file).
fn resolve_overlaps(replay: &mut Replay) -> (Vec<u32>, Vec<u32>) {
    let seals = std::mem::take(&mut replay.seals);
    let (spilled, mut all): (Vec<u32>, Vec<u32>) = std::mem::take(&mut replay.live)
        .into_iter()
        .partition(|&i| seals[i as usize].spilled);
    all.sort_unstable_by_key(|&i| seals[i as usize].offset);
    let mut kept: Vec<u32> = Vec::with_capacity(all.len());
    for i in all {
        let r = &seals[i as usize];
        if let Some(&last) = kept.last() {
            let l = &seals[last as usize];
            if r.offset < l.offset + l.block_len().unwrap_or(0) {
                // Indices follow the log's order: the higher one was sealed later.
                if i > last {
                    kept.pop();
                    replay.drop_object(l, "overlaps an object sealed later");
                } else {
                    replay.drop_object(r, "overlaps an object sealed later");
                    continue;
                }
            }
        }
        kept.push(i);
    }
    replay.seals = seals;
    (kept, spilled)
}

/// Copies `bytes` into the mapped log at `at`, bounds-checked.
fn write_mapped(map: &MmapRaw, at: u64, bytes: &[u8]) -> io::Result<()> {
    let start = usize::try_from(at).map_err(|_| invalid("log offset too large".to_string()))?;
    if start
        .checked_add(bytes.len())
        .is_none_or(|end| end > map.len())
    {
        return Err(invalid(format!(
            "log write {at}+{} past the mapping",
            bytes.len()
        )));
    }
    // SAFETY: the range was checked to lie inside the mapping, which lives as long as `map`.
    // The mapping is of the store's own log file in its locked directory (no client ever gets
    // its fd), and its whole length was allocated by `fallocate` before it was mapped, so the
    // copy cannot fault for want of space. No reference into the mapping is formed: the bytes
    // are copied raw from our own buffer, which cannot overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.as_mut_ptr().add(start), bytes.len());
    }
    Ok(())
}

/// Computes an object's digest from the segment's bytes.
fn digest_in(segment: &Segment, r: &SealRecord) -> io::Result<Digest> {
    object_digest_from(r.data_size, r.metadata_size, |at, buf| {
        segment.read(r.offset + at, buf)
    })
}

/// Writes a log holding exactly `records` beside the old one and renames it over it. Returns
/// the new log, open for appending, and its number of records.
fn write_snapshot(
    dir: &Path,
    records: impl Iterator<Item = SealRecord>,
    sync: bool,
) -> io::Result<(File, u64)> {
    let temp = dir.join(LOG_TEMP);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&header())?;
    let mut n = 0;
    for r in records {
        w.write_all(&r.encode())?;
        n += 1;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    if sync {
        file.sync_all()?;
    }
    std::fs::rename(&temp, dir.join(LOG_FILE))?;
    if sync {
        File::open(dir)?.sync_all()?;
    }
    Ok((file, n))
}

/// The smallest `-m` whose segment holds `bytes` of objects ending at offset `end`.
fn capacity_needed(bytes: u64, end: u64, usable_for: impl Fn(u64) -> u64) -> u64 {
    let fits = |c: u64| {
        Segment::usable_len_for(usable_for(c))
            .is_ok_and(|u| SEGMENT_BASE.saturating_add(u / ALIGNMENT * ALIGNMENT) >= end)
    };
    let (mut lo, mut hi) = (bytes.max(1), bytes.max(end).max(1));
    while !fits(hi) && hi < u64::MAX / 2 {
        hi *= 2;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { hi = mid } else { lo = mid + 1 }
    }
    lo
}

/// Opens `config.dir` (creating it if needed), takes its lock, recovers the objects recorded
/// there and sizes the segment for `capacity` (`usable_for(capacity)` usable bytes). Refuses,
/// changing nothing, when the directory is locked, the log is not one, or the objects do not
/// fit in the new capacity.
pub fn open(
    config: &PersistConfig,
    segment_id: i32,
    capacity: u64,
    usable_for: impl Fn(u64) -> u64,
) -> io::Result<Opened> {
    let started = Instant::now();
    let dir = &config.dir;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    .map_err(|e| io::Error::new(e.kind(), format!("--persist {}: {e}", dir.display())))?;
    let lock = lock(dir)?;
    let log_path = dir.join(LOG_FILE);
    let log = match std::fs::read(&log_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", log_path.display()),
            ));
        }
    };
    if !log.is_empty() && log.get(..RECORD_LEN) != Some(&header()[..]) {
        return Err(invalid(format!(
            "{} is not a plasma_store log of version {VERSION}; move it away to start empty",
            log_path.display()
        )));
    }
    let mut segment = Segment::open_file(segment_id, &dir.join(SEGMENT_FILE))?;
    let mut replay = replay(&log, segment.mmap_size());
    let fresh = log.is_empty();
    drop(log);
    let (mut kept, spilled) = resolve_overlaps(&mut replay);
    let seals = std::mem::take(&mut replay.seals);
    let rec = |i: &u32| &seals[*i as usize];

    if config.verify {
        kept.retain(|i| match digest_in(&segment, rec(i)) {
            Ok(d) if d == rec(i).digest => true,
            Ok(_) => {
                replay.drop_object(rec(i), "its bytes do not match its digest");
                false
            }
            Err(e) => {
                replay.drop_object(rec(i), &format!("cannot read it: {e}"));
                false
            }
        });
    }

    let bytes: u64 = kept
        .iter()
        .map(|i| rec(i).data_size + rec(i).metadata_size)
        .sum();
    let end = kept.last().map_or(SEGMENT_BASE, |i| {
        rec(i).offset + rec(i).block_len().unwrap_or(0)
    });
    let usable = usable_for(capacity);
    // The arena manages whole 64-byte units of the usable area.
    let new_end =
        SEGMENT_BASE.saturating_add(Segment::usable_len_for(usable)? / ALIGNMENT * ALIGNMENT);
    if bytes > capacity || end > new_end {
        return Err(invalid(format!(
            "{} holds {} objects of {bytes} bytes in all, the last ending at offset {end}: they do \
             not fit in -m {capacity}; start with -m {} or more (or move the directory away to \
             start empty)",
            dir.display(),
            kept.len(),
            capacity_needed(bytes, end, &usable_for)
        )));
    }
    segment.resize(usable)?;
    let blocks: Vec<(u64, u64)> = kept
        .iter()
        .map(|i| (rec(i).offset, rec(i).data_size + rec(i).metadata_size))
        .collect();
    let arena = Arena::with_blocks(SEGMENT_BASE, segment.usable_len(), &blocks)
        .map_err(|e| invalid(format!("rebuilding the allocator: {e}")))?;
    drop(blocks);
    // Back in the order they were sealed (the LRU order), with the evicted ones.
    kept.extend(spilled);
    kept.sort_unstable();
    let objects: Vec<SealRecord> = kept.iter().map(|i| *rec(i)).collect();
    drop(seals);

    // A log holding exactly the live objects is kept; anything else is rewritten.
    let whole =
        !fresh && replay.torn == 0 && replay.holes == 0 && replay.slots == objects.len() as u64;
    let (log, slots) = if whole {
        let f = OpenOptions::new().read(true).write(true).open(&log_path)?;
        (f, replay.slots)
    } else {
        write_snapshot(dir, objects.iter().copied(), config.sync)?
    };
    if replay.dropped > 0 || replay.bad > 0 || replay.torn > 0 {
        warn!(
            "persist: {} damaged records, {} torn bytes at the end of the log, {} objects \
             dropped",
            replay.bad, replay.torn, replay.dropped
        );
    }
    let evicted = objects.iter().filter(|r| r.spilled).count();
    info!(
        "persist: recovered {} objects ({bytes} bytes in the segment, {evicted} evicted to the \
         spill directory) from {} in {} ms{}",
        objects.len(),
        dir.display(),
        started.elapsed().as_millis(),
        if config.verify {
            ", digests verified"
        } else {
            ""
        }
    );
    Ok(Opened {
        segment,
        arena,
        persist: Persist {
            dir: dir.clone(),
            log,
            map: None,
            map_failed: false,
            slots,
            live: objects.len() as u64,
            sync: config.sync,
            stale: false,
            retry_at: 0,
            scratch: Vec::new(),
            _lock: lock,
        },
        objects,
        verified: config.verify,
    })
}

impl Persist {
    /// The `--persist` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether records (and what they describe) are written to storage before a seal is
    /// acknowledged (`--persist-sync`).
    pub fn syncs(&self) -> bool {
        self.sync
    }

    /// Records that `records` are sealed in the segment. Called before their seal is
    /// acknowledged; with `sync`, the segment's bytes reach storage before the records do.
    pub fn record_seals(&mut self, records: &[SealRecord], segment: &Segment) {
        if records.is_empty() {
            return;
        }
        if self.sync
            && let Err(e) = segment.sync_data()
        {
            error!("persist: cannot sync the segment: {e}");
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        for r in records {
            buf.extend_from_slice(&r.encode());
        }
        self.append(&buf, records.len() as u64);
        self.scratch = buf;
        self.live += records.len() as u64;
    }

    /// Records that an object moved from the segment to the persistent spill directory (its
    /// spill file is complete before this is called). An evicted record replaces the seal
    /// record before it, so the number of live records does not change.
    pub fn record_evicted(&mut self, record: &SealRecord) {
        let r = SealRecord {
            spilled: true,
            offset: 0,
            ..*record
        };
        self.append(&r.encode(), 1);
    }

    /// Records that an object left the store (deleted, evicted without a persistent spill
    /// directory, or dropped).
    pub fn record_delete(&mut self, object_id: ObjectId) {
        self.append(&delete_record(object_id), 1);
        self.live = self.live.saturating_sub(1);
    }

    fn append(&mut self, bytes: &[u8], records: u64) {
        let at = (self.slots + 1) * RECORD_LEN as u64;
        // The slots count even if the write fails, so later records stay aligned and a
        // partial write is one damaged record.
        self.slots += records;
        let end = at + bytes.len() as u64;
        if self.map.as_ref().is_none_or(|m| (m.len() as u64) < end)
            && !self.map_failed
            && let Err(e) = self.extend(end)
        {
            warn!("persist: cannot extend and map the log ({e}); writing it with pwrite");
            self.map = None;
            self.map_failed = true;
        }
        let written = match &self.map {
            Some(m) => write_mapped(m, at, bytes).and_then(|()| {
                if self.sync {
                    m.flush_range(at as usize, bytes.len())
                } else {
                    Ok(())
                }
            }),
            None => self.log.write_all_at(bytes, at).and_then(|()| {
                if self.sync {
                    self.log.sync_data()
                } else {
                    Ok(())
                }
            }),
        };
        if let Err(e) = written {
            if !self.stale {
                error!(
                    "persist: cannot write to {}: {e}; objects sealed until the next successful \
                     compaction may not survive a restart",
                    self.dir.join(LOG_FILE).display()
                );
            }
            self.stale = true;
        }
    }

    /// Makes the log file at least `end` bytes long, allocated (so that writing through the
    /// mapping can never fault for want of space: a full disk or tmpfs is an error here, not
    /// a SIGBUS later), and maps it.
    fn extend(&mut self, end: u64) -> io::Result<()> {
        let len = self.log.metadata()?.len();
        if len < end {
            let slots = (end.div_ceil(RECORD_LEN as u64))
                .max(len / RECORD_LEN as u64 / 8)
                .next_multiple_of(GROW_SLOTS);
            let new_len = slots * RECORD_LEN as u64;
            let to_off =
                |v: u64| i64::try_from(v).map_err(|_| invalid("log too large".to_string()));
            nix::fcntl::fallocate(
                &self.log,
                nix::fcntl::FallocateFlags::empty(),
                to_off(len)?,
                to_off(new_len - len)?,
            )?;
        }
        self.map = None;
        self.map = Some(MmapOptions::new().map_raw(&self.log)?);
        Ok(())
    }

    /// Whether the log should be compacted now: it has grown past twice the live records
    /// (plus [`COMPACT_SLACK`]), or a write failed.
    pub fn wants_compaction(&self) -> bool {
        self.slots >= self.retry_at && (self.stale || self.slots > 2 * self.live + COMPACT_SLACK)
    }

    /// Replaces the log with a snapshot of `live` (every object sealed in the segment).
    pub fn compact(&mut self, live: impl Iterator<Item = SealRecord>) {
        let started = Instant::now();
        let before = self.slots;
        match write_snapshot(&self.dir, live, self.sync) {
            Ok((log, n)) => {
                self.log = log;
                self.map = None;
                self.map_failed = false;
                self.slots = n;
                self.live = n;
                self.stale = false;
                info!(
                    "persist: compacted the log from {before} to {n} records in {} ms",
                    started.elapsed().as_millis()
                );
            }
            Err(e) => {
                error!("persist: compacting the log failed: {e}");
                self.retry_at = self.slots + COMPACT_SLACK;
            }
        }
    }

    /// Checks a recovered object's bytes against its digest. `false`: they do not match (or
    /// cannot be read), and the caller drops the object.
    pub fn verify(&self, record: &SealRecord, segment: &Segment) -> bool {
        match digest_in(segment, record) {
            Ok(d) if d == record.digest => true,
            Ok(d) => {
                error!(
                    "persist: {} does not match its digest after the restart (expected {:02x?}, \
                     found {d:02x?}); dropping it",
                    record.object_id, record.digest
                );
                false
            }
            Err(e) => {
                error!(
                    "persist: cannot read {} to check its digest: {e}; dropping it",
                    record.object_id
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, offset: u64, size: u64) -> SealRecord {
        SealRecord {
            object_id: ObjectId([n; 20]),
            offset,
            data_size: size,
            metadata_size: 0,
            digest: [n; 8],
            create_time: 1_700_000_000 + i64::from(n),
            construct_duration: i32::from(n),
            spilled: false,
        }
    }

    fn log_of(entries: &[[u8; RECORD_LEN]]) -> Vec<u8> {
        let mut v = header().to_vec();
        for e in entries {
            v.extend_from_slice(e);
        }
        v
    }

    #[test]
    fn records_round_trip_and_any_flipped_bit_is_caught() {
        let r = rec(7, 128, 1000);
        let b = r.encode();
        assert_eq!(decode(&b), Some(Entry::Seal(r)));
        assert_eq!(
            decode(&delete_record(r.object_id)),
            Some(Entry::Delete(r.object_id))
        );
        for bit in 0..RECORD_LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&c), None, "bit {bit}");
        }
        assert_eq!(decode(&b[..79]), None);
    }

    #[test]
    fn replay_applies_deletes_skips_damage_and_drops_a_torn_tail() {
        let mut damaged = rec(3, 64 * 10, 64).encode();
        damaged[40] ^= 0xff;
        let mut log = log_of(&[
            rec(1, 64, 64).encode(),
            rec(2, 128, 64).encode(),
            delete_record(ObjectId([1; 20])),
            damaged,
            rec(4, 64 * 20, 64).encode(),
            rec(5, 1 << 40, 64).encode(), // beyond the segment file
            rec(2, 64 * 40, 64).encode(), // sealed again without a delete: replaces the first
        ]);
        log.extend_from_slice(&rec(6, 64 * 30, 64).encode()[..50]);
        let r = replay(&log, 64 * 100);
        assert_eq!((r.slots, r.bad, r.torn, r.dropped), (7, 1, 50, 2));
        let offsets: Vec<u64> = r.live.iter().map(|&i| r.seals[i as usize].offset).collect();
        assert!(offsets.contains(&(64 * 40)) && !offsets.contains(&128));
        let mut ids: Vec<u8> = r
            .live
            .iter()
            .map(|&i| r.seals[i as usize].object_id.0[0])
            .collect();
        ids.sort();
        assert_eq!(ids, vec![2, 4]);
    }

    #[test]
    fn evicted_records_replace_seals_take_no_space_and_survive_a_restart() {
        let evicted = |r: SealRecord| SealRecord {
            spilled: true,
            offset: 0,
            ..r
        };
        let e = evicted(rec(9, 0, 1 << 30));
        assert_eq!(decode(&e.encode()), Some(Entry::Seal(e)));
        // Seal, evict, restore elsewhere, evict again: no "lost delete" drops, and an evicted
        // object's size may exceed the segment (it is not in it).
        let log = log_of(&[
            rec(1, 64, 64).encode(),
            evicted(rec(1, 64, 64)).encode(),
            rec(2, 64, 64).encode(), // reuses 1's freed block
            rec(1, 128, 64).encode(),
            evicted(rec(1, 128, 64)).encode(),
            e.encode(),
            rec(3, 256, 64).encode(),
            evicted(rec(3, 256, 64)).encode(),
            delete_record(ObjectId([3; 20])),
        ]);
        let mut r = replay(&log, 1 << 20);
        assert_eq!((r.bad, r.dropped), (0, 0));
        let (kept, spilled) = resolve_overlaps(&mut r);
        let ids = |v: &[u32]| -> Vec<u8> {
            let mut v: Vec<u8> = v
                .iter()
                .map(|&i| r.seals[i as usize].object_id.0[0])
                .collect();
            v.sort();
            v
        };
        assert_eq!((ids(&kept), ids(&spilled)), (vec![2], vec![1, 9]));

        // Through open: the evicted objects come back flagged, without arena space.
        let dir = tempfile::tempdir().unwrap();
        let cfg = PersistConfig::new(dir.path());
        let mut o = open(&cfg, 1, 1 << 20, |c| c * 2).unwrap();
        o.persist
            .record_seals(&[rec(1, 128, 100), rec(2, 256, 10)], &o.segment);
        o.persist.record_evicted(&rec(1, 128, 100));
        drop(o);
        let o = open(&cfg, 1, 1 << 20, |c| c * 2).unwrap();
        assert_eq!(o.objects, vec![rec(2, 256, 10), evicted(rec(1, 128, 100))]);
        assert_eq!(o.arena.allocated_bytes(), 10);
    }

    #[test]
    fn overlaps_keep_the_later_record() {
        let log = log_of(&[
            rec(1, 64, 200).encode(),  // 64..320
            rec(2, 320, 64).encode(),  // 320..384
            rec(3, 256, 64).encode(),  // overlaps 1: later, wins
            rec(4, 1024, 64).encode(), // alone
        ]);
        let mut r = replay(&log, 1 << 20);
        let kept: Vec<u8> = resolve_overlaps(&mut r)
            .0
            .iter()
            .map(|&i| r.seals[i as usize].object_id.0[0])
            .collect();
        assert_eq!(kept, vec![3, 2, 4]);
        assert_eq!(r.dropped, 1);
    }

    #[test]
    fn compaction_keeps_exactly_the_live_records_and_the_lock_holds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PersistConfig::new(dir.path());
        let usable_for = |c: u64| c * 2;
        let mut o = open(&cfg, 1, 1 << 20, usable_for).unwrap();
        assert!(o.objects.is_empty());
        let err = open(&cfg, 1, 1 << 20, usable_for).err().unwrap();
        assert!(err.to_string().contains("in use by another"), "{err}");
        let recs: Vec<SealRecord> = (1..=10).map(|n| rec(n, 128 * u64::from(n), 64)).collect();
        o.persist.record_seals(&recs, &o.segment);
        for r in &recs[..6] {
            o.persist.record_delete(r.object_id);
        }
        assert_eq!((o.persist.slots, o.persist.live), (16, 4));
        assert!(!o.persist.wants_compaction());
        o.persist.compact(recs[6..].iter().copied());
        assert_eq!((o.persist.slots, o.persist.live), (4, 4));
        o.persist.record_seals(&[rec(11, 128 * 20, 10)], &o.segment);
        drop(o);
        let o = open(&cfg, 1, 1 << 20, usable_for).unwrap();
        let ids: Vec<u8> = o.objects.iter().map(|r| r.object_id.0[0]).collect();
        assert_eq!(ids, vec![7, 8, 9, 10, 11]);
        assert_eq!(o.objects[4], rec(11, 128 * 20, 10));
        assert!(o.arena.check_invariants().is_ok());
        assert_eq!(o.arena.allocated_bytes(), 4 * 64 + 10);
        // The log held exactly the live records: kept as it is, allocated ahead, not rewritten.
        let log = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(log.len() as u64, GROW_SLOTS * RECORD_LEN as u64);
        let r = replay(&log, o.segment.mmap_size());
        assert_eq!((r.slots, r.holes, r.bad, r.torn), (5, 0, 0, 0));
        drop(o);
        // A hole (a slot never written) makes the next start-up rewrite the log.
        let mut log = log;
        log[RECORD_LEN * 2..RECORD_LEN * 3].fill(0);
        std::fs::write(dir.path().join(LOG_FILE), &log).unwrap();
        let o = open(&cfg, 1, 1 << 20, usable_for).unwrap();
        assert_eq!(o.objects.len(), 4);
        let log = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(
            log.len(),
            5 * RECORD_LEN,
            "rewritten: the header and four records"
        );
    }

    #[test]
    fn without_a_mapping_appends_fall_back_to_pwrite() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PersistConfig::new(dir.path());
        let mut o = open(&cfg, 1, 1 << 20, |c| c * 2).unwrap();
        o.persist.map_failed = true;
        o.persist
            .record_seals(&[rec(1, 128, 10), rec(2, 256, 10)], &o.segment);
        o.persist.record_delete(ObjectId([1; 20]));
        assert!(o.persist.map.is_none() && !o.persist.stale);
        drop(o);
        let o = open(&cfg, 1, 1 << 20, |c| c * 2).unwrap();
        assert_eq!(o.objects, vec![rec(2, 256, 10)]);
    }

    #[test]
    fn capacity_needed_is_the_smallest_that_fits() {
        let usable_for = |c: u64| c + c / 8 + (1 << 20);
        let c = capacity_needed(1000, 10 << 20, usable_for);
        let fits = |c| {
            SEGMENT_BASE + Segment::usable_len_for(usable_for(c)).unwrap() / 64 * 64 >= 10 << 20
        };
        assert!(fits(c) && !fits(c - 1), "{c}");
        assert_eq!(capacity_needed(5000, 128, usable_for), 5000);
    }
}
