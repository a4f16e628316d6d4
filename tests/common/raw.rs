//! Raw-socket helpers for the bad-client and chaos tests.
//!
//! - [`Daemon`]: a store started with extra flags (given to our daemon only: the reference
//!   rejects flags it does not know), in its own temp dir, killed on drop.
//! - [`Raw`]: a protocol client that can send anything (arbitrary headers, hand-built bodies,
//!   stray fds) and reads replies as the original client does: exactly the bytes a frame
//!   needs, then the segment fds it does not have yet.
//! - [`table`]: hand-built FlatBuffers tables with any field of any size, for bodies the
//!   crate's encoder refuses to produce.
//! - [`Kept`] and [`assert_survived`]: the object stored before a test misbehaves, and the one
//!   check every bad-client test ends with.
//! - [`Rng`]: a small seeded generator, so every random test replays exactly.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use flatbuffers::FlatBufferBuilder;
use plasma_store::client::Client;
use plasma_store::fdpass;
use plasma_store::protocol::{
    Encoder, FrameDecoder, HEADER_LEN, MessageType, ObjectId, ObjectInfo, PlasmaError, Reply,
    Request, decode_reply,
};

use super::store_bin;

/// How long a raw read waits before the store counts as hung.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How quickly a fresh client must be answered after a bad client did its worst.
pub const PROMPT: Duration = Duration::from_secs(2);

/// Whether the daemon under test is the reference (`PLASMA_STORE_BIN` names another binary).
pub fn testing_reference() -> bool {
    std::env::var_os("PLASMA_STORE_BIN")
        .is_some_and(|p| Path::new(&p) != Path::new(env!("CARGO_BIN_EXE_plasma_store")))
}

/// A store daemon on a socket in its own temp dir; stderr goes to `store.log` there.
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    /// The listening socket.
    pub socket: PathBuf,
    /// Its `-m`.
    pub capacity: u64,
}

impl Daemon {
    /// Starts a store with `-m capacity`. `ours_only` flags (the limits only our daemon has)
    /// are passed to our daemon and left out for the reference.
    pub fn start(capacity: u64, ours_only: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("plasma.sock");
        let log = File::create(dir.path().join("store.log")).expect("log file");
        let mut cmd = Command::new(store_bin());
        cmd.arg("-m")
            .arg(capacity.to_string())
            .arg("-s")
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if !testing_reference() {
            cmd.args(ours_only);
        }
        let child = cmd.spawn().expect("start the store");
        let mut d = Daemon {
            child,
            dir,
            socket,
            capacity,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&d.socket).is_err() {
            assert!(d.alive(), "the store exited at startup\n{}", d.log());
            assert!(Instant::now() < deadline, "the store did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
        d
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Sends it a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(5))
            .expect("the store did not stop")
    }

    /// Its temp dir (for child logs and the like).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last 4 KiB of what the store wrote to stderr.
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("store.log")).unwrap_or_default();
        let cut = s.len().saturating_sub(4096);
        let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s[cut..].to_string()
    }

    /// A new raw connection.
    pub fn raw(&self) -> Raw {
        Raw::connect(&self.socket).expect("connect")
    }

    /// Number of file descriptors the daemon has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .count()
    }

    /// Number of open fds once connections that just closed are cleaned up: a baseline for
    /// [`Daemon::assert_fds_return_to`].
    pub fn settled_fds(&self) -> usize {
        std::thread::sleep(Duration::from_millis(100));
        self.open_fds()
    }

    /// Waits until the daemon's open fds are back to `baseline` (closing is asynchronous).
    pub fn assert_fds_return_to(&self, baseline: usize) {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let n = self.open_fds();
            if n <= baseline {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the store holds {n} fds, {baseline} before: leaked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let state = match self.exited() {
            Some(status) => format!("exited: {status}"),
            None => "running".to_string(),
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- store at the failure: {state}; log (tail) ---\n{}",
                self.log()
            );
        }
    }
}

/// What a connection showed after a bad message and a ConnectRequest probe.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// The store closed the connection (after sending these replies first).
    Closed(Vec<MessageType>),
    /// The store answered the probe (after these other replies).
    Alive(Vec<MessageType>),
    /// Nothing within [`READ_TIMEOUT`].
    Hung,
}

/// A raw protocol client.
pub struct Raw {
    /// The socket.
    pub sock: UnixStream,
    enc: Encoder,
    dec: FrameDecoder,
    /// Segment ids whose fd this connection has received (the original client's map).
    seen: HashSet<i32>,
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Raw {
    /// Connects, with [`READ_TIMEOUT`] on reads and writes.
    pub fn connect(path: &Path) -> io::Result<Raw> {
        let sock = UnixStream::connect(path)?;
        sock.set_read_timeout(Some(READ_TIMEOUT))?;
        sock.set_write_timeout(Some(READ_TIMEOUT))?;
        Ok(Raw {
            sock,
            enc: Encoder::new(),
            dec: FrameDecoder::new(1 << 30),
            seen: HashSet::new(),
        })
    }

    /// Sends a well-formed request.
    pub fn send(&mut self, req: &Request) -> io::Result<()> {
        let mut buf = Vec::new();
        self.enc.request(req, &mut buf);
        self.sock.write_all(&buf)
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// Sends a frame with any type number and this body (version 0, true length).
    pub fn send_frame(&mut self, msg_type: i64, body: &[u8]) -> io::Result<()> {
        let mut bytes = header(0, msg_type, body.len() as i64).to_vec();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)
    }

    /// The next frame, as type and body.
    pub fn recv_frame(&mut self) -> io::Result<(MessageType, Vec<u8>)> {
        loop {
            match self.dec.next_frame() {
                Ok(Some(f)) => return Ok((f.msg_type, f.body.to_vec())),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            // Exactly what the frame needs: reading further could swallow the byte that
            // carries a segment fd (and with it the fd), as with the original client.
            let mut buf = vec![0u8; self.dec.wanted()];
            let n = match self.sock.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.dec.extend(&buf[..n]);
        }
    }

    /// The next reply, and the segment fds that follow it, as the original client takes them.
    pub fn recv(&mut self) -> io::Result<(Reply, Vec<OwnedFd>)> {
        let (t, body) = self.recv_frame()?;
        let reply = decode_reply(t, &body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let segments: Vec<i32> = match &reply {
            Reply::Create {
                error: plasma_store::protocol::PlasmaError::Ok,
                store_fd,
                ..
            } => vec![*store_fd],
            Reply::Get { store_fds, .. } => store_fds.clone(),
            _ => Vec::new(),
        };
        let mut fds = Vec::new();
        for s in segments {
            if self.seen.insert(s) {
                fds.push(fdpass::recv_fd(&self.sock)?);
            }
        }
        Ok((reply, fds))
    }

    /// The next reply; panics on anything else.
    pub fn reply(&mut self) -> Reply {
        match self.recv() {
            Ok((r, _)) => r,
            Err(e) => panic!("expected a reply: {e}"),
        }
    }

    /// Sends a request and returns its reply.
    pub fn call(&mut self, req: &Request) -> Reply {
        self.send(req).expect("send");
        self.reply()
    }

    /// Creates an object of `size` data bytes (no metadata, eviction allowed); a new segment's
    /// fd is taken as the original client takes it.
    pub fn create(&mut self, id: ObjectId, size: u64) -> Reply {
        self.call(&Request::Create {
            object_id: id,
            evict_if_full: true,
            data_size: size,
            metadata_size: 0,
            device_num: 0,
        })
    }

    /// Stores `data` with CreateAndSeal, which must succeed.
    pub fn put(&mut self, id: ObjectId, data: &[u8]) {
        let r = self.call(&Request::CreateAndSeal {
            object_id: id,
            evict_if_full: true,
            data: data.to_vec(),
            metadata: vec![],
            digest: [0; 8],
        });
        assert_eq!(
            r,
            Reply::CreateAndSeal {
                error: PlasmaError::Ok
            }
        );
    }

    /// Every object in the store, sorted by id.
    pub fn list(&mut self) -> Vec<ObjectInfo> {
        match self.call(&Request::List) {
            Reply::List { mut objects } => {
                objects.sort_by_key(|o| o.object_id);
                objects
            }
            r => panic!("List got {r:?}"),
        }
    }

    /// The store's allocated bytes, from its debug report.
    pub fn allocated(&mut self) -> u64 {
        let Reply::DebugString { debug_string } = self.call(&Request::GetDebugString) else {
            panic!("debug string")
        };
        debug_string
            .lines()
            .find_map(|l| l.strip_prefix("allocated bytes: "))
            .and_then(|v| v.parse().ok())
            .expect("allocated bytes line")
    }

    /// Sends a ConnectRequest and reports what the connection does: answers it (perhaps
    /// after other replies still owed), closes, or stays silent.
    pub fn probe(&mut self) -> Probe {
        let mut before = Vec::new();
        if let Err(e) = self.send(&Request::Connect) {
            return if is_closed(&e) {
                Probe::Closed(before)
            } else {
                Probe::Hung
            };
        }
        loop {
            match self.recv() {
                Ok((Reply::Connect { .. }, _)) => return Probe::Alive(before),
                Ok((r, _)) => before.push(r.message_type()),
                Err(e) if is_closed(&e) => return Probe::Closed(before),
                Err(e) if is_timeout(&e) => return Probe::Hung,
                Err(e) => panic!("unexpected bytes from the store: {e}"),
            }
        }
    }

    /// Reads (and discards) until the store closes the connection. False if it is still
    /// open after [`READ_TIMEOUT`].
    pub fn closed_by_store(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if is_closed(&e) => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// A 24-byte header with any field values.
pub fn header(version: i64, msg_type: i64, len: i64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&version.to_le_bytes());
    h[8..16].copy_from_slice(&msg_type.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h
}

/// The framed bytes of a well-formed request.
pub fn framed(req: &Request) -> Vec<u8> {
    let mut v = Vec::new();
    Encoder::new().request(req, &mut v);
    v
}

/// The body (without header) of a well-formed request.
pub fn body_of(req: &Request) -> Vec<u8> {
    framed(req).split_off(HEADER_LEN)
}

/// A field of a hand-built table.
#[derive(Debug, Clone)]
pub enum F {
    /// A string (bytes of any length).
    Bytes(Vec<u8>),
    /// A vector of strings.
    Strs(Vec<Vec<u8>>),
    /// A `ulong`.
    U64(u64),
    /// A `long`.
    I64(i64),
    /// An `int`.
    I32(i32),
    /// A `bool`.
    Bool(bool),
}

/// A FlatBuffers body holding one root table with these `(slot, value)` fields, every field
/// written even when it equals its default.
pub fn table(fields: &[(u16, F)]) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let mut strs = Vec::new();
    let mut vecs = Vec::new();
    for (_, f) in fields {
        match f {
            F::Bytes(b) => strs.push(fbb.create_byte_string(b)),
            F::Strs(v) => {
                let items: Vec<_> = v.iter().map(|b| fbb.create_byte_string(b)).collect();
                vecs.push(fbb.create_vector(&items));
            }
            _ => {}
        }
    }
    let (mut strs, mut vecs) = (strs.into_iter(), vecs.into_iter());
    let t = fbb.start_table();
    for (slot, f) in fields {
        let vt = 4 + 2 * slot;
        match f {
            F::Bytes(_) => fbb.push_slot_always(vt, strs.next().expect("string")),
            F::Strs(_) => fbb.push_slot_always(vt, vecs.next().expect("vector")),
            F::U64(x) => fbb.push_slot_always(vt, *x),
            F::I64(x) => fbb.push_slot_always(vt, *x),
            F::I32(x) => fbb.push_slot_always(vt, *x),
            F::Bool(x) => fbb.push_slot_always(vt, *x),
        }
    }
    let root = fbb.end_table(t);
    fbb.finish_minimal(root);
    fbb.finished_data().to_vec()
}

/// The object a test stores before misbehaving, to check afterwards that it is intact.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Its id.
    pub id: ObjectId,
    /// Its data.
    pub data: Vec<u8>,
    /// Its metadata.
    pub metadata: Vec<u8>,
}

/// Stores a few KiB of seeded random bytes (and some metadata) with a well-behaved client,
/// which then disconnects.
pub fn keep_object(d: &Daemon) -> Kept {
    let mut rng = Rng::new(0x6b65_7074);
    let len = 3000 + rng.below(3000) as usize;
    let kept = Kept {
        id: ObjectId([0x4b; 20]),
        data: rng.bytes(len),
        metadata: rng.bytes(16),
    };
    let c = Client::connect_with_retries(&d.socket, 0, Duration::ZERO).expect("good client");
    let mut buf = c
        .create(kept.id, kept.data.len() as u64, &kept.metadata)
        .expect("create");
    buf.data_mut().copy_from_slice(&kept.data);
    drop(buf.seal().expect("seal"));
    c.disconnect();
    kept
}

/// The check every bad-client test ends with: the daemon still runs, a fresh client is
/// answered within [`PROMPT`], and `kept` comes back bit-exact.
pub fn assert_survived(d: &mut Daemon, kept: &Kept) {
    if let Some(status) = d.exited() {
        panic!("the store died: {status}\n{}", d.log());
    }
    let start = Instant::now();
    let mut c = Raw::connect(&d.socket).expect("a fresh client connects");
    c.sock.set_read_timeout(Some(PROMPT)).expect("timeout");
    c.send(&Request::Connect).expect("send ConnectRequest");
    match c.recv() {
        Ok((Reply::Connect { memory_capacity }, _)) => {
            assert_eq!(memory_capacity as u64, d.capacity)
        }
        Ok((r, _)) => panic!("a fresh client got {r:?} for ConnectRequest"),
        Err(e) => panic!(
            "a fresh client got no ConnectReply within {PROMPT:?} ({e}); alive: {}",
            d.alive()
        ),
    }
    assert!(
        start.elapsed() < PROMPT,
        "answered after {:?}",
        start.elapsed()
    );
    drop(c);

    let client = Client::connect_with_retries(&d.socket, 0, Duration::ZERO).expect("connect");
    let got = client.get(&[kept.id], 0).expect("get");
    let obj = got[0].as_ref().expect("the object stored before is gone");
    assert!(obj.data() == kept.data, "the object's data changed");
    assert_eq!(
        obj.metadata(),
        &kept.metadata[..],
        "the object's metadata changed"
    );
    drop(got);
    client.disconnect();
    assert!(d.alive(), "the store died during the final check");
}

/// A seeded generator (SplitMix64): fast, and the same sequence on every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p` percent.
    pub fn chance(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Runs the test `entry` of this test binary as a child process with `env` set, waits until
/// it prints a line ending in "ready", and returns it. Its stderr goes to `stderr_to`.
pub fn spawn_ready(entry: &str, env: &[(&str, String)], stderr_to: &Path) -> Child {
    let mut child = spawn(entry, env, stderr_to, Stdio::piped());
    let out = child.stdout.take().expect("stdout");
    for line in BufReader::new(out).lines() {
        let line = line.expect("child output");
        if line.trim_end().ends_with("ready") {
            return child;
        }
    }
    let status = child.wait().expect("wait");
    let err = std::fs::read_to_string(stderr_to).unwrap_or_default();
    panic!("the child {entry} ended ({status}) before it was ready\n{err}");
}

/// Runs the test `entry` of this test binary as a child process with `env` set.
pub fn spawn(entry: &str, env: &[(&str, String)], stderr_to: &Path, stdout: Stdio) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", entry, "--nocapture", "--test-threads=1", "-q"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(File::create(stderr_to).expect("child log"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn a child client")
}

/// SIGKILLs a child and reaps it.
pub fn kill9(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
}
