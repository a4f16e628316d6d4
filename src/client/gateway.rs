//! The gateway's miss socket: where the store reports objects that waiting gets need and it
//! does not hold (this store's protocol extension; see `schema/EXTENSIONS.md`).
//!
//! Each message is framed like every other Plasma message (the 24-byte header, type
//! `GatewayMiss`) and holds the ids of one or more objects. No fds travel on this socket.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::Error;
use crate::protocol::{FrameDecoder, MessageType, ObjectId, ProtocolError, decode_gateway_miss};

/// Largest miss message accepted (a get may name many ids at once).
const MAX_MISS: usize = 64 << 20;

/// Most bytes read in one call.
const READ_CHUNK: usize = 64 << 10;

/// The misses of a registered gateway, from [`Client::register_gateway`](super::Client::register_gateway).
///
/// [`GatewayMisses::next_misses`] blocks until the store reports some (see
/// [`GatewayMisses::set_read_timeout`]); the socket is available through [`AsRawFd`] /
/// [`AsFd`] for an event loop. The store closes it when the gateway's connection goes.
#[derive(Debug)]
pub struct GatewayMisses {
    sock: UnixStream,
    decoder: FrameDecoder,
    done: bool,
}

impl GatewayMisses {
    pub(super) fn new(sock: UnixStream) -> GatewayMisses {
        GatewayMisses {
            sock,
            decoder: FrameDecoder::new(MAX_MISS),
            done: false,
        }
    }

    /// Bounds how long [`GatewayMisses::next_misses`] blocks; `None` waits forever. When the
    /// time runs out the call fails with an [`Error::Io`] of kind `WouldBlock` or `TimedOut`,
    /// keeping a partly received message for the next call.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        Ok(self.sock.set_read_timeout(timeout)?)
    }

    /// The ids of the next miss message (never empty); `Ok(None)` once the store closed the
    /// socket.
    pub fn next_misses(&mut self) -> Result<Option<Vec<ObjectId>>, Error> {
        loop {
            if self.done {
                return Ok(None);
            }
            match self.decoder.next_frame() {
                Ok(Some(frame)) if frame.msg_type == MessageType::GatewayMiss => {
                    let ids = decode_gateway_miss(frame.body)?;
                    if ids.is_empty() {
                        continue;
                    }
                    return Ok(Some(ids));
                }
                Ok(Some(frame)) => {
                    self.done = true;
                    return Err(Error::Protocol(ProtocolError::UnexpectedType(
                        frame.msg_type,
                    )));
                }
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Err(Error::Protocol(e));
                }
            }
            // No fds travel here, so reading ahead of the current message is safe.
            let spare = self.decoder.spare(READ_CHUNK);
            let len = spare.len();
            let read = self.sock.read(spare);
            self.decoder.commit(len, *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    self.done = true;
                    if self.decoder.buffered() == 0 {
                        return Ok(None);
                    }
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the miss socket closed in the middle of a message",
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(Error::Io(e));
                    }
                }
            }
        }
    }
}

impl AsRawFd for GatewayMisses {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for GatewayMisses {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
