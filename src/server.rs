//! The daemon's event loop: one thread, one mio `Poll`, one owner of every piece of state.
//!
//! [`Server`] holds the listener, the connections (in a slab), the [`Store`] and the signal
//! fd. Each readiness event is dispatched by one `match`. Sockets are non-blocking: reads go
//! into a per-connection [`FrameDecoder`] that buffers partial frames, replies go into a
//! per-connection write queue (reply bytes, and the segment fds to send after given bytes),
//! and notifications into a bounded per-subscriber queue. A client that sends half a message,
//! never reads its replies or stops reading notifications only ever costs its own connection.
//!
//! Everything a peer sends is untrusted: a framing or decoding error is logged and closes that
//! one connection; the loop goes on.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use slab::Slab;

use crate::fdpass;
use crate::http::MetricsServer;
use crate::metrics::{ServerCounters, Snapshot};
use crate::protocol::{
    Encoder, FrameDecoder, HEADER_LEN, ObjectId, ObjectInfo, PlasmaError, ProtocolError, Reply,
    Request, decode_request,
};
use crate::shm::SEGMENT_BASE;
use crate::store::{ClientId, Sink, Store, StoreConfig};
use crate::warmup::Warmup;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);

/// Tokens of a connection: `key * TOKENS_PER_CONN + ` one of these.
const TOKENS_PER_CONN: usize = 4;
const STREAM: usize = 0;
const NOTIFICATIONS: usize = 1;
const MISSES: usize = 2;

/// Frames handled for one connection before the loop turns to others.
const FRAMES_PER_TURN: usize = 64;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most fds a connection may have in flight before they are matched to a SubscribeRequest.
const MAX_PENDING_FDS: usize = 4;

/// Daemon configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Path of the listening socket.
    pub socket: PathBuf,
    /// The store's configuration.
    pub store: StoreConfig,
    /// Most simultaneous client connections; further ones are accepted and closed at once.
    pub max_connections: usize,
    /// Reply bytes queued for a client beyond which the store stops reading its requests.
    pub max_queued_bytes: usize,
    /// Notification bytes queued for a subscriber beyond which it is dropped.
    pub max_notification_bytes: usize,
    /// Permission bits of the socket file (owner-only by default).
    pub socket_mode: u32,
    /// Make the shared memory resident in the background after start-up, so that clients'
    /// first writes do not pay for page allocation.
    pub prefault: bool,
    /// Largest request body accepted (a connection that announces more is closed). `None`:
    /// the capacity plus 1 MiB, since a CreateAndSeal carries its object inline.
    pub max_request_bytes: Option<usize>,
    /// When set, only peers with these user ids (checked with SO_PEERCRED) are served.
    pub allowed_uids: Option<Vec<u32>>,
    /// Where to serve the Prometheus page (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl ServerConfig {
    /// A configuration with default limits.
    pub fn new(socket: PathBuf, store: StoreConfig) -> ServerConfig {
        ServerConfig {
            socket,
            store,
            max_connections: 4096,
            max_queued_bytes: 64 << 20,
            max_notification_bytes: 64 << 20,
            socket_mode: 0o600,
            prefault: true,
            max_request_bytes: None,
            allowed_uids: None,
            metrics_listen: None,
        }
    }
}

/// A socket the store pushes messages to (a subscriber's notification socket, or the
/// gateway's miss socket) and its queue.
struct Subscriber {
    sock: UnixStream,
    /// Encoded notifications (length prefix included), oldest first; one buffer per
    /// notification, shared by every subscriber's queue.
    queue: VecDeque<Rc<[u8]>>,
    /// Bytes of the front message already sent.
    sent: usize,
    queued_bytes: usize,
    overflowed: bool,
    /// Registered for writability (only while a write is blocked).
    registered: bool,
}

impl Subscriber {
    /// Queues `msg`, unless that would pass `max` queued bytes: then the subscriber is
    /// marked overflowed instead (the loop then drops the subscriber).
    fn enqueue(&mut self, msg: Rc<[u8]>, max: usize) {
        if self.queued_bytes + msg.len() > max {
            self.overflowed = true;
            return;
        }
        self.queued_bytes += msg.len();
        self.queue.push_back(msg);
    }
}

/// One client connection.
struct Conn {
    stream: UnixStream,
    decoder: FrameDecoder,
    /// Stream bytes received so far.
    received: u64,
    /// Fds received, each with the stream offset just past the byte that carried it.
    fds: VecDeque<(u64, OwnedFd)>,
    /// A SubscribeRequest or GatewayRegisterRequest was handled; the next byte should carry
    /// the fd of the socket it is about.
    awaiting_fd: Option<FdFor>,
    /// Bytes queued for the client.
    out: Vec<u8>,
    /// Stream offset of `out[0]`.
    out_base: u64,
    /// Bytes of `out` already written.
    out_pos: usize,
    /// Segment fds to send, each after the stream offset it is paired with.
    out_fds: VecDeque<(u64, i32)>,
    subscriber: Option<Subscriber>,
    /// The miss socket, on the gateway's connection.
    misses: Option<Subscriber>,
    /// Reading stopped because too many reply bytes are queued.
    paused: bool,
    /// Registered for writability: only while a write is blocked, since an edge-triggered
    /// registration would otherwise wake the store each time the client reads a reply.
    want_write: bool,
    /// The client closed its end (or the socket failed): handle what is buffered, then close.
    eof: bool,
    /// Input ended and everything buffered was handled: close once the queued replies are
    /// written (a client that half-closed its socket still gets them).
    closing: bool,
    /// The connection is finished and will be closed at the end of this turn.
    dead: bool,
}

/// What an fd that a client sends after a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdFor {
    Subscribe,
    Gateway,
}

impl Conn {
    fn new(stream: UnixStream, max_body: usize) -> Conn {
        Conn {
            stream,
            decoder: FrameDecoder::new(max_body),
            received: 0,
            fds: VecDeque::new(),
            awaiting_fd: None,
            out: Vec::new(),
            out_base: 0,
            out_pos: 0,
            out_fds: VecDeque::new(),
            subscriber: None,
            misses: None,
            paused: false,
            want_write: false,
            eof: false,
            closing: false,
            dead: false,
        }
    }

    /// Stream offset of the next byte not yet taken from the decoder.
    fn consumed(&self) -> u64 {
        self.received - self.decoder.buffered() as u64
    }

    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

/// What the store writes to: the connections' queues.
struct Outbox<'a> {
    conns: &'a mut Slab<Conn>,
    subscribers: &'a [usize],
    /// Connections given something to write.
    dirty: &'a mut Vec<usize>,
    /// Set when a notification was queued.
    notified: &'a mut bool,
    enc: &'a mut Encoder,
    scratch: &'a mut Vec<u8>,
    max_notification_bytes: usize,
    /// The registered gateway's connection.
    gateway: Option<usize>,
}

impl Sink for Outbox<'_> {
    fn reply(&mut self, client: ClientId, reply: &Reply) {
        if let Some(c) = self.conns.get_mut(client) {
            self.enc.reply(reply, &mut c.out);
            self.dirty.push(client);
        }
    }

    fn send_segment(&mut self, client: ClientId, segment: i32) {
        if let Some(c) = self.conns.get_mut(client) {
            let at = c.out_base + c.out.len() as u64;
            c.out_fds.push_back((at, segment));
        }
    }

    fn notify(&mut self, infos: &[ObjectInfo]) {
        let mut encoded: Option<Rc<[u8]>> = None;
        for &key in self.subscribers {
            let Some(s) = self.conns.get_mut(key).and_then(|c| c.subscriber.as_mut()) else {
                continue;
            };
            if s.overflowed {
                continue;
            }
            let msg = encoded.get_or_insert_with(|| {
                self.scratch.clear();
                self.enc.notification(infos, self.scratch);
                Rc::from(&self.scratch[..])
            });
            *self.notified = true;
            s.enqueue(Rc::clone(msg), self.max_notification_bytes);
        }
    }

    fn gateway_miss(&mut self, object_ids: &[ObjectId]) {
        let Some(key) = self.gateway else {
            return;
        };
        let Some(s) = self.conns.get_mut(key).and_then(|c| c.misses.as_mut()) else {
            return;
        };
        if s.overflowed {
            return;
        }
        self.scratch.clear();
        self.enc.gateway_miss(object_ids, self.scratch);
        *self.notified = true;
        s.enqueue(Rc::from(&self.scratch[..]), self.max_notification_bytes);
    }
}

/// The store's [`Sink`] over the server's fields, borrowed apart from the store itself.
macro_rules! outbox {
    ($s:ident) => {
        Outbox {
            conns: &mut $s.conns,
            subscribers: &$s.subscribers,
            dirty: &mut $s.dirty,
            notified: &mut $s.notified,
            enc: &mut $s.enc,
            scratch: &mut $s.scratch,
            max_notification_bytes: $s.config.max_notification_bytes,
            gateway: $s.gateway,
        }
    };
}

/// The daemon.
pub struct Server {
    config: ServerConfig,
    poll: Poll,
    listener: UnixListener,
    signals: SignalFd,
    conns: Slab<Conn>,
    store: Store,
    enc: Encoder,
    scratch: Vec<u8>,
    /// Connections with buffered frames left over from a previous turn.
    ready: VecDeque<usize>,
    /// Connections whose socket may hold more than was read: read again next turn, since no
    /// new readiness edge will say so.
    unread: Vec<usize>,
    /// Connections whose queues changed and need writing.
    dirty: Vec<usize>,
    /// Connections with a notification socket.
    subscribers: Vec<usize>,
    /// Connections to close at the end of this turn.
    dead: Vec<usize>,
    /// While set, accepting waits (after EMFILE and friends).
    accept_paused_until: Option<Instant>,
    /// Accepting failed and has not worked since.
    accept_failing: bool,
    max_body: usize,
    /// The background warm-up of the segment; held only to stop it when the server goes.
    _warmup: Option<Warmup>,
    /// A notification was queued this turn: subscribers need writing.
    notified: bool,
    /// The connection registered as the gateway (the extension), if any.
    gateway: Option<usize>,
    /// The metrics endpoint (`--metrics-listen`).
    metrics: Option<MetricsServer>,
    /// Request and connection counters for the metrics page.
    counters: ServerCounters,
}

impl Subscriber {
    fn new(sock: UnixStream) -> Subscriber {
        Subscriber {
            sock,
            queue: VecDeque::new(),
            sent: 0,
            queued_bytes: 0,
            overflowed: false,
            registered: false,
        }
    }
}

/// A socket received from a client for the store to push messages to, made non-blocking.
fn push_socket(fd: OwnedFd) -> io::Result<UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    Ok(UnixStream::from_std(std))
}

/// Whether a live process serves `path`: an existing socket that accepts connections.
fn socket_in_use(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Binds the listening socket, owner-only, replacing a stale socket file but never a live
/// store's socket or a file that is not a socket.
fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if socket_in_use(path) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another store is serving {}", path.display()),
            ));
        }
        info!("removing stale socket {}", path.display());
        std::fs::remove_file(path)?;
    }
    // Created owner-only, so that nobody else can connect before the mode is set.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    if mode != 0o600 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(listener)
}

/// The user id of the process at the other end of a Unix socket.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let creds = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
    Ok(creds.uid())
}

impl Server {
    /// Creates the store, binds the socket and prepares the loop. SIGINT and SIGTERM are
    /// blocked in the calling thread and delivered to the loop instead.
    pub fn new(config: ServerConfig) -> io::Result<Server> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGTERM);
        mask.thread_block().map_err(io::Error::from)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;

        let store = Store::new(&config.store)?;
        let poll = Poll::new()?;
        let mut listener = bind(&config.socket, config.socket_mode)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(MetricsServer::bind(addr, poll.registry())?),
            None => None,
        };
        let warmup = if config.prefault {
            let end = config
                .store
                .capacity
                .saturating_add(SEGMENT_BASE)
                .min(store.segment().usable_len() + SEGMENT_BASE);
            match store
                .segment()
                .duplicate_fd()
                .and_then(|fd| Warmup::start(fd, SEGMENT_BASE, end))
            {
                Ok(w) => Some(w),
                Err(e) => {
                    info!("shared memory is not made resident in the background: {e}");
                    None
                }
            }
        } else {
            None
        };
        // The largest legitimate request carries a whole object inline (CreateAndSeal).
        let max_body = config.max_request_bytes.unwrap_or_else(|| {
            usize::try_from(config.store.capacity)
                .unwrap_or(usize::MAX)
                .saturating_add(1 << 20)
        });
        Ok(Server {
            config,
            poll,
            listener,
            signals,
            conns: Slab::new(),
            store,
            enc: Encoder::new(),
            scratch: Vec::new(),
            ready: VecDeque::new(),
            unread: Vec::new(),
            dirty: Vec::new(),
            subscribers: Vec::new(),
            dead: Vec::new(),
            accept_paused_until: None,
            accept_failing: false,
            max_body,
            _warmup: warmup,
            notified: false,
            gateway: None,
            metrics,
            counters: ServerCounters::default(),
        })
    }

    /// The address of the metrics endpoint, if it has one.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// Runs until SIGINT or SIGTERM, then removes the socket file.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    SIGNALS => {
                        if let Ok(Some(sig)) = self.signals.read_signal() {
                            let name = Signal::try_from(sig.ssi_signo as i32)
                                .map(|s| s.as_str())
                                .unwrap_or("signal");
                            info!("{name} received, shutting down");
                            return Ok(());
                        }
                    }
                    t if MetricsServer::owns(t) => {
                        if let Some(m) = self.metrics.as_mut() {
                            let (store, conns, counters) =
                                (&self.store, &self.conns, &self.counters);
                            m.on_event(t, self.poll.registry(), &mut || {
                                crate::metrics::encode(&Snapshot::collect(
                                    store,
                                    conns.len(),
                                    counters,
                                ))
                            });
                        }
                    }
                    Token(t) => {
                        let key = t / TOKENS_PER_CONN;
                        if t % TOKENS_PER_CONN != STREAM {
                            self.notified = true;
                        } else {
                            if event.is_writable() {
                                self.dirty.push(key);
                            }
                            let closed = event.is_read_closed() || event.is_error();
                            if event.is_readable() || closed {
                                self.on_readable(key, closed);
                            }
                        }
                    }
                }
            }
            self.turn();
        }
    }

    /// The rest of a loop turn: leftover frames, timers, accepting after a pause, writes and
    /// closes.
    fn turn(&mut self) {
        for key in std::mem::take(&mut self.unread) {
            self.on_readable(key, true);
        }
        for key in std::mem::take(&mut self.ready) {
            self.process(key);
        }
        let now = Instant::now();
        let mut out = outbox!(self);
        self.store.expire(now, &mut out);
        if let Some(m) = self.metrics.as_mut() {
            m.expire(now, self.poll.registry());
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.accept_all();
        }
        self.flush_all();
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.ready.is_empty() || !self.unread.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let metrics = self.metrics.as_ref().and_then(MetricsServer::next_deadline);
        [
            self.store.next_deadline(),
            self.accept_paused_until,
            metrics,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if std::mem::take(&mut self.accept_failing) {
                        info!("accepting connections again");
                    }
                    if let Some(allowed) = &self.config.allowed_uids {
                        match peer_uid(&stream) {
                            Ok(uid) if allowed.contains(&uid) => {}
                            Ok(uid) => {
                                warn!("refusing a client with uid {uid}: not in --allow-uid");
                                self.counters.refused_connections += 1;
                                continue;
                            }
                            Err(e) => {
                                warn!("refusing a client whose credentials are unknown: {e}");
                                self.counters.refused_connections += 1;
                                continue;
                            }
                        }
                    }
                    if self.conns.len() >= self.config.max_connections {
                        warn!(
                            "refusing a client: {} connections already (the limit)",
                            self.conns.len()
                        );
                        self.counters.refused_connections += 1;
                        continue;
                    }
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(key * TOKENS_PER_CONN + STREAM),
                        Interest::READABLE,
                    ) {
                        warn!("cannot watch a new connection: {e}");
                        continue;
                    }
                    entry.insert(Conn::new(stream, self.max_body));
                    self.store.connect(key);
                    info!("client {key} connected");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: the pending connection stays queued and the
                    // listener stays readable, so back off instead of spinning. Said once per
                    // episode, not at every retry.
                    if !self.accept_failing {
                        error!(
                            "accept failed: {e}; retrying every {ACCEPT_BACKOFF:?} until it works"
                        );
                        self.accept_failing = true;
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Reads what the client sent and handles the complete frames. `thorough` reads until the
    /// socket says EAGAIN or end of stream: needed when the peer hung up (its end of stream
    /// may sit behind data, with no further edge to come) and after reading was paused.
    fn on_readable(&mut self, key: usize, thorough: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.dead || c.paused {
            return;
        }
        let mut more = false;
        while !c.eof {
            let chunk = c.decoder.wanted().clamp(4096, 1 << 20);
            let mut fds = Vec::new();
            let spare = c.decoder.spare(chunk);
            let r = fdpass::recv_with_fds(&c.stream, spare, &mut fds);
            let n = match r {
                Ok(n) => n,
                Err(e) => {
                    c.decoder.commit(chunk, 0);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            debug!("client {key}: read failed: {e}");
                            c.eof = true;
                            break;
                        }
                    }
                }
            };
            c.decoder.commit(chunk, n);
            if n == 0 {
                c.eof = true;
                break;
            }
            c.received += n as u64;
            // A short read without fds means the socket was drained: new data will raise a
            // new edge, so the read that would only say EAGAIN is skipped. (A read stops early
            // after a byte that carries fds, so then the socket may hold more.)
            let drained = !thorough && n < chunk && fds.is_empty();
            for fd in fds {
                c.fds.push_back((c.received, fd));
            }
            if c.fds.len() > MAX_PENDING_FDS {
                warn!("client {key} sent file descriptors nobody asked for; disconnecting it");
                c.dead = true;
                break;
            }
            if drained {
                break;
            }
            if c.decoder.buffered() >= HEADER_LEN + c.decoder.max_body().min(1 << 20) {
                // Enough to work on: handle it, and read the rest next turn (others first).
                more = true;
                break;
            }
        }
        if c.dead {
            self.dead.push(key);
            return;
        }
        if more {
            self.unread.push(key);
        }
        // Requests that arrived before an end of stream are still handled.
        self.process(key);
    }

    /// Handles the buffered frames of one connection, up to a budget per turn.
    fn process(&mut self, key: usize) {
        for _ in 0..FRAMES_PER_TURN {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if c.dead {
                return;
            }
            if c.queued() > self.config.max_queued_bytes {
                // Stop reading until the client takes its replies (resumed by `flush`).
                c.paused = true;
                return;
            }
            if let Some(purpose) = c.awaiting_fd {
                if c.decoder.buffered() == 0 {
                    if c.eof {
                        self.end_of_input(key);
                    }
                    return;
                }
                c.awaiting_fd = None;
                let at = c.consumed() + 1;
                let fd = match c.fds.front() {
                    Some((pos, _)) if *pos == at => c.fds.pop_front().map(|(_, fd)| fd),
                    _ => None,
                };
                if fd.is_some() {
                    c.decoder.skip_byte();
                }
                match (purpose, fd) {
                    (FdFor::Subscribe, Some(fd)) => self.subscribe(key, fd),
                    (FdFor::Subscribe, None) => {
                        warn!("client {key}: subscribe request without a file descriptor; ignored")
                    }
                    (FdFor::Gateway, fd) => self.register_gateway(key, fd),
                }
                continue;
            }
            let request = match c.decoder.next_frame() {
                Ok(None) => {
                    if c.eof {
                        self.end_of_input(key);
                    } else {
                        self.after_read(key);
                    }
                    return;
                }
                Ok(Some(frame)) => decode_request(frame.msg_type, frame.body),
                Err(e) => Err(e),
            };
            // Fds whose byte lies before this point were not asked for.
            let consumed = c.consumed();
            while c.fds.front().is_some_and(|(pos, _)| *pos <= consumed) {
                warn!("client {key}: dropping a file descriptor it sent unasked");
                c.fds.pop_front();
            }
            match request {
                Ok(req) => self.dispatch(key, req),
                Err(e) => self.protocol_error(key, &e),
            }
        }
        if self.conns.get(key).is_some_and(|c| !c.dead) {
            self.ready.push_back(key);
        }
    }

    /// Returns the decoder's memory after a large message.
    fn after_read(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            c.decoder.shrink(1 << 20);
        }
    }

    /// The client sent everything it will send and all of it was handled: close now, or once
    /// its queued replies are written.
    fn end_of_input(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.queued() == 0 && c.out_fds.is_empty() {
            self.kill(key);
        } else {
            c.closing = true;
        }
    }

    /// Marks a connection for closing at the end of the turn.
    fn kill(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key)
            && !c.dead
        {
            c.dead = true;
            self.dead.push(key);
        }
    }

    fn protocol_error(&mut self, key: usize, e: &ProtocolError) {
        warn!("client {key}: {e}; disconnecting it");
        self.kill(key);
    }

    fn dispatch(&mut self, key: usize, req: Request) {
        self.counters.request(req.message_type());
        match req {
            Request::Disconnect => self.kill(key),
            Request::Subscribe => {
                if let Some(c) = self.conns.get_mut(key) {
                    c.awaiting_fd = Some(FdFor::Subscribe);
                }
            }
            Request::GatewayRegister => {
                if let Some(c) = self.conns.get_mut(key) {
                    c.awaiting_fd = Some(FdFor::Gateway);
                }
            }
            Request::GatewayPullFailed { .. } | Request::GatewayInfo { .. }
                if self.gateway != Some(key) =>
            {
                warn!(
                    "client {key}: gateway message from a connection that is not the gateway; disconnecting it"
                );
                self.kill(key);
            }
            Request::Unsubscribe => {
                warn!("client {key}: unsubscribe is not part of the protocol; ignored");
            }
            Request::Data { .. } => {
                warn!("client {key}: data requests belong to the removed plasma manager");
                self.kill(key);
            }
            req => {
                let mut out = outbox!(self);
                self.store.handle(key, req, Instant::now(), &mut out);
            }
        }
    }

    /// Makes `key` the gateway, with `fd` as its miss socket, unless another connection is the
    /// gateway already or the fd is missing; answers the registration either way.
    fn register_gateway(&mut self, key: usize, fd: Option<OwnedFd>) {
        let error = match (self.gateway, fd) {
            (Some(g), _) => {
                warn!("client {key} asked to be the gateway, but client {g} is; refused");
                PlasmaError::ObjectExists
            }
            (None, None) => {
                warn!("client {key}: gateway registration without a file descriptor; refused");
                PlasmaError::ObjectNotFound
            }
            (None, Some(fd)) => match push_socket(fd) {
                Ok(sock) => {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.misses = Some(Subscriber::new(sock));
                        self.gateway = Some(key);
                        self.store.set_gateway(true);
                        info!("client {key} registered as the gateway");
                    }
                    PlasmaError::Ok
                }
                Err(e) => {
                    warn!("client {key}: cannot use its miss socket: {e}; refused");
                    PlasmaError::ObjectNotFound
                }
            },
        };
        let mut out = outbox!(self);
        out.reply(key, &Reply::GatewayRegister { error });
    }

    /// Makes `fd` the notification socket of `key` and queues one notification per sealed
    /// object.
    fn subscribe(&mut self, key: usize, fd: OwnedFd) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.subscriber.is_some() {
            warn!("client {key} subscribed twice; keeping the first subscription");
            return;
        }
        let sock = match push_socket(fd) {
            Ok(sock) => sock,
            Err(e) => {
                warn!("client {key}: cannot use its notification fd: {e}");
                return;
            }
        };
        let mut s = Subscriber::new(sock);
        for info in self.store.sealed_infos() {
            self.scratch.clear();
            self.enc
                .notification(std::slice::from_ref(&info), &mut self.scratch);
            s.queued_bytes += self.scratch.len();
            s.queue.push_back(Rc::from(&self.scratch[..]));
        }
        debug!(
            "client {key} subscribed; {} sealed objects queued",
            s.queue.len()
        );
        c.subscriber = Some(s);
        self.subscribers.push(key);
        self.notified = true;
    }

    /// Closes dead connections and writes every queue that changed, until nothing is left
    /// to do (closing can notify others of deletions, writing can find a peer gone).
    fn flush_all(&mut self) {
        loop {
            for key in std::mem::take(&mut self.dead) {
                self.close(key);
            }
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            for key in dirty {
                self.flush(key);
            }
            if std::mem::take(&mut self.notified) {
                for i in 0..self.subscribers.len() {
                    if let Some(&key) = self.subscribers.get(i) {
                        self.flush_notifications(key);
                    }
                }
                self.subscribers
                    .retain(|k| self.conns.get(*k).is_some_and(|c| c.subscriber.is_some()));
                if let Some(key) = self.gateway {
                    self.flush_misses(key);
                }
            }
            if self.dead.is_empty() && self.dirty.is_empty() {
                break;
            }
        }
    }

    /// Writes a connection's queued replies and fds until done or the socket is full.
    fn flush(&mut self, key: usize) {
        let store = &self.store;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.dead {
            return;
        }
        loop {
            let limit = c
                .out_fds
                .front()
                .map_or(c.out.len(), |(at, _)| (*at - c.out_base) as usize);
            if c.out_pos < limit {
                match c.stream.write(&c.out[c.out_pos..limit]) {
                    Ok(n) => c.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        debug!("client {key}: write failed: {e}");
                        c.dead = true;
                        self.dead.push(key);
                        return;
                    }
                }
                continue;
            }
            let Some(&(_, segment)) = c.out_fds.front() else {
                break;
            };
            let Some(fd) = store.segment_fd(segment) else {
                c.out_fds.pop_front();
                continue;
            };
            match fdpass::send_fd(&c.stream, fd) {
                Ok(_) => {
                    c.out_fds.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("client {key}: sending the segment fd failed: {e}");
                    c.dead = true;
                    self.dead.push(key);
                    return;
                }
            }
        }
        if c.out_pos == c.out.len() && c.out_fds.is_empty() {
            c.out_base += c.out.len() as u64;
            c.out.clear();
            c.out_pos = 0;
            if c.out.capacity() > 1 << 20 {
                c.out = Vec::new();
            }
        } else if c.out_pos > (1 << 20) && c.out_pos * 2 > c.out.len() {
            c.out.drain(..c.out_pos);
            c.out_base += c.out_pos as u64;
            c.out_pos = 0;
        }
        let blocked = c.queued() > 0 || !c.out_fds.is_empty();
        if blocked != c.want_write {
            let interest = if blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match self.poll.registry().reregister(
                &mut c.stream,
                Token(key * TOKENS_PER_CONN + STREAM),
                interest,
            ) {
                Ok(()) => c.want_write = blocked,
                Err(e) => {
                    warn!("client {key}: cannot watch its socket: {e}");
                    c.dead = true;
                    self.dead.push(key);
                    return;
                }
            }
        }
        if c.closing && !blocked {
            c.dead = true;
            self.dead.push(key);
            return;
        }
        if c.paused && c.queued() <= self.config.max_queued_bytes / 2 {
            // Read on next turn: reading here would queue replies while this connection's
            // writability has just been settled for the queue as it was.
            c.paused = false;
            self.unread.push(key);
        }
    }

    /// Writes a subscriber's queued notifications; drops the subscription on overflow or
    /// error.
    fn flush_notifications(&mut self, key: usize) {
        self.flush_push(key, NOTIFICATIONS);
    }

    /// Writes the gateway's queued misses; a gateway that does not read them (or whose miss
    /// socket fails) is disconnected, which forgets its pulls.
    fn flush_misses(&mut self, key: usize) {
        if self.flush_push(key, MISSES) {
            warn!("the gateway (client {key}) does not take its misses; disconnecting it");
            self.kill(key);
        }
    }

    /// Writes one push socket's queue (`which`: NOTIFICATIONS or MISSES); on overflow or
    /// error drops it and returns true.
    fn flush_push(&mut self, key: usize, which: usize) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        let slot = if which == MISSES {
            &mut c.misses
        } else {
            &mut c.subscriber
        };
        let Some(s) = slot.as_mut() else {
            return false;
        };
        let mut drop_it = s.overflowed;
        if drop_it && which == NOTIFICATIONS {
            warn!("client {key} does not read its notifications; dropping its subscription");
        }
        while !drop_it {
            let Some(front) = s.queue.front() else {
                break;
            };
            match s.sock.write(&front[s.sent..]) {
                Ok(n) => {
                    s.sent += n;
                    if s.sent == front.len() {
                        s.queued_bytes -= front.len();
                        s.queue.pop_front();
                        s.sent = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("client {key}: notification socket failed: {e}; dropping it");
                    drop_it = true;
                }
            }
        }
        let blocked = !s.queue.is_empty();
        if !drop_it && blocked != s.registered {
            let token = Token(key * TOKENS_PER_CONN + which);
            let r = if blocked {
                self.poll
                    .registry()
                    .register(&mut s.sock, token, Interest::WRITABLE)
            } else {
                self.poll.registry().deregister(&mut s.sock)
            };
            match r {
                Ok(()) => s.registered = blocked,
                Err(e) => {
                    warn!("client {key}: cannot watch its notification socket: {e}; dropping it");
                    drop_it = true;
                }
            }
        }
        if drop_it
            && let Some(mut s) = slot.take()
            && s.registered
        {
            let _ = self.poll.registry().deregister(&mut s.sock);
        }
        drop_it
    }

    /// Forgets a connection: the store cleans up after the client, then the socket closes.
    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut out = outbox!(self);
        self.store.disconnect(key, &mut out);
        // What is queued for its notification socket goes out if it can without waiting, as
        // the original's synchronous writes would have sent it.
        self.flush_notifications(key);
        let mut c = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut c.stream);
        for s in [c.subscriber.as_mut(), c.misses.as_mut()]
            .into_iter()
            .flatten()
        {
            if s.registered {
                let _ = self.poll.registry().deregister(&mut s.sock);
            }
        }
        if self.gateway == Some(key) {
            self.gateway = None;
            self.store.set_gateway(false);
            info!("the gateway (client {key}) went away; its pulls are forgotten");
        }
        info!("client {key} disconnected");
        self.ready.retain(|k| *k != key);
        self.unread.retain(|k| *k != key);
        self.subscribers.retain(|k| *k != key);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.config.socket) {
            debug!("removing {}: {e}", self.config.socket.display());
        }
    }
}
