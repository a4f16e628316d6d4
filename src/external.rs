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
//! The spill tier does its file I/O synchronously in the event loop: an eviction of N bytes
//! costs the time to write N bytes to the page cache.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use log::{info, warn};
use xxhash_rust::xxh64::xxh64;

use crate::protocol::ObjectId;

const MAGIC: &[u8; 8] = b"PLSPILL1";
const HEADER: usize = 24;
const DIR_PREFIX: &str = "plasma-spill-";

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
        let Some((scheme, rest)) = endpoint.split_once("://") else {
            return Err(format!(
                "malformed external store endpoint {endpoint:?}: expected hashtable://NAME or file:///DIR"
            ));
        };
        match scheme {
            "hashtable" => Ok(ExternalStore::HashTable(HashMap::new())),
            "file" => SpillDir::create(Path::new(rest), spill_limit)
                .map(ExternalStore::Files)
                .map_err(|e| format!("cannot use {rest} for spilling: {e}")),
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

    /// Takes back the bytes of an evicted object (which then leave the external store).
    /// `len` is the size the store expects.
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

    /// Forgets an evicted object that was deleted.
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
}

impl SpillDir {
    /// Makes this store's directory under `parent`, after removing those of stores that no
    /// longer run.
    pub fn create(parent: &Path, limit: Option<u64>) -> io::Result<SpillDir> {
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
        })
    }

    /// This store's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

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
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            let mut header = [0u8; HEADER];
            header[..8].copy_from_slice(MAGIC);
            header[8..16].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            header[16..24].copy_from_slice(&xxh64(bytes, 0).to_le_bytes());
            f.write_all(&header)?;
            f.write_all(bytes)?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        self.used += size;
        self.sizes.insert(id, size);
        Ok(())
    }

    fn take(&mut self, id: ObjectId) -> io::Result<Vec<u8>> {
        let path = self.file(id);
        let read = fs::read(&path);
        self.remove(id);
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
        if let Some(size) = self.sizes.remove(&id) {
            self.used -= size;
        }
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
    fn directories_of_dead_stores_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        // pid 0x7fff_fff0 does not exist.
        let stale = parent.path().join(format!("{DIR_PREFIX}{}-0", 0x7fff_fff0));
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("half.tmp"), b"half").unwrap();
        let live = SpillDir::create(parent.path(), None).unwrap();
        assert!(!stale.exists());
        assert!(live.path().exists());
    }
}
