//! The pure parts of the Flight contract: tickets, descriptors, the opaque form's schema and
//! its metadata, chunking, hex. No I/O here, so all of it is unit-tested below.
//!
//! The contract (see `flight/README.md`):
//! - a ticket of the 20 raw id bytes asks for the object's natural form (its own Arrow IPC
//!   stream if the data is one, the opaque form otherwise);
//! - a ticket of `b"raw:"` + the 20 id bytes always asks for the opaque form;
//! - descriptors name an object by the path `[hex id]`;
//! - the opaque form is one non-nullable `binary` column named `data`, one row of at most
//!   [`CHUNK_SIZE`] bytes per record batch, with schema metadata `plasma.object_id`,
//!   `plasma.data_size`, `plasma.metadata` and `plasma.digest`. An empty object is the schema
//!   and no batch at all.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use plasma_store::protocol::{Digest, ObjectId};

use crate::error::GwError;

/// Bytes of object data in one row (and one record batch) of the opaque form, and so the
/// unit of a transfer between gateways. 4 MiB keeps a FlightData message near gRPC's
/// customary size while amortising the per-message cost.
pub const CHUNK_SIZE: usize = 4 << 20;

/// The ticket prefix that asks for the opaque form of any object.
pub const RAW_PREFIX: &[u8] = b"raw:";

/// The name of the opaque form's only column.
pub const DATA_COLUMN: &str = "data";
/// Schema metadata key: the object id, hex.
pub const KEY_OBJECT_ID: &str = "plasma.object_id";
/// Schema metadata key: the data size in bytes, decimal.
pub const KEY_DATA_SIZE: &str = "plasma.data_size";
/// Schema metadata key: the object's metadata bytes, hex.
pub const KEY_METADATA: &str = "plasma.metadata";
/// Schema metadata key: the 8-byte digest, hex.
pub const KEY_DIGEST: &str = "plasma.digest";
/// Schema metadata key of FlightInfo schemas only: the metadata size in bytes, decimal (the
/// metadata bytes themselves travel with DoGet).
pub const KEY_METADATA_SIZE: &str = "plasma.metadata_size";

/// What a ticket asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketKind {
    /// The 20 id bytes: the natural form.
    Natural(ObjectId),
    /// `raw:` + the 20 id bytes: the opaque form.
    Raw(ObjectId),
}

impl TicketKind {
    /// The object the ticket names.
    pub fn id(&self) -> ObjectId {
        match *self {
            TicketKind::Natural(id) | TicketKind::Raw(id) => id,
        }
    }
}

/// Parses a ticket (see the module documentation).
pub fn parse_ticket(ticket: &[u8]) -> Result<TicketKind, GwError> {
    if let Ok(id) = <[u8; 20]>::try_from(ticket) {
        return Ok(TicketKind::Natural(ObjectId(id)));
    }
    if let Some(rest) = ticket.strip_prefix(RAW_PREFIX)
        && let Ok(id) = <[u8; 20]>::try_from(rest)
    {
        return Ok(TicketKind::Raw(ObjectId(id)));
    }
    Err(GwError::InvalidArgument(format!(
        "a ticket is 20 object id bytes or \"raw:\" and 20 id bytes, not {} bytes",
        ticket.len()
    )))
}

/// The ticket of the raw (opaque) form of `id`.
pub fn raw_ticket(id: ObjectId) -> Vec<u8> {
    let mut t = RAW_PREFIX.to_vec();
    t.extend_from_slice(id.as_bytes());
    t
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Decodes hex (either case); `None` if the length is odd or a character is not a digit.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Parses a hex object id (40 hex digits).
pub fn parse_hex_id(s: &str) -> Result<ObjectId, GwError> {
    ObjectId::from_hex(s)
        .ok_or_else(|| GwError::InvalidArgument(format!("not a hex object id: {s:?}")))
}

/// The object a descriptor names: its path must be exactly `[hex id]`.
pub fn descriptor_id(path: &[String]) -> Result<ObjectId, GwError> {
    match path {
        [one] => parse_hex_id(one),
        _ => Err(GwError::InvalidArgument(format!(
            "a descriptor path is one hex object id, not {} elements",
            path.len()
        ))),
    }
}

/// The header of an object in the opaque form, as the schema metadata carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpaqueHeader {
    /// `plasma.object_id`, if present.
    pub object_id: Option<ObjectId>,
    /// `plasma.data_size`, if present.
    pub data_size: Option<u64>,
    /// `plasma.metadata` (empty if absent).
    pub metadata: Vec<u8>,
    /// `plasma.digest`, if present.
    pub digest: Option<Digest>,
}

/// The single field of the opaque form.
pub fn data_field() -> Field {
    Field::new(DATA_COLUMN, DataType::Binary, false)
}

/// The opaque-form schema of an object with these properties (`metadata` omitted from the
/// schema metadata when `None`, as FlightInfo schemas do; they carry its size instead).
pub fn opaque_schema(
    id: ObjectId,
    data_size: u64,
    metadata: Result<&[u8], u64>,
    digest: Option<Digest>,
) -> SchemaRef {
    let mut m = HashMap::new();
    m.insert(KEY_OBJECT_ID.to_string(), id.hex());
    m.insert(KEY_DATA_SIZE.to_string(), data_size.to_string());
    match metadata {
        Ok(bytes) => m.insert(KEY_METADATA.to_string(), hex(bytes)),
        Err(size) => m.insert(KEY_METADATA_SIZE.to_string(), size.to_string()),
    };
    if let Some(d) = digest {
        m.insert(KEY_DIGEST.to_string(), hex(&d));
    }
    Arc::new(Schema::new_with_metadata(vec![data_field()], m))
}

/// Whether `schema` is the opaque form: exactly one non-nullable `binary` field `data`.
pub fn is_opaque(schema: &Schema) -> bool {
    match schema.fields().iter().collect::<Vec<_>>().as_slice() {
        [f] => f.name() == DATA_COLUMN && f.data_type() == &DataType::Binary && !f.is_nullable(),
        _ => false,
    }
}

/// Reads the header of an opaque-form schema. Malformed values are errors; absent keys are
/// `None` (empty metadata).
pub fn parse_header(schema: &Schema) -> Result<OpaqueHeader, GwError> {
    let m = schema.metadata();
    let bad = |key: &str, v: &str| GwError::InvalidArgument(format!("bad {key} {v:?}"));
    let mut h = OpaqueHeader::default();
    if let Some(v) = m.get(KEY_OBJECT_ID) {
        h.object_id = Some(parse_hex_id(v)?);
    }
    if let Some(v) = m.get(KEY_DATA_SIZE) {
        h.data_size = Some(v.parse().map_err(|_| bad(KEY_DATA_SIZE, v))?);
    }
    if let Some(v) = m.get(KEY_METADATA) {
        h.metadata = unhex(v).ok_or_else(|| bad(KEY_METADATA, v))?;
    }
    if let Some(v) = m.get(KEY_DIGEST) {
        let d = unhex(v).and_then(|b| Digest::try_from(b.as_slice()).ok());
        h.digest = Some(d.ok_or_else(|| bad(KEY_DIGEST, v))?);
    }
    Ok(h)
}

/// The byte ranges of the rows of an object of `len` bytes: `chunk` bytes each, the last
/// one shorter; none for an empty object.
pub fn chunks(len: usize, chunk: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let chunk = chunk.max(1);
    (0..len.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(len))
}

/// Where the bytes of an opaque stream go, checking that they fit the declared size.
#[derive(Debug)]
pub struct Filler {
    /// Bytes written so far.
    pub written: u64,
    /// The declared size.
    pub size: u64,
}

impl Filler {
    /// A filler for `size` bytes.
    pub fn new(size: u64) -> Filler {
        Filler { written: 0, size }
    }

    /// Takes the next `n` bytes: the range of the destination they go to, or an error if
    /// they overrun the declared size.
    pub fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, GwError> {
        let end = self.written.saturating_add(n as u64);
        if end > self.size {
            return Err(GwError::InvalidArgument(format!(
                "the stream carries more than the declared {} bytes",
                self.size
            )));
        }
        let r = self.written as usize..end as usize;
        self.written = end;
        Ok(r)
    }

    /// Checks that every declared byte arrived.
    pub fn finish(&self) -> Result<(), GwError> {
        if self.written != self.size {
            return Err(GwError::InvalidArgument(format!(
                "the stream ended after {} of the declared {} bytes",
                self.written, self.size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets() {
        let id = ObjectId([7; 20]);
        assert_eq!(parse_ticket(&[7; 20]).unwrap(), TicketKind::Natural(id));
        assert_eq!(parse_ticket(&raw_ticket(id)).unwrap(), TicketKind::Raw(id));
        assert!(parse_ticket(&[7; 19]).is_err());
        assert!(parse_ticket(b"raw:short").is_err());
        assert!(parse_ticket(b"").is_err());
        // 24 bytes without the prefix are not a ticket.
        assert!(parse_ticket(&[7; 24]).is_err());
    }

    #[test]
    fn hex_round_trip() {
        let b: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&b)).unwrap(), b);
        assert_eq!(hex(&[0, 0xab, 0x0f]), "00ab0f");
        assert_eq!(unhex("ABcd").unwrap(), vec![0xab, 0xcd]);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }

    #[test]
    fn descriptors() {
        let id = ObjectId([0x5a; 20]);
        assert_eq!(descriptor_id(&[id.hex()]).unwrap(), id);
        assert!(descriptor_id(&[]).is_err());
        assert!(descriptor_id(&[id.hex(), id.hex()]).is_err());
        assert!(descriptor_id(&["5a5a".to_string()]).is_err());
    }

    #[test]
    fn schema_metadata_round_trip() {
        let id = ObjectId([1; 20]);
        let s = opaque_schema(id, 12345, Ok(b"meta\x00\xff"), Some([9; 8]));
        assert!(is_opaque(&s));
        let h = parse_header(&s).unwrap();
        assert_eq!(h.object_id, Some(id));
        assert_eq!(h.data_size, Some(12345));
        assert_eq!(h.metadata, b"meta\x00\xff");
        assert_eq!(h.digest, Some([9; 8]));
        assert_eq!(s.metadata()[KEY_DIGEST], "0909090909090909");
        let info = opaque_schema(id, 1, Err(6), None);
        assert_eq!(info.metadata()[KEY_METADATA_SIZE], "6");
        assert!(!info.metadata().contains_key(KEY_DIGEST));
    }

    #[test]
    fn header_rejects_malformed_values() {
        for (k, v) in [
            (KEY_DATA_SIZE, "-1"),
            (KEY_DATA_SIZE, "12x"),
            (KEY_METADATA, "abc"),
            (KEY_DIGEST, "0011"),
            (KEY_OBJECT_ID, "00"),
        ] {
            let m = HashMap::from([(k.to_string(), v.to_string())]);
            let s = Schema::new_with_metadata(vec![data_field()], m);
            assert!(parse_header(&s).is_err(), "{k}={v}");
        }
        let empty = Schema::new(vec![data_field()]);
        assert_eq!(parse_header(&empty).unwrap(), OpaqueHeader::default());
    }

    #[test]
    fn opaque_form_detection() {
        assert!(is_opaque(&Schema::new(vec![data_field()])));
        let nullable = Field::new(DATA_COLUMN, DataType::Binary, true);
        assert!(!is_opaque(&Schema::new(vec![nullable])));
        let other = Field::new("x", DataType::Binary, false);
        assert!(!is_opaque(&Schema::new(vec![other])));
        let large = Field::new(DATA_COLUMN, DataType::LargeBinary, false);
        assert!(!is_opaque(&Schema::new(vec![large])));
        assert!(!is_opaque(&Schema::new(vec![data_field(), data_field()])));
    }

    #[test]
    fn chunking_covers_every_byte_once() {
        assert_eq!(chunks(0, 4).count(), 0);
        assert_eq!(chunks(4, 4).collect::<Vec<_>>(), vec![0..4]);
        assert_eq!(chunks(9, 4).collect::<Vec<_>>(), vec![0..4, 4..8, 8..9]);
        let n = 3 * CHUNK_SIZE + 1;
        let rs: Vec<_> = chunks(n, CHUNK_SIZE).collect();
        assert_eq!(rs.len(), 4);
        assert!(rs.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(rs.last().unwrap().end, n);
    }

    #[test]
    fn filler_checks_sizes() {
        let mut f = Filler::new(10);
        assert_eq!(f.take(4).unwrap(), 0..4);
        assert!(f.finish().is_err());
        assert_eq!(f.take(6).unwrap(), 4..10);
        assert!(f.take(1).is_err());
        f.finish().unwrap();
        let mut e = Filler::new(0);
        assert_eq!(e.take(0).unwrap(), 0..0);
        e.finish().unwrap();
    }
}
