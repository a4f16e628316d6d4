//! The Flight service a gateway offers: DoGet (natural and opaque forms), DoPut, ListFlights
//! and GetFlightInfo over the objects of the local store. It only ever looks at the local
//! store (gets with timeout 0): a peer's lookup never travels further.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use plasma_store::client::{Client, MutableBuffer, ObjectBuffer, ObjectInfo};
use plasma_store::protocol::ObjectId;
use tonic::{Request, Response, Status, Streaming};

use crate::error::GwError;
use crate::form::{self, CHUNK_SIZE, Filler, TicketKind};
use crate::local::{Local, Pending, info_of};

/// The largest FlightData the encoder emits: one opaque row plus room for its header, so a
/// chunk is never split.
pub const MAX_FLIGHT_DATA: usize = CHUNK_SIZE + (64 << 10);

/// The Flight service over one local store.
#[derive(Debug, Clone)]
pub struct Service {
    local: Local,
}

impl Service {
    /// A service over `local`.
    pub fn new(local: Local) -> Service {
        Service { local }
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The FlightInfo of a sealed object: descriptor `[hex id]`, the opaque-form schema with
/// the id, sizes and digest, one endpoint whose ticket is the id.
pub fn flight_info(o: &ObjectInfo) -> Result<FlightInfo, GwError> {
    let size = u64::try_from(o.data_size).unwrap_or(0);
    let meta = u64::try_from(o.metadata_size).unwrap_or(0);
    let schema = form::opaque_schema(o.object_id, size, Err(meta), o.digest);
    Ok(FlightInfo::new()
        .try_with_schema(&schema)?
        .with_descriptor(FlightDescriptor::new_path(vec![o.object_id.hex()]))
        .with_endpoint(
            FlightEndpoint::new()
                .with_ticket(Ticket::new(Bytes::copy_from_slice(o.object_id.as_bytes()))),
        )
        .with_total_bytes(o.data_size)
        .with_total_records(-1))
}

/// Decodes `data` as a complete Arrow IPC stream, without copying it (the batches point
/// into the buffer); `None` if it is not one.
pub fn decode_ipc_stream(data: &Buffer) -> Option<(SchemaRef, Vec<RecordBatch>)> {
    // Every IPC stream starts with a message length prefix; the modern one with the
    // continuation marker. Anything shorter than a prefix cannot be a stream.
    if data.len() < 8 {
        return None;
    }
    let mut rest = data.clone();
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !rest.is_empty() {
        match decoder.decode(&mut rest) {
            Ok(Some(b)) => batches.push(b),
            Ok(None) => {}
            Err(_) => return None,
        }
    }
    decoder.finish().ok()?;
    Some((decoder.schema()?, batches))
}

/// The opaque form of an object as record batches, one row of at most [`CHUNK_SIZE`] bytes
/// each, every row a slice of `data` (no copy: the IPC encoder makes the one copy).
pub fn opaque_batches(
    schema: SchemaRef,
    data: Buffer,
) -> impl Iterator<Item = Result<RecordBatch, FlightError>> + Send + 'static {
    form::chunks(data.len(), CHUNK_SIZE).map(move |r| {
        let len = i32::try_from(r.len())
            .map_err(|_| FlightError::ProtocolError("chunk too big".into()))?;
        let offsets = OffsetBuffer::new(ScalarBuffer::from(vec![0i32, len]));
        let values = data.slice_with_length(r.start, r.len());
        let column: ArrayRef = Arc::new(BinaryArray::try_new(offsets, values, None)?);
        Ok(RecordBatch::try_new(Arc::clone(&schema), vec![column])?)
    })
}

/// The Flight stream of an object in the form the ticket asks for (`digest()` gives the
/// store's digest of it, asked for only when the opaque form needs it). `obj` stays referenced
/// (the store will not free it) until the last batch that points into it is sent.
fn object_stream(
    kind: TicketKind,
    obj: ObjectBuffer,
    digest: impl FnOnce() -> Option<[u8; 8]>,
) -> Result<BoxStream<'static, Result<FlightData, FlightError>>, GwError> {
    let id = obj.id();
    let metadata = obj.metadata().to_vec();
    // A Buffer over the mapped object, owning the ObjectBuffer (and so its reference).
    let data = Buffer::from(Bytes::from_owner(obj));
    if let TicketKind::Natural(_) = kind
        && let Some((schema, batches)) = decode_ipc_stream(&data)
    {
        let enc = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(stream::iter(batches.into_iter().map(Ok)));
        return Ok(enc.boxed());
    }
    let digest = digest().or_else(|| Some(plasma_store::digest::object_digest(&data, &metadata)));
    let schema = form::opaque_schema(id, data.len() as u64, Ok(&metadata), digest);
    let enc = FlightDataEncoderBuilder::new()
        .with_max_flight_data_size(MAX_FLIGHT_DATA)
        .with_schema(Arc::clone(&schema))
        .build(stream::iter(opaque_batches(schema, data)));
    Ok(enc.boxed())
}

#[tonic::async_trait]
impl FlightService for Service {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoExchangeStream = Boxed<FlightData>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        // Authentication is a bearer token on every call, checked before this is reached.
        let ok = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::new(),
        };
        Ok(Response::new(stream::once(async { Ok(ok) }).boxed()))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let objects = self.local.run(|c| Ok(c.list()?)).await?;
        let infos: Vec<Result<FlightInfo, Status>> = objects
            .iter()
            .filter(|o| o.digest.is_some())
            .map(|o| flight_info(o).map_err(Status::from))
            .collect();
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let id = form::descriptor_id(&request.get_ref().path)?;
        let info = self.local.run(move |c| info_of(c, id)).await?;
        Ok(Response::new(flight_info(&info)?))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("PollFlightInfo: use GetFlightInfo"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("GetSchema: use GetFlightInfo"))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let kind = form::parse_ticket(&request.get_ref().ticket)?;
        let id = kind.id();
        // One trip to the blocking pool: the get, the digest, and the CPU work of decoding an
        // IPC stream's metadata (or hashing an object whose digest is unknown).
        let s = self
            .local
            .run(move |c| {
                let obj = c
                    .get(&[id], 0)?
                    .pop()
                    .flatten()
                    .ok_or(GwError::NotFound(id))?;
                object_stream(kind, obj, || info_of(c, id).ok().and_then(|i| i.digest))
            })
            .await?;
        Ok(Response::new(s.map_err(flight_to_status).boxed()))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty DoPut stream"))?;
        let path = first
            .flight_descriptor
            .as_ref()
            .map(|d| d.path.clone())
            .unwrap_or_default();
        let id = form::descriptor_id(&path)?;
        let all = stream::once(async { Ok(first) })
            .chain(input)
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let decoder = FlightDataDecoder::new(all);
        match receive_put(&self.local, id, decoder).await {
            Ok(()) => {
                log::debug!("DoPut {id}: sealed");
                let done = PutResult {
                    app_metadata: Bytes::new(),
                };
                Ok(Response::new(stream::once(async { Ok(done) }).boxed()))
            }
            Err(e) => {
                log::info!("DoPut {id} failed, nothing stored: {e}");
                Err(e.into())
            }
        }
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange"))
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("DoAction"))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(stream::empty().boxed()))
    }
}

/// A Flight error on an outgoing stream as a status.
fn flight_to_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        e => GwError::from(e).into(),
    }
}

/// The rows of an opaque-form batch, in order (no nulls allowed).
pub fn opaque_rows(batch: &RecordBatch) -> Result<&BinaryArray, GwError> {
    let col = batch
        .column(0)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .ok_or_else(|| GwError::InvalidArgument("opaque column is not binary".into()))?;
    if col.null_count() > 0 {
        return Err(GwError::InvalidArgument(
            "opaque rows may not be null".into(),
        ));
    }
    Ok(col)
}

/// Creates object `id` to write a stream's rows into, and faults its memory in here, on the
/// blocking pool, rather than on the runtime thread that writes the first row.
pub fn create_for_rows(
    c: &Client,
    id: ObjectId,
    size: u64,
    metadata: &[u8],
) -> Result<MutableBuffer, GwError> {
    let mut buf = c.create(id, size, metadata)?;
    let _ = buf.data_mut();
    Ok(buf)
}

/// Writes the rows of the rest of an opaque-form stream into `pending` (an object of `size`
/// bytes), each where the stream says; fails unless they fill it exactly.
pub async fn fill_rows(
    d: &mut FlightDataDecoder,
    timeout: Option<Duration>,
    size: u64,
    pending: &mut Pending,
) -> Result<(), GwError> {
    let mut filler = Filler::new(size);
    while let Some(p) = next_payload(d, timeout).await? {
        if let DecodedPayload::RecordBatch(b) = p {
            for row in opaque_rows(&b)?.iter().flatten() {
                let r = filler.take(row.len())?;
                pending
                    .data_mut()
                    .get_mut(r)
                    .ok_or_else(|| GwError::Internal("row beyond the object".into()))?
                    .copy_from_slice(row);
            }
        }
    }
    filler.finish()
}

/// The next decoded payload, or `None` at the end of the stream; with a `timeout`, failing if
/// none comes within it.
pub async fn next_payload(
    d: &mut FlightDataDecoder,
    timeout: Option<Duration>,
) -> Result<Option<DecodedPayload>, GwError> {
    let next = match timeout {
        Some(t) => tokio::time::timeout(t, d.next())
            .await
            .map_err(|_| GwError::Peer("transfer stalled".into()))?,
        None => d.next().await,
    };
    match next {
        None => Ok(None),
        Some(Ok(p)) => Ok(Some(p.payload)),
        Some(Err(e)) => Err(e.into()),
    }
}

/// The schema a stream starts with; `missing()` if a batch or the end comes first.
pub async fn read_schema(
    d: &mut FlightDataDecoder,
    timeout: Option<Duration>,
    missing: impl Fn() -> GwError,
) -> Result<SchemaRef, GwError> {
    loop {
        match next_payload(d, timeout).await? {
            Some(DecodedPayload::Schema(s)) => return Ok(s),
            Some(DecodedPayload::None) => continue,
            Some(DecodedPayload::RecordBatch(_)) | None => return Err(missing()),
        }
    }
}

/// Stores a DoPut stream as object `id` (see the contract in `form`): sealed only when the
/// stream ends cleanly and completely; otherwise the object is aborted (by [`Pending`]).
async fn receive_put(local: &Local, id: ObjectId, mut d: FlightDataDecoder) -> Result<(), GwError> {
    let schema = read_schema(&mut d, None, || {
        GwError::InvalidArgument("DoPut stream without a schema".into())
    })
    .await?;
    if local.run(move |c| Ok(c.contains(id)?)).await? {
        return Err(GwError::AlreadyExists(id));
    }
    let capacity = local.client().capacity();
    if form::is_opaque(&schema) {
        let header = form::parse_header(&schema)?;
        if header.object_id.is_some_and(|h| h != id) {
            return Err(GwError::InvalidArgument(format!(
                "the schema's plasma.object_id is not the descriptor's {id}"
            )));
        }
        if let Some(size) = header.data_size {
            // Known size: create up front and write each row where it belongs.
            let metadata = header.metadata;
            let buf = local
                .run(move |c| create_for_rows(c, id, size, &metadata))
                .await?;
            let mut pending = Pending::new(buf);
            fill_rows(&mut d, None, size, &mut pending).await?;
            return seal(local, pending).await;
        }
        let mut bytes = Vec::new();
        while let Some(p) = next_payload(&mut d, None).await? {
            if let DecodedPayload::RecordBatch(b) = p {
                for row in opaque_rows(&b)?.iter().flatten() {
                    if (bytes.len() + row.len()) as u64 > capacity {
                        return Err(GwError::OutOfMemory(id));
                    }
                    bytes.extend_from_slice(row);
                }
            }
        }
        return store_bytes(local, id, bytes, header.metadata).await;
    }
    // Any other schema: the object is the Arrow IPC stream of the batches.
    let mut w = StreamWriter::try_new(Vec::new(), &schema)?;
    while let Some(p) = next_payload(&mut d, None).await? {
        if let DecodedPayload::RecordBatch(b) = p {
            if b.schema() != schema {
                return Err(GwError::InvalidArgument(
                    "a batch does not match the schema".into(),
                ));
            }
            w.write(&b)?;
            if w.get_ref().len() as u64 > capacity {
                return Err(GwError::OutOfMemory(id));
            }
        }
    }
    w.finish()?;
    let bytes = w.into_inner()?;
    store_bytes(local, id, bytes, Vec::new()).await
}

/// Creates, fills and seals an object from bytes in memory.
async fn store_bytes(
    local: &Local,
    id: ObjectId,
    bytes: Vec<u8>,
    metadata: Vec<u8>,
) -> Result<(), GwError> {
    local
        .run(move |c| {
            let mut pending = Pending::new(c.create(id, bytes.len() as u64, &metadata)?);
            pending.write_all(&bytes);
            pending.seal(None)
        })
        .await
}

/// Seals a filled object (computing its digest, on the blocking pool).
async fn seal(local: &Local, pending: Pending) -> Result<(), GwError> {
    local.run(move |_| pending.seal(None)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;

    #[test]
    fn opaque_batches_concatenate_to_the_data() {
        let n = 2 * CHUNK_SIZE + 3;
        let bytes: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let schema = form::opaque_schema(ObjectId([0; 20]), n as u64, Ok(b""), None);
        let batches: Vec<RecordBatch> = opaque_batches(schema, Buffer::from(bytes.clone()))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(batches.len(), 3);
        let mut out = Vec::new();
        for b in &batches {
            assert_eq!(b.num_rows(), 1);
            for row in opaque_rows(b).unwrap().iter().flatten() {
                out.extend_from_slice(row);
            }
        }
        assert_eq!(out, bytes);
    }

    #[test]
    fn ipc_streams_are_recognised() {
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "x",
            arrow_schema::DataType::Int64,
            false,
        )]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef],
        )
        .unwrap();
        let mut w = StreamWriter::try_new(Vec::new(), &schema).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let bytes = w.into_inner().unwrap();
        let (s, bs) = decode_ipc_stream(&Buffer::from(bytes.clone())).unwrap();
        assert_eq!(s, schema);
        assert_eq!(bs, vec![batch.clone(), batch]);
        // Truncated, garbage, empty: opaque.
        assert!(decode_ipc_stream(&Buffer::from(bytes[..bytes.len() - 20].to_vec())).is_none());
        assert!(decode_ipc_stream(&Buffer::from(b"hello world, not arrow".to_vec())).is_none());
        assert!(decode_ipc_stream(&Buffer::from(Vec::<u8>::new())).is_none());
    }
}
