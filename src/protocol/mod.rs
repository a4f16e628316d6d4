//! The Plasma wire protocol: framing, the owned message types, and their conversion from and
//! to FlatBuffers.
//!
//! This module is pure functions over bytes. The store and the client only ever see the
//! validated types of [`messages`]; the generated FlatBuffers code stays inside this module.
//! Object ids and digests are binary data carried in FlatBuffers `string` fields, so they are
//! verified and read as byte vectors (the generated accessors would require UTF-8).

pub mod decode;
pub mod encode;
pub mod frame;
pub mod messages;

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::pedantic,
    unsafe_op_in_unsafe_fn,
    mismatched_lifetime_syntaxes,
    missing_docs,
    non_snake_case,
    unused
)]
#[rustfmt::skip]
#[path = "generated/plasma_generated.rs"]
mod generated;

pub use decode::{decode_gateway_miss, decode_notification, decode_reply, decode_request};
pub use encode::Encoder;
pub use frame::{Frame, FrameDecoder, HEADER_LEN, Header, write_frame};
pub use messages::*;

use std::fmt;

/// Every message type of the protocol, with its wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i64)]
#[allow(missing_docs)]
pub enum MessageType {
    DisconnectClient = 0,
    CreateRequest = 1,
    CreateReply = 2,
    CreateAndSealRequest = 3,
    CreateAndSealReply = 4,
    AbortRequest = 5,
    AbortReply = 6,
    SealRequest = 7,
    SealReply = 8,
    GetRequest = 9,
    GetReply = 10,
    ReleaseRequest = 11,
    ReleaseReply = 12,
    DeleteRequest = 13,
    DeleteReply = 14,
    ContainsRequest = 15,
    ContainsReply = 16,
    ListRequest = 17,
    ListReply = 18,
    ConnectRequest = 19,
    ConnectReply = 20,
    EvictRequest = 21,
    EvictReply = 22,
    SubscribeRequest = 23,
    UnsubscribeRequest = 24,
    DataRequest = 25,
    DataReply = 26,
    Notification = 27,
    SetOptionsRequest = 28,
    SetOptionsReply = 29,
    GetDebugStringRequest = 30,
    GetDebugStringReply = 31,
    CreateAndSealBatchRequest = 32,
    CreateAndSealBatchReply = 33,
    RefreshLruRequest = 34,
    RefreshLruReply = 35,
    // Extension: the gateway messages (schema/plasma.fbs, `GatewayMessageType`).
    GatewayRegisterRequest = 1000,
    GatewayRegisterReply = 1001,
    GatewayMiss = 1002,
    GatewayPullFailed = 1003,
    GatewayInfoRequest = 1004,
    GatewayInfoReply = 1005,
}

impl MessageType {
    /// All types in wire order (index = wire value).
    pub const ALL: [MessageType; 36] = {
        use MessageType::*;
        [
            DisconnectClient,
            CreateRequest,
            CreateReply,
            CreateAndSealRequest,
            CreateAndSealReply,
            AbortRequest,
            AbortReply,
            SealRequest,
            SealReply,
            GetRequest,
            GetReply,
            ReleaseRequest,
            ReleaseReply,
            DeleteRequest,
            DeleteReply,
            ContainsRequest,
            ContainsReply,
            ListRequest,
            ListReply,
            ConnectRequest,
            ConnectReply,
            EvictRequest,
            EvictReply,
            SubscribeRequest,
            UnsubscribeRequest,
            DataRequest,
            DataReply,
            Notification,
            SetOptionsRequest,
            SetOptionsReply,
            GetDebugStringRequest,
            GetDebugStringReply,
            CreateAndSealBatchRequest,
            CreateAndSealBatchReply,
            RefreshLruRequest,
            RefreshLruReply,
        ]
    };

    /// The extension's types (this store's gateway messages), in wire order from
    /// [`MessageType::GatewayRegisterRequest`] on.
    pub const EXTENSIONS: [MessageType; 6] = {
        use MessageType::*;
        [
            GatewayRegisterRequest,
            GatewayRegisterReply,
            GatewayMiss,
            GatewayPullFailed,
            GatewayInfoRequest,
            GatewayInfoReply,
        ]
    };

    /// The type for a wire value, if it is one.
    pub fn from_wire(v: i64) -> Option<MessageType> {
        let table: &[MessageType] = if v >= MessageType::GatewayRegisterRequest as i64 {
            &Self::EXTENSIONS
        } else {
            &Self::ALL
        };
        let first = *table.first()? as i64;
        v.checked_sub(first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| table.get(i).copied())
    }

    /// Whether this is one of the extension's gateway messages, which the store accepts only
    /// from its registered gateway.
    pub fn is_gateway(self) -> bool {
        self as i64 >= MessageType::GatewayRegisterRequest as i64
    }
}

/// Bad bytes from a peer. Every variant means the message (or the stream) cannot be used;
/// the store answers it by closing that one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The header's version field is not 0.
    BadVersion(i64),
    /// The header's type field is not a known message type.
    UnknownType(i64),
    /// The header's length field is negative.
    NegativeLength(i64),
    /// The header's length exceeds the limit for this connection.
    TooLong {
        /// Announced body length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A known type that this side does not accept in this direction (a reply sent to the
    /// store, a request sent to a client, or a type with no meaning any more).
    UnexpectedType(MessageType),
    /// The body is not a valid FlatBuffer of the expected table.
    InvalidFlatbuffer(String),
    /// A field the message cannot do without is absent.
    MissingField(&'static str),
    /// An object id that is not exactly 20 bytes long.
    BadObjectId(usize),
    /// A digest that is not exactly 8 bytes long.
    BadDigest(usize),
    /// Parallel vectors (or a count and its vector) whose lengths disagree.
    LengthMismatch(&'static str),
    /// A numeric field out of its meaningful range.
    OutOfRange(&'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadVersion(v) => write!(f, "protocol version {v}, expected 0"),
            ProtocolError::UnknownType(t) => write!(f, "unknown message type {t}"),
            ProtocolError::NegativeLength(l) => write!(f, "negative body length {l}"),
            ProtocolError::TooLong { len, max } => {
                write!(f, "body length {len} exceeds the limit of {max} bytes")
            }
            ProtocolError::UnexpectedType(t) => write!(f, "unexpected message type {t:?}"),
            ProtocolError::InvalidFlatbuffer(e) => write!(f, "invalid FlatBuffer: {e}"),
            ProtocolError::MissingField(n) => write!(f, "required field {n} is missing"),
            ProtocolError::BadObjectId(n) => write!(f, "object id of {n} bytes, expected 20"),
            ProtocolError::BadDigest(n) => write!(f, "digest of {n} bytes, expected 8"),
            ProtocolError::LengthMismatch(n) => write!(f, "lengths of {n} disagree"),
            ProtocolError::OutOfRange(n) => write!(f, "{n} out of range"),
        }
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_values_match_the_schema() {
        for (i, t) in MessageType::ALL.iter().enumerate() {
            assert_eq!(*t as i64, i as i64);
            assert_eq!(
                generated::plasma::flatbuf::MessageType(i as i64).variant_name(),
                Some(format!("Plasma{t:?}").replace("Lru", "LRU").as_str())
            );
        }
        assert_eq!(MessageType::from_wire(36), None);
        assert_eq!(MessageType::from_wire(-1), None);
        for t in MessageType::EXTENSIONS {
            assert_eq!(MessageType::from_wire(t as i64), Some(t));
            assert_eq!(
                generated::plasma::flatbuf::GatewayMessageType(t as i64).variant_name(),
                Some(format!("Plasma{t:?}").as_str())
            );
            assert!(t.is_gateway());
        }
        assert_eq!(MessageType::from_wire(999), None);
        assert_eq!(MessageType::from_wire(1006), None);
        assert_eq!(MessageType::from_wire(i64::MIN), None);
        assert!(!MessageType::RefreshLruReply.is_gateway());
    }
}
