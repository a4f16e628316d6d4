//! Behaviour only our daemon has: the command line, clean shutdown, and the lifecycle edges
//! where the reference crashes, hangs or leaks (clients killed mid-create and mid-get, half
//! frames, pipelined and duplicate gets, subscribers that do not read). These talk to the
//! store over raw sockets with the crate's protocol module, so they see exactly what is on
//! the wire.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::raw::{Daemon, Raw};
use plasma_store::fdpass;
use plasma_store::protocol::{
    Encoder, HEADER_LEN, MessageType, ObjectId, PlasmaError, Reply, Request, decode_notification,
};

const BIN: &str = env!("CARGO_BIN_EXE_plasma_store");

fn oid(n: u8) -> ObjectId {
    ObjectId([n; 20])
}

/// The store still runs and answers a fresh client quickly.
fn assert_serving(d: &mut Daemon) {
    assert!(d.alive(), "the store died");
    let start = Instant::now();
    let mut c = d.raw();
    assert!(matches!(
        c.call(&Request::Connect),
        Reply::Connect {
            memory_capacity: 10_000_000
        }
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
}

// ---- command line and process ----

#[test]
fn help_version_and_usage_errors() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-m BYTES"));
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("plasma_store "));
    for bad in [
        &["-m", "0"][..],
        &["-m", "-1"],
        &["-m", "1e9"],
        &["--bogus"],
        &["-m"],
    ] {
        let out = Command::new(BIN).args(bad).output().expect("run");
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("plasma_store: "), "{bad:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{bad:?}: one line: {err}");
    }
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_remove_the_socket() {
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let mut d = Daemon::start(10_000_000, &[]);
        let mut c = d.raw();
        c.put(oid(1), b"x");
        d.signal(sig);
        let status = d.wait_exit(Duration::from_secs(5)).expect("stopped");
        assert!(status.success(), "{sig:?}: {status:?}");
        assert!(!d.socket.exists(), "{sig:?} left the socket behind");
    }
}

#[test]
fn refuses_a_live_socket_and_replaces_a_stale_one() {
    let mut d = Daemon::start(10_000_000, &[]);
    let out = Command::new(BIN)
        .args(["-m", "1000", "-s"])
        .arg(&d.socket)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another store is serving"));
    assert_serving(&mut d);

    // A socket file nobody serves (as a killed store leaves behind) is replaced.
    let stale = d.dir().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let mut child = Command::new(BIN)
        .args(["-m", "1000", "-s"])
        .arg(&stale)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&stale).is_err() {
        assert!(Instant::now() < deadline && child.try_wait().expect("wait").is_none());
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
}

#[test]
fn directory_segment_leaves_nothing_behind_and_sizes_take_units() {
    let shm = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(
        10_000_000,
        &["-d", shm.path().to_str().expect("utf-8"), "-m", "4MiB"],
    );
    let mut c = d.raw();
    let Reply::Connect { memory_capacity } = c.call(&Request::Connect) else {
        panic!()
    };
    assert_eq!(memory_capacity, 4 << 20);
    c.create(oid(1), 1000);
    assert_eq!(std::fs::read_dir(shm.path()).expect("read_dir").count(), 0);
    assert!(d.stop().success());
}

#[test]
fn the_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start(10_000_000, &[]);
    let mode = std::fs::metadata(&d.socket)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}

// ---- lifecycle edges ----

/// Runs as a child process when PLASMA_CHILD is set: connects, does what it is told, says
/// "ready" and waits to be killed.
#[test]
fn child_client_entry() {
    let Ok(mode) = std::env::var("PLASMA_CHILD") else {
        return;
    };
    let sock = std::env::var("PLASMA_SOCK").expect("PLASMA_SOCK");
    let mut c = Raw::connect(Path::new(&sock)).expect("connect");
    match mode.as_str() {
        "create" => {
            c.create(oid(1), 4096);
        }
        "get" => c
            .send(&Request::Get {
                object_ids: vec![oid(2), oid(3)],
                timeout_ms: -1,
            })
            .expect("send"),
        _ => panic!("unknown mode {mode}"),
    }
    println!("ready");
    std::thread::sleep(Duration::from_secs(60));
}

fn spawn_child(d: &Daemon, mode: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "child_client_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PLASMA_CHILD", mode)
        .env("PLASMA_SOCK", &d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let Some(stdout) = child.stdout.take() else {
        kill9(child);
        panic!("no stdout from the child client");
    };
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.trim_end().ends_with("ready"));
    if !ready {
        kill9(child);
        panic!("the child client did not get ready");
    }
    child
}

fn kill9(mut child: Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
}

#[test]
fn a_client_killed_mid_create_leaves_nothing() {
    let mut d = Daemon::start(10_000_000, &[]);
    let mut c = d.raw();
    let child = spawn_child(&d, "create");
    assert_eq!(c.list().len(), 1);
    assert_eq!(c.allocated(), 4096);
    kill9(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.list().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the unsealed object outlived its creator"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.allocated(), 0);
    // The id is free again.
    assert!(matches!(
        c.create(oid(1), 10),
        Reply::Create {
            error: PlasmaError::Ok,
            ..
        }
    ));
    assert_serving(&mut d);
}

#[test]
fn a_client_killed_while_blocked_in_get_leaves_no_reference_or_waiter() {
    let mut d = Daemon::start(10_000_000, &[]);
    let mut c = d.raw();
    let child = spawn_child(&d, "get");
    c.put(oid(2), b"two");
    kill9(child);
    // The dead client's reference to 2 (taken when it was sealed) is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.list().iter().any(|o| o.ref_count != 0) {
        assert!(
            Instant::now() < deadline,
            "a dead client still holds a reference"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Sealing the other awaited id later goes nowhere and breaks nothing.
    c.put(oid(3), b"three");
    assert!(c.list().iter().all(|o| o.ref_count == 0));
    assert_serving(&mut d);
}

#[test]
fn pipelined_and_duplicate_gets_then_disconnect() {
    // The reference aborts on a disconnect with two pending gets, and on a seal awaited by a
    // get that lists the id twice.
    let mut d = Daemon::start(10_000_000, &[]);
    let mut waiter = d.raw();
    waiter
        .send(&Request::Get {
            object_ids: vec![oid(1), oid(1)],
            timeout_ms: -1,
        })
        .expect("send");
    waiter
        .send(&Request::Get {
            object_ids: vec![oid(2)],
            timeout_ms: -1,
        })
        .expect("send");
    waiter
        .send(&Request::Get {
            object_ids: vec![oid(3)],
            timeout_ms: 100_000,
        })
        .expect("send");
    let mut c = d.raw();
    c.put(oid(1), b"one");
    let Reply::Get { objects, .. } = waiter.reply() else {
        panic!()
    };
    assert_eq!(objects.len(), 2);
    assert!(objects.iter().all(|o| o.is_some_and(|o| o.data_size == 3)));
    assert_eq!(
        c.list()[0].ref_count,
        1,
        "one reference for a duplicated id"
    );
    drop(waiter);
    c.put(oid(2), b"two");
    assert_serving(&mut d);
    // The store may serve the put before it sees the waiter's socket close (then the waiter's
    // get takes a reference to oid(2) first); either way, every reference goes with it.
    common::eventually("the waiter's references to go", || {
        c.list().iter().all(|o| o.ref_count == 0)
    });
}

#[test]
fn a_half_sent_frame_does_not_stall_other_clients() {
    let mut d = Daemon::start(10_000_000, &[]);
    let mut slow = d.raw();
    let mut frame = Vec::new();
    Encoder::new().request(&Request::List, &mut frame);
    slow.send_raw(&frame[..10]).expect("send");
    let start = Instant::now();
    assert_serving(&mut d);
    assert!(start.elapsed() < Duration::from_secs(1));
    // The slow client's frame completes later and is answered.
    slow.send_raw(&frame[10..]).expect("send");
    assert!(matches!(slow.reply(), Reply::List { .. }));
}

#[test]
fn a_bad_frame_costs_only_its_connection() {
    let mut d = Daemon::start(10_000_000, &[]);
    let mut good = d.raw();
    good.put(oid(1), b"kept");
    let mut bad = d.raw();
    let mut h = [0u8; HEADER_LEN];
    h[0] = 1; // version 1
    bad.send_raw(&h).expect("send");
    let mut buf = [0u8; 8];
    assert_eq!(bad.sock.read(&mut buf).expect("read"), 0, "closed");
    assert_serving(&mut d);
    assert_eq!(good.list()[0].data_size, 4);
}

#[test]
fn subscribe_pushes_sealed_objects_then_seals_and_deletions() {
    let mut d = Daemon::start(10_000_000, &[]);
    let mut c = d.raw();
    c.put(oid(1), b"one");
    let (mine, theirs) = UnixStream::pair().expect("pair");
    c.send(&Request::Subscribe).expect("send");
    fdpass::send_fd(&c.sock, theirs.as_fd()).expect("send fd");
    drop(theirs);
    c.put(oid(2), b"two!");
    assert_eq!(
        c.call(&Request::Delete {
            object_ids: vec![oid(1)]
        }),
        Reply::Delete {
            object_ids: vec![oid(1)],
            errors: vec![PlasmaError::Ok],
        }
    );
    mine.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let next = || {
        let mut len = [0u8; 8];
        (&mine).read_exact(&mut len).expect("length");
        let mut body = vec![0u8; u64::from_ne_bytes(len) as usize];
        (&mine).read_exact(&mut body).expect("body");
        decode_notification(&body).expect("notification")
    };
    let n = next();
    assert_eq!(
        (n[0].object_id, n[0].data_size, n[0].is_deletion),
        (oid(1), 3, false)
    );
    let n = next();
    assert_eq!((n[0].object_id, n[0].data_size), (oid(2), 4));
    let n = next();
    assert_eq!((n[0].object_id, n[0].is_deletion), (oid(1), true));
    // A second subscribe on the same connection does not break its framing.
    let (_m2, t2) = UnixStream::pair().expect("pair");
    c.send(&Request::Subscribe).expect("send");
    fdpass::send_fd(&c.sock, t2.as_fd()).expect("send fd");
    assert_eq!(c.list().len(), 1);
    assert_serving(&mut d);
}

#[test]
fn a_subscriber_that_never_reads_is_dropped_without_blocking_the_store() {
    let mut d = Daemon::start(10_000_000, &["--max-notification-bytes", "64KiB"]);
    let mut sub = d.raw();
    let (mine, theirs) = UnixStream::pair().expect("pair");
    sub.send(&Request::Subscribe).expect("send");
    fdpass::send_fd(&sub.sock, theirs.as_fd()).expect("send fd");
    drop(theirs);
    let mut c = d.raw();
    // Far more notifications than the socket buffer and the queue hold.
    let start = Instant::now();
    for i in 0..4000u32 {
        let mut id = [0u8; 20];
        id[..4].copy_from_slice(&i.to_le_bytes());
        c.put(ObjectId(id), b"");
        assert!(matches!(
            c.call(&Request::Delete {
                object_ids: vec![ObjectId(id)]
            }),
            Reply::Delete { .. }
        ));
    }
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_serving(&mut d);
    // The subscription was dropped: its socket reaches end of stream after what was sent.
    mine.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut total = 0;
    let mut buf = [0u8; 65536];
    loop {
        match (&mine).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => panic!("the notification socket was not closed: {e} after {total} bytes"),
        }
    }
    assert!(
        total < 4000 * 2 * 100,
        "everything arrived ({total} bytes): nothing was dropped"
    );
    // The subscriber's main connection still works.
    assert!(matches!(sub.call(&Request::Connect), Reply::Connect { .. }));
}

#[test]
fn a_client_that_never_reads_replies_does_not_block_others() {
    let mut d = Daemon::start(10_000_000, &["--max-queued-bytes", "1MiB"]);
    let mut c = d.raw();
    for i in 0..50 {
        c.put(oid(i), &[0u8; 1000]);
    }
    let mut flood = d.raw();
    let mut frame = Vec::new();
    Encoder::new().request(&Request::List, &mut frame);
    // Each List reply is several KiB: 2000 of them overflow every buffer on the way.
    flood.sock.set_nonblocking(true).expect("nonblocking");
    let mut sent = 0;
    for _ in 0..2000 {
        match flood.sock.write(&frame) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent > 0);
    assert_serving(&mut d);
    assert_eq!(c.list().len(), 50);
}

#[test]
fn unknown_and_reply_types_close_the_connection() {
    let mut d = Daemon::start(10_000_000, &[]);
    for t in [2i64, 24 + 1, 99, -1, MessageType::GetReply as i64] {
        let mut c = d.raw();
        let mut h = [0u8; HEADER_LEN];
        h[8..16].copy_from_slice(&t.to_le_bytes());
        c.send_raw(&h).expect("send");
        let mut buf = [0u8; 8];
        assert_eq!(c.sock.read(&mut buf).expect("read"), 0, "type {t}");
    }
    assert_serving(&mut d);
}

#[test]
fn requests_sent_just_before_closing_are_still_handled() {
    // Regression: the end of stream was seen in the same read as the requests before it,
    // and the connection was closed without handling them.
    let mut d = Daemon::start(10_000_000, &[]);
    for i in 0..20 {
        let mut c = d.raw();
        let mut bytes = Vec::new();
        let mut enc = Encoder::new();
        enc.request(&Request::Connect, &mut bytes);
        enc.request(
            &Request::CreateAndSeal {
                object_id: oid(i),
                evict_if_full: true,
                data: vec![i; 10],
                metadata: vec![],
                digest: [0; 8],
            },
            &mut bytes,
        );
        c.send_raw(&bytes).expect("send");
        drop(c);
    }
    let mut c = d.raw();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.list().len() < 20 {
        assert!(
            Instant::now() < deadline,
            "lost: {} of 20 stored",
            c.list().len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_serving(&mut d);
}

#[test]
fn socket_mode_widens_the_socket() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start(10_000_000, &["--socket-mode", "660"]);
    let mode = std::fs::metadata(&d.socket)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "mode {mode:o}");
}

#[test]
fn only_allowed_uids_are_served() {
    let me = nix::unistd::getuid().as_raw();
    let mut ok = Daemon::start(10_000_000, &["--allow-uid", &format!("4242,{me}")]);
    assert_serving(&mut ok);

    let mut refused = Daemon::start(10_000_000, &["--allow-uid", "4242"]);
    let mut c = UnixStream::connect(&refused.socket).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut frame = Vec::new();
    Encoder::new().request(&Request::Connect, &mut frame);
    let _ = c.write_all(&frame);
    let mut buf = [0u8; 8];
    assert!(
        matches!(c.read(&mut buf), Ok(0) | Err(_)),
        "a refused peer was answered"
    );
    assert!(refused.alive());
}

#[test]
fn a_hang_up_right_behind_a_request_is_noticed() {
    // Regression: the last request and the end of stream arrived in one readiness edge; a read
    // shortcut handled the request and missed the end of stream, so the connection (and its
    // unsealed object) lived on. The last request is a get that waits: no reply, so no failed
    // write reveals the hang-up either.
    let mut d = Daemon::start(10_000_000, &[]);
    for i in 0..50 {
        let mut c = d.raw();
        c.create(oid(i), 100);
        let mut bytes = Vec::new();
        Encoder::new().request(
            &Request::Get {
                object_ids: vec![oid(200)],
                timeout_ms: -1,
            },
            &mut bytes,
        );
        c.send_raw(&bytes).expect("send");
        drop(c);
    }
    let mut c = d.raw();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.list().is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} unsealed objects outlived their closed connections",
            c.list().len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.allocated(), 0);
    assert_serving(&mut d);
}

/// CPU time (user + system, in clock ticks) a process has used, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect(")") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn running_out_of_file_descriptors_does_not_spin_and_recovers() {
    // accept() failing with EMFILE leaves the connection queued and the listener readable: a
    // loop that just retries burns a core. The store backs off instead.
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("plasma.sock");
    /// Kills the store even when an assertion fails first.
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut guard = KillOnDrop(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 40 && exec {BIN} -m 10000000 -s {}",
                sock.display()
            ))
            .env("RUST_LOG", "error")
            .spawn()
            .expect("spawn"),
    );
    let child = &mut guard.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "the store did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Far more connections than the store has descriptors for (the kernel queues them).
    let mut clients: Vec<UnixStream> = (0..80)
        .map(|_| UnixStream::connect(&sock).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(child.id()) - before;
    assert!(
        used < 30,
        "the store spun: {used} ticks of CPU in one idle second"
    );
    assert!(child.try_wait().expect("wait").is_none(), "the store died");
    // When descriptors free up, the queued and new clients are served.
    clients.truncate(5);
    drop(clients);
    let mut c = Raw::connect(&sock).expect("connect");
    assert!(matches!(c.call(&Request::Connect), Reply::Connect { .. }));
}

/// The segment fd, from a first create on a fresh connection.
fn segment_fd(d: &Daemon) -> std::os::fd::OwnedFd {
    let mut c = d.raw();
    c.send(&Request::Create {
        object_id: oid(200),
        evict_if_full: true,
        data_size: 1,
        metadata_size: 0,
        device_num: 0,
    })
    .expect("send");
    let (_, mut fds) = c.recv().expect("create reply");
    fds.pop().expect("the segment fd")
}

/// Bytes of the segment file that have memory behind them (tmpfs counts fallocated pages in
/// the file's blocks; SEEK_HOLE does not reliably report them).
fn resident(fd: &std::os::fd::OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd).expect("fstat").st_blocks as u64 * 512
}

#[test]
fn shared_memory_is_made_resident_in_the_background_unless_told_not_to() {
    const CAPACITY: u64 = 64 << 20;
    let d = Daemon::start(CAPACITY, &[]);
    let fd = segment_fd(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    while resident(&fd) < CAPACITY {
        assert!(
            Instant::now() < deadline,
            "only {} bytes resident",
            resident(&fd)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let lazy = Daemon::start(CAPACITY, &["--no-prefault"]);
    let fd = segment_fd(&lazy);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        resident(&fd) < 1 << 20,
        "memory was made resident with --no-prefault"
    );
}

#[test]
fn pending_gets_beyond_the_limit_are_answered_at_once() {
    let d = Daemon::start(10_000_000, &["--max-pending-gets", "2"]);
    let mut c = d.raw();
    for n in 1..=3 {
        c.send(&Request::Get {
            object_ids: vec![oid(n)],
            timeout_ms: -1,
        })
        .expect("send");
    }
    // Only the third get is answered (with what is there: nothing); the first two wait.
    let Reply::Get {
        object_ids,
        objects,
        ..
    } = c.reply()
    else {
        panic!("a get reply")
    };
    assert_eq!((object_ids, objects), (vec![oid(3)], vec![None]));
    let mut other = d.raw();
    other.put(oid(1), b"one");
    let Reply::Get {
        object_ids,
        objects,
        ..
    } = c.reply()
    else {
        panic!("a get reply")
    };
    assert_eq!(object_ids, vec![oid(1)]);
    assert!(objects[0].is_some());
}

#[test]
fn requests_longer_than_the_limit_close_the_connection() {
    let mut d = Daemon::start(10_000_000, &["--max-request-bytes", "1KiB"]);
    let mut c = d.raw();
    c.put(oid(1), &[7; 500]);
    let mut big = Vec::new();
    Encoder::new().request(
        &Request::CreateAndSeal {
            object_id: oid(2),
            evict_if_full: true,
            data: vec![7; 2000],
            metadata: vec![],
            digest: [0; 8],
        },
        &mut big,
    );
    c.send_raw(&big).expect("send");
    assert!(c.closed_by_store(), "a 2 KB request passed a 1 KiB limit");
    assert_serving(&mut d);
}

#[test]
fn a_reader_that_drains_every_reply_at_once_gets_all_of_them() {
    // Regression: when a flush wrote a paused connection's queue out completely, the store
    // resumed reading at once, queued more replies, and lost track of them (the socket was no
    // longer watched for writability and the connection not marked for writing): the client
    // waited forever. A fast reader, a small queue limit and many pipelined requests from a
    // half-closed socket make that the common case.
    let d = Daemon::start(10_000_000, &["--max-queued-bytes", "16KiB"]);
    let mut c = d.raw();
    for i in 0..20 {
        c.put(oid(i), &[i; 10]);
    }
    let mut slow = d.raw();
    let mut bytes = Vec::new();
    let mut enc = Encoder::new();
    for _ in 0..3000 {
        enc.request(&Request::List, &mut bytes);
    }
    slow.send_raw(&bytes).expect("send");
    slow.sock
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    for i in 0..3000 {
        match slow.recv() {
            Ok((Reply::List { objects }, _)) => assert_eq!(objects.len(), 20),
            Ok((r, _)) => panic!("reply {i}: {r:?}"),
            Err(e) => panic!("reply {i} of 3000 never came: {e}"),
        }
    }
    assert!(slow.closed_by_store());
}
