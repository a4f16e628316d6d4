//! plasma-store: a robust, wire-compatible reimplementation of the Apache Arrow Plasma
//! shared-memory object store.
//!
//! - [`protocol`]: the wire format (framing, FlatBuffers messages), shared by both sides.
//! - [`client`]: a blocking Rust client.
//! - [`fdpass`]: passing file descriptors over Unix sockets.
//! - [`digest`]: the object digest the original client computes.

pub mod digest;
pub mod fdpass;
pub mod protocol;
