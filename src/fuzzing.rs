//! Entry points of the fuzz targets in `fuzz/`, so that each target is one line.
//!
//! Each function asserts a property of the protocol layer, not merely that nothing panics:
//!
//! - [`frame_decoder`]: a byte stream fed in arbitrary chunks yields exactly the frames (and
//!   the same error, at the same place) as the whole stream at once; a reader that reads no
//!   more than [`FrameDecoder::wanted`] never holds more than a header plus the body limit;
//!   every frame re-encodes to the bytes it was decoded from.
//! - [`decode_request`], [`decode_reply`], [`decode_notification`]: arbitrary bodies decode
//!   to an error or to a value that encodes, frames and decodes back to itself, in bounded
//!   size.
//! - [`roundtrip`]: any valid message (built by the fuzz crate's generator) encodes, frames
//!   and decodes back to itself.
//!
//! It adds no dependency: the structure-aware generator lives in the fuzz crate.

use crate::protocol::{
    self, Encoder, Frame, FrameDecoder, HEADER_LEN, MessageType, ObjectInfo, ProtocolError, Reply,
    Request, write_frame,
};

/// A message of any kind, for [`roundtrip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Sent by clients on the main socket.
    Request(Request),
    /// Sent by the store on the main socket.
    Reply(Reply),
    /// Sent by the store on a subscriber socket: the infos of one notification.
    Notification(Vec<ObjectInfo>),
}

/// The largest body the `decode_*` targets frame their re-encoded messages with.
const FUZZ_MAX_BODY: usize = 1 << 24;

/// Re-encoding may not be much larger than the body it came from: the decoder bounds how far
/// shared offsets can multiply a message.
fn assert_bounded(body_len: usize, encoded_len: usize) {
    assert!(
        encoded_len <= 8 * body_len + 4096,
        "a {body_len}-byte body re-encoded to {encoded_len} bytes"
    );
}

/// The one frame in `bytes`, which must hold exactly one.
fn single_frame(bytes: &[u8]) -> (MessageType, Vec<u8>) {
    let mut d = FrameDecoder::new(FUZZ_MAX_BODY);
    d.extend(bytes);
    let (t, body) = match d.next_frame() {
        Ok(Some(Frame { msg_type, body })) => (msg_type, body.to_vec()),
        other => panic!("encoder output is not one frame: {other:?}"),
    };
    assert_eq!(d.next_frame(), Ok(None));
    assert_eq!(d.buffered(), 0, "bytes after the frame");
    (t, body)
}

/// The body of a notification, after checking its 8-byte length prefix.
fn notification_body(bytes: &[u8]) -> &[u8] {
    let (len, body) = bytes.split_at(8);
    let len = u64::from_ne_bytes(len.try_into().expect("8 bytes"));
    assert_eq!(len, body.len() as u64, "notification length prefix");
    body
}

/// What a notification carries of an info: id, sizes and digest for a seal, id, sizes and
/// the flag for a deletion; the other fields come back as defaults.
pub fn as_notified(i: &ObjectInfo) -> ObjectInfo {
    ObjectInfo {
        object_id: i.object_id,
        data_size: i.data_size,
        metadata_size: i.metadata_size,
        digest: if i.is_deletion { None } else { i.digest },
        is_deletion: i.is_deletion,
        ..Default::default()
    }
}

fn check_request(r: &Request) -> Vec<u8> {
    let mut bytes = Vec::new();
    Encoder::new().request(r, &mut bytes);
    let (t, body) = single_frame(&bytes);
    assert_eq!(t, r.message_type());
    let back = protocol::decode_request(t, &body).expect("our own encoding decodes");
    assert_eq!(&back, r);
    let mut again = Vec::new();
    Encoder::new().request(&back, &mut again);
    assert_eq!(again, bytes, "encoding is a function of the value");
    bytes
}

fn check_reply(r: &Reply) -> Vec<u8> {
    let mut bytes = Vec::new();
    Encoder::new().reply(r, &mut bytes);
    let (t, body) = single_frame(&bytes);
    assert_eq!(t, r.message_type());
    let back = protocol::decode_reply(t, &body).expect("our own encoding decodes");
    assert_eq!(&back, r);
    let mut again = Vec::new();
    Encoder::new().reply(&back, &mut again);
    assert_eq!(again, bytes, "encoding is a function of the value");
    bytes
}

fn check_notification(infos: &[ObjectInfo]) -> Vec<u8> {
    let mut bytes = Vec::new();
    Encoder::new().notification(infos, &mut bytes);
    let back =
        protocol::decode_notification(notification_body(&bytes)).expect("our own encoding decodes");
    let want: Vec<ObjectInfo> = infos.iter().map(as_notified).collect();
    assert_eq!(back, want);
    bytes
}

/// The message type a fuzz input's first byte picks: the original's 36 types and the
/// extension's 6, modulo 42.
fn pick_type(t: u8) -> MessageType {
    let n = MessageType::ALL.len() + MessageType::EXTENSIONS.len();
    let i = usize::from(t) % n;
    MessageType::ALL
        .get(i)
        .or_else(|| MessageType::EXTENSIONS.get(i - MessageType::ALL.len()))
        .copied()
        .unwrap_or(MessageType::ConnectRequest)
}

/// Fuzz target body: the first byte picks a message type (see `pick_type`), the rest is the
/// body. Bodies that decode as a request must round-trip.
pub fn decode_request(data: &[u8]) {
    let Some((&t, body)) = data.split_first() else {
        return;
    };
    let t = pick_type(t);
    if let Ok(r) = protocol::decode_request(t, body) {
        assert_eq!(r.message_type(), t);
        let encoded = check_request(&r);
        assert_bounded(body.len(), encoded.len());
    }
}

/// Fuzz target body: as [`decode_request`], for replies, and for the gateway's miss
/// messages (what a gateway reads from the store).
pub fn decode_reply(data: &[u8]) {
    let Some((&t, body)) = data.split_first() else {
        return;
    };
    let t = pick_type(t);
    if t == MessageType::GatewayMiss {
        if let Ok(ids) = protocol::decode_gateway_miss(body) {
            let mut encoded = Vec::new();
            Encoder::new().gateway_miss(&ids, &mut encoded);
            let (t2, body2) = single_frame(&encoded);
            assert_eq!(t2, MessageType::GatewayMiss);
            assert_eq!(protocol::decode_gateway_miss(&body2).ok(), Some(ids));
            assert_bounded(body.len(), encoded.len());
        }
        return;
    }
    if let Ok(r) = protocol::decode_reply(t, body) {
        assert_eq!(r.message_type(), t);
        let encoded = check_reply(&r);
        assert_bounded(body.len(), encoded.len());
    }
}

/// Fuzz target body: the whole input is a notification body.
pub fn decode_notification(data: &[u8]) {
    if let Ok(infos) = protocol::decode_notification(data) {
        let encoded = check_notification(&infos);
        assert_bounded(data.len(), encoded.len());
    }
}

/// Fuzz target body: a valid message survives encode → frame → decode unchanged.
pub fn roundtrip(msg: &Message) {
    match msg {
        Message::Request(r) => {
            check_request(r);
        }
        Message::Reply(r) => {
            check_reply(r);
        }
        Message::Notification(infos) => {
            check_notification(infos);
        }
    }
}

/// A small deterministic generator of chunk sizes (xorshift), seeded from the input.
struct Chunks(u32);

impl Chunks {
    fn next(&mut self, max: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        // Mostly small pieces, sometimes large ones.
        let n = if x & 0x300 == 0 {
            x >> 10
        } else {
            (x >> 10) % 32
        };
        (n as usize % max.max(1)) + 1
    }

    fn coin(&mut self) -> bool {
        self.next(2) == 1
    }
}

/// How a decoding pass ended.
#[derive(Debug, PartialEq)]
enum End {
    /// An error; the stream is unusable from here.
    Error(ProtocolError),
    /// Out of input with this many bytes of an incomplete frame held.
    NeedMore(usize),
}

/// Takes every complete frame out of `d`; returns the error if one ends the stream.
fn drain(d: &mut FrameDecoder, frames: &mut Vec<(MessageType, Vec<u8>)>) -> Option<ProtocolError> {
    let max_body = d.max_body();
    loop {
        match d.next_frame() {
            Ok(Some(f)) => {
                assert!(f.body.len() <= max_body);
                frames.push((f.msg_type, f.body.to_vec()));
            }
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

/// Fuzz target body. Input: a chunking seed byte, the body limit (u16 little-endian), then
/// the byte stream.
pub fn frame_decoder(data: &[u8]) {
    let [seed, lo, hi, stream @ ..] = data else {
        return;
    };
    let max_body = usize::from(u16::from_le_bytes([*lo, *hi]));

    // The reference: the whole stream at once.
    let mut whole = FrameDecoder::new(max_body);
    whole.extend(stream);
    let mut want_frames = Vec::new();
    let want_end = match drain(&mut whole, &mut want_frames) {
        Some(e) => End::Error(e),
        None => End::NeedMore(whole.buffered()),
    };

    // The frames re-encode to exactly the bytes they came from.
    let mut reencoded = Vec::new();
    for (t, body) in &want_frames {
        write_frame(&mut reencoded, *t, body);
    }
    assert_eq!(&stream[..reencoded.len()], &reencoded[..]);
    if let End::NeedMore(held) = want_end {
        assert_eq!(reencoded.len() + held, stream.len());
        assert!(held < HEADER_LEN + max_body);
    }

    // An event-loop reader: never more than `wanted()` at a time, into `spare()` or through
    // `extend()`, so the buffer stays within one header and one body.
    let mut chunks = Chunks(u32::from(*seed).wrapping_mul(0x9e37_79b9) | 1);
    let mut d = FrameDecoder::new(max_body);
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut end = None;
    while end.is_none() && pos < stream.len() {
        let n = chunks.next(d.wanted()).min(stream.len() - pos);
        if chunks.coin() {
            d.extend(&stream[pos..pos + n]);
        } else {
            // Offer more room than is used, as a read() that came back short.
            let room = n + chunks.next(8) - 1;
            let spare = d.spare(room);
            assert!(spare.len() >= room);
            spare[..n].copy_from_slice(&stream[pos..pos + n]);
            d.commit(room, n);
        }
        pos += n;
        assert!(
            d.buffered() <= HEADER_LEN + max_body,
            "{} bytes held with a {max_body}-byte limit",
            d.buffered()
        );
        end = drain(&mut d, &mut frames).map(End::Error);
        if frames.len() % 8 == 7 {
            d.shrink(64);
        }
    }
    let end = end.unwrap_or(End::NeedMore(d.buffered()));
    assert_eq!(frames, want_frames);
    assert_eq!(end, want_end);

    // Arbitrary chunks, several frames at a time.
    let mut d = FrameDecoder::new(max_body);
    let mut frames = Vec::new();
    let mut end = None;
    let mut pos = 0;
    while end.is_none() && pos < stream.len() {
        let n = chunks.next(stream.len() - pos);
        d.extend(&stream[pos..pos + n]);
        pos += n;
        end = drain(&mut d, &mut frames).map(End::Error);
    }
    let end = end.unwrap_or(End::NeedMore(d.buffered()));
    assert_eq!(frames, want_frames);
    assert_eq!(end, want_end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ObjectId, Reply};

    #[test]
    fn entry_points_accept_anything() {
        for data in [&[][..], &[0], &[1, 2, 3], &[0xff; 100], &[9, 4, 0, 0, 0]] {
            frame_decoder(data);
            decode_request(data);
            decode_reply(data);
            decode_notification(data);
        }
    }

    #[test]
    fn frame_decoder_on_a_real_stream() {
        let mut stream = vec![7, 0xff, 0xff];
        let mut enc = Encoder::new();
        for r in [
            Request::Connect,
            Request::Contains {
                object_id: ObjectId([3; 20]),
            },
            Request::Evict { num_bytes: 9 },
        ] {
            enc.request(&r, &mut stream);
        }
        for seed in 0..=255u8 {
            stream[0] = seed;
            frame_decoder(&stream);
            // Cut short, and with a limit the second frame exceeds.
            frame_decoder(&stream[..stream.len() - 5]);
            let mut limited = stream.clone();
            limited[1..3].copy_from_slice(&40u16.to_le_bytes());
            frame_decoder(&limited);
        }
    }

    #[test]
    fn roundtrip_of_each_kind() {
        roundtrip(&Message::Request(Request::List));
        roundtrip(&Message::Reply(Reply::Evict { num_bytes: 1 }));
        roundtrip(&Message::Notification(vec![ObjectInfo {
            ref_count: 3,
            ..Default::default()
        }]));
    }
}
