//! The gateway's error type, and the one place where errors become gRPC statuses.

use std::fmt;

use arrow_flight::error::FlightError;
use arrow_schema::ArrowError;
use plasma_store::client::Error as StoreError;
use plasma_store::protocol::ObjectId;
use tonic::Status;

/// Everything a gateway operation can fail with.
#[derive(Debug)]
pub enum GwError {
    /// The object is not in the store (or not sealed).
    NotFound(ObjectId),
    /// The object exists already.
    AlreadyExists(ObjectId),
    /// The store has no room for the object.
    OutOfMemory(ObjectId),
    /// A malformed request or stream (bad ticket, descriptor, schema, sizes).
    InvalidArgument(String),
    /// The local store failed otherwise (connection gone, ...).
    Store(StoreError),
    /// A peer could not be reached or answered with an error.
    Peer(String),
    /// Arrow could not decode or encode data.
    Arrow(ArrowError),
    /// Something that should not happen (a blocking task that panicked, ...).
    Internal(String),
}

impl fmt::Display for GwError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GwError::NotFound(id) => write!(f, "object {id} not found"),
            GwError::AlreadyExists(id) => write!(f, "object {id} already exists"),
            GwError::OutOfMemory(id) => write!(f, "no room in the store for object {id}"),
            GwError::InvalidArgument(s) => write!(f, "{s}"),
            GwError::Store(e) => write!(f, "store: {e}"),
            GwError::Peer(s) => write!(f, "peer: {s}"),
            GwError::Arrow(e) => write!(f, "arrow: {e}"),
            GwError::Internal(s) => write!(f, "internal: {s}"),
        }
    }
}

impl std::error::Error for GwError {}

impl From<StoreError> for GwError {
    fn from(e: StoreError) -> GwError {
        match e {
            StoreError::ObjectExists(Some(id)) => GwError::AlreadyExists(id),
            StoreError::ObjectNotFound(id) => GwError::NotFound(id),
            StoreError::OutOfMemory(Some(id)) => GwError::OutOfMemory(id),
            e => GwError::Store(e),
        }
    }
}

impl From<ArrowError> for GwError {
    fn from(e: ArrowError) -> GwError {
        GwError::Arrow(e)
    }
}

impl From<FlightError> for GwError {
    fn from(e: FlightError) -> GwError {
        match e {
            FlightError::Arrow(a) => GwError::Arrow(a),
            FlightError::Tonic(s) => {
                GwError::Peer(format!("{}: {}", code_name(s.code()), s.message()))
            }
            FlightError::DecodeError(_)
            | FlightError::ProtocolError(_)
            | FlightError::NotYetImplemented(_) => {
                GwError::InvalidArgument(format!("bad Flight data: {e}"))
            }
            e => GwError::Peer(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for GwError {
    fn from(e: tokio::task::JoinError) -> GwError {
        GwError::Internal(format!("blocking task failed: {e}"))
    }
}

/// A short name of a status code for messages.
fn code_name(c: tonic::Code) -> &'static str {
    c.description()
}

impl From<GwError> for Status {
    fn from(e: GwError) -> Status {
        let msg = e.to_string();
        match e {
            GwError::NotFound(_) => Status::not_found(msg),
            GwError::AlreadyExists(_) => Status::already_exists(msg),
            GwError::OutOfMemory(_) => Status::resource_exhausted(msg),
            GwError::InvalidArgument(_) | GwError::Arrow(_) => Status::invalid_argument(msg),
            GwError::Store(_) | GwError::Peer(_) => Status::unavailable(msg),
            GwError::Internal(_) => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let id = ObjectId([0; 20]);
        let code = |e: GwError| Status::from(e).code();
        assert_eq!(code(GwError::NotFound(id)), tonic::Code::NotFound);
        assert_eq!(
            code(StoreError::ObjectExists(Some(id)).into()),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(StoreError::OutOfMemory(Some(id)).into()),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            code(GwError::InvalidArgument("x".into())),
            tonic::Code::InvalidArgument
        );
    }
}
