//! `--persist DIR`: objects whose seal was acknowledged survive the store, however it stopped
//! (SIGTERM, SIGKILL), bit-exact; damaged records cost only their objects; two stores never
//! share a directory; another `-m` adapts or is refused without harm.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Store, oid, pattern, pyarrow_python, store_bin};
use plasma_store::client::Client;
use plasma_store::digest::object_digest;
use plasma_store::protocol::ObjectId;

const MEM: u64 = 64 << 20;

/// Starts our store with `--persist dir` (and without the background warm-up, which would
/// allocate the whole capacity of a file that may be on a disk).
fn start(dir: &Path, capacity: u64, extra: &[&str]) -> Store {
    let mut args = vec![
        "--persist",
        dir.to_str().expect("utf-8 path"),
        "--no-prefault",
    ];
    args.extend_from_slice(extra);
    Store::start_with(&store_bin(), capacity, &args)
}

/// Runs a store (with `extra` arguments) that must refuse to start; returns what it wrote
/// to stderr.
fn refused(dir: &Path, capacity: u64, extra: &[&str]) -> String {
    let sock = tempfile::tempdir().expect("temp dir");
    let out = Command::new(store_bin())
        .arg("-m")
        .arg(capacity.to_string())
        .arg("-s")
        .arg(sock.path().join("s"))
        .arg("--persist")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run the store");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// The ids in the store.
fn listed(store: &Store) -> HashSet<ObjectId> {
    store
        .client()
        .list()
        .expect("list")
        .into_iter()
        .map(|i| i.object_id)
        .collect()
}

/// Data and metadata of test object `n`.
fn contents(n: u32) -> (Vec<u8>, Vec<u8>) {
    let size = [0, 1, 63, 64, 1000, 4096, 20_000][n as usize % 7] + (n as usize % 13);
    (
        pattern(n as u8, size),
        pattern((n >> 8) as u8, n as usize % 4),
    )
}

/// Asserts that the store holds object `n` with exactly its bytes and digest.
fn assert_intact(store: &Store, n: u32) {
    assert_intact_with(store, n, contents);
}

/// Asserts that the store holds object `n` with exactly the bytes `contents(n)` gives, and
/// their digest.
fn assert_intact_with(store: &Store, n: u32, contents: fn(u32) -> (Vec<u8>, Vec<u8>)) {
    let c = store.client();
    let (data, meta) = contents(n);
    let got = c.get(&[oid(n)], 0).expect("get");
    let got = got[0]
        .as_ref()
        .unwrap_or_else(|| panic!("object {n} missing\n{}", store.log()));
    assert_eq!((got.data(), got.metadata()), (&data[..], &meta[..]), "{n}");
    let info = common::info(&c, oid(n)).expect("listed");
    assert_eq!(info.digest, Some(object_digest(&data, &meta)));
}

/// Offset of record `i` (0-based) of the log.
fn record_at(i: u64) -> u64 {
    80 + 80 * i
}

/// Record slots of the log that were written (it is allocated ahead, with zeros).
fn records_in(log: &Path) -> usize {
    let bytes = std::fs::read(log).expect("read");
    bytes[80..]
        .chunks(80)
        .filter(|r| r.iter().any(|b| *b != 0))
        .count()
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

fn u64_in(path: &Path, at: u64) -> u64 {
    let bytes = std::fs::read(path).expect("read");
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at as usize..at as usize + 8]);
    u64::from_le_bytes(b)
}

/// The pyarrow 11 client's side of the SIGKILL tests: `put` seals 60 objects (a few bytes to
/// 1 MiB, half with create+seal, half with create_and_seal) and saves the listing; `check`
/// compares the listing and gets every object bit-exact.
const PYARROW_SCRIPT: &str = r#"
import sys, json, random, pyarrow.plasma as plasma
sock, phase, n, state = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = plasma.connect(sock)
def content(i):
    r = random.Random(i)
    size = [0, 1, 100, 4096, 70000, (1 << 20) + 333][i % 6]
    return r.randbytes(size), r.randbytes(i % 5)
ids = [plasma.ObjectID(i.to_bytes(4, "big") + b"p" * 16) for i in range(n)]
gone = plasma.ObjectID(b"deleted" + b"x" * 13)
if phase == "put":
    for i, oid in enumerate(ids):
        data, meta = content(i)
        if i % 2:
            c.create_and_seal(oid, data, meta)
        else:
            buf = c.create(oid, len(data), meta)
            if data:
                memoryview(buf).cast("B")[:] = data
            c.seal(oid)
            del buf
    c.create_and_seal(gone, b"bye", b"")
    c.delete([gone])
    listing = {o.binary().hex(): [v["data_size"], v["metadata_size"], v["create_time"],
               v["construct_duration"], c.hash(o).hex()] for o, v in c.list().items()}
    json.dump(listing, open(state, "w"))
else:
    before = json.load(open(state))
    now = {o.binary().hex(): [v["data_size"], v["metadata_size"], v["create_time"],
           v["construct_duration"], c.hash(o).hex()] for o, v in c.list().items()}
    assert now == before, (len(now), len(before))
    assert not c.contains(gone)
    for i, oid in enumerate(ids):
        data, meta = content(i)
        [(m, d)] = c.get_buffers([oid], timeout_ms=0, with_meta=True)
        assert bytes(d) == data and bytes(m) == meta, i
        del m, d
    print("ok", len(now))
"#;

/// Runs a phase of [`PYARROW_SCRIPT`] against `store`; returns what it printed.
fn run_pyarrow(python: &Path, store: &Store, phase: &str, state: &Path) -> String {
    let out = Command::new(python)
        .args(["-W", "ignore", "-c", PYARROW_SCRIPT])
        .arg(&store.socket)
        .args([phase, "60"])
        .arg(state)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        store.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pyarrow_objects_survive_sigkill_bit_exact() {
    let Some(python) = pyarrow_python() else {
        eprintln!("skipped: no Python with pyarrow.plasma (set PLASMA_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("listing.json");
    let persist = dir.path().join("persist");
    let run = |store: &Store, phase: &str| run_pyarrow(&python, store, phase, &state);
    let store = start(&persist, MEM, &[]);
    run(&store, "put");
    store.kill();
    let store = start(&persist, MEM, &[]);
    assert_eq!(run(&store, "check").trim(), "ok 60");
    // Once more, after a SIGTERM this time, with every digest checked before serving.
    store.stop();
    let store = start(&persist, MEM, &["--persist-verify"]);
    assert_eq!(run(&store, "check").trim(), "ok 60");
    store.stop();
}

#[test]
fn pyarrow_objects_spilled_inside_the_directory_survive_sigkill_bit_exact() {
    let Some(python) = pyarrow_python() else {
        eprintln!("skipped: no Python with pyarrow.plasma (set PLASMA_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("listing.json");
    let persist = dir.path().join("persist");
    let endpoint = spill_endpoint(&persist);
    // About 11 MB of objects through a 4 MiB store.
    let args = ["-e", endpoint.as_str()];
    let run = |store: &Store, phase: &str| run_pyarrow(&python, store, phase, &state);
    let store = start(&persist, 4 << 20, &args);
    run(&store, "put");
    let spilled = std::fs::read_dir(spill_dir(&persist))
        .expect("spill directory")
        .count();
    assert!(spilled >= 10, "only {spilled} objects spilled");
    store.kill();
    let store = start(&persist, 4 << 20, &args);
    assert_eq!(run(&store, "check").trim(), "ok 60");
    store.kill();
    // And after the restores and evictions of that check.
    let store = start(&persist, 4 << 20, &args);
    assert_eq!(run(&store, "check").trim(), "ok 60");
    store.stop();
}

#[test]
fn sigkill_in_a_stream_of_creates_keeps_every_acknowledged_object_and_no_torn_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    sigkill_in_a_stream_of_creates(dir.path(), 256 << 20, &[], false);
}

#[test]
fn sigkill_in_a_stream_of_creates_spills_and_restores_keeps_every_acknowledged_object() {
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = spill_endpoint(dir.path());
    // About 7 MB of objects through 2 MiB, and a client getting acknowledged objects back
    // (restoring them, evicting others) while the store is killed.
    sigkill_in_a_stream_of_creates(dir.path(), 2 << 20, &["-e", endpoint.as_str()], true);
    let files = std::fs::read_dir(spill_dir(dir.path()))
        .expect("spill directory")
        .count();
    assert!(files > 0, "nothing was spilled: the test proves nothing");
}

/// Four clients create objects in a stream (create+seal, create-and-seal, batches) until the
/// store is killed; then every acknowledged object must be there after a restart, and every
/// object there whole. With `readers`, a fifth client gets acknowledged objects meanwhile.
fn sigkill_in_a_stream_of_creates(dir: &Path, capacity: u64, extra: &[&str], readers: bool) {
    let store = start(dir, capacity, extra);
    let acked = Arc::new(Mutex::new(Vec::<u32>::new()));
    let attempted = Arc::new(Mutex::new(HashSet::<u32>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..4u32 {
        let c = store.client();
        let (acked, attempted, count) = (acked.clone(), attempted.clone(), count.clone());
        let failed = failed.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0.. {
                let n = t * 1_000_000 + i * 3;
                let batch = [n, n + 1, n + 2];
                attempted.lock().unwrap().extend(batch);
                let result = match i % 3 {
                    0 => {
                        let (data, meta) = contents(n);
                        c.create(oid(n), data.len() as u64, &meta)
                            .and_then(|mut b| {
                                b.data_mut().copy_from_slice(&data);
                                b.seal().map(|_| ())
                            })
                    }
                    1 => {
                        let (data, meta) = contents(n);
                        c.create_and_seal(oid(n), &data, &meta)
                    }
                    _ => {
                        let all: Vec<(ObjectId, Vec<u8>, Vec<u8>)> = batch
                            .iter()
                            .map(|&k| {
                                let (d, m) = contents(k);
                                (oid(k), d, m)
                            })
                            .collect();
                        let refs: Vec<(ObjectId, &[u8], &[u8])> =
                            all.iter().map(|(id, d, m)| (*id, &d[..], &m[..])).collect();
                        c.create_and_seal_batch(&refs)
                    }
                };
                if result.is_err() {
                    // The store is gone.
                    return;
                }
                let done: &[u32] = if i % 3 == 2 { &batch } else { &batch[..1] };
                acked.lock().unwrap().extend_from_slice(done);
                count.fetch_add(done.len(), Ordering::SeqCst);
                if i > 200_000 {
                    failed.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }));
    }
    if readers {
        let c = store.client();
        let acked = acked.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0usize.. {
                let n = {
                    let acked = acked.lock().unwrap();
                    if acked.is_empty() {
                        None
                    } else {
                        Some(acked[i.wrapping_mul(7919) % acked.len()])
                    }
                };
                let Some(n) = n else {
                    std::thread::yield_now();
                    continue;
                };
                if c.get(&[oid(n)], 0).is_err() {
                    return;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::SeqCst) < 2000 {
        assert!(Instant::now() < deadline, "the clients made no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    store.kill();
    for t in threads {
        t.join().expect("client thread");
    }
    assert!(!failed.load(Ordering::SeqCst), "the store was not killed");

    let store = start(dir, capacity, extra);
    let have = listed(&store);
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    let ids: HashMap<ObjectId, u32> = attempted.iter().map(|&n| (oid(n), n)).collect();
    for n in &acked {
        assert!(have.contains(&oid(*n)), "acknowledged object {n} lost");
    }
    // Everything listed was created by the test (acknowledged, or sealed just before the
    // kill without the reply getting through) and is whole.
    for id in &have {
        let n = *ids.get(id).unwrap_or_else(|| panic!("unknown object {id}"));
        assert_intact(&store, n);
    }
    assert!(have.len() >= acked.len() && acked.len() >= 2000);
    store.stop();
}

#[test]
fn deletes_and_evictions_are_remembered_and_new_objects_do_not_overlap_old_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = start(dir.path(), MEM, &[]);
    let c = store.client();
    for n in 0..20 {
        let (d, m) = contents(n);
        c.create_and_seal(oid(n), &d, &m).expect("create");
    }
    c.delete(&[oid(3), oid(4)]).expect("delete");
    // Evicts the least recently used objects (0, 1, 2, ...) until 5000 bytes are freed.
    let freed = c.evict(5000).expect("evict");
    assert!(freed >= 5000);
    let before = listed(&store);
    assert!(!before.contains(&oid(0)) && !before.contains(&oid(3)));
    drop(c);
    store.kill();

    let store = start(dir.path(), MEM, &[]);
    assert_eq!(listed(&store), before);
    // New objects go into free space only: the old ones stay intact.
    let c = store.client();
    for n in 100..140 {
        let (d, m) = contents(n);
        c.create_and_seal(oid(n), &d, &m).expect("create");
    }
    for n in (0..20).chain(100..140) {
        if before.contains(&oid(n)) || n >= 100 {
            assert_intact(&store, n);
        }
    }
    drop(c);
    store.stop();
}

#[test]
fn damaged_records_and_bytes_cost_only_their_objects() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("objects.log");
    let segment = dir.path().join("segment");
    let store = start(dir.path(), MEM, &[]);
    let c = store.client();
    for n in 1..=5 {
        let (d, m) = contents(n);
        c.create_and_seal(oid(n), &d, &m).expect("create");
    }
    drop(c);
    store.stop();
    assert_eq!(records_in(&log), 5);

    // Record 2 damaged (its data size), object 3's bytes changed, object 4's bytes changed
    // too, and a torn record at the end.
    flip_byte(&log, record_at(1) + 40);
    let offset_of = |n: u64| u64_in(&log, record_at(n - 1) + 32);
    flip_byte(&segment, offset_of(3) + 10);
    flip_byte(&segment, offset_of(4));
    let mut bytes = std::fs::read(&log).expect("read");
    bytes.extend_from_slice(&[1; 30]);
    std::fs::write(&log, bytes).expect("write");

    let store = start(dir.path(), MEM, &[]);
    let expect: HashSet<ObjectId> = [1, 3, 4, 5].map(oid).into();
    assert_eq!(
        listed(&store),
        expect,
        "only the damaged record's object is gone"
    );
    assert!(store.log().contains("damaged"), "{}", store.log());
    assert_intact(&store, 1);
    assert_intact(&store, 5);
    // Object 3 fails its digest check on its first get: dropped.
    let c = store.client();
    assert!(c.get(&[oid(3)], 0).expect("get")[0].is_none());
    assert!(!c.contains(oid(3)).expect("contains"));
    assert!(
        store.log().contains("does not match its digest"),
        "{}",
        store.log()
    );
    drop(c);
    store.kill();

    // With --persist-verify, object 4 is dropped before the store serves; 3 stays dropped.
    let store = start(dir.path(), MEM, &["--persist-verify"]);
    let expect: HashSet<ObjectId> = [1, 5].map(oid).into();
    assert_eq!(listed(&store), expect);
    assert_intact(&store, 1);
    assert_intact(&store, 5);
    store.stop();
    // The start-up rewrote the log to hold exactly the survivors.
    assert_eq!(records_in(&log), 2);

    // A file that is not a log is refused, and left alone.
    std::fs::write(&log, b"something else").expect("write");
    assert!(refused(dir.path(), MEM, &[]).contains("is not a plasma_store log"));
    assert_eq!(std::fs::read(&log).expect("read"), b"something else");
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = start(dir.path(), MEM, &[]);
    store
        .client()
        .create_and_seal(oid(1), b"one", b"")
        .expect("create");
    let err = refused(dir.path(), MEM, &[]);
    assert!(err.contains("in use by another plasma_store (pid"), "{err}");
    // The first one is unharmed, and once it is gone the directory is free again.
    assert!(listed(&store).contains(&oid(1)));
    store.kill();
    let store = start(dir.path(), MEM, &[]);
    assert!(listed(&store).contains(&oid(1)));
    store.stop();
}

#[test]
fn another_capacity_adapts_when_the_objects_fit_and_is_refused_when_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mb = |n: u32| pattern(n as u8, 1_000_000);
    let store = start(dir.path(), 8_000_000, &[]);
    let c = store.client();
    for n in 0..6 {
        c.create_and_seal(oid(n), &mb(n), b"m").expect("create");
    }
    drop(c);
    store.kill();
    let segment_size = || {
        std::fs::metadata(dir.path().join("segment"))
            .expect("segment")
            .len()
    };
    let size_before = segment_size();

    let err = refused(dir.path(), 4_000_000, &[]);
    assert!(
        err.contains("do not fit in -m 4000000; start with -m"),
        "{err}"
    );
    assert_eq!(
        segment_size(),
        size_before,
        "a refused start changes nothing"
    );

    // Smaller, but the objects fit: the segment shrinks.
    let store = start(dir.path(), 6_500_000, &[]);
    assert_eq!(listed(&store).len(), 6);
    assert!(segment_size() < size_before);
    store.stop();

    // Larger: the segment grows and the new room is usable.
    let store = start(dir.path(), 64_000_000, &[]);
    let c = store.client();
    assert_eq!(c.capacity(), 64_000_000);
    c.create_and_seal(oid(100), &pattern(1, 40_000_000), b"")
        .expect("a large object fits in the grown segment");
    for n in 0..6 {
        let got = c.get(&[oid(n)], 0).expect("get");
        let got = got[0].as_ref().expect("present");
        assert_eq!((got.data(), got.metadata()), (&mb(n)[..], &b"m"[..]));
    }
    drop(c);
    store.stop();
}

/// The directory is created if missing, and nothing else lands in it; `--persist-sync` works
/// the same (it only adds syncs).
#[test]
fn the_directory_holds_the_segment_the_log_and_the_lock() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = root.path().join("a/b");
    let store = start(&dir, MEM, &["--persist-sync"]);
    store
        .client()
        .create_and_seal(oid(1), b"x", b"")
        .expect("create");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["lock", "objects.log", "segment"]);
    store.kill();
    let store = start(&dir, MEM, &["--persist-sync"]);
    assert_eq!(listed(&store), [oid(1)].into());
    store.stop();
}

#[test]
fn the_log_is_compacted_while_the_store_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("objects.log");
    let store = start(dir.path(), MEM, &[]);
    let c = store.client();
    // 40 batches of 1000 objects, each deleted again but the last 10: 80,000 records for 10
    // live objects.
    churn(&c, 0, 10);
    assert!(store.log().contains("compacted the log"), "{}", store.log());
    assert!(records_in(&log) < 65_536, "{} records", records_in(&log));
    drop(c);
    store.kill();
    let store = start(dir.path(), MEM, &[]);
    let expect: HashSet<ObjectId> = (0..10).map(|i| oid(39_000 + i)).collect();
    assert_eq!(listed(&store), expect);
    store.stop();
}

#[test]
fn recovered_objects_are_evicted_oldest_first_and_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = start(dir.path(), 10_000, &[]);
    let c = store.client();
    for n in 0..9 {
        c.create_and_seal(oid(n), &pattern(n as u8, 1000), b"")
            .expect("create");
    }
    drop(c);
    store.kill();

    let store = start(dir.path(), 10_000, &[]);
    let c = store.client();
    let report = c.debug_string().expect("debug string");
    assert!(report.contains("allocated bytes: 9000\n"), "{report}");
    // 9000 of 10000 used: 2500 more evicts from the old end (at least a fifth of the
    // capacity, as always): objects 0 and 1, in the order they were sealed.
    c.create_and_seal(oid(100), &pattern(1, 2500), b"")
        .expect("create");
    let have = listed(&store);
    assert!(
        !have.contains(&oid(0)) && !have.contains(&oid(1)),
        "{have:?}"
    );
    for n in 2..9 {
        assert!(have.contains(&oid(n)), "{n} evicted out of order");
    }
    drop(c);
    store.kill();
    // The evictions were recorded.
    let store = start(dir.path(), 10_000, &[]);
    assert_eq!(listed(&store), have);
    store.stop();
}

/// `-e file://DIR/spill`: a spill tier inside the `--persist` directory.
fn spill_endpoint(dir: &Path) -> String {
    format!("file://{}", dir.join("spill").display())
}

/// The spill directory of a store persisted in `dir` with [`spill_endpoint`].
fn spill_dir(dir: &Path) -> PathBuf {
    dir.join("spill").join("plasma-spill-persist")
}

/// Object `n` of the spill tests: 10,000 bytes and more, with metadata.
fn spill_contents(n: u32) -> (Vec<u8>, Vec<u8>) {
    (
        pattern(n as u8, 10_000 + n as usize),
        format!("meta {n}").into_bytes(),
    )
}

/// Which of objects `0..n` have a spill file in `dir`.
fn spilled_of(dir: &Path, n: u32) -> HashSet<u32> {
    let names: HashSet<String> = std::fs::read_dir(spill_dir(dir))
        .expect("read the spill directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    (0..n).filter(|i| names.contains(&oid(*i).hex())).collect()
}

/// Asserts that the store holds spill object `n` with exactly its bytes and digest.
fn assert_spill_intact(store: &Store, n: u32) {
    assert_intact_with(store, n, spill_contents);
}

/// Creates spill objects `0..n` (10 KB each, through a 100 KB store: most get spilled).
fn create_spill_objects(store: &Store, n: u32) {
    let c = store.client();
    for n in 0..n {
        let (d, m) = spill_contents(n);
        c.create_and_seal(oid(n), &d, &m).expect("create");
    }
}

/// Asserts that the store lists exactly spill objects `0..n`, each intact.
fn assert_all_spill_objects(store: &Store, n: u32) {
    assert_eq!(listed(store), (0..n).map(oid).collect(), "{}", store.log());
    for n in 0..n {
        assert_spill_intact(store, n);
    }
}

/// Creates 40 batches of 1000 small objects from id `first` on and deletes each batch again
/// but its first `keep_last` objects in the last batch: 80,000 log records, past the
/// compaction threshold (twice the live records + 65,536).
fn churn(c: &Client, first: u32, keep_last: usize) {
    for b in 0..40u32 {
        let ids: Vec<ObjectId> = (0..1000).map(|i| oid(first + b * 1000 + i)).collect();
        let objects: Vec<(ObjectId, &[u8], &[u8])> = ids
            .iter()
            .map(|id| (*id, &b"payload"[..], &b""[..]))
            .collect();
        c.create_and_seal_batch(&objects).expect("batch");
        let keep = if b == 39 { keep_last } else { 0 };
        c.delete(&ids[keep..]).expect("delete");
    }
}

#[test]
fn spilled_objects_survive_sigkill_when_the_spill_tier_is_inside_the_directory() {
    const N: u32 = 30;
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = spill_endpoint(dir.path());
    let args = ["-e", endpoint.as_str()];
    // 30 objects of 10 KB through a 100 KB store: most are spilled.
    let store = start(dir.path(), 100_000, &args);
    let c = store.client();
    let mut infos = HashMap::new();
    for n in 0..N {
        let (d, m) = spill_contents(n);
        c.create_and_seal(oid(n), &d, &m).expect("create");
    }
    for n in 0..N {
        infos.insert(n, common::info(&c, oid(n)).expect("listed"));
    }
    let spilled = spilled_of(dir.path(), N);
    assert!(
        spilled.len() >= 15 && spilled.len() < N as usize,
        "{spilled:?}: the test needs objects both spilled and in memory"
    );
    drop(c);
    store.kill();

    let store = start(dir.path(), 100_000, &args);
    let all: HashSet<ObjectId> = (0..N).map(oid).collect();
    assert_eq!(listed(&store), all, "{}", store.log());
    assert_eq!(spilled_of(dir.path(), N), spilled, "the files are kept");
    // Recovered as they were: the same sizes, times and digests.
    let c = store.client();
    for n in 0..N {
        assert_eq!(common::info(&c, oid(n)).as_ref(), infos.get(&n), "{n}");
    }
    // Every one back (the spilled ones restored, evicting others to the spill tier).
    for n in (0..N).rev() {
        assert_spill_intact(&store, n);
    }
    let moved = spilled_of(dir.path(), N);
    assert_ne!(moved, spilled, "restores and evictions happened");
    drop(c);
    // Once more after those restores and evictions (evicted, sealed and evicted again in the
    // log), then after a SIGTERM: the directory is kept at exit.
    store.kill();
    let store = start(dir.path(), 100_000, &args);
    assert_eq!(listed(&store), all, "{}", store.log());
    for n in 0..N {
        assert_spill_intact(&store, n);
    }
    store.stop();
    assert!(!spilled_of(dir.path(), N).is_empty(), "kept at exit");
    let store = start(dir.path(), 100_000, &args);
    assert_eq!(listed(&store), all, "{}", store.log());
    for n in 0..N {
        assert_spill_intact(&store, n);
    }
    // Deleting spilled objects is remembered too.
    let c = store.client();
    let gone: Vec<ObjectId> = spilled_of(dir.path(), N).into_iter().map(oid).collect();
    assert!(!gone.is_empty());
    c.delete(&gone).expect("delete");
    drop(c);
    store.kill();
    let store = start(dir.path(), 100_000, &args);
    let expect: HashSet<ObjectId> = all
        .difference(&gone.into_iter().collect())
        .copied()
        .collect();
    assert_eq!(listed(&store), expect);
    store.stop();
}

#[test]
fn a_lost_or_corrupt_spill_file_costs_only_its_object_and_unrecorded_files_go() {
    const N: u32 = 30;
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = spill_endpoint(dir.path());
    let args = ["-e", endpoint.as_str()];
    let store = start(dir.path(), 100_000, &args);
    create_spill_objects(&store, N);
    store.kill();
    let mut spilled: Vec<u32> = spilled_of(dir.path(), N).into_iter().collect();
    spilled.sort();
    assert!(spilled.len() >= 3, "{spilled:?}");
    let file = |n: u32| spill_dir(dir.path()).join(oid(n).hex());
    // While the store is down: one file is deleted, one is corrupted, and one appears that no
    // record names (a copy of another object's file under a new id).
    let (lost, corrupt) = (spilled[0], spilled[1]);
    std::fs::remove_file(file(lost)).expect("remove");
    let len = std::fs::metadata(file(corrupt)).expect("stat").len();
    flip_byte(&file(corrupt), len - 100);
    std::fs::copy(file(spilled[2]), file(999)).expect("copy");

    let store = start(dir.path(), 100_000, &args);
    let mut expect: HashSet<ObjectId> = (0..N).map(oid).collect();
    expect.remove(&oid(lost));
    assert_eq!(listed(&store), expect, "{}", store.log());
    assert!(!file(999).exists(), "a file without a record is removed");
    // The corrupt file is found out on restore: reported missing, then gone for good.
    let c = store.client();
    let got = c.get(&[oid(corrupt)], 0).expect("get");
    assert!(got[0].is_none());
    expect.remove(&oid(corrupt));
    assert_eq!(listed(&store), expect);
    assert!(!file(corrupt).exists());
    for n in (0..N).filter(|n| *n != lost && *n != corrupt) {
        assert_spill_intact(&store, n);
    }
    drop(c);
    store.kill();
    let store = start(dir.path(), 100_000, &args);
    assert_eq!(listed(&store), expect, "{}", store.log());
    store.stop();
}

#[test]
fn a_spill_tier_outside_the_directory_is_not_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outside = tempfile::tempdir().expect("temp dir");
    let endpoint = format!("file://{}", outside.path().display());
    let args = ["-e", endpoint.as_str()];
    let store = start(dir.path(), 100_000, &args);
    let c = store.client();
    for n in 0..30 {
        let (d, m) = spill_contents(n);
        c.create_and_seal(oid(n), &d, &m).expect("create");
    }
    let files = |p: &Path| -> usize {
        std::fs::read_dir(p)
            .expect("read_dir")
            .flatten()
            .map(|sub| std::fs::read_dir(sub.path()).map_or(0, |d| d.count()))
            .sum()
    };
    assert!(files(outside.path()) > 10);
    assert_eq!(listed(&store).len(), 30, "evicted objects stay listed");
    drop(c);
    store.stop();
    assert_eq!(
        std::fs::read_dir(outside.path()).expect("read_dir").count(),
        0,
        "the per-process spill directory is removed at exit, as without --persist"
    );
    // Only the objects that were in memory survive.
    let store = start(dir.path(), 100_000, &args);
    let have = listed(&store);
    assert!(!have.is_empty() && have.len() < 30, "{}", have.len());
    for n in 0..30 {
        if have.contains(&oid(n)) {
            assert_spill_intact(&store, n);
        }
    }
    store.stop();
}

#[test]
fn a_store_killed_after_a_restore_is_recorded_but_before_its_file_goes_keeps_the_object() {
    const N: u32 = 30;
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = spill_endpoint(dir.path());
    let args = ["-e", endpoint.as_str()];
    let store = start(dir.path(), 100_000, &args);
    create_spill_objects(&store, N);
    let s = *spilled_of(dir.path(), N).iter().min().expect("spilled");
    let file = spill_dir(dir.path()).join(oid(s).hex());
    let aside = dir.path().join("aside");
    std::fs::copy(&file, &aside).expect("copy");
    // Restored: its new seal record written, then its file removed.
    assert_spill_intact(&store, s);
    assert!(!file.exists());
    store.kill();
    // As if the store had been killed between the two: the record and the file.
    std::fs::rename(&aside, &file).expect("rename");
    let store = start(dir.path(), 100_000, &args);
    assert_eq!(listed(&store), (0..N).map(oid).collect(), "{}", store.log());
    assert!(!file.exists(), "the file of a restored object is removed");
    for n in 0..N {
        assert_spill_intact(&store, n);
    }
    store.stop();
}

#[test]
fn a_restart_without_the_spill_tier_that_holds_evicted_objects_is_refused() {
    const N: u32 = 30;
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = spill_endpoint(dir.path());
    let args = ["-e", endpoint.as_str()];
    let store = start(dir.path(), 100_000, &args);
    create_spill_objects(&store, N);
    store.kill();
    let spilled = spilled_of(dir.path(), N);
    assert!(!spilled.is_empty());
    // Without -e, or with another spill directory inside DIR: refused, nothing dropped.
    let stderr = refused(dir.path(), 100_000, &[]);
    assert!(
        stderr.contains(&format!("start with -e {endpoint}")),
        "{stderr}"
    );
    let other = format!("file://{}", dir.path().join("other").display());
    refused(dir.path(), 100_000, &["-e", &other]);
    assert_eq!(spilled_of(dir.path(), N), spilled);
    let store = start(dir.path(), 100_000, &args);
    assert_all_spill_objects(&store, N);
    store.stop();
}

#[test]
fn compaction_keeps_the_evicted_objects() {
    const N: u32 = 30;
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = spill_endpoint(dir.path());
    let args = ["-e", endpoint.as_str()];
    let store = start(dir.path(), 100_000, &args);
    create_spill_objects(&store, N);
    let c = store.client();
    assert!(spilled_of(dir.path(), N).len() >= 15);
    // 80,000 records of objects created and deleted again: the log is compacted.
    churn(&c, 1000, 0);
    assert!(store.log().contains("compacted the log"), "{}", store.log());
    drop(c);
    store.kill();
    let store = start(dir.path(), 100_000, &args);
    assert_all_spill_objects(&store, N);
    store.stop();
}
