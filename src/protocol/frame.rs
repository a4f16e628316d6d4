//! Framing of the main socket: a 24-byte header (version, message type, body length, each a
//! little-endian `i64`) followed by `length` bytes of FlatBuffers body.
//!
//! [`FrameDecoder`] is incremental: an event loop hands it bytes in whatever chunks the socket
//! produced and takes whole frames out. Every header is checked before any body byte is
//! buffered for it, so a hostile length never causes a large allocation.

use super::{MessageType, ProtocolError};

/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 24;

/// The only protocol version the original store and clients speak.
pub const PROTOCOL_VERSION: i64 = 0;

/// A parsed, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message type; always a known value.
    pub msg_type: MessageType,
    /// Length of the body that follows, already checked against the decoder's limit.
    pub body_len: usize,
}

impl Header {
    /// Parses and validates a header against a body-length limit.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_body: usize) -> Result<Header, ProtocolError> {
        let field = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            i64::from_le_bytes(b)
        };
        let (version, raw_type, len) = (field(0), field(1), field(2));
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::BadVersion(version));
        }
        let msg_type =
            MessageType::from_wire(raw_type).ok_or(ProtocolError::UnknownType(raw_type))?;
        if len < 0 {
            return Err(ProtocolError::NegativeLength(len));
        }
        let body_len =
            usize::try_from(len)
                .ok()
                .filter(|&l| l <= max_body)
                .ok_or(ProtocolError::TooLong {
                    len: len as u64,
                    max: max_body as u64,
                })?;
        Ok(Header { msg_type, body_len })
    }

    /// Encodes a header for a body of `body_len` bytes.
    pub fn encode(msg_type: MessageType, body_len: usize) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&(msg_type as i64).to_le_bytes());
        out[16..24].copy_from_slice(&(body_len as i64).to_le_bytes());
        out
    }
}

/// One complete frame borrowed from the decoder's buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message type from the header.
    pub msg_type: MessageType,
    /// Exactly `length` body bytes.
    pub body: &'a [u8],
}

/// Incremental frame decoder with a bound on body length.
///
/// Feed bytes with [`FrameDecoder::extend`] (or read straight into
/// [`FrameDecoder::spare`] and [`FrameDecoder::commit`]), then call
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`. After an error the stream is
/// unusable: framing is lost, and the connection should be closed.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Received bytes are `buf[..filled]`; the rest of `buf` is room for the next read, kept
    /// (already zeroed) from read to read instead of being re-zeroed each time.
    buf: Vec<u8>,
    /// End of the received bytes in `buf`.
    filled: usize,
    /// Start of unconsumed bytes in `buf`.
    start: usize,
    /// Bytes of the frame returned by the previous `next_frame`, consumed on the next call.
    pending: usize,
    max_body: usize,
    /// The validated header of the frame being assembled, if its header is complete.
    header: Option<Header>,
}

impl FrameDecoder {
    /// A decoder that rejects bodies longer than `max_body` bytes.
    pub fn new(max_body: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            filled: 0,
            start: 0,
            pending: 0,
            max_body,
            header: None,
        }
    }

    /// The body-length limit.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.compact();
        self.buf.truncate(self.filled);
        self.buf.extend_from_slice(data);
        self.filled = self.buf.len();
    }

    /// Number of received bytes not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.filled - self.start - self.pending
    }

    /// Number of bytes the decoder wants next: the rest of the header, or of the body.
    /// Readers use it to size a read without over-allocating for a hostile length.
    pub fn wanted(&self) -> usize {
        let have = self.buffered();
        match self.header {
            None => HEADER_LEN.saturating_sub(have).max(1),
            Some(h) => (HEADER_LEN + h.body_len).saturating_sub(have).max(1),
        }
    }

    /// Returns a writable slice of `len` bytes after the received bytes, to read into
    /// directly; follow with [`FrameDecoder::commit`] for the bytes actually written.
    pub fn spare(&mut self, len: usize) -> &mut [u8] {
        self.compact();
        let end = self.filled + len;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.filled..end]
    }

    /// Keeps `n` of the bytes written into the last [`FrameDecoder::spare`] slice of
    /// `spare_len` bytes.
    pub fn commit(&mut self, spare_len: usize, n: usize) {
        self.filled += n.min(spare_len);
    }

    fn compact(&mut self) {
        self.start += self.pending;
        self.pending = 0;
        if self.start == self.filled {
            self.filled = 0;
            self.start = 0;
        } else if self.start > 0 && self.start >= self.filled / 2 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed, or the error
    /// that makes the stream unusable.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, ProtocolError> {
        self.start += self.pending;
        self.pending = 0;
        let avail = self.buf.get(self.start..self.filled).unwrap_or_default();
        let header = match self.header {
            Some(h) => h,
            None => {
                let Some(raw) = avail.first_chunk::<HEADER_LEN>() else {
                    return Ok(None);
                };
                let h = Header::parse(raw, self.max_body)?;
                self.header = Some(h);
                h
            }
        };
        let total = HEADER_LEN + header.body_len;
        let Some(body) = avail.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        self.header = None;
        self.pending = total;
        Ok(Some(Frame {
            msg_type: header.msg_type,
            body,
        }))
    }

    /// Consumes one raw byte between two frames: the data byte that carries a passed fd
    /// (a SubscribeRequest is followed by one). Returns false if no byte is buffered or a frame
    /// is partly parsed.
    pub fn skip_byte(&mut self) -> bool {
        self.start += self.pending;
        self.pending = 0;
        if self.header.is_some() || self.start >= self.filled {
            return false;
        }
        self.start += 1;
        true
    }

    /// Frees the buffer if it grew large and is now empty (after a big message).
    pub fn shrink(&mut self, keep: usize) {
        self.compact();
        if self.buffered() == 0 && self.buf.capacity() > keep {
            self.buf = Vec::new();
            self.filled = 0;
            self.start = 0;
        }
    }
}

/// Appends one framed message (`header ‖ body`) to `out`.
pub fn write_frame(out: &mut Vec<u8>, msg_type: MessageType, body: &[u8]) {
    out.extend_from_slice(&Header::encode(msg_type, body.len()));
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(t: MessageType, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, t, body);
        v
    }

    #[test]
    fn header_layout_is_three_le_i64() {
        let h = Header::encode(MessageType::ConnectRequest, 12);
        assert_eq!(&h[0..8], &[0; 8]);
        assert_eq!(&h[8..16], &19i64.to_le_bytes());
        assert_eq!(&h[16..24], &12i64.to_le_bytes());
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut stream = framed(MessageType::ConnectRequest, &[1, 2, 3]);
        stream.extend(framed(MessageType::ListRequest, &[9; 40]));
        let mut d = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for b in stream {
            d.extend(&[b]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push((f.msg_type, f.body.to_vec()));
            }
        }
        assert_eq!(
            got,
            vec![
                (MessageType::ConnectRequest, vec![1, 2, 3]),
                (MessageType::ListRequest, vec![9; 40])
            ]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn empty_body_is_a_frame() {
        let mut d = FrameDecoder::new(16);
        d.extend(&framed(MessageType::DisconnectClient, &[]));
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.msg_type, MessageType::DisconnectClient);
        assert!(f.body.is_empty());
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn rejects_bad_headers_before_buffering_the_body() {
        let mut h = Header::encode(MessageType::GetRequest, 0);
        h[0] = 1;
        assert_eq!(Header::parse(&h, 8), Err(ProtocolError::BadVersion(1)));

        let mut h = Header::encode(MessageType::GetRequest, 0);
        h[8..16].copy_from_slice(&99i64.to_le_bytes());
        assert_eq!(Header::parse(&h, 8), Err(ProtocolError::UnknownType(99)));
        h[8..16].copy_from_slice(&(-3i64).to_le_bytes());
        assert_eq!(Header::parse(&h, 8), Err(ProtocolError::UnknownType(-3)));

        let mut h = Header::encode(MessageType::GetRequest, 0);
        h[16..24].copy_from_slice(&(-1i64).to_le_bytes());
        assert_eq!(Header::parse(&h, 8), Err(ProtocolError::NegativeLength(-1)));

        let h = Header::encode(MessageType::GetRequest, 9);
        assert_eq!(
            Header::parse(&h, 8),
            Err(ProtocolError::TooLong { len: 9, max: 8 })
        );
        let mut d = FrameDecoder::new(8);
        d.extend(&h);
        assert!(d.next_frame().is_err());
        assert!(d.wanted() <= HEADER_LEN);
    }

    #[test]
    fn wanted_tracks_header_then_body() {
        let mut d = FrameDecoder::new(100);
        assert_eq!(d.wanted(), HEADER_LEN);
        let s = framed(MessageType::SealRequest, &[7; 50]);
        d.extend(&s[..10]);
        assert_eq!(d.wanted(), 14);
        d.extend(&s[10..24]);
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.wanted(), 50);
        let spare = d.spare(50);
        spare[..20].copy_from_slice(&s[24..44]);
        d.commit(50, 20);
        assert_eq!(d.wanted(), 30);
        d.extend(&s[44..]);
        assert_eq!(d.next_frame().unwrap().unwrap().body, &[7; 50][..]);
    }
}
