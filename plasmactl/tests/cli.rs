//! `plasmactl` against a real store daemon (this workspace's `plasma_store` binary, or
//! `PLASMA_STORE_BIN`): every subcommand, its output, and its exit code on each error.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use plasma_store::client::Client;
use plasma_store::protocol::ObjectId;

const PLASMACTL: &str = env!("CARGO_BIN_EXE_plasmactl");

/// The daemon: `PLASMA_STORE_BIN`, else the `plasma_store` built beside `plasmactl` (a
/// `cargo test` or `cargo build` at the workspace root builds both).
fn store_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PLASMA_STORE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(PLASMACTL).with_file_name("plasma_store");
    assert!(
        p.exists(),
        "{} is missing: run the tests from the workspace root (cargo test), or build the daemon first",
        p.display()
    );
    p
}

/// A daemon in its own temp dir, killed on drop.
struct Store {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Store {
    fn start(capacity: u64) -> Store {
        Store::start_with(capacity, &[])
    }

    /// With more daemon flags; its log goes to `store.log` in its directory.
    fn start_with(capacity: u64, extra: &[&str]) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("plasma.sock");
        let log = std::fs::File::create(dir.path().join("store.log")).unwrap();
        let child = Command::new(store_bin())
            .args(["-m", &capacity.to_string(), "-s"])
            .arg(&socket)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the store did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        Store {
            child,
            _dir: dir,
            socket,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }

    /// Runs `plasmactl -s SOCKET args...`.
    fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.socket, args)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `plasmactl -s SOCKET watch`; returns it and the lines of its stdout.
fn spawn_watch(
    socket: &Path,
    stderr: Stdio,
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(PLASMACTL)
        .arg("-s")
        .arg(socket)
        .arg("watch")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(PLASMACTL)
        .arg("-s")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing the output if it differs.
fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// Asserts a one-line error message containing `text`.
fn assert_error(o: &Output, code: i32, text: &str) {
    assert_code(o, code);
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(
        err.starts_with("plasmactl: ") && err.contains(text),
        "{err:?}"
    );
}

fn oid(n: u8) -> ObjectId {
    ObjectId([n; 20])
}

fn put_object(c: &Client, id: ObjectId, data: &[u8], meta: &[u8]) {
    let mut b = c.create(id, data.len() as u64, meta).unwrap();
    b.data_mut().copy_from_slice(data);
    drop(b.seal().unwrap());
}

#[test]
fn status_reports_capacity_use_and_objects_by_state() {
    let store = Store::start(1_000_000);
    let c = store.client();
    put_object(&c, oid(1), &[1; 1000], b"m");
    let unsealed = c.create(oid(2), 500, b"").unwrap();
    let o = store.ctl(&["status"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("capacity:   1000000 bytes"), "{out}");
    assert!(out.contains("sealed:   1 (1001 bytes)"), "{out}");
    assert!(out.contains("created:  1 (500 bytes"), "{out}");
    // The unsealed object is referenced by its creator.
    assert!(out.contains("in use:   1 (500 bytes"), "{out}");
    let used: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("used:       "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(used >= 1501, "{out}");
    // `c` and this command: the count comes from the kernel's socket table.
    let other = store.client();
    let o = store.ctl(&["status"]);
    assert!(
        stdout(&o).contains("clients:    3 (this one included)"),
        "{}",
        stdout(&o)
    );
    drop(other);
    drop(unsealed);
}

#[test]
fn status_with_metrics_shows_the_clients() {
    let store = Store::start_with(1_000_000, &["--metrics-listen", "0"]);
    let log = store._dir.path().join("store.log");
    // The log names the port the store picked (just after its socket starts listening).
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(rest) = text.split("metrics at http://127.0.0.1:").nth(1)
            && let Some(port) = rest.split('/').next()
        {
            break port.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let _other = store.client();
    let o = store.ctl(&["status", "--metrics", &port]);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("clients:    2 (this one included)"), "{out}");
    assert!(out.contains("waiting gets: 0"), "{out}");

    // A metrics endpoint that is not there is an error, not a guess.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    assert_error(&store.ctl(&["status", "--metrics", &dead]), 1, "metrics at");
}

#[test]
fn list_as_a_table_and_as_json() {
    let store = Store::start(1_000_000);
    let c = store.client();
    put_object(&c, oid(1), &[1; 100], b"meta");
    let _held = c.get(&[oid(1)], 0).unwrap();
    let _unsealed = c.create(oid(2), 7, b"").unwrap();

    let o = store.ctl(&["list"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID"), "{out}");
    let row1 = lines.iter().find(|l| l.starts_with(&oid(1).hex())).unwrap();
    let fields: Vec<&str> = row1.split_whitespace().collect();
    assert_eq!(fields[1..4], ["100", "4", "1"], "{row1}");
    assert_eq!(fields[5], "sealed");
    let row2 = lines.iter().find(|l| l.starts_with(&oid(2).hex())).unwrap();
    assert!(row2.ends_with("created"), "{row2}");

    let o = store.ctl(&["list", "--json"]);
    assert_code(&o, 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let r1 = rows.iter().find(|r| r["id"] == oid(1).hex()).unwrap();
    assert_eq!(r1["data_size"], 100);
    assert_eq!(r1["metadata_size"], 4);
    assert_eq!(r1["ref_count"], 1);
    assert_eq!(r1["state"], "sealed");
    assert!(r1["digest"].is_string());
    let r2 = rows.iter().find(|r| r["id"] == oid(2).hex()).unwrap();
    assert_eq!(r2["state"], "created");
    assert!(r2["digest"].is_null());
}

#[test]
fn put_then_get_round_trips_files_and_metadata() {
    let store = Store::start(50_000_000);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    // Large enough for several chunks (and a progress bar, were stderr a terminal).
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();

    let o = store.ctl(&["put", input.to_str().unwrap(), "--metadata", "hello"]);
    assert_code(&o, 0);
    assert_eq!(
        stderr(&o),
        "",
        "no progress bar when stderr is not a terminal"
    );
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 40);

    let c = store.client();
    let list = c.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].object_id.hex(), id);
    assert_eq!(list[0].ref_count, 0, "plasmactl released its references");
    let got = c.get(&[list[0].object_id], 0).unwrap();
    let got = got[0].as_ref().unwrap();
    assert!(got.data() == &data[..]);
    assert_eq!(got.metadata(), b"hello");

    let output = dir.path().join("out");
    let o = store.ctl(&["get", &id, "-o", output.to_str().unwrap()]);
    assert_code(&o, 0);
    assert!(std::fs::read(&output).unwrap() == data);

    let o = store.ctl(&["get", &id]);
    assert_code(&o, 0);
    assert!(o.stdout == data, "get without -o writes to stdout");

    // An explicit id.
    std::fs::write(&input, b"abc").unwrap();
    let chosen = "ab".repeat(20);
    let o = store.ctl(&["put", input.to_str().unwrap(), "--id", &chosen]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o).trim(), chosen);
    let o = store.ctl(&["get", &chosen]);
    assert_eq!(o.stdout, b"abc");
}

#[test]
fn put_errors_exists_full_unreadable_and_bad_id() {
    let store = Store::start(100_000);
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, b"x").unwrap();
    let id = "01".repeat(20);
    assert_code(
        &store.ctl(&["put", small.to_str().unwrap(), "--id", &id]),
        0,
    );
    let o = store.ctl(&["put", small.to_str().unwrap(), "--id", &id]);
    assert_error(&o, 6, "already exists");

    let big = dir.path().join("big");
    std::fs::write(&big, vec![0u8; 200_000]).unwrap();
    let o = store.ctl(&["put", big.to_str().unwrap()]);
    assert_error(&o, 4, "the store is full");
    assert_eq!(
        store.client().list().unwrap().len(),
        1,
        "nothing left behind"
    );

    let o = store.ctl(&["put", dir.path().join("absent").to_str().unwrap()]);
    assert_error(&o, 1, "cannot read");

    let o = store.ctl(&["put", small.to_str().unwrap(), "--id", "xyz"]);
    assert_error(&o, 2, "bad object id");
}

#[test]
fn get_of_a_missing_or_unsealed_object_is_not_found() {
    let store = Store::start(100_000);
    let o = store.ctl(&["get", &oid(9).hex()]);
    assert_error(&o, 3, "does not exist");
    assert!(o.stdout.is_empty());
    let c = store.client();
    let _b = c.create(oid(3), 10, b"").unwrap();
    let o = store.ctl(&["get", &oid(3).hex()]);
    assert_error(&o, 3, "not sealed yet");
    let o = store.ctl(&["get", "nothex"]);
    assert_error(&o, 2, "bad object id");
}

#[test]
fn delete_removes_objects_and_reports_unknown_ids() {
    let store = Store::start(100_000);
    let c = store.client();
    put_object(&c, oid(1), b"a", b"");
    put_object(&c, oid(2), b"b", b"");
    put_object(&c, oid(3), b"c", b"");
    let o = store.ctl(&["delete", &oid(1).hex(), &oid(2).hex()]);
    assert_code(&o, 0);
    let left: Vec<ObjectId> = c.list().unwrap().iter().map(|i| i.object_id).collect();
    assert_eq!(left, [oid(3)]);

    let o = store.ctl(&["delete", &oid(3).hex(), &oid(7).hex()]);
    assert_error(&o, 3, &oid(7).hex());
    assert!(
        c.list().unwrap().is_empty(),
        "the known id is deleted anyway"
    );

    assert_code(&store.ctl(&["delete"]), 2);
}

#[test]
fn evict_frees_unused_objects_and_prints_the_bytes() {
    let store = Store::start(100_000);
    let c = store.client();
    put_object(&c, oid(1), &[0; 1000], b"");
    put_object(&c, oid(2), &[0; 1000], b"");
    let held = c.get(&[oid(2)], 0).unwrap();
    let o = store.ctl(&["evict", "1KiB"]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o).trim(), "1000", "only the unused object can go");
    let left: Vec<ObjectId> = c.list().unwrap().iter().map(|i| i.object_id).collect();
    assert_eq!(left, [oid(2)]);
    drop(held);
    assert_error(&store.ctl(&["evict", "lots"]), 2, "bad size");
}

#[test]
fn watch_prints_seals_and_deletions_as_they_happen() {
    let store = Store::start(100_000);
    let c = store.client();
    put_object(&c, oid(1), &[0; 10], b"mm");
    let (mut child, mut lines) = spawn_watch(&store.socket, Stdio::null());
    let mut next = || lines.next().unwrap().unwrap();
    // Objects sealed before the subscription come first.
    assert_eq!(
        next(),
        format!("sealed {} data_size=10 metadata_size=2", oid(1))
    );
    put_object(&c, oid(2), &[0; 5], b"");
    assert_eq!(
        next(),
        format!("sealed {} data_size=5 metadata_size=0", oid(2))
    );
    c.delete(&[oid(1)]).unwrap();
    assert_eq!(next(), format!("deleted {}", oid(1)));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn watch_ends_with_an_error_when_the_store_stops() {
    let mut store = Store::start(100_000);
    put_object(&store.client(), oid(1), b"x", b"");
    let (child, mut lines) = spawn_watch(&store.socket, Stdio::piped());
    // The first line (the object sealed before) proves the watcher is subscribed.
    assert!(lines.next().unwrap().unwrap().starts_with("sealed "));
    store.child.kill().unwrap();
    store.child.wait().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "plasmactl: the store closed the connection");
}

#[test]
fn every_subcommand_says_when_no_store_is_listening() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let id = oid(1).hex();
    let cases: [&[&str]; 7] = [
        &["status"],
        &["list"],
        &["get", &id],
        &["put", file.to_str().unwrap()],
        &["delete", &id],
        &["evict", "1"],
        &["watch"],
    ];
    for args in cases {
        let o = ctl(&socket, args);
        assert_error(&o, 5, "no store is listening on");
    }
}

#[test]
fn usage_errors_exit_with_2_and_help_lists_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s");
    assert_code(&ctl(&socket, &["frobnicate"]), 2);
    assert_code(&ctl(&socket, &[]), 2);
    let o = ctl(&socket, &["--help"]);
    assert_code(&o, 0);
    let help = stdout(&o);
    assert!(help.contains("3 object not found"), "{help}");
    for sub in ["status", "list", "get", "put", "delete", "evict", "watch"] {
        assert!(help.contains(sub), "{help}");
    }
}
