//! Helpers for the integration tests: a store daemon per test, in its own temp dir.
//!
//! The daemon is the program named by `PLASMA_STORE_BIN`, else this crate's `plasma_store`
//! binary. Pointing `PLASMA_STORE_BIN` at the original `plasma-store-server` runs the same
//! tests against the reference, which proves the client speaks the real protocol.

#![allow(dead_code)]

pub mod raw;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use plasma_store::client::{Client, ObjectInfo, Subscription};
use plasma_store::protocol::ObjectId;

/// How long a store gets to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`eventually`] and [`next_notification`] wait.
pub const WAIT: Duration = Duration::from_secs(5);

/// The daemon to test against.
pub fn store_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PLASMA_STORE_BIN") {
        return PathBuf::from(p);
    }
    match option_env!("CARGO_BIN_EXE_plasma_store") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "no store daemon to test against: set PLASMA_STORE_BIN to a plasma store executable \
             (e.g. pyarrow 11's plasma-store-server), or build this crate's plasma_store binary"
        ),
    }
}

/// A running store daemon, killed on drop if a test did not stop it.
pub struct Store {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The socket the store listens on.
    pub socket: PathBuf,
    /// Its `-m`.
    pub capacity: u64,
}

impl Store {
    /// Starts a store with `-m capacity` on a socket in a fresh temp dir. Its stderr goes to
    /// a log file, printed if the test fails.
    pub fn start(capacity: u64) -> Store {
        Store::start_with(&store_bin(), capacity, &[])
    }

    /// Starts the daemon `bin` with `-m capacity`, a fresh socket and `extra` arguments.
    pub fn start_with(bin: &Path, capacity: u64, extra: &[&str]) -> Store {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("plasma.sock");
        let log = File::create(dir.path().join("store.log")).expect("log file");
        let child = Command::new(bin)
            .arg("-m")
            .arg(capacity.to_string())
            .arg("-s")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the store {}: {e}", bin.display()));
        Store {
            child: Some(child),
            dir,
            socket,
            capacity,
        }
    }

    /// A new client of this store (connect retries until the daemon listens).
    pub fn client(&self) -> Client {
        Client::connect_with_retries(&self.socket, 500, Duration::from_millis(10))
            .unwrap_or_else(|e| panic!("{e}\nstore log:\n{}", self.log()))
    }

    /// What the store wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("store.log")).unwrap_or_default()
    }

    /// Kills the store with SIGKILL, as a crash would, and waits until it is gone. Returns
    /// what it logged.
    pub fn kill(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the store died during the test: {status}\n{}", self.log());
            }
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
        }
        self.log()
    }

    /// Checks that the store is still running (no request of the test crashed it), then
    /// stops it with SIGTERM and checks that it exits cleanly.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the store died during the test: {status}\n{}", self.log());
        }
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let (tx, rx) = mpsc::channel::<ExitStatus>();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().expect("wait"));
        });
        match rx.recv_timeout(STOP_TIMEOUT) {
            Ok(status) => assert!(status.success(), "store exit: {status}\n{}", self.log()),
            Err(_) => {
                let _ = kill(pid, Signal::SIGKILL);
                panic!("the store did not exit after SIGTERM\n{}", self.log());
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("store log:\n{}", self.log());
            }
        }
    }
}

/// The C++ reference daemon for differential tests: `PLASMA_REFERENCE_BIN`, else the one
/// kept by `scripts/setup-venv.sh` in the project's venv. `None` (with a note on stderr) when
/// neither exists.
pub fn reference_bin() -> Option<PathBuf> {
    let p = std::env::var_os("PLASMA_REFERENCE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".venv/lib/python3.11/site-packages/pyarrow/plasma-store-server.reference")
        });
    if p.exists() {
        Some(p)
    } else if std::env::var_os("PLASMA_REQUIRE_REFERENCE").is_some() {
        panic!(
            "no reference daemon at {} and PLASMA_REQUIRE_REFERENCE is set",
            p.display()
        );
    } else {
        eprintln!(
            "skipped: no reference daemon at {} (run scripts/setup-venv.sh)",
            p.display()
        );
        None
    }
}

/// A recognisable object id.
pub fn oid(n: u32) -> ObjectId {
    let mut id = [0x5a; 20];
    id[..4].copy_from_slice(&n.to_be_bytes());
    ObjectId(id)
}

/// `len` bytes of a pattern that depends on `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The store's description of one object, if it has it.
pub fn info(client: &Client, id: ObjectId) -> Option<ObjectInfo> {
    client
        .list()
        .expect("list")
        .into_iter()
        .find(|i| i.object_id == id)
}

/// Polls `cond` (each call a round trip to a store) until it holds, for at most [`WAIT`].
/// For effects of one connection seen from another, whose order the store does not promise.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// The next notification, failing the test after [`WAIT`].
pub fn next_notification(sub: &mut Subscription) -> ObjectInfo {
    sub.set_read_timeout(Some(WAIT)).expect("timeout");
    match sub.next_notification() {
        Ok(Some(info)) => info,
        other => panic!("expected a notification, got {other:?}"),
    }
}

/// A Python with pyarrow 11's `pyarrow.plasma`, for cross-checks: `PLASMA_PYTHON`, else the
/// project's venv (`scripts/setup-venv.sh`) if present. Missing, it fails the test when
/// PLASMA_REQUIRE_REFERENCE is set (the test script sets it), else the caller skips.
pub fn pyarrow_python() -> Option<PathBuf> {
    let p = std::env::var_os("PLASMA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-W", "ignore", "-c", "import pyarrow.plasma"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("PLASMA_REQUIRE_REFERENCE").is_some() {
        panic!(
            "no Python with pyarrow 11 at {} and PLASMA_REQUIRE_REFERENCE is set",
            p.display()
        );
    }
    ok.then_some(p)
}
