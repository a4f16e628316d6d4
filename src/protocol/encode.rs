//! Validated messages into framed FlatBuffers bytes.
//!
//! [`Encoder`] keeps one FlatBuffers builder and reuses its memory for every message, so the
//! steady state allocates nothing per message. Binary `string` fields are written with
//! `create_byte_string`, which lays out exactly what a FlatBuffers string is on the wire
//! (length, bytes, NUL), without requiring UTF-8.

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};

use super::frame::write_frame;
use super::generated::plasma::flatbuf as fb;
use super::messages::*;

/// Reusable encoder for requests, replies and notifications.
#[derive(Default)]
pub struct Encoder {
    fbb: FlatBufferBuilder<'static>,
}

type Fbb = FlatBufferBuilder<'static>;
type Str = WIPOffset<&'static str>;

/// A binary string field (ids, digests, payloads): wire-identical to a FlatBuffers string.
fn bstr(fbb: &mut Fbb, b: &[u8]) -> Str {
    WIPOffset::new(fbb.create_byte_string(b).value())
}

fn bstrs<'i, I>(
    fbb: &mut Fbb,
    items: I,
) -> WIPOffset<Vector<'static, ForwardsUOffset<&'static str>>>
where
    I: IntoIterator<Item = &'i [u8]>,
{
    let offs: Vec<Str> = items.into_iter().map(|b| bstr(fbb, b)).collect();
    fbb.create_vector(&offs)
}

fn id_vec(
    fbb: &mut Fbb,
    ids: &[ObjectId],
) -> WIPOffset<Vector<'static, ForwardsUOffset<&'static str>>> {
    bstrs(fbb, ids.iter().map(|i| &i.0[..]))
}

fn err(e: PlasmaError) -> fb::PlasmaError {
    fb::PlasmaError(e as i32)
}

fn spec(s: &ObjectSpec) -> fb::PlasmaObjectSpec {
    fb::PlasmaObjectSpec::new(
        s.segment_index,
        s.data_offset,
        s.data_size,
        s.metadata_offset,
        s.metadata_size,
        s.device_num,
    )
}

fn info(fbb: &mut Fbb, i: &ObjectInfo) -> WIPOffset<fb::ObjectInfo<'static>> {
    let object_id = Some(bstr(fbb, &i.object_id.0));
    let digest = Some(bstr(fbb, i.digest.as_ref().map(|d| &d[..]).unwrap_or(&[])));
    fb::ObjectInfo::create(
        fbb,
        &fb::ObjectInfoArgs {
            object_id,
            data_size: i.data_size,
            metadata_size: i.metadata_size,
            ref_count: i.ref_count,
            create_time: i.create_time,
            construct_duration: i.construct_duration,
            digest,
            is_deletion: i.is_deletion,
        },
    )
}

/// A notification as the original store builds it: a seal carries id, sizes and digest; a
/// deletion only the id and the flag.
fn notification_info(fbb: &mut Fbb, i: &ObjectInfo) -> WIPOffset<fb::ObjectInfo<'static>> {
    let object_id = Some(bstr(fbb, &i.object_id.0));
    let digest = match (&i.digest, i.is_deletion) {
        (Some(d), false) => Some(bstr(fbb, d)),
        _ => None,
    };
    fb::ObjectInfo::create(
        fbb,
        &fb::ObjectInfoArgs {
            object_id,
            data_size: i.data_size,
            metadata_size: i.metadata_size,
            digest,
            is_deletion: i.is_deletion,
            ..Default::default()
        },
    )
}

macro_rules! finish {
    ($self:ident, $out:ident, $ty:expr, $root:expr) => {{
        let root = $root;
        $self.fbb.finish_minimal(root);
        write_frame($out, $ty, $self.fbb.finished_data());
    }};
}

impl Encoder {
    /// A new encoder.
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Appends `req`, framed, to `out`.
    pub fn request(&mut self, req: &Request, out: &mut Vec<u8>) {
        self.fbb.reset();
        let fbb = &mut self.fbb;
        let ty = req.message_type();
        match req {
            Request::Disconnect
            | Request::Connect
            | Request::List
            | Request::Subscribe
            | Request::Unsubscribe
            | Request::GetDebugString => {
                // Field-less tables, as the original client writes them.
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaConnectRequest::create(fbb, &Default::default())
                )
            }
            Request::Create {
                object_id,
                evict_if_full,
                data_size,
                metadata_size,
                device_num,
            } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let args = fb::PlasmaCreateRequestArgs {
                    object_id,
                    evict_if_full: *evict_if_full,
                    data_size: *data_size,
                    metadata_size: *metadata_size,
                    device_num: *device_num,
                };
                finish!(self, out, ty, fb::PlasmaCreateRequest::create(fbb, &args))
            }
            Request::CreateAndSeal {
                object_id,
                evict_if_full,
                data,
                metadata,
                digest,
            } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let data = Some(bstr(fbb, data));
                let metadata = Some(bstr(fbb, metadata));
                let digest = Some(bstr(fbb, digest));
                let args = fb::PlasmaCreateAndSealRequestArgs {
                    object_id,
                    evict_if_full: *evict_if_full,
                    data,
                    metadata,
                    digest,
                };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaCreateAndSealRequest::create(fbb, &args)
                )
            }
            Request::CreateAndSealBatch {
                evict_if_full,
                objects,
            } => {
                let object_ids = Some(bstrs(fbb, objects.iter().map(|o| &o.object_id.0[..])));
                let data = Some(bstrs(fbb, objects.iter().map(|o| &o.data[..])));
                let metadata = Some(bstrs(fbb, objects.iter().map(|o| &o.metadata[..])));
                let digest = Some(bstrs(fbb, objects.iter().map(|o| &o.digest[..])));
                let args = fb::PlasmaCreateAndSealBatchRequestArgs {
                    object_ids,
                    evict_if_full: *evict_if_full,
                    data,
                    metadata,
                    digest,
                };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaCreateAndSealBatchRequest::create(fbb, &args)
                )
            }
            Request::Abort { object_id } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let args = fb::PlasmaAbortRequestArgs { object_id };
                finish!(self, out, ty, fb::PlasmaAbortRequest::create(fbb, &args))
            }
            Request::Seal { object_id, digest } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let digest = Some(bstr(fbb, digest));
                let args = fb::PlasmaSealRequestArgs { object_id, digest };
                finish!(self, out, ty, fb::PlasmaSealRequest::create(fbb, &args))
            }
            Request::Get {
                object_ids,
                timeout_ms,
            } => {
                let object_ids = Some(id_vec(fbb, object_ids));
                let args = fb::PlasmaGetRequestArgs {
                    object_ids,
                    timeout_ms: *timeout_ms,
                };
                finish!(self, out, ty, fb::PlasmaGetRequest::create(fbb, &args))
            }
            Request::Release { object_id } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let args = fb::PlasmaReleaseRequestArgs { object_id };
                finish!(self, out, ty, fb::PlasmaReleaseRequest::create(fbb, &args))
            }
            Request::Delete { object_ids } => {
                let count = i32::try_from(object_ids.len()).unwrap_or(i32::MAX);
                let object_ids = Some(id_vec(fbb, object_ids));
                let args = fb::PlasmaDeleteRequestArgs { count, object_ids };
                finish!(self, out, ty, fb::PlasmaDeleteRequest::create(fbb, &args))
            }
            Request::Contains { object_id } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let args = fb::PlasmaContainsRequestArgs { object_id };
                finish!(self, out, ty, fb::PlasmaContainsRequest::create(fbb, &args))
            }
            Request::Evict { num_bytes } => {
                let args = fb::PlasmaEvictRequestArgs {
                    num_bytes: *num_bytes,
                };
                finish!(self, out, ty, fb::PlasmaEvictRequest::create(fbb, &args))
            }
            Request::SetOptions {
                client_name,
                output_memory_quota,
            } => {
                let client_name = Some(bstr(fbb, client_name));
                let args = fb::PlasmaSetOptionsRequestArgs {
                    client_name,
                    output_memory_quota: *output_memory_quota,
                };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaSetOptionsRequest::create(fbb, &args)
                )
            }
            Request::RefreshLru { object_ids } => {
                let object_ids = Some(id_vec(fbb, object_ids));
                let args = fb::PlasmaRefreshLRURequestArgs { object_ids };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaRefreshLRURequest::create(fbb, &args)
                )
            }
            Request::Data {
                object_id,
                address,
                port,
            } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let address = Some(bstr(fbb, address));
                let args = fb::PlasmaDataRequestArgs {
                    object_id,
                    address,
                    port: *port,
                };
                finish!(self, out, ty, fb::PlasmaDataRequest::create(fbb, &args))
            }
            Request::GatewayRegister => {
                let args = fb::PlasmaGatewayRegisterRequestArgs {};
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaGatewayRegisterRequest::create(fbb, &args)
                )
            }
            Request::GatewayPullFailed { object_ids } => {
                let object_ids = Some(id_vec(fbb, object_ids));
                let args = fb::PlasmaGatewayPullFailedArgs { object_ids };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaGatewayPullFailed::create(fbb, &args)
                )
            }
            Request::GatewayInfo { object_ids } => {
                let object_ids = Some(id_vec(fbb, object_ids));
                let args = fb::PlasmaGatewayInfoRequestArgs { object_ids };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaGatewayInfoRequest::create(fbb, &args)
                )
            }
        }
    }

    /// Appends `reply`, framed, to `out`.
    pub fn reply(&mut self, reply: &Reply, out: &mut Vec<u8>) {
        self.fbb.reset();
        let fbb = &mut self.fbb;
        let ty = reply.message_type();
        match reply {
            Reply::Connect { memory_capacity } => {
                let args = fb::PlasmaConnectReplyArgs {
                    memory_capacity: *memory_capacity,
                };
                finish!(self, out, ty, fb::PlasmaConnectReply::create(fbb, &args))
            }
            Reply::Create {
                object_id,
                spec: s,
                error,
                store_fd,
                mmap_size,
            } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let s = spec(s);
                let args = fb::PlasmaCreateReplyArgs {
                    object_id,
                    plasma_object: Some(&s),
                    error: err(*error),
                    store_fd: *store_fd,
                    mmap_size: *mmap_size,
                    ipc_handle: None,
                };
                finish!(self, out, ty, fb::PlasmaCreateReply::create(fbb, &args))
            }
            Reply::CreateAndSeal { error } => {
                let args = fb::PlasmaCreateAndSealReplyArgs { error: err(*error) };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaCreateAndSealReply::create(fbb, &args)
                )
            }
            Reply::CreateAndSealBatch { error } => {
                let args = fb::PlasmaCreateAndSealBatchReplyArgs { error: err(*error) };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaCreateAndSealBatchReply::create(fbb, &args)
                )
            }
            Reply::Abort { object_id } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let args = fb::PlasmaAbortReplyArgs { object_id };
                finish!(self, out, ty, fb::PlasmaAbortReply::create(fbb, &args))
            }
            Reply::Seal { object_id, error } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let args = fb::PlasmaSealReplyArgs {
                    object_id,
                    error: err(*error),
                };
                finish!(self, out, ty, fb::PlasmaSealReply::create(fbb, &args))
            }
            Reply::Release { object_id, error } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let args = fb::PlasmaReleaseReplyArgs {
                    object_id,
                    error: err(*error),
                };
                finish!(self, out, ty, fb::PlasmaReleaseReply::create(fbb, &args))
            }
            Reply::Get {
                object_ids,
                objects,
                store_fds,
                mmap_sizes,
            } => {
                let ids = Some(id_vec(fbb, object_ids));
                fbb.start_vector::<fb::PlasmaObjectSpec>(objects.len());
                for o in objects.iter().rev() {
                    fbb.push(spec(o.as_ref().unwrap_or(&ObjectSpec::MISSING)));
                }
                let plasma_objects = Some(fbb.end_vector(objects.len()));
                let store_fds = Some(fbb.create_vector(store_fds));
                let mmap_sizes = Some(fbb.create_vector(mmap_sizes));
                let handles = Some(fbb.create_vector::<WIPOffset<fb::CudaHandle>>(&[]));
                let args = fb::PlasmaGetReplyArgs {
                    object_ids: ids,
                    plasma_objects,
                    store_fds,
                    mmap_sizes,
                    handles,
                };
                finish!(self, out, ty, fb::PlasmaGetReply::create(fbb, &args))
            }
            Reply::Delete { object_ids, errors } => {
                let count = i32::try_from(object_ids.len()).unwrap_or(i32::MAX);
                let ids = Some(id_vec(fbb, object_ids));
                let codes: Vec<fb::PlasmaError> = errors.iter().map(|e| err(*e)).collect();
                let errors = Some(fbb.create_vector(&codes));
                let args = fb::PlasmaDeleteReplyArgs {
                    count,
                    object_ids: ids,
                    errors,
                };
                finish!(self, out, ty, fb::PlasmaDeleteReply::create(fbb, &args))
            }
            Reply::Contains {
                object_id,
                has_object,
            } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let args = fb::PlasmaContainsReplyArgs {
                    object_id,
                    has_object: i32::from(*has_object),
                };
                finish!(self, out, ty, fb::PlasmaContainsReply::create(fbb, &args))
            }
            Reply::List { objects } => {
                let infos: Vec<_> = objects.iter().map(|i| info(fbb, i)).collect();
                let objects = Some(fbb.create_vector(&infos));
                let args = fb::PlasmaListReplyArgs { objects };
                finish!(self, out, ty, fb::PlasmaListReply::create(fbb, &args))
            }
            Reply::Evict { num_bytes } => {
                let args = fb::PlasmaEvictReplyArgs {
                    num_bytes: *num_bytes,
                };
                finish!(self, out, ty, fb::PlasmaEvictReply::create(fbb, &args))
            }
            Reply::SetOptions { error } => {
                let args = fb::PlasmaSetOptionsReplyArgs { error: err(*error) };
                finish!(self, out, ty, fb::PlasmaSetOptionsReply::create(fbb, &args))
            }
            Reply::DebugString { debug_string } => {
                let debug_string = Some(fbb.create_string(debug_string));
                let args = fb::PlasmaGetDebugStringReplyArgs { debug_string };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaGetDebugStringReply::create(fbb, &args)
                )
            }
            Reply::RefreshLru => {
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaRefreshLRUReply::create(fbb, &Default::default())
                )
            }
            Reply::Data {
                object_id,
                object_size,
                metadata_size,
            } => {
                let object_id = Some(bstr(fbb, &object_id.0));
                let args = fb::PlasmaDataReplyArgs {
                    object_id,
                    object_size: *object_size,
                    metadata_size: *metadata_size,
                };
                finish!(self, out, ty, fb::PlasmaDataReply::create(fbb, &args))
            }
            Reply::GatewayRegister { error } => {
                let args = fb::PlasmaGatewayRegisterReplyArgs { error: err(*error) };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaGatewayRegisterReply::create(fbb, &args)
                )
            }
            Reply::GatewayInfo { objects } => {
                let infos: Vec<_> = objects.iter().map(|i| info(fbb, i)).collect();
                let objects = Some(fbb.create_vector(&infos));
                let args = fb::PlasmaGatewayInfoReplyArgs { objects };
                finish!(
                    self,
                    out,
                    ty,
                    fb::PlasmaGatewayInfoReply::create(fbb, &args)
                )
            }
        }
    }

    /// Appends one miss message for the gateway's miss socket to `out`, framed by the usual
    /// header (type [`MessageType::GatewayMiss`](super::MessageType::GatewayMiss)).
    pub fn gateway_miss(&mut self, object_ids: &[ObjectId], out: &mut Vec<u8>) {
        self.fbb.reset();
        let fbb = &mut self.fbb;
        let object_ids = Some(id_vec(fbb, object_ids));
        let args = fb::PlasmaGatewayMissArgs { object_ids };
        finish!(
            self,
            out,
            super::MessageType::GatewayMiss,
            fb::PlasmaGatewayMiss::create(fbb, &args)
        )
    }

    /// Appends one notification for the subscriber socket to `out`: an 8-byte length (host
    /// order, as the original) and a `PlasmaNotification` holding `infos`.
    pub fn notification(&mut self, infos: &[ObjectInfo], out: &mut Vec<u8>) {
        self.fbb.reset();
        let fbb = &mut self.fbb;
        let offs: Vec<_> = infos.iter().map(|i| notification_info(fbb, i)).collect();
        let object_info = Some(fbb.create_vector(&offs));
        let root = fb::PlasmaNotification::create(fbb, &fb::PlasmaNotificationArgs { object_info });
        fbb.finish_minimal(root);
        let body = fbb.finished_data();
        out.extend_from_slice(&(body.len() as u64).to_ne_bytes());
        out.extend_from_slice(body);
    }
}
