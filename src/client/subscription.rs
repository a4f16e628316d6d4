//! Notifications: the socket a subscribed client reads seals, deletions and evictions from.
//!
//! Each notification is an 8-byte length in host byte order followed by a
//! `PlasmaNotification` FlatBuffer holding one or more `ObjectInfo`s (a batch seal sends
//! them all in one message). There is no 24-byte header on this socket, and no fds, so bytes
//! can be read in large chunks.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::Error;
use crate::protocol::{ObjectInfo, ProtocolError, decode_notification};

/// Largest notification body accepted (a batch seal of many objects is one message).
const MAX_NOTIFICATION: u64 = 1 << 31;

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 8;

/// Most bytes read in one call.
const READ_CHUNK: usize = 64 << 10;

/// A subscription to the store's notifications, from [`Client::subscribe`](super::Client::subscribe).
///
/// Iterate it for one [`ObjectInfo`] per sealed, deleted or evicted object, in the store's
/// order: a seal carries `data_size`, `metadata_size` and `digest`; a deletion or eviction
/// has `is_deletion` set and nothing else. Right after subscribing, the store sends one
/// notification for every object that is already sealed.
///
/// The iterator blocks until a notification arrives (see
/// [`Subscription::set_read_timeout`]) and ends when the store closes the socket, which it
/// does when the subscribing client disconnects. The raw socket is available through
/// [`AsRawFd`] / [`AsFd`] for use with `poll` or an event loop; read it only through this
/// type, which keeps the framing.
#[derive(Debug)]
pub struct Subscription {
    sock: UnixStream,
    /// Received bytes not yet decoded.
    buf: Vec<u8>,
    /// Decoded infos not yet returned.
    queue: VecDeque<ObjectInfo>,
    /// The stream ended or lost its framing.
    done: bool,
}

impl Subscription {
    pub(super) fn new(sock: UnixStream) -> Subscription {
        Subscription {
            sock,
            buf: Vec::new(),
            queue: VecDeque::new(),
            done: false,
        }
    }

    /// Bounds how long [`Subscription::next_notification`] blocks; `None` waits forever.
    /// When the time runs out the call fails with an [`Error::Io`] of kind `WouldBlock` or
    /// `TimedOut`; a partly received notification is kept, and the next call goes on.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        Ok(self.sock.set_read_timeout(timeout)?)
    }

    /// The next notification, `Ok(None)` once the store has closed the socket.
    pub fn next_notification(&mut self) -> Result<Option<ObjectInfo>, Error> {
        loop {
            if let Some(info) = self.queue.pop_front() {
                return Ok(Some(info));
            }
            if self.done {
                return Ok(None);
            }
            if self.decode_one()? {
                continue;
            }
            let start = self.buf.len();
            self.buf.resize(start + READ_CHUNK, 0);
            let read = self.sock.read(&mut self.buf[start..]);
            self.buf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) if self.buf.is_empty() => {
                    self.done = true;
                    return Ok(None);
                }
                Ok(0) => {
                    self.done = true;
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the notification socket closed in the middle of a notification",
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Decodes one complete message from the buffer, if there is one.
    fn decode_one(&mut self) -> Result<bool, Error> {
        let Some(prefix) = self.buf.first_chunk::<LEN_PREFIX>() else {
            return Ok(false);
        };
        let len = u64::from_ne_bytes(*prefix);
        if len > MAX_NOTIFICATION {
            self.done = true;
            return Err(Error::Protocol(ProtocolError::TooLong {
                len,
                max: MAX_NOTIFICATION,
            }));
        }
        let end = LEN_PREFIX + len as usize;
        let Some(body) = self.buf.get(LEN_PREFIX..end) else {
            return Ok(false);
        };
        match decode_notification(body) {
            Ok(infos) => {
                self.queue.extend(infos);
                self.buf.drain(..end);
                Ok(true)
            }
            Err(e) => {
                self.done = true;
                Err(Error::Protocol(e))
            }
        }
    }
}

impl Iterator for Subscription {
    type Item = Result<ObjectInfo, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_notification().transpose()
    }
}

impl AsRawFd for Subscription {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for Subscription {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Encoder, ObjectId};
    use std::io::Write;

    fn seal(n: u8) -> ObjectInfo {
        ObjectInfo {
            object_id: ObjectId([n; 20]),
            data_size: 10 * i64::from(n),
            metadata_size: 1,
            digest: Some([n; 8]),
            ..Default::default()
        }
    }

    fn deletion(n: u8) -> ObjectInfo {
        ObjectInfo {
            object_id: ObjectId([n; 20]),
            is_deletion: true,
            ..Default::default()
        }
    }

    #[test]
    fn yields_each_info_of_multi_info_messages_in_order_across_split_writes() {
        let (mut store, ours) = UnixStream::pair().unwrap();
        let mut enc = Encoder::new();
        let mut bytes = Vec::new();
        enc.notification(&[seal(1), seal(2), seal(3)], &mut bytes);
        enc.notification(&[deletion(2)], &mut bytes);
        enc.notification(&[], &mut bytes);
        enc.notification(&[seal(4)], &mut bytes);
        let writer = std::thread::spawn(move || {
            for b in bytes.chunks(5) {
                store.write_all(b).unwrap();
            }
        });
        let got: Vec<ObjectInfo> = Subscription::new(ours).map(Result::unwrap).collect();
        writer.join().unwrap();
        assert_eq!(got, vec![seal(1), seal(2), seal(3), deletion(2), seal(4)]);
    }

    #[test]
    fn a_message_cut_short_is_an_error_then_the_end() {
        let (mut store, ours) = UnixStream::pair().unwrap();
        let mut bytes = Vec::new();
        Encoder::new().notification(&[seal(1)], &mut bytes);
        store.write_all(&bytes[..bytes.len() - 1]).unwrap();
        drop(store);
        let mut s = Subscription::new(ours);
        assert!(
            matches!(s.next(), Some(Err(Error::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
        assert!(s.next().is_none());
    }

    #[test]
    fn garbage_and_huge_lengths_are_errors_not_panics() {
        let (mut store, ours) = UnixStream::pair().unwrap();
        store.write_all(&4u64.to_ne_bytes()).unwrap();
        store.write_all(&[0xff; 4]).unwrap();
        let mut s = Subscription::new(ours);
        assert!(matches!(s.next(), Some(Err(Error::Protocol(_)))));
        assert!(s.next().is_none());

        let (mut store, ours) = UnixStream::pair().unwrap();
        store.write_all(&u64::MAX.to_ne_bytes()).unwrap();
        let mut s = Subscription::new(ours);
        assert!(matches!(
            s.next(),
            Some(Err(Error::Protocol(ProtocolError::TooLong { .. })))
        ));
    }

    #[test]
    fn a_timeout_keeps_the_partial_message() {
        let (mut store, ours) = UnixStream::pair().unwrap();
        let mut bytes = Vec::new();
        Encoder::new().notification(&[seal(7)], &mut bytes);
        store.write_all(&bytes[..11]).unwrap();
        let mut s = Subscription::new(ours);
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        match s.next_notification() {
            Err(Error::Io(e)) => assert!(matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )),
            other => panic!("expected a timeout, got {other:?}"),
        }
        store.write_all(&bytes[11..]).unwrap();
        assert_eq!(s.next_notification().unwrap(), Some(seal(7)));
    }
}
