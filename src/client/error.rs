//! The client's one error type.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::protocol::{MessageType, ObjectId, PlasmaError, ProtocolError};

/// Everything a client call can fail with.
///
/// The first group are answers from the store (or the client's own bookkeeping, for calls
/// libplasma answers locally); the connection stays usable after them. The second group
/// ([`Error::Io`], [`Error::Protocol`], [`Error::UnexpectedReply`], [`Error::BadReply`])
/// means the stream to the store can no longer be trusted: the client closes the connection,
/// and every later call fails with [`Error::Disconnected`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be connected, even after the retries.
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The last connect error.
        source: io::Error,
    },
    /// The client is not connected: `disconnect()` was called, the store closed the
    /// connection, or an earlier failure closed it.
    Disconnected {
        /// Why the connection is gone.
        reason: String,
    },
    /// An object with this id already exists in the store (sealed or not). For a batch, the
    /// store does not say which id it was.
    ObjectExists(Option<ObjectId>),
    /// No such object (in the store, or among the objects this client is using, for calls
    /// that need one: seal, abort).
    ObjectNotFound(ObjectId),
    /// The store cannot find room for the object, even after evicting what it may evict
    /// (pyarrow's `PlasmaStoreFull`). For a batch, the store does not say which id it was.
    OutOfMemory(Option<ObjectId>),
    /// The object was created by this client and is not sealed yet, and the call needs a
    /// sealed object (a get that would wait forever for it).
    ObjectNotSealed(ObjectId),
    /// The object is already sealed (seal and abort need an unsealed one).
    AlreadySealed(ObjectId),
    /// A buffer of this client still refers to the object: seal needs its `MutableBuffer`
    /// gone (or use `MutableBuffer::seal`), abort needs every buffer of it dropped.
    ObjectInUse(ObjectId),
    /// The store refused the memory quota (the client already has one, or all quotas
    /// together would exceed 70 % of the capacity).
    QuotaRefused {
        /// The client name that was sent.
        client_name: String,
        /// The quota that was asked for.
        quota: u64,
    },
    /// This connection already has a subscription; the store accepts one per connection.
    AlreadySubscribed,
    /// Another connection is the store's gateway; the store accepts one at a time.
    GatewayTaken,
    /// An argument the store cannot represent (a size beyond `i64::MAX`, ...).
    InvalidArgument(String),
    /// The store answered with an error code that makes no sense for the request.
    StoreError {
        /// The request that got it.
        request: MessageType,
        /// The code.
        code: PlasmaError,
    },
    /// A socket error while talking to the store (or on the notification socket).
    Io(io::Error),
    /// The store sent bytes that are not a valid message.
    Protocol(ProtocolError),
    /// The store answered with a message of the wrong type.
    UnexpectedReply {
        /// The reply type the request calls for.
        expected: MessageType,
        /// What arrived.
        got: MessageType,
    },
    /// A well-formed reply that contradicts the request or the client's state (another
    /// object id, an object outside its segment, a segment that was never sent, ...).
    BadReply(String),
}

impl Error {
    /// Whether this error leaves the connection in an unknown state (and so closes it).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Io(_)
                | Error::Protocol(_)
                | Error::UnexpectedReply { .. }
                | Error::BadReply(_)
                | Error::Disconnected { .. }
        )
    }

    /// The error for a code a store reply carried, for a request about `id` (if one).
    pub(crate) fn from_store(
        request: MessageType,
        code: PlasmaError,
        id: Option<ObjectId>,
    ) -> Error {
        match (code, id) {
            (PlasmaError::ObjectExists, id) => Error::ObjectExists(id),
            (PlasmaError::OutOfMemory, id) => Error::OutOfMemory(id),
            (PlasmaError::ObjectNotFound, Some(id)) => Error::ObjectNotFound(id),
            (code, _) => Error::StoreError { request, code },
        }
    }
}

fn id_or_batch(id: &Option<ObjectId>) -> String {
    match id {
        Some(id) => format!("object {id}"),
        None => "an object of the batch".to_string(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { path, source } => write!(
                f,
                "could not connect to socket {}: {source} (is the store running, with -s at \
                 this path?)",
                path.display()
            ),
            Error::Disconnected { reason } => write!(f, "not connected to the store: {reason}"),
            Error::ObjectExists(id) => {
                write!(f, "{} already exists in the store", id_or_batch(id))
            }
            Error::ObjectNotFound(id) => write!(
                f,
                "object {id} not found (for seal and abort: this client has not created it, \
                 or already sealed, aborted or released it)"
            ),
            Error::OutOfMemory(id) => write!(
                f,
                "the store is full: no room for {} even after eviction (free or release \
                 objects, or start the store with a larger -m)",
                id_or_batch(id)
            ),
            Error::ObjectNotSealed(id) => write!(
                f,
                "object {id} was created by this client and is not sealed: a get with timeout \
                 -1 would wait forever (seal it first)"
            ),
            Error::AlreadySealed(id) => write!(f, "object {id} is already sealed"),
            Error::ObjectInUse(id) => write!(
                f,
                "object {id} still has a live buffer in this client (seal through \
                 MutableBuffer::seal or drop the buffer first; abort needs every buffer dropped)"
            ),
            Error::QuotaRefused { client_name, quota } => write!(
                f,
                "the store refused a quota of {quota} bytes for client {client_name:?} (a \
                 quota can be set once per connection, and all quotas together may use at \
                 most 70% of the store's capacity)"
            ),
            Error::GatewayTaken => write!(
                f,
                "another connection is registered as this store's gateway (one at a time)"
            ),
            Error::AlreadySubscribed => write!(
                f,
                "this connection is already subscribed to notifications (one subscription per \
                 connection; connect another client for a second one)"
            ),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Error::StoreError { request, code } => {
                write!(
                    f,
                    "the store answered {request:?} with the unexpected error {code:?}"
                )
            }
            Error::Io(e) => write!(f, "socket error talking to the store: {e}"),
            Error::Protocol(e) => write!(f, "invalid message from the store: {e}"),
            Error::UnexpectedReply { expected, got } => {
                write!(f, "the store sent {got:?} where {expected:?} was expected")
            }
            Error::BadReply(what) => write!(f, "inconsistent reply from the store: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            Error::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Error {
        Error::Protocol(e)
    }
}
