//! External stores: where evicted objects go when the store runs out of memory (`-e`), and
//! where a get finds them again.
//!
//! - `hashtable://NAME`: the original's test double, kept for compatibility: evicted objects
//!   are held in the store's own (private) memory and copied back on get.
//! - `file:///DIR`: a real spill tier. Each evicted object becomes one file in a directory of
//!   this store's own under DIR (`plasma-spill-<pid>-<n>`), written to a temporary name and
//!   renamed into place, so a file with the final name is always complete. Every file starts
//!   with a small header (magic, payload length, XXH64 of the payload), checked on restore: a
//!   truncated or corrupted file is an error for that object only. Files are removed when their
//!   object is deleted or restored, the directory when the store exits; directories left by a
//!   store that was killed are removed at the next start.
//!
//!   With `--persist DIR` and a spill directory that is `DIR` or inside it, the spill tier is
//!   part of the persistent store instead: its directory has a fixed name
//!   (`plasma-spill-persist`), is kept at exit and found again at the next start (the lock on
//!   `DIR` makes the store its only owner), and the log records evictions to it (see
//!   [`crate::persist`]). A restore then removes an object's file only after the object's new
//!   seal record is written, so that a kill in between loses nothing; files without a record
//!   are removed at start-up by the store.
//!
//! The spill tier does its file I/O synchronously in the event loop: an eviction of N bytes
//! costs the time to write N bytes to the page cache.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use log::{info, warn};
use xxhash_rust::xxh64::xxh64;

use crate::protocol::ObjectId;

const MAGIC: &[u8; 8] = b"PLSPILL1";
const HEADER: usize = 24;
const DIR_PREFIX: &str = "plasma-spill-";
/// The spill directory of a persistent store (no pid: it outlives the process).
pub const PERSISTENT_DIR: &str = "plasma-spill-persist";

/// An external store.
pub enum ExternalStore {
    /// Objects kept in the store's own memory.
    HashTable(HashMap<ObjectId, Vec<u8>>),
    /// Objects spilled to files.
    Files(SpillDir),
}

impl ExternalStore {
    /// Opens the store an `-e` endpoint names: `hashtable://NAME` or `file:///DIR`.
    pub fn open(endpoint: &str, spill_limit: Option<u64>) -> Result<ExternalStore, String> {
        ExternalStore::open_for(endpoint, spill_limit, None)
    }

    /// As [`ExternalStore::open`], for a store persisted in `persist` (its `--persist`
    /// directory, and whether to write spill files to storage before recording them): a
    /// `file://` directory that is that directory or inside it (created if missing) makes a
    /// persistent spill tier.
    pub fn open_for(
        endpoint: &str,
        spill_limit: Option<u64>,
        persist: Option<(&Path, bool)>,
    ) -> Result<ExternalStore, String> {
        let Some((scheme, rest)) = endpoint.split_once("://") else {
            return Err(format!(
                "malformed external store endpoint {endpoint:?}: expected hashtable://NAME or file:///DIR"
            ));
        };
        match scheme {
            "hashtable" => Ok(ExternalStore::HashTable(HashMap::new())),
            "file" => {
                let parent = Path::new(rest);
                let inside = match persist {
                    Some((dir, sync)) => within(parent, dir)
                        .map_err(|e| format!("cannot use {rest} for spilling: {e}"))?
                        .map(|p| (p, sync)),
                    None => None,
                };
                match inside {
                    Some((parent, sync)) => SpillDir::create_persistent(&parent, spill_limit, sync),
                    None => SpillDir::create(parent, spill_limit),
                }
                .map(ExternalStore::Files)
                .map_err(|e| format!("cannot use {rest} for spilling: {e}"))
            }
            other => Err(format!(
                "no such external store {other:?} (use hashtable://NAME or file:///DIR)"
            )),
        }
    }

    /// Stores the bytes (data then metadata) of an evicted object.
    pub fn put(&mut self, id: ObjectId, bytes: Vec<u8>) -> io::Result<()> {
        match self {
            ExternalStore::HashTable(m) => {
                m.insert(id, bytes);
                Ok(())
            }
            ExternalStore::Files(d) => d.put(id, &bytes),
        }
    }

    /// Takes back the bytes of an evicted object, which then leave the external store (in a
    /// persistent spill directory, the file stays until [`ExternalStore::remove`], but no
    /// longer counts against the limit). `len` is the size the store expects.
    pub fn take(&mut self, id: ObjectId, len: u64) -> io::Result<Vec<u8>> {
        let bytes = match self {
            ExternalStore::HashTable(m) => m
                .remove(&id)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the hash table"))?,
            ExternalStore::Files(d) => d.take(id)?,
        };
        if bytes.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("holds {} bytes, expected {len}", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// Whether evicted objects outlive the store here (a persistent spill directory).
    pub fn is_persistent(&self) -> bool {
        matches!(self, ExternalStore::Files(d) if d.persistent)
    }

    /// The objects whose spill files a persistent spill directory held at start-up.
    pub fn found(&self) -> HashSet<ObjectId> {
        match self {
            ExternalStore::Files(d) if d.persistent => d.sizes.keys().copied().collect(),
            _ => HashSet::new(),
        }
    }

    /// The directory spill files go to, for `file://`.
    pub fn spill_path(&self) -> Option<&Path> {
        match self {
            ExternalStore::Files(d) => Some(d.path()),
            ExternalStore::HashTable(_) => None,
        }
    }

    /// Gives back the bytes [`ExternalStore::take`] returned, for an object that could not be
    /// restored after all. A persistent spill directory still has the file: it is only
    /// counted again.
    pub fn put_back(&mut self, id: ObjectId, bytes: Vec<u8>) -> io::Result<()> {
        match self {
            ExternalStore::Files(d) if d.persistent && d.file(id).exists() => {
                d.count(id, (HEADER + bytes.len()) as u64);
                Ok(())
            }
            _ => self.put(id, bytes),
        }
    }

    /// Forgets an evicted object that was deleted (or restored: a persistent spill directory
    /// keeps the file until then).
    pub fn remove(&mut self, id: ObjectId) {
        match self {
            ExternalStore::HashTable(m) => {
                m.remove(&id);
            }
            ExternalStore::Files(d) => d.remove(id),
        }
    }
}

/// This store's spill directory.
pub struct SpillDir {
    dir: PathBuf,
    /// Bytes the spill files may take in all (a configured limit), if any.
    limit: Option<u64>,
    /// Bytes the spill files take now.
    used: u64,
    sizes: HashMap<ObjectId, u64>,
    /// The directory of a persistent store: kept at exit, files kept until removed.
    persistent: bool,
    /// Write each file to storage before it counts as spilled (`--persist-sync`).
    sync: bool,
}

/// The canonical form of `spill` if it is `persist` or inside it (created if missing then),
/// else `None`.
fn within(spill: &Path, persist: &Path) -> io::Result<Option<PathBuf>> {
    let given = std::path::absolute(persist)?;
    let persist = fs::canonicalize(persist)?;
    let spill = std::path::absolute(spill)?;
    // Lexically under the directory as given or as resolved, without `..`.
    let under = (spill.starts_with(&given) || spill.starts_with(&persist))
        && !spill
            .components()
            .any(|c| c == std::path::Component::ParentDir);
    let spill = match fs::canonicalize(&spill) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound && under => {
            fs::create_dir_all(&spill)?;
            fs::canonicalize(&spill)?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(spill.starts_with(&persist).then_some(spill))
}

/// The persistent spill directories under `root` (at most a few levels down, symbolic links
/// not followed).
pub fn persistent_dirs_under(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name() == PERSISTENT_DIR {
                out.push(entry.path());
            } else if depth > 0 {
                walk(&entry.path(), depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, 4, &mut out);
    out
}

impl SpillDir {
    /// Makes this store's directory under `parent`, after removing those of stores that no
    /// longer run.
    pub fn create(parent: &Path, limit: Option<u64>) -> io::Result<SpillDir> {
        remove_stale(parent)?;
        let pid = std::process::id();
        let mut n = 0u32;
        let dir = loop {
            let dir = parent.join(format!("{DIR_PREFIX}{pid}-{n}"));
            match fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        };
        Ok(SpillDir {
            dir,
            limit,
            used: 0,
            sizes: HashMap::new(),
            persistent: false,
            sync: false,
        })
    }

    /// Opens (or makes) the persistent store's directory under `parent`, after removing those
    /// of stores that no longer run, and counts the spill files found in it (half-written
    /// ones are removed).
    pub fn create_persistent(
        parent: &Path,
        limit: Option<u64>,
        sync: bool,
    ) -> io::Result<SpillDir> {
        remove_stale(parent)?;
        let dir = parent.join(PERSISTENT_DIR);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let mut d = SpillDir {
            dir,
            limit,
            used: 0,
            sizes: HashMap::new(),
            persistent: true,
            sync,
        };
        for entry in fs::read_dir(&d.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                info!(
                    "removing a half-written spill file: {}",
                    entry.path().display()
                );
                if let Err(e) = fs::remove_file(entry.path()) {
                    warn!("cannot remove {}: {e}", entry.path().display());
                }
                continue;
            }
            match ObjectId::from_hex(&name) {
                Some(id) => {
                    d.count(id, entry.metadata()?.len());
                }
                None => warn!("{} is not a spill file; left alone", entry.path().display()),
            }
        }
        Ok(d)
    }

    /// This store's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// Removes the spill directories under `parent` of stores that no longer run.
fn remove_stale(parent: &Path) -> io::Result<()> {
    if !fs::metadata(parent)?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a directory",
        ));
    }
    for entry in fs::read_dir(parent)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            info!(
                "removing the spill directory of a store that is gone: {}",
                entry.path().display()
            );
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
    Ok(())
}

impl SpillDir {
    fn file(&self, id: ObjectId) -> PathBuf {
        self.dir.join(id.hex())
    }

    fn put(&mut self, id: ObjectId, bytes: &[u8]) -> io::Result<()> {
        let size = (HEADER + bytes.len()) as u64;
        if let Some(limit) = self.limit
            && self.used + size > limit
        {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("the spill limit of {limit} bytes is reached"),
            ));
        }
        let path = self.file(id);
        let tmp = path.with_extension("tmp");
        let written = (|| -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            let mut header = [0u8; HEADER];
            header[..8].copy_from_slice(MAGIC);
            header[8..16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            header[16..24].copy_from_slice(&xxh64(bytes, 0).to_le_bytes());
            f.write_all(&header)?;
            f.write_all(bytes)?;
            if self.sync {
                f.sync_data()?;
            }
            fs::rename(&tmp, &path)?;
            if self.sync {
                fs::File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        self.count(id, size);
        Ok(())
    }

    /// Counts a spill file of `size` bytes (against the limit).
    fn count(&mut self, id: ObjectId, size: u64) {
        if let Some(old) = self.sizes.insert(id, size) {
            self.used -= old;
        }
        self.used += size;
    }

    /// Stops counting a spill file.
    fn uncount(&mut self, id: ObjectId) {
        if let Some(size) = self.sizes.remove(&id) {
            self.used -= size;
        }
    }

    fn take(&mut self, id: ObjectId) -> io::Result<Vec<u8>> {
        let path = self.file(id);
        let read = fs::read(&path);
        if self.persistent {
            // The file stays until the object's new seal record is written (the store then
            // calls `remove`); it no longer counts against the limit.
            self.uncount(id);
        } else {
            self.remove(id);
        }
        let mut file = read?;
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("spill file {}: {what}", path.display()),
            )
        };
        let (header, payload) = file
            .split_at_checked(HEADER)
            .ok_or_else(|| bad("truncated header"))?;
        if header.get(..8) != Some(&MAGIC[..]) {
            return Err(bad("bad magic"));
        }
        let field = |i: usize| {
            header
                .get(i..i + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .unwrap_or(u64::MAX)
        };
        if field(8) != payload.len() as u64 {
            return Err(bad("truncated payload"));
        }
        if field(16) != xxh64(payload, 0) {
            return Err(bad("checksum mismatch"));
        }
        // The payload moves to the front in place: no second buffer.
        file.drain(..HEADER);
        Ok(file)
    }

    fn remove(&mut self, id: ObjectId) {
        self.uncount(id);
        let path = self.file(id);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!("cannot remove {}: {e}", path.display());
        }
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        if self.persistent {
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            warn!(
                "cannot remove the spill directory {}: {e}",
                self.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId([n; 20])
    }

    #[test]
    fn endpoints() {
        assert!(matches!(
            ExternalStore::open("hashtable://x", None),
            Ok(ExternalStore::HashTable(_))
        ));
        assert!(ExternalStore::open("hashtable", None).is_err());
        assert!(ExternalStore::open("foo://x", None).is_err());
        assert!(ExternalStore::open("file:///nonexistent/dir", None).is_err());
    }

    #[test]
    fn files_round_trip_and_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let mut s =
            ExternalStore::open(&format!("file://{}", parent.path().display()), None).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        s.put(id(1), data.clone()).unwrap();
        s.put(id(2), b"x".to_vec()).unwrap();
        assert_eq!(s.take(id(1), data.len() as u64).unwrap(), data);
        assert!(s.take(id(1), 1).is_err(), "taken once");
        s.remove(id(2));
        let ExternalStore::Files(d) = &s else {
            panic!()
        };
        let dir = d.path().to_path_buf();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors() {
        let parent = tempfile::tempdir().unwrap();
        let mut d = SpillDir::create(parent.path(), None).unwrap();
        d.put(id(1), b"hello world").unwrap();
        d.put(id(2), b"hello world").unwrap();
        let mut f = fs::read(d.file(id(1))).unwrap();
        f[HEADER] ^= 1;
        fs::write(d.file(id(1)), &f).unwrap();
        assert_eq!(
            d.take(id(1)).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let f = fs::read(d.file(id(2))).unwrap();
        fs::write(d.file(id(2)), &f[..f.len() - 1]).unwrap();
        assert_eq!(
            d.take(id(2)).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(d.take(id(3)).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_limit_acts_as_a_full_disk() {
        let parent = tempfile::tempdir().unwrap();
        let mut d = SpillDir::create(parent.path(), Some(100)).unwrap();
        d.put(id(1), &[0; 50]).unwrap();
        assert_eq!(
            d.put(id(2), &[0; 50]).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        assert!(!d.file(id(2)).exists() && !d.file(id(2)).with_extension("tmp").exists());
        d.remove(id(1));
        d.put(id(2), &[0; 50]).unwrap();
    }

    #[test]
    fn a_persistent_spill_directory_is_found_again_and_keeps_files_until_removed() {
        let persist = tempfile::tempdir().unwrap();
        let endpoint = format!("file://{}/spill", persist.path().display());
        let open = || ExternalStore::open_for(&endpoint, None, Some((persist.path(), false)));
        let mut s = open().unwrap();
        assert!(s.is_persistent() && s.found().is_empty());
        let dir = persist.path().join("spill").join(PERSISTENT_DIR);
        s.put(id(1), b"one".to_vec()).unwrap();
        s.put(id(2), b"two".to_vec()).unwrap();
        drop(s);
        assert!(dir.join(id(1).hex()).exists(), "kept at exit");
        fs::write(dir.join(id(3).hex()).with_extension("tmp"), b"half").unwrap();
        fs::write(dir.join("notes"), b"not ours").unwrap();

        let mut s = open().unwrap();
        let mut found: Vec<ObjectId> = s.found().into_iter().collect();
        found.sort_by_key(|i| i.0);
        assert_eq!(found, vec![id(1), id(2)]);
        assert!(!dir.join(id(3).hex()).with_extension("tmp").exists());
        assert!(dir.join("notes").exists());
        // A take leaves the file until the store removes it.
        assert_eq!(s.take(id(1), 3).unwrap(), b"one");
        assert!(dir.join(id(1).hex()).exists());
        s.put_back(id(1), b"one".to_vec()).unwrap();
        assert_eq!(s.take(id(1), 3).unwrap(), b"one");
        s.remove(id(1));
        assert!(!dir.join(id(1).hex()).exists());

        // Outside the persist directory, or without one: as before.
        let other = tempfile::tempdir().unwrap();
        let outside = format!("file://{}", other.path().display());
        let s = ExternalStore::open_for(&outside, None, Some((persist.path(), false))).unwrap();
        assert!(!s.is_persistent());
        let at_top = format!("file://{}", persist.path().display());
        let s = ExternalStore::open_for(&at_top, None, Some((persist.path(), false))).unwrap();
        assert!(s.is_persistent());
        // Given through a symbolic link, with a spill directory still to make.
        let link = other.path().join("link");
        std::os::unix::fs::symlink(persist.path(), &link).unwrap();
        let through = format!("file://{}/spill2", link.display());
        let s = ExternalStore::open_for(&through, None, Some((&link, false))).unwrap();
        assert!(s.is_persistent());
        drop(s);
        fs::remove_dir_all(persist.path().join("spill2")).unwrap();
        let mut dirs = persistent_dirs_under(persist.path());
        dirs.sort();
        assert_eq!(dirs, vec![persist.path().join(PERSISTENT_DIR), dir.clone()]);
        assert!(!open_plain(&endpoint).is_persistent());
        assert!(
            ExternalStore::open_for(
                &format!("file://{}/missing", other.path().display()),
                None,
                Some((persist.path(), false))
            )
            .is_err(),
            "a missing directory outside the persist directory is not made"
        );
    }

    fn open_plain(endpoint: &str) -> ExternalStore {
        ExternalStore::open(endpoint, None).unwrap()
    }

    #[test]
    fn directories_of_dead_stores_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        // pid 0x7fff_fff0 does not exist.
        let stale = parent.path().join(format!("{DIR_PREFIX}{}-0", 0x7fff_fff0));
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("half.tmp"), b"half").unwrap();
        // A persistent store's directory has no pid: never stale.
        let kept = parent.path().join(PERSISTENT_DIR);
        fs::create_dir(&kept).unwrap();
        let live = SpillDir::create(parent.path(), None).unwrap();
        assert!(!stale.exists());
        assert!(kept.exists());
        assert!(live.path().exists());
    }
}
