//! Owned, validated message types: what the store and the client work with.
//!
//! A value of these types is always meaningful: ids are 20 bytes, digests 8, parallel vectors
//! agree in length. [`Request`] is everything a client sends, [`Reply`] everything the store
//! answers; [`Request::message_type`] and [`Reply::message_type`] are the one mapping between
//! these types and the wire's type numbers.

use std::fmt;

use super::MessageType;

/// Length of an object id in bytes.
pub const OBJECT_ID_LEN: usize = 20;
/// Length of a digest in bytes.
pub const DIGEST_LEN: usize = 8;

/// A 20-byte object id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub [u8; OBJECT_ID_LEN]);

impl ObjectId {
    /// The id as bytes.
    pub fn as_bytes(&self) -> &[u8; OBJECT_ID_LEN] {
        &self.0
    }

    /// Lower-case hex, as the original logs ids.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The id written as 40 hex digits (either case), the inverse of [`ObjectId::hex`].
    pub fn from_hex(s: &str) -> Option<ObjectId> {
        fn digit(c: u8) -> Option<u8> {
            char::from(c)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
        }
        let (pairs, rest) = s.as_bytes().as_chunks::<2>();
        if pairs.len() != OBJECT_ID_LEN || !rest.is_empty() {
            return None;
        }
        let mut id = [0u8; OBJECT_ID_LEN];
        for (b, [hi, lo]) in id.iter_mut().zip(pairs) {
            *b = digit(*hi)? << 4 | digit(*lo)?;
        }
        Some(ObjectId(id))
    }
}

impl TryFrom<&[u8]> for ObjectId {
    type Error = super::ProtocolError;
    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        <[u8; OBJECT_ID_LEN]>::try_from(b)
            .map(ObjectId)
            .map_err(|_| super::ProtocolError::BadObjectId(b.len()))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.hex())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// An 8-byte digest (XXH64 of the contents, as the original client computes it).
pub type Digest = [u8; DIGEST_LEN];

/// The `PlasmaError` codes of the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(i32)]
pub enum PlasmaError {
    /// Success.
    #[default]
    Ok = 0,
    /// An object with this id already exists.
    ObjectExists = 1,
    /// No object with this id.
    ObjectNotFound = 2,
    /// Not enough memory, even after eviction (or a quota refused).
    OutOfMemory = 3,
    /// The object is not sealed (only in delete replies).
    ObjectNotSealed = 4,
    /// The object is in use (only in delete replies).
    ObjectInUse = 5,
}

impl PlasmaError {
    /// The code for a wire value, if known.
    pub fn from_wire(v: i32) -> Option<PlasmaError> {
        Some(match v {
            0 => PlasmaError::Ok,
            1 => PlasmaError::ObjectExists,
            2 => PlasmaError::ObjectNotFound,
            3 => PlasmaError::OutOfMemory,
            4 => PlasmaError::ObjectNotSealed,
            5 => PlasmaError::ObjectInUse,
            _ => return None,
        })
    }
}

/// Where an object's bytes are: `PlasmaObjectSpec` of the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjectSpec {
    /// Segment id (the original used its fd number; clients treat it as an opaque key).
    pub segment_index: i32,
    /// Offset of the data from the start of the segment.
    pub data_offset: u64,
    /// Data length in bytes.
    pub data_size: u64,
    /// Offset of the metadata (the original: right after the data).
    pub metadata_offset: u64,
    /// Metadata length in bytes.
    pub metadata_size: u64,
    /// 0 for host memory.
    pub device_num: i32,
}

impl ObjectSpec {
    /// The placeholder of a Get reply for an object that is not available: every field 0 and
    /// `data_size` all ones (−1).
    pub const MISSING: ObjectSpec = ObjectSpec {
        segment_index: 0,
        data_offset: 0,
        data_size: u64::MAX,
        metadata_offset: 0,
        metadata_size: 0,
        device_num: 0,
    };
}

/// What the store reports about an object (List replies, notifications).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectInfo {
    /// The object.
    pub object_id: ObjectId,
    /// Data length (0 in deletion notifications).
    pub data_size: i64,
    /// Metadata length (0 in deletion notifications).
    pub metadata_size: i64,
    /// Number of clients holding a reference.
    pub ref_count: i32,
    /// Unix seconds at creation.
    pub create_time: i64,
    /// Seconds from create to seal; −1 while unsealed.
    pub construct_duration: i64,
    /// The digest; `None` while the object is unsealed (an empty string on the wire).
    pub digest: Option<Digest>,
    /// Set in deletion notifications.
    pub is_deletion: bool,
}

/// Everything a client sends on the main socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Type 0: the client is going away (any body).
    Disconnect,
    /// Ask for the store's capacity.
    Connect,
    /// Allocate an unsealed object.
    Create {
        /// The new object.
        object_id: ObjectId,
        /// May the store evict to make room.
        evict_if_full: bool,
        /// Data length.
        data_size: u64,
        /// Metadata length.
        metadata_size: u64,
        /// 0 for host memory.
        device_num: i32,
    },
    /// Create, fill and seal in one message.
    CreateAndSeal {
        /// The new object.
        object_id: ObjectId,
        /// May the store evict to make room.
        evict_if_full: bool,
        /// The data bytes.
        data: Vec<u8>,
        /// The metadata bytes.
        metadata: Vec<u8>,
        /// The client's digest of data and metadata.
        digest: Digest,
    },
    /// CreateAndSeal of several objects, all or none.
    CreateAndSealBatch {
        /// May the store evict to make room.
        evict_if_full: bool,
        /// The objects, in order.
        objects: Vec<BatchObject>,
    },
    /// Drop an unsealed object this client created.
    Abort {
        /// The object.
        object_id: ObjectId,
    },
    /// Make an object immutable and visible.
    Seal {
        /// The object.
        object_id: ObjectId,
        /// The client's digest of data and metadata.
        digest: Digest,
    },
    /// Wait for objects.
    Get {
        /// The objects, in request order (duplicates allowed).
        object_ids: Vec<ObjectId>,
        /// −1 waits forever, 0 answers at once, otherwise milliseconds.
        timeout_ms: i64,
    },
    /// Drop this client's reference (no reply).
    Release {
        /// The object.
        object_id: ObjectId,
    },
    /// Delete objects (deferred while in use).
    Delete {
        /// The objects.
        object_ids: Vec<ObjectId>,
    },
    /// Is the object sealed here.
    Contains {
        /// The object.
        object_id: ObjectId,
    },
    /// Describe every object.
    List,
    /// Evict at least this many bytes of unreferenced objects.
    Evict {
        /// Bytes wanted.
        num_bytes: u64,
    },
    /// Receive notifications on the fd that follows this message (no reply).
    Subscribe,
    /// Type 24: never implemented by the original; has no body table.
    Unsubscribe,
    /// Name this client and set its memory quota.
    SetOptions {
        /// Client name (raw bytes from the peer).
        client_name: Vec<u8>,
        /// Quota in bytes.
        output_memory_quota: i64,
    },
    /// Ask for the eviction policy's report.
    GetDebugString,
    /// Mark objects as recently used.
    RefreshLru {
        /// The objects.
        object_ids: Vec<ObjectId>,
    },
    /// Left over from the removed plasma manager.
    Data {
        /// The object.
        object_id: ObjectId,
        /// Manager address.
        address: Vec<u8>,
        /// Manager port.
        port: i32,
    },
    /// Extension: make this connection the store's gateway; the miss socket's fd follows.
    GatewayRegister,
    /// Extension (gateway only): these pulls failed (no reply).
    GatewayPullFailed {
        /// The objects.
        object_ids: Vec<ObjectId>,
    },
    /// Extension (gateway only): describe these sealed objects.
    GatewayInfo {
        /// The objects.
        object_ids: Vec<ObjectId>,
    },
}

/// One object of a [`Request::CreateAndSealBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchObject {
    /// The new object.
    pub object_id: ObjectId,
    /// The data bytes.
    pub data: Vec<u8>,
    /// The metadata bytes.
    pub metadata: Vec<u8>,
    /// The client's digest.
    pub digest: Digest,
}

impl Request {
    /// The wire type of this request.
    pub fn message_type(&self) -> MessageType {
        match self {
            Request::Disconnect => MessageType::DisconnectClient,
            Request::Connect => MessageType::ConnectRequest,
            Request::Create { .. } => MessageType::CreateRequest,
            Request::CreateAndSeal { .. } => MessageType::CreateAndSealRequest,
            Request::CreateAndSealBatch { .. } => MessageType::CreateAndSealBatchRequest,
            Request::Abort { .. } => MessageType::AbortRequest,
            Request::Seal { .. } => MessageType::SealRequest,
            Request::Get { .. } => MessageType::GetRequest,
            Request::Release { .. } => MessageType::ReleaseRequest,
            Request::Delete { .. } => MessageType::DeleteRequest,
            Request::Contains { .. } => MessageType::ContainsRequest,
            Request::List => MessageType::ListRequest,
            Request::Evict { .. } => MessageType::EvictRequest,
            Request::Subscribe => MessageType::SubscribeRequest,
            Request::Unsubscribe => MessageType::UnsubscribeRequest,
            Request::SetOptions { .. } => MessageType::SetOptionsRequest,
            Request::GetDebugString => MessageType::GetDebugStringRequest,
            Request::RefreshLru { .. } => MessageType::RefreshLruRequest,
            Request::Data { .. } => MessageType::DataRequest,
            Request::GatewayRegister => MessageType::GatewayRegisterRequest,
            Request::GatewayPullFailed { .. } => MessageType::GatewayPullFailed,
            Request::GatewayInfo { .. } => MessageType::GatewayInfoRequest,
        }
    }

    /// The type of the reply the store answers this request with, or `None` for requests
    /// without a reply.
    pub fn reply_type(&self) -> Option<MessageType> {
        use MessageType as T;
        Some(match self {
            Request::Connect => T::ConnectReply,
            Request::Create { .. } => T::CreateReply,
            Request::CreateAndSeal { .. } => T::CreateAndSealReply,
            Request::CreateAndSealBatch { .. } => T::CreateAndSealBatchReply,
            Request::Abort { .. } => T::AbortReply,
            Request::Seal { .. } => T::SealReply,
            Request::Get { .. } => T::GetReply,
            Request::Delete { .. } => T::DeleteReply,
            Request::Contains { .. } => T::ContainsReply,
            Request::List => T::ListReply,
            Request::Evict { .. } => T::EvictReply,
            Request::SetOptions { .. } => T::SetOptionsReply,
            Request::GetDebugString => T::GetDebugStringReply,
            Request::RefreshLru { .. } => T::RefreshLruReply,
            Request::Data { .. } => T::DataReply,
            Request::GatewayRegister => T::GatewayRegisterReply,
            Request::GatewayInfo { .. } => T::GatewayInfoReply,
            Request::Disconnect
            | Request::GatewayPullFailed { .. }
            | Request::Release { .. }
            | Request::Subscribe
            | Request::Unsubscribe => return None,
        })
    }
}

/// Everything the store sends on the main socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer to Connect.
    Connect {
        /// The `-m` capacity.
        memory_capacity: i64,
    },
    /// Answer to Create; on success one fd may follow.
    Create {
        /// The object.
        object_id: ObjectId,
        /// Its location (all zero on error).
        spec: ObjectSpec,
        /// Result.
        error: PlasmaError,
        /// Segment id of the object (0 on error).
        store_fd: i32,
        /// Size to map for that segment (0 on error).
        mmap_size: i64,
    },
    /// Answer to CreateAndSeal.
    CreateAndSeal {
        /// Result.
        error: PlasmaError,
    },
    /// Answer to CreateAndSealBatch.
    CreateAndSealBatch {
        /// Result.
        error: PlasmaError,
    },
    /// Answer to Abort.
    Abort {
        /// The object.
        object_id: ObjectId,
    },
    /// Answer to Seal.
    Seal {
        /// The object.
        object_id: ObjectId,
        /// Result.
        error: PlasmaError,
    },
    /// Answer to Get; fds of new segments follow.
    Get {
        /// The requested ids, verbatim.
        object_ids: Vec<ObjectId>,
        /// One entry per id: its location, or `None` when not available.
        objects: Vec<Option<ObjectSpec>>,
        /// Distinct segments of the available objects, in order of first appearance.
        store_fds: Vec<i32>,
        /// Map size of each of those segments.
        mmap_sizes: Vec<i64>,
    },
    /// Never sent by the store; kept for completeness of the protocol.
    Release {
        /// The object.
        object_id: ObjectId,
        /// Result.
        error: PlasmaError,
    },
    /// Answer to Delete: one code per id.
    Delete {
        /// The ids, as requested.
        object_ids: Vec<ObjectId>,
        /// One code per id.
        errors: Vec<PlasmaError>,
    },
    /// Answer to Contains.
    Contains {
        /// The object.
        object_id: ObjectId,
        /// Sealed (or evicted to an external store) here.
        has_object: bool,
    },
    /// Answer to List.
    List {
        /// Every object.
        objects: Vec<ObjectInfo>,
    },
    /// Answer to Evict.
    Evict {
        /// Bytes actually evicted.
        num_bytes: u64,
    },
    /// Answer to SetOptions.
    SetOptions {
        /// Result.
        error: PlasmaError,
    },
    /// Answer to GetDebugString.
    DebugString {
        /// The report.
        debug_string: String,
    },
    /// Answer to RefreshLru.
    RefreshLru,
    /// Left over from the removed plasma manager.
    Data {
        /// The object.
        object_id: ObjectId,
        /// Data size.
        object_size: u64,
        /// Metadata size.
        metadata_size: u64,
    },
    /// Extension: answer to GatewayRegister (`ObjectExists`: another gateway is registered;
    /// `ObjectNotFound`: no fd followed the request).
    GatewayRegister {
        /// Result.
        error: PlasmaError,
    },
    /// Extension: answer to GatewayInfo.
    GatewayInfo {
        /// The sealed objects among those asked for.
        objects: Vec<ObjectInfo>,
    },
}

impl Reply {
    /// The wire type of this reply.
    pub fn message_type(&self) -> MessageType {
        match self {
            Reply::Connect { .. } => MessageType::ConnectReply,
            Reply::Create { .. } => MessageType::CreateReply,
            Reply::CreateAndSeal { .. } => MessageType::CreateAndSealReply,
            Reply::CreateAndSealBatch { .. } => MessageType::CreateAndSealBatchReply,
            Reply::Abort { .. } => MessageType::AbortReply,
            Reply::Seal { .. } => MessageType::SealReply,
            Reply::Get { .. } => MessageType::GetReply,
            Reply::Release { .. } => MessageType::ReleaseReply,
            Reply::Delete { .. } => MessageType::DeleteReply,
            Reply::Contains { .. } => MessageType::ContainsReply,
            Reply::List { .. } => MessageType::ListReply,
            Reply::Evict { .. } => MessageType::EvictReply,
            Reply::SetOptions { .. } => MessageType::SetOptionsReply,
            Reply::DebugString { .. } => MessageType::GetDebugStringReply,
            Reply::RefreshLru => MessageType::RefreshLruReply,
            Reply::Data { .. } => MessageType::DataReply,
            Reply::GatewayRegister { .. } => MessageType::GatewayRegisterReply,
            Reply::GatewayInfo { .. } => MessageType::GatewayInfoReply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_round_trip_and_anything_else_is_refused() {
        let id = ObjectId(std::array::from_fn(|i| (i * 37 + 5) as u8));
        assert_eq!(ObjectId::from_hex(&id.hex()), Some(id));
        assert_eq!(ObjectId::from_hex(&id.hex().to_uppercase()), Some(id));
        let h = id.hex();
        for bad in [
            &h[..39],
            &format!("{h}0"),
            &format!("+{}", &h[1..]),
            &h.replace('5', "g"),
            "",
        ] {
            assert_eq!(ObjectId::from_hex(bad), None, "{bad:?}");
        }
    }
}
