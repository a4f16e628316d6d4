//! The main socket: one blocking request/reply exchange at a time, and the fds that follow
//! some replies.
//!
//! Replies are read through a [`FrameDecoder`] that is only ever asked for the bytes it still
//! needs, so a read never runs past the end of a reply. That matters: the 1-byte messages that
//! carry segment fds come right after Create and Get replies, and a plain `read` that
//! swallowed one would drop its fd.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, send};

use super::Error;
use crate::fdpass;
use crate::protocol::{Encoder, FrameDecoder, MessageType, Reply, Request, decode_reply};

/// Largest reply body accepted. Bytes are buffered as they arrive (see [`READ_CHUNK`]), so a
/// hostile length costs only the bytes actually sent.
const MAX_REPLY_BODY: usize = 1 << 31;

/// Most bytes read from the socket in one call.
const READ_CHUNK: usize = 1 << 20;

/// One connection to the store.
pub struct Conn {
    sock: UnixStream,
    enc: Encoder,
    dec: FrameDecoder,
    out: Vec<u8>,
}

/// Writes all of `buf` with `MSG_NOSIGNAL`: a store that went away is an `EPIPE` error, not
/// a `SIGPIPE` that kills a host process which did not ignore it.
fn write_all(sock: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match send(sock.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn closed_by_store() -> Error {
    Error::Disconnected {
        reason: "the store closed the connection".to_string(),
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("sock", &self.sock).finish()
    }
}

impl Conn {
    /// Wraps a connected socket.
    pub fn new(sock: UnixStream) -> Conn {
        Conn {
            sock,
            enc: Encoder::new(),
            dec: FrameDecoder::new(MAX_REPLY_BODY),
            out: Vec::new(),
        }
    }

    /// Sends one request (without waiting for any reply).
    pub fn send(&mut self, req: &Request) -> Result<(), Error> {
        self.out.clear();
        self.enc.request(req, &mut self.out);
        let r = write_all(&self.sock, &self.out);
        if self.out.capacity() > READ_CHUNK {
            self.out = Vec::new();
        }
        r.map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => closed_by_store(),
            _ => Error::Io(e),
        })
    }

    /// Reads the next reply and checks that it has type `expected`.
    pub fn recv(&mut self, expected: MessageType) -> Result<Reply, Error> {
        loop {
            if let Some(frame) = self.dec.next_frame()? {
                if frame.msg_type != expected {
                    return Err(Error::UnexpectedReply {
                        expected,
                        got: frame.msg_type,
                    });
                }
                let reply = decode_reply(frame.msg_type, frame.body)?;
                self.dec.shrink(READ_CHUNK);
                return Ok(reply);
            }
            // `wanted` is at least 1 and never more than the rest of this reply.
            let want = self.dec.wanted().min(READ_CHUNK);
            let spare = self.dec.spare(want);
            let read = self.sock.read(spare);
            self.dec.commit(want, *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(closed_by_store()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(closed_by_store());
                }
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Sends `req` and reads its reply.
    pub fn call(&mut self, req: &Request) -> Result<Reply, Error> {
        let expected = req.reply_type().ok_or_else(|| {
            Error::InvalidArgument(format!("{:?} has no reply", req.message_type()))
        })?;
        self.send(req)?;
        self.recv(expected)
    }

    /// Receives the fd the store sends after a reply.
    pub fn recv_fd(&mut self) -> Result<OwnedFd, Error> {
        fdpass::recv_fd(&self.sock).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => closed_by_store(),
            _ => Error::Io(e),
        })
    }

    /// Sends an fd to the store (the subscription socket).
    pub fn send_fd(&mut self, fd: BorrowedFd<'_>) -> Result<(), Error> {
        loop {
            match fdpass::send_fd(&self.sock, fd) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(closed_by_store()),
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }
}
