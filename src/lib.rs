//! plasma-store: a robust, wire-compatible reimplementation of the Apache Arrow Plasma
//! shared-memory object store.
//!
//! - [`protocol`]: the wire format (framing, FlatBuffers messages), shared by both sides.
//! - [`client`]: a blocking Rust client.
//! - [`server`]: the store daemon (one mio event loop that owns every piece of state).
//! - [`store`]: the object table and lifecycle, independent of sockets.
//! - [`external`]: external stores for evicted objects (`hashtable://`, the `file://` spill tier).
//! - [`arena`]: the offset allocator over the shared segment (no unsafe code).
//! - [`shm`]: the shared-memory segment.
//! - [`persist`]: `--persist DIR`, restarts that keep the sealed objects.
//! - [`fdpass`]: passing file descriptors over Unix sockets.
//! - [`digest`]: the object digest the original client computes.

pub mod arena;
pub mod client;
pub mod digest;
pub mod external;
pub mod fdpass;
pub mod persist;
pub mod protocol;
pub mod server;
pub mod shm;
pub mod store;

#[doc(hidden)]
pub mod fuzzing;
