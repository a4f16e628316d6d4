//! plasma-store: a robust, wire-compatible reimplementation of the Apache Arrow Plasma
//! shared-memory object store.
//!
//! - [`protocol`]: the wire format (framing, FlatBuffers messages), shared by both sides.
//! - [`client`]: a blocking Rust client.
//! - [`cli`]: the daemon's command line (`plasma_store` runs [`cli::run`]).
//! - [`server`]: the store daemon (one mio event loop that owns every piece of state).
//! - [`store`]: the object table and lifecycle, independent of sockets.
//! - [`pulls`]: which objects the gateway was asked to fetch from other machines.
//! - [`external`]: external stores for evicted objects (`hashtable://`, the `file://` spill tier).
//! - [`arena`]: the offset allocator over the shared segment (no unsafe code).
//! - [`shm`]: the shared-memory segment.
//! - [`persist`]: `--persist DIR`, restarts that keep the sealed objects.
//! - [`fdpass`]: passing file descriptors over Unix sockets.
//! - [`metrics`], [`http`]: the Prometheus page (`--metrics-listen`), served by the loop.
//! - [`digest`]: the object digest the original client computes.
//! - [`stream_copy`]: stores that bypass the cache (the client's large puts).
//! - [`warmup`]: the background thread that makes the segment resident after start-up.

pub mod arena;
pub mod cli;
pub mod client;
pub mod digest;
pub mod external;
pub mod fdpass;
pub mod http;
pub mod metrics;
pub mod persist;
pub mod protocol;
pub mod pulls;
pub mod server;
pub mod shm;
pub mod store;
pub mod stream_copy;
pub mod warmup;

#[doc(hidden)]
pub mod fuzzing;
