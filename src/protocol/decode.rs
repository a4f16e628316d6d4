//! FlatBuffers bodies into validated [`Request`]s, [`Reply`]s and notifications.
//!
//! Each table is described once by a `view!` line: its fields, their wire types and their
//! vtable slots. The macro derives from that one list both the verifier (run over the whole
//! buffer before anything is read) and the accessors, so a field is only ever read as the
//! type it was verified as. Binary `string` fields (ids, digests, payloads) are verified and
//! read as byte vectors: the generated accessors would demand UTF-8.

use flatbuffers::{
    Follow, ForwardsUOffset, InvalidFlatbuffer, Table, Vector, Verifiable, Verifier,
    VerifierOptions,
};

use super::generated::plasma::flatbuf as fb;
use super::messages::*;
use super::{MessageType, ProtocolError};

type Bytes<'a> = ForwardsUOffset<Vector<'a, u8>>;
type BytesVec<'a> = ForwardsUOffset<Vector<'a, ForwardsUOffset<Vector<'a, u8>>>>;
type SpecVec<'a> = ForwardsUOffset<Vector<'a, fb::PlasmaObjectSpec>>;
type I32Vec<'a> = ForwardsUOffset<Vector<'a, i32>>;
type I64Vec<'a> = ForwardsUOffset<Vector<'a, i64>>;
type InfoVec<'a> = ForwardsUOffset<Vector<'a, ForwardsUOffset<InfoView<'a>>>>;
type HandleVec<'a> = ForwardsUOffset<Vector<'a, ForwardsUOffset<HandleView<'a>>>>;

/// Declares a verified view of one table: `Name { field: WireType = vtable_slot, ... }`.
macro_rules! view {
    ($name:ident { $($field:ident : $ty:ty = $vt:expr),* $(,)? }) => {
        #[derive(Clone, Copy)]
        struct $name<'a>(Table<'a>);

        #[allow(dead_code)]
        impl<'a> $name<'a> {
            $(
                fn $field(&self) -> Option<<$ty as Follow<'a>>::Inner> {
                    // SAFETY: a view only exists for a table that `run_verifier` below has
                    // checked (by `root` or as an element of a verified vector), and that
                    // verifier visited this slot as exactly `$ty`.
                    unsafe { self.0.get::<$ty>($vt, None) }
                }
            )*
        }

        impl<'a> Follow<'a> for $name<'a> {
            type Inner = $name<'a>;
            unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
                // SAFETY: the caller guarantees a verified table at `loc` (Follow's contract).
                $name(unsafe { Table::new(buf, loc) })
            }
        }

        impl<'a> Verifiable for $name<'a> {
            #[allow(unused_mut)]
            fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
                let mut t = v.visit_table(pos)?;
                $( t = t.visit_field::<$ty>(stringify!($field), $vt, false)?; )*
                t.finish();
                Ok(())
            }
        }
    };
}

view!(InfoView {
    object_id: Bytes<'a> = fb::ObjectInfo::VT_OBJECT_ID,
    data_size: i64 = fb::ObjectInfo::VT_DATA_SIZE,
    metadata_size: i64 = fb::ObjectInfo::VT_METADATA_SIZE,
    ref_count: i32 = fb::ObjectInfo::VT_REF_COUNT,
    create_time: i64 = fb::ObjectInfo::VT_CREATE_TIME,
    construct_duration: i64 = fb::ObjectInfo::VT_CONSTRUCT_DURATION,
    digest: Bytes<'a> = fb::ObjectInfo::VT_DIGEST,
    is_deletion: bool = fb::ObjectInfo::VT_IS_DELETION,
});
view!(HandleView { handle: Bytes<'a> = fb::CudaHandle::VT_HANDLE });
view!(SetOptionsReq {
    client_name: Bytes<'a> = fb::PlasmaSetOptionsRequest::VT_CLIENT_NAME,
    output_memory_quota: i64 = fb::PlasmaSetOptionsRequest::VT_OUTPUT_MEMORY_QUOTA,
});
view!(ErrorOnly {
    error: i32 = fb::PlasmaSetOptionsReply::VT_ERROR
});
view!(DebugStringRep { debug_string: Bytes<'a> = fb::PlasmaGetDebugStringReply::VT_DEBUG_STRING });
view!(CreateReq {
    object_id: Bytes<'a> = fb::PlasmaCreateRequest::VT_OBJECT_ID,
    evict_if_full: bool = fb::PlasmaCreateRequest::VT_EVICT_IF_FULL,
    data_size: u64 = fb::PlasmaCreateRequest::VT_DATA_SIZE,
    metadata_size: u64 = fb::PlasmaCreateRequest::VT_METADATA_SIZE,
    device_num: i32 = fb::PlasmaCreateRequest::VT_DEVICE_NUM,
});
view!(CreateRep {
    object_id: Bytes<'a> = fb::PlasmaCreateReply::VT_OBJECT_ID,
    plasma_object: fb::PlasmaObjectSpec = fb::PlasmaCreateReply::VT_PLASMA_OBJECT,
    error: i32 = fb::PlasmaCreateReply::VT_ERROR,
    store_fd: i32 = fb::PlasmaCreateReply::VT_STORE_FD,
    mmap_size: i64 = fb::PlasmaCreateReply::VT_MMAP_SIZE,
    ipc_handle: ForwardsUOffset<HandleView<'a>> = fb::PlasmaCreateReply::VT_IPC_HANDLE,
});
view!(CreateAndSealReq {
    object_id: Bytes<'a> = fb::PlasmaCreateAndSealRequest::VT_OBJECT_ID,
    evict_if_full: bool = fb::PlasmaCreateAndSealRequest::VT_EVICT_IF_FULL,
    data: Bytes<'a> = fb::PlasmaCreateAndSealRequest::VT_DATA,
    metadata: Bytes<'a> = fb::PlasmaCreateAndSealRequest::VT_METADATA,
    digest: Bytes<'a> = fb::PlasmaCreateAndSealRequest::VT_DIGEST,
});
view!(BatchReq {
    object_ids: BytesVec<'a> = fb::PlasmaCreateAndSealBatchRequest::VT_OBJECT_IDS,
    evict_if_full: bool = fb::PlasmaCreateAndSealBatchRequest::VT_EVICT_IF_FULL,
    data: BytesVec<'a> = fb::PlasmaCreateAndSealBatchRequest::VT_DATA,
    metadata: BytesVec<'a> = fb::PlasmaCreateAndSealBatchRequest::VT_METADATA,
    digest: BytesVec<'a> = fb::PlasmaCreateAndSealBatchRequest::VT_DIGEST,
});
view!(IdOnly { object_id: Bytes<'a> = fb::PlasmaAbortRequest::VT_OBJECT_ID });
view!(IdAndError {
    object_id: Bytes<'a> = fb::PlasmaSealReply::VT_OBJECT_ID,
    error: i32 = fb::PlasmaSealReply::VT_ERROR,
});
view!(SealReq {
    object_id: Bytes<'a> = fb::PlasmaSealRequest::VT_OBJECT_ID,
    digest: Bytes<'a> = fb::PlasmaSealRequest::VT_DIGEST,
});
view!(GetReq {
    object_ids: BytesVec<'a> = fb::PlasmaGetRequest::VT_OBJECT_IDS,
    timeout_ms: i64 = fb::PlasmaGetRequest::VT_TIMEOUT_MS,
});
view!(GetRep {
    object_ids: BytesVec<'a> = fb::PlasmaGetReply::VT_OBJECT_IDS,
    plasma_objects: SpecVec<'a> = fb::PlasmaGetReply::VT_PLASMA_OBJECTS,
    store_fds: I32Vec<'a> = fb::PlasmaGetReply::VT_STORE_FDS,
    mmap_sizes: I64Vec<'a> = fb::PlasmaGetReply::VT_MMAP_SIZES,
    handles: HandleVec<'a> = fb::PlasmaGetReply::VT_HANDLES,
});
view!(DeleteReq {
    count: i32 = fb::PlasmaDeleteRequest::VT_COUNT,
    object_ids: BytesVec<'a> = fb::PlasmaDeleteRequest::VT_OBJECT_IDS,
});
view!(DeleteRep {
    count: i32 = fb::PlasmaDeleteReply::VT_COUNT,
    object_ids: BytesVec<'a> = fb::PlasmaDeleteReply::VT_OBJECT_IDS,
    errors: I32Vec<'a> = fb::PlasmaDeleteReply::VT_ERRORS,
});
view!(ContainsRep {
    object_id: Bytes<'a> = fb::PlasmaContainsReply::VT_OBJECT_ID,
    has_object: i32 = fb::PlasmaContainsReply::VT_HAS_OBJECT,
});
view!(ListRep { objects: InfoVec<'a> = fb::PlasmaListReply::VT_OBJECTS });
view!(Capacity {
    memory_capacity: i64 = fb::PlasmaConnectReply::VT_MEMORY_CAPACITY
});
view!(NumBytes {
    num_bytes: u64 = fb::PlasmaEvictRequest::VT_NUM_BYTES
});
view!(NotificationView { object_info: InfoVec<'a> = fb::PlasmaNotification::VT_OBJECT_INFO });
view!(DataReq {
    object_id: Bytes<'a> = fb::PlasmaDataRequest::VT_OBJECT_ID,
    address: Bytes<'a> = fb::PlasmaDataRequest::VT_ADDRESS,
    port: i32 = fb::PlasmaDataRequest::VT_PORT,
});
view!(DataRep {
    object_id: Bytes<'a> = fb::PlasmaDataReply::VT_OBJECT_ID,
    object_size: u64 = fb::PlasmaDataReply::VT_OBJECT_SIZE,
    metadata_size: u64 = fb::PlasmaDataReply::VT_METADATA_SIZE,
});
view!(IdsOnly { object_ids: BytesVec<'a> = fb::PlasmaRefreshLRURequest::VT_OBJECT_IDS });

/// Verifier limits for requests: a request holds one table, so anything more is hostile.
fn request_options() -> VerifierOptions {
    VerifierOptions {
        max_depth: 4,
        max_tables: 8,
        max_apparent_size: 1 << 40,
        ignore_missing_null_terminator: true,
    }
}

/// Verifier limits for replies and notifications (a List reply has a table per object).
fn reply_options() -> VerifierOptions {
    VerifierOptions {
        max_depth: 8,
        max_tables: 1 << 26,
        max_apparent_size: 1 << 40,
        ignore_missing_null_terminator: true,
    }
}

fn invalid(e: InvalidFlatbuffer) -> ProtocolError {
    ProtocolError::InvalidFlatbuffer(e.to_string())
}

/// How many bytes the verifier may visit per body byte. A well-formed message visits each
/// byte about once (a vtable shared by many tables a few times more); a body whose offsets
/// point at the same string or table over and over would otherwise decode into a value many
/// times its size (a few MB of CreateAndSealBatch asking for terabytes of copies).
const MAX_AMPLIFICATION: usize = 4;
/// Allowance on top of that for tiny bodies, whose vtable is read more than once.
const AMPLIFICATION_SLACK: usize = 1024;

/// Verifies the whole buffer as a `V` root table and returns its view.
fn root<'a, V>(body: &'a [u8], opts: &VerifierOptions) -> Result<V, ProtocolError>
where
    V: Verifiable + Follow<'a, Inner = V> + 'a,
{
    let opts = &VerifierOptions {
        max_apparent_size: opts.max_apparent_size.min(
            body.len()
                .saturating_mul(MAX_AMPLIFICATION)
                .saturating_add(AMPLIFICATION_SLACK),
        ),
        ..opts.clone()
    };
    let mut v = Verifier::new(opts, body);
    <ForwardsUOffset<V>>::run_verifier(&mut v, 0).map_err(invalid)?;
    // SAFETY: the root offset and the table it points at were verified just above.
    Ok(unsafe { <ForwardsUOffset<V>>::follow(body, 0) })
}

fn bytes(v: Option<Vector<'_, u8>>) -> Option<&[u8]> {
    v.map(|v| v.bytes())
}

fn id(v: Option<Vector<'_, u8>>, field: &'static str) -> Result<ObjectId, ProtocolError> {
    ObjectId::try_from(bytes(v).ok_or(ProtocolError::MissingField(field))?)
}

fn digest(v: Option<Vector<'_, u8>>) -> Result<Digest, ProtocolError> {
    let b = bytes(v).unwrap_or_default();
    Digest::try_from(b).map_err(|_| ProtocolError::BadDigest(b.len()))
}

fn ids(
    v: Option<Vector<'_, ForwardsUOffset<Vector<'_, u8>>>>,
) -> Result<Vec<ObjectId>, ProtocolError> {
    v.map(|v| v.iter().map(|b| ObjectId::try_from(b.bytes())).collect())
        .unwrap_or(Ok(Vec::new()))
}

/// One column of a batch request: absent only when the batch is empty, else `n` long.
fn column<'a>(
    v: Option<Vector<'a, ForwardsUOffset<Vector<'a, u8>>>>,
    n: usize,
    name: &'static str,
) -> Result<Vec<&'a [u8]>, ProtocolError> {
    match v {
        None if n == 0 => Ok(Vec::new()),
        None => Err(ProtocolError::MissingField(name)),
        Some(v) if v.len() != n => Err(ProtocolError::LengthMismatch(name)),
        Some(v) => Ok(v.iter().map(|b| b.bytes()).collect()),
    }
}

fn error_code(v: Option<i32>) -> Result<PlasmaError, ProtocolError> {
    PlasmaError::from_wire(v.unwrap_or(0)).ok_or(ProtocolError::OutOfRange("error code"))
}

fn spec(s: &fb::PlasmaObjectSpec) -> ObjectSpec {
    ObjectSpec {
        segment_index: s.segment_index(),
        data_offset: s.data_offset(),
        data_size: s.data_size(),
        metadata_offset: s.metadata_offset(),
        metadata_size: s.metadata_size(),
        device_num: s.device_num(),
    }
}

fn info(t: InfoView<'_>) -> Result<ObjectInfo, ProtocolError> {
    let digest = match bytes(t.digest()) {
        None | Some([]) => None,
        Some(d) => Some(Digest::try_from(d).map_err(|_| ProtocolError::BadDigest(d.len()))?),
    };
    Ok(ObjectInfo {
        object_id: id(t.object_id(), "ObjectInfo.object_id")?,
        data_size: t.data_size().unwrap_or(0),
        metadata_size: t.metadata_size().unwrap_or(0),
        ref_count: t.ref_count().unwrap_or(0),
        create_time: t.create_time().unwrap_or(0),
        construct_duration: t.construct_duration().unwrap_or(0),
        digest,
        is_deletion: t.is_deletion().unwrap_or(false),
    })
}

fn infos(
    v: Option<Vector<'_, ForwardsUOffset<InfoView<'_>>>>,
    field: &'static str,
) -> Result<Vec<ObjectInfo>, ProtocolError> {
    v.ok_or(ProtocolError::MissingField(field))?
        .iter()
        .map(info)
        .collect()
}

/// Decodes the body of a message a client sent to the store.
pub fn decode_request(msg_type: MessageType, body: &[u8]) -> Result<Request, ProtocolError> {
    use MessageType as T;
    let o = &request_options();
    Ok(match msg_type {
        T::DisconnectClient => Request::Disconnect,
        T::ConnectRequest => Request::Connect,
        T::ListRequest => Request::List,
        T::SubscribeRequest => Request::Subscribe,
        T::UnsubscribeRequest => Request::Unsubscribe,
        T::GetDebugStringRequest => Request::GetDebugString,
        T::CreateRequest => {
            let t: CreateReq = root(body, o)?;
            Request::Create {
                object_id: id(t.object_id(), "object_id")?,
                evict_if_full: t.evict_if_full().unwrap_or(false),
                data_size: t.data_size().unwrap_or(0),
                metadata_size: t.metadata_size().unwrap_or(0),
                device_num: t.device_num().unwrap_or(0),
            }
        }
        T::CreateAndSealRequest => {
            let t: CreateAndSealReq = root(body, o)?;
            Request::CreateAndSeal {
                object_id: id(t.object_id(), "object_id")?,
                evict_if_full: t.evict_if_full().unwrap_or(false),
                data: bytes(t.data()).unwrap_or_default().to_vec(),
                metadata: bytes(t.metadata()).unwrap_or_default().to_vec(),
                digest: digest(t.digest())?,
            }
        }
        T::CreateAndSealBatchRequest => {
            let t: BatchReq = root(body, o)?;
            let object_ids = ids(t.object_ids())?;
            let n = object_ids.len();
            let data = column(t.data(), n, "batch data")?;
            let metadata = column(t.metadata(), n, "batch metadata")?;
            let digests = column(t.digest(), n, "batch digest")?;
            let objects = object_ids
                .into_iter()
                .zip(data)
                .zip(metadata)
                .zip(digests)
                .map(|(((object_id, d), m), g)| {
                    Ok(BatchObject {
                        object_id,
                        data: d.to_vec(),
                        metadata: m.to_vec(),
                        digest: Digest::try_from(g)
                            .map_err(|_| ProtocolError::BadDigest(g.len()))?,
                    })
                })
                .collect::<Result<Vec<_>, ProtocolError>>()?;
            Request::CreateAndSealBatch {
                evict_if_full: t.evict_if_full().unwrap_or(false),
                objects,
            }
        }
        T::AbortRequest => Request::Abort {
            object_id: id(root::<IdOnly>(body, o)?.object_id(), "object_id")?,
        },
        T::SealRequest => {
            let t: SealReq = root(body, o)?;
            Request::Seal {
                object_id: id(t.object_id(), "object_id")?,
                digest: digest(t.digest())?,
            }
        }
        T::GetRequest => {
            let t: GetReq = root(body, o)?;
            Request::Get {
                object_ids: ids(t.object_ids())?,
                timeout_ms: t.timeout_ms().unwrap_or(0),
            }
        }
        T::ReleaseRequest => Request::Release {
            object_id: id(root::<IdOnly>(body, o)?.object_id(), "object_id")?,
        },
        T::DeleteRequest => {
            let t: DeleteReq = root(body, o)?;
            let object_ids = ids(t.object_ids())?;
            if usize::try_from(t.count().unwrap_or(0)).ok() != Some(object_ids.len()) {
                return Err(ProtocolError::LengthMismatch("delete count and object_ids"));
            }
            Request::Delete { object_ids }
        }
        T::ContainsRequest => Request::Contains {
            object_id: id(root::<IdOnly>(body, o)?.object_id(), "object_id")?,
        },
        T::EvictRequest => Request::Evict {
            num_bytes: root::<NumBytes>(body, o)?.num_bytes().unwrap_or(0),
        },
        T::SetOptionsRequest => {
            let t: SetOptionsReq = root(body, o)?;
            Request::SetOptions {
                client_name: bytes(t.client_name()).unwrap_or_default().to_vec(),
                output_memory_quota: t.output_memory_quota().unwrap_or(0),
            }
        }
        T::RefreshLruRequest => Request::RefreshLru {
            object_ids: ids(root::<IdsOnly>(body, o)?.object_ids())?,
        },
        T::DataRequest => {
            let t: DataReq = root(body, o)?;
            Request::Data {
                object_id: id(t.object_id(), "object_id")?,
                address: bytes(t.address()).unwrap_or_default().to_vec(),
                port: t.port().unwrap_or(0),
            }
        }
        T::GatewayRegisterRequest => Request::GatewayRegister,
        T::GatewayPullFailed => Request::GatewayPullFailed {
            object_ids: ids(root::<IdsOnly>(body, o)?.object_ids())?,
        },
        T::GatewayInfoRequest => Request::GatewayInfo {
            object_ids: ids(root::<IdsOnly>(body, o)?.object_ids())?,
        },
        other => return Err(ProtocolError::UnexpectedType(other)),
    })
}

/// Decodes the body of a message the store sent to a client. Fields the original client
/// requires (§3.6 of the protocol notes) are required here too.
pub fn decode_reply(msg_type: MessageType, body: &[u8]) -> Result<Reply, ProtocolError> {
    use MessageType as T;
    let o = &reply_options();
    Ok(match msg_type {
        T::ConnectReply => Reply::Connect {
            memory_capacity: root::<Capacity>(body, o)?.memory_capacity().unwrap_or(0),
        },
        T::CreateReply => {
            let t: CreateRep = root(body, o)?;
            let spec = t
                .plasma_object()
                .map(spec)
                .ok_or(ProtocolError::MissingField("plasma_object"))?;
            Reply::Create {
                object_id: id(t.object_id(), "object_id")?,
                spec,
                error: error_code(t.error())?,
                store_fd: t.store_fd().unwrap_or(0),
                mmap_size: t.mmap_size().unwrap_or(0),
            }
        }
        T::CreateAndSealReply => Reply::CreateAndSeal {
            error: error_code(root::<ErrorOnly>(body, o)?.error())?,
        },
        T::CreateAndSealBatchReply => Reply::CreateAndSealBatch {
            error: error_code(root::<ErrorOnly>(body, o)?.error())?,
        },
        T::AbortReply => Reply::Abort {
            object_id: id(root::<IdOnly>(body, o)?.object_id(), "object_id")?,
        },
        T::SealReply => {
            let t: IdAndError = root(body, o)?;
            Reply::Seal {
                object_id: id(t.object_id(), "object_id")?,
                error: error_code(t.error())?,
            }
        }
        T::ReleaseReply => {
            let t: IdAndError = root(body, o)?;
            Reply::Release {
                object_id: id(t.object_id(), "object_id")?,
                error: error_code(t.error())?,
            }
        }
        T::GetReply => {
            let t: GetRep = root(body, o)?;
            let object_ids = ids(t.object_ids())?;
            let objects: Vec<Option<ObjectSpec>> = t
                .plasma_objects()
                .ok_or(ProtocolError::MissingField("plasma_objects"))?
                .iter()
                .map(|s| Some(spec(s)).filter(|s| s.data_size != u64::MAX))
                .collect();
            if objects.len() != object_ids.len() {
                return Err(ProtocolError::LengthMismatch(
                    "object_ids and plasma_objects",
                ));
            }
            let store_fds: Vec<i32> = t
                .store_fds()
                .ok_or(ProtocolError::MissingField("store_fds"))?
                .iter()
                .collect();
            let mmap_sizes: Vec<i64> = t
                .mmap_sizes()
                .ok_or(ProtocolError::MissingField("mmap_sizes"))?
                .iter()
                .collect();
            if store_fds.len() != mmap_sizes.len() {
                return Err(ProtocolError::LengthMismatch("store_fds and mmap_sizes"));
            }
            Reply::Get {
                object_ids,
                objects,
                store_fds,
                mmap_sizes,
            }
        }
        T::DeleteReply => {
            let t: DeleteRep = root(body, o)?;
            let object_ids = ids(t.object_ids())?;
            let errors = t
                .errors()
                .map(|v| v.iter().map(|e| error_code(Some(e))).collect())
                .unwrap_or(Ok(Vec::new()))?;
            let count = usize::try_from(t.count().unwrap_or(0)).ok();
            if object_ids.len() != errors.len() || count != Some(errors.len()) {
                return Err(ProtocolError::LengthMismatch("delete reply"));
            }
            Reply::Delete { object_ids, errors }
        }
        T::ContainsReply => {
            let t: ContainsRep = root(body, o)?;
            Reply::Contains {
                object_id: id(t.object_id(), "object_id")?,
                has_object: t.has_object().unwrap_or(0) != 0,
            }
        }
        T::ListReply => Reply::List {
            objects: infos(root::<ListRep>(body, o)?.objects(), "objects")?,
        },
        T::EvictReply => Reply::Evict {
            num_bytes: root::<NumBytes>(body, o)?.num_bytes().unwrap_or(0),
        },
        T::SetOptionsReply => Reply::SetOptions {
            error: error_code(root::<ErrorOnly>(body, o)?.error())?,
        },
        T::GetDebugStringReply => {
            let t: DebugStringRep = root(body, o)?;
            let s = bytes(t.debug_string()).ok_or(ProtocolError::MissingField("debug_string"))?;
            Reply::DebugString {
                debug_string: String::from_utf8_lossy(s).into_owned(),
            }
        }
        T::RefreshLruReply => Reply::RefreshLru,
        T::DataReply => {
            let t: DataRep = root(body, o)?;
            Reply::Data {
                object_id: id(t.object_id(), "object_id")?,
                object_size: t.object_size().unwrap_or(0),
                metadata_size: t.metadata_size().unwrap_or(0),
            }
        }
        T::GatewayRegisterReply => Reply::GatewayRegister {
            error: error_code(root::<ErrorOnly>(body, o)?.error())?,
        },
        T::GatewayInfoReply => Reply::GatewayInfo {
            objects: infos(root::<ListRep>(body, o)?.objects(), "objects")?,
        },
        other => return Err(ProtocolError::UnexpectedType(other)),
    })
}

/// Decodes the body of one miss message on the gateway's miss socket (the bytes after its
/// header, whose type must be [`MessageType::GatewayMiss`]).
pub fn decode_gateway_miss(body: &[u8]) -> Result<Vec<ObjectId>, ProtocolError> {
    ids(root::<IdsOnly>(body, &reply_options())?.object_ids())
}

/// Decodes the body of one notification (the bytes after its 8-byte length).
pub fn decode_notification(body: &[u8]) -> Result<Vec<ObjectInfo>, ProtocolError> {
    infos(
        root::<NotificationView>(body, &reply_options())?.object_info(),
        "object_info",
    )
}
