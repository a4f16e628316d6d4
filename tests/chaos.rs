//! A bounded chaos run: several real client processes (this test binary, run as children)
//! do random work on one store with the Rust client, and are SIGKILLed at random moments and
//! replaced. Afterwards, with every client gone, the store must be consistent: running, no
//! reference left, no unsealed object left (a dead creator's objects are aborted), every
//! object intact, its allocated bytes exactly those of the objects it lists, and zero after
//! deleting them all, with no file descriptor leaked.
//!
//! Knobs (environment): `PLASMA_CHAOS_SECS` (default 15), `PLASMA_CHAOS_CLIENTS` (default
//! 4), `PLASMA_CHAOS_SEED` (default 1). `scripts/soak.sh` runs this test long and wide.
//!
//! Every object's bytes are a function of its id and size, so any reader checks what it
//! reads; a worker that finds a corrupt object, or loses its connection, exits on its own
//! with a message, which fails the run.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::raw::{Daemon, Rng, kill9, spawn};
use plasma_store::client::{Client, Error, MutableBuffer, ObjectBuffer, Subscription};
use plasma_store::protocol::ObjectId;

/// `-m` of the store: small, so that eviction happens.
const MEM: u64 = 8 << 20;

/// Number of distinct object ids the workers fight over.
const IDS: u64 = 48;

/// Bytes 4.. of every id the workers use (notifications are checked against it).
const ID_TAG: [u8; 16] = *b"chaos-object-id!";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn chaos_id(n: u64) -> ObjectId {
    let mut id = [0u8; 20];
    id[..4].copy_from_slice(&(n as u32).to_le_bytes());
    id[4..].copy_from_slice(&ID_TAG);
    ObjectId(id)
}

/// The data of object `id` with `len` bytes of data.
fn content(id: ObjectId, len: usize) -> Vec<u8> {
    let n = u64::from(u32::from_le_bytes(id.0[..4].try_into().expect("4 bytes")));
    Rng::new((n << 32) ^ len as u64).bytes(len)
}

/// Its metadata: 0 to 8 bytes, also a function of id and size.
fn metadata(id: ObjectId, len: usize) -> Vec<u8> {
    let n = usize::from(id.0[0] % 9);
    (len as u64).to_le_bytes()[..n].to_vec()
}

/// A data size: mostly small, sometimes large enough to force eviction.
fn size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..70 => rng.below(16 << 10) as usize,
        70..95 => (16 << 10) + rng.below(240 << 10) as usize,
        _ => (256 << 10) + rng.below(1280 << 10) as usize,
    }
}

/// Ends the worker process: the parent reads why in its log.
fn die(code: i32, why: String) -> ! {
    eprintln!("WORKER FAILED: {why}");
    std::process::exit(code)
}

/// Accepts the answers a busy store legitimately gives; anything else ends the worker.
fn tolerate<T>(what: &str, r: Result<T, Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(
            Error::ObjectExists(_)
            | Error::ObjectNotFound(_)
            | Error::OutOfMemory(_)
            | Error::ObjectNotSealed(_)
            | Error::AlreadySealed(_)
            | Error::ObjectInUse(_)
            | Error::QuotaRefused { .. }
            | Error::AlreadySubscribed,
        ) => None,
        Err(e) => die(2, format!("{what}: {e}")),
    }
}

/// Whether an object holds exactly the bytes its id and size call for.
fn intact(b: &ObjectBuffer) -> bool {
    let (id, len) = (b.id(), b.data().len());
    b.data() == content(id, len) && b.metadata() == metadata(id, len)
}

fn check(b: &ObjectBuffer) {
    if !intact(b) {
        die(
            3,
            format!("object {} ({} bytes) is corrupt", b.id(), b.data().len()),
        );
    }
}

/// Child-process entry: random work forever (until killed).
#[test]
fn chaos_worker() {
    let Ok(seed) = std::env::var("PLASMA_CHAOS_WORKER") else {
        return;
    };
    let mut rng = Rng::new(seed.parse().expect("seed"));
    let sock = std::env::var("PLASMA_SOCK").expect("PLASMA_SOCK");
    let c = Client::connect_with_retries(&sock, 0, Duration::ZERO)
        .unwrap_or_else(|e| die(2, format!("connect: {e}")));
    if rng.chance(20) {
        tolerate(
            "set_options",
            c.set_options(&format!("worker-{seed}"), 1 << 20),
        );
    }
    let mut creating: Vec<MutableBuffer> = Vec::new();
    let mut held: Vec<ObjectBuffer> = Vec::new();
    let mut sub: Option<Subscription> = None;
    let id = |rng: &mut Rng| chaos_id(rng.below(IDS));
    let mut reported = Instant::now();
    for ops in 1u64.. {
        match rng.below(100) {
            0..20 => {
                if creating.len() < 4 {
                    let id = id(&mut rng);
                    let len = size(&mut rng);
                    let meta = metadata(id, len);
                    if let Some(mut buf) = tolerate("create", c.create(id, len as u64, &meta)) {
                        // Written in two steps, so that a kill can land in between.
                        let data = content(id, len);
                        let half = len / 2;
                        buf.data_mut()[..half].copy_from_slice(&data[..half]);
                        if rng.chance(50) {
                            buf.data_mut()[half..].copy_from_slice(&data[half..]);
                        }
                        creating.push(buf);
                    }
                }
            }
            20..32 => {
                if !creating.is_empty() {
                    let mut buf = creating.swap_remove(rng.below(creating.len() as u64) as usize);
                    let data = content(buf.id(), buf.len());
                    buf.data_mut().copy_from_slice(&data);
                    if let Some(b) = tolerate("seal", buf.seal())
                        && rng.chance(50)
                    {
                        held.push(b);
                    }
                }
            }
            32..35 => {
                if !creating.is_empty() {
                    let buf = creating.swap_remove(rng.below(creating.len() as u64) as usize);
                    tolerate("abort", buf.abort());
                }
            }
            35..55 => {
                let n = 1 + rng.below(4);
                let ids: Vec<ObjectId> = (0..n).map(|_| id(&mut rng)).collect();
                // Mostly at once; sometimes a wait, so that kills land in blocked gets.
                let timeout = match rng.below(100) {
                    0..85 => 0,
                    85..95 => 1 + rng.below(20) as i64,
                    _ => 100 + rng.below(200) as i64,
                };
                if let Some(got) = tolerate("get", c.get(&ids, timeout)) {
                    for b in got.into_iter().flatten() {
                        check(&b);
                        if rng.chance(30) {
                            held.push(b);
                        }
                    }
                }
            }
            55..65 => {
                if !held.is_empty() {
                    drop(held.swap_remove(rng.below(held.len() as u64) as usize));
                }
            }
            65..72 => {
                let n = 1 + rng.below(3);
                let ids: Vec<ObjectId> = (0..n).map(|_| id(&mut rng)).collect();
                tolerate("delete", c.delete(&ids));
            }
            72..82 => {
                let id = id(&mut rng);
                let len = size(&mut rng);
                let (data, meta) = (content(id, len), metadata(id, len));
                tolerate("create_and_seal", c.create_and_seal(id, &data, &meta));
            }
            82..85 => {
                let objects: Vec<(ObjectId, Vec<u8>, Vec<u8>)> = (0..1 + rng.below(4))
                    .map(|_| {
                        let id = id(&mut rng);
                        let len = rng.below(8 << 10) as usize;
                        (id, content(id, len), metadata(id, len))
                    })
                    .collect();
                let refs: Vec<(ObjectId, &[u8], &[u8])> = objects
                    .iter()
                    .map(|(i, d, m)| (*i, &d[..], &m[..]))
                    .collect();
                tolerate("create_and_seal_batch", c.create_and_seal_batch(&refs));
            }
            85..90 => match sub.as_mut() {
                None => sub = tolerate("subscribe", c.subscribe()),
                Some(s) => {
                    tolerate(
                        "notification timeout",
                        s.set_read_timeout(Some(Duration::from_millis(1))),
                    );
                    for _ in 0..rng.below(200) {
                        match s.next_notification() {
                            Ok(Some(info)) => {
                                if info.object_id.0[4..] != ID_TAG {
                                    die(3, format!("notification of a strange id: {info:?}"));
                                }
                            }
                            Ok(None) => {
                                sub = None;
                                break;
                            }
                            Err(Error::Io(e))
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                break;
                            }
                            Err(e) => die(2, format!("notification: {e}")),
                        }
                    }
                }
            },
            90..94 => {
                let id = id(&mut rng);
                tolerate("contains", c.contains(id));
            }
            94..96 => {
                tolerate("list", c.list());
            }
            96..98 => {
                let ids: Vec<ObjectId> = (0..3).map(|_| id(&mut rng)).collect();
                tolerate("refresh", c.refresh(&ids));
            }
            _ => {
                tolerate("evict", c.evict(rng.below(1 << 20)));
            }
        }
        while held.len() > 16 {
            drop(held.swap_remove(0));
        }
        if rng.chance(3) {
            std::thread::sleep(Duration::from_millis(rng.below(3)));
        }
        if ops % 10 == 0 || reported.elapsed() > Duration::from_millis(250) {
            eprintln!("ops {ops}");
            reported = Instant::now();
        }
    }
}

/// How long a worker may go without finishing a call (the longest get waits 300 ms).
const STUCK: Duration = Duration::from_secs(5);

/// One worker process and its log.
struct Worker {
    child: Child,
    log: std::path::PathBuf,
    started: Instant,
}

impl Worker {
    fn start(d: &Daemon, seed: u64) -> Worker {
        let log = d.dir().join(format!("worker-{seed}.log"));
        let child = spawn(
            "chaos_worker",
            &[
                ("PLASMA_CHAOS_WORKER", seed.to_string()),
                ("PLASMA_SOCK", d.socket.display().to_string()),
            ],
            &log,
            Stdio::null(),
        );
        Worker {
            child,
            log,
            started: Instant::now(),
        }
    }

    /// Fails the run if the worker ended on its own (it only ends by being killed).
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("a worker ended by itself ({status}):\n{log}");
        }
    }

    /// Operations it reported before it died.
    fn ops(&self) -> u64 {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("ops ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Fails the run if the worker has been stuck in one call for [`STUCK`]: the store
    /// stopped answering it. (A worker reports progress at least every 250 ms.)
    fn assert_progressing(&self) {
        let since = std::fs::metadata(&self.log)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if self.started.elapsed() > STUCK && since > STUCK {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            panic!("a worker has been stuck in one call for {since:?}: {tail:?}");
        }
    }
}

fn allocated(c: &Client) -> u64 {
    c.debug_string()
        .expect("debug string")
        .lines()
        .find_map(|l| l.strip_prefix("allocated bytes: "))
        .and_then(|v| v.parse().ok())
        .expect("allocated bytes line")
}

#[test]
fn clients_killed_at_random_leave_a_consistent_store() {
    if std::env::var_os("PLASMA_CHAOS_WORKER").is_some() {
        return;
    }
    let secs = env_or("PLASMA_CHAOS_SECS", 15);
    let n = env_or("PLASMA_CHAOS_CLIENTS", 4) as usize;
    let seed = env_or("PLASMA_CHAOS_SEED", 1);
    let mut d = Daemon::start(MEM, &[]);
    let baseline = d.settled_fds();
    let mut rng = Rng::new(seed);
    let mut next_seed = || {
        seed.wrapping_mul(1_000_003)
            .wrapping_add(rng.next_u64() % 1_000_000)
    };
    let mut workers: Vec<Worker> = (0..n).map(|_| Worker::start(&d, next_seed())).collect();
    let mut rng = Rng::new(seed ^ 0x6b696c6c);
    let (start, end) = (Instant::now(), Instant::now() + Duration::from_secs(secs));
    let (mut kills, mut ops) = (0u64, 0u64);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20 + rng.below(400)));
        if let Some(status) = d.exited() {
            panic!(
                "the store died after {:?}: {status}\n{}",
                start.elapsed(),
                d.log()
            );
        }
        for w in &mut workers {
            w.assert_running();
            w.assert_progressing();
        }
        let i = rng.below(n as u64) as usize;
        kill9(&mut workers[i].child);
        ops += workers[i].ops();
        kills += 1;
        workers[i] = Worker::start(&d, next_seed());
    }
    for w in &mut workers {
        w.assert_running();
        kill9(&mut w.child);
        ops += w.ops();
    }
    eprintln!(
        "chaos: {n} clients, {secs} s, {kills} kills (+{n} at the end), at least {ops} operations"
    );
    assert!(d.alive(), "the store died at the end\n{}", d.log());

    let c = Client::connect_with_retries(&d.socket, 0, Duration::ZERO).expect("connect");
    // The store sees the last deaths asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    let objects = loop {
        let objects = c.list().expect("list");
        if objects
            .iter()
            .all(|o| o.ref_count == 0 && o.digest.is_some())
        {
            break objects;
        }
        assert!(
            Instant::now() < deadline,
            "references or unsealed objects outlived their clients: {:?}",
            objects
                .iter()
                .filter(|o| o.ref_count != 0 || o.digest.is_none())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let listed: u64 = objects
        .iter()
        .map(|o| (o.data_size + o.metadata_size) as u64)
        .sum();
    assert_eq!(
        allocated(&c),
        listed,
        "allocated bytes against the {} objects listed",
        objects.len()
    );
    let ids: Vec<ObjectId> = objects.iter().map(|o| o.object_id).collect();
    let got = c.get(&ids, 0).expect("get");
    for (o, b) in objects.iter().zip(&got) {
        let b = b.as_ref().expect("a listed object is gettable");
        assert!(intact(b), "object {} is corrupt", b.id());
        assert_eq!(b.data().len() as i64, o.data_size);
    }
    drop(got);
    c.delete(&ids).expect("delete");
    assert!(c.list().expect("list").is_empty(), "everything was deleted");
    assert_eq!(
        allocated(&c),
        0,
        "nothing is allocated after deleting everything"
    );
    c.disconnect();
    d.assert_fds_return_to(baseline);
    eprintln!(
        "chaos: {} objects remained, {listed} bytes; all consistent",
        ids.len()
    );
}
