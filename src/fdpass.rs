//! Passing file descriptors over Unix stream sockets (`SCM_RIGHTS`), the way Plasma does it:
//! every fd travels in its own `sendmsg` with exactly one data byte.
//!
//! Received fds become [`OwnedFd`]s at once (close-on-exec), so none can leak: an fd nobody
//! asked for is closed when its `OwnedFd` is dropped. This is one of the two modules that need
//! `unsafe` (taking ownership of a descriptor number the kernel just gave us).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Most fds accepted in one receive; the kernel closes any beyond the buffer's room.
pub const MAX_FDS_PER_RECV: usize = 4;

/// The data byte sent along with each fd. Its value carries no meaning.
pub const FD_BYTE: u8 = 0x14;

/// Sends one data byte carrying `fd`. Returns the number of data bytes sent (1), or an error
/// (`WouldBlock` on a full non-blocking socket: nothing was sent then).
pub fn send_fd(sock: &impl AsRawFd, fd: BorrowedFd<'_>) -> io::Result<usize> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(&[FD_BYTE])];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)
}

/// Receives bytes into `buf`, and any fds that came with them into `fds` (as owned,
/// close-on-exec descriptors). Returns the number of bytes read; 0 means end of stream.
pub fn recv_with_fds(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut cmsg = cmsg_space!([RawFd; MAX_FDS_PER_RECV]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let n = msg.bytes;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(received) = c {
                for raw in received {
                    // SAFETY: the kernel just installed `raw` in our fd table for this message;
                    // nothing else knows the number, so we are its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
    }
    Ok(n)
}

/// Receives exactly one fd sent by [`send_fd`] (a blocking socket waits for it). Fails if the
/// stream ended, or a byte arrived without exactly one fd.
pub fn recv_fd(sock: &impl AsRawFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut fds = Vec::new();
    let n = loop {
        match recv_with_fds(sock, &mut byte, &mut fds) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed while waiting for a file descriptor",
        ));
    }
    if fds.len() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected one file descriptor, received {}", fds.len()),
        ));
    }
    fds.pop()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no file descriptor"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn an_fd_arrives_and_refers_to_the_same_file() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"shared").unwrap();
        assert_eq!(send_fd(&a, f.as_fd()).unwrap(), 1);
        let mut g = File::from(recv_fd(&b).unwrap());
        g.rewind().unwrap();
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert_eq!(s, "shared");
        let flags = nix::fcntl::fcntl(&g, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(flags & nix::fcntl::FdFlag::FD_CLOEXEC.bits() != 0);
    }

    #[test]
    fn fds_stay_in_order_with_the_byte_stream() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<File> = (0..3).map(|_| tempfile::tempfile().unwrap()).collect();
        (&a).write_all(b"reply").unwrap();
        for f in &files {
            send_fd(&a, f.as_fd()).unwrap();
        }
        let mut buf = [0u8; 5];
        let mut fds = Vec::new();
        let mut got = 0;
        while got < 5 {
            got += recv_with_fds(&b, &mut buf[got..], &mut fds).unwrap();
        }
        assert_eq!(&buf, b"reply");
        assert!(fds.is_empty(), "no fd rides on the reply bytes");
        for f in &files {
            let r = recv_fd(&b).unwrap();
            let (x, y) = (
                nix::sys::stat::fstat(&r).unwrap(),
                nix::sys::stat::fstat(f).unwrap(),
            );
            assert_eq!((x.st_dev, x.st_ino), (y.st_dev, y.st_ino));
        }
    }

    #[test]
    fn a_byte_without_an_fd_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&[1]).unwrap();
        assert_eq!(recv_fd(&b).unwrap_err().kind(), io::ErrorKind::InvalidData);
        drop(a);
        assert_eq!(
            recv_fd(&b).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn extra_fds_beyond_the_buffer_are_not_leaked_into_the_result() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        let raw = [f.as_raw_fd(); MAX_FDS_PER_RECV + 3];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"x")],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut fds = Vec::new();
        let mut buf = [0u8; 8];
        assert_eq!(recv_with_fds(&b, &mut buf, &mut fds).unwrap(), 1);
        assert!(fds.len() <= MAX_FDS_PER_RECV);
    }
}
