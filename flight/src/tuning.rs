//! The gateway's fixed limits and transport settings, in one place.

use std::time::Duration;

use crate::form::CHUNK_SIZE;

/// Largest gRPC message accepted or sent (tonic's default decode limit, 4 MiB, is smaller
/// than one chunk's FlightData).
pub const MAX_MESSAGE: usize = 4 * CHUNK_SIZE;

/// HTTP/2 flow-control window of one stream: several chunks, so a transfer on loopback is
/// not throttled by window updates.
pub const STREAM_WINDOW: u32 = 8 * CHUNK_SIZE as u32;

/// HTTP/2 flow-control window of one connection (all its streams).
pub const CONNECTION_WINDOW: u32 = 16 * CHUNK_SIZE as u32;

/// HTTP/2 frame size (the protocol's largest is 16 MiB - 1); bigger frames mean fewer of
/// them per chunk.
pub const MAX_FRAME: u32 = 1 << 20;

/// Cap on object bytes being pulled at once, over all concurrent pulls (Ray's object manager
/// caps its chunks in flight the same way). A pull takes min(its size, this) once the
/// peer's stream has told its size, before it creates the object, and gives it back at the
/// end; so at most this many bytes of pulls are being written at once (a pull waiting for
/// its share holds at most one HTTP/2 stream window), and an object larger than the cap runs
/// alone.
pub const MAX_PULL_BYTES_IN_FLIGHT: u64 = 256 << 20;

/// Unit of [`MAX_PULL_BYTES_IN_FLIGHT`] for the semaphore (whole chunks).
pub const PULL_PERMIT_BYTES: u64 = CHUNK_SIZE as u64;

/// How long one peer may take to answer a lookup (GetFlightInfo); a slow or dead peer costs
/// only this, in parallel with the others.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a transfer may wait for the next message before it is abandoned.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP connect timeout to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 keep-alive pings on peer connections, so a vanished peer is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a keep-alive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long open calls may go on after SIGINT/SIGTERM before the gateway exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Threads that copy (and hash) a DoPut object buffered in memory into the store, as the
/// Python client's `memcopy_threads` default.
pub const COPY_THREADS: usize = 6;
