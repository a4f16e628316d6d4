//! How client errors surface in Python.
//!
//! The three exceptions of `pyarrow.plasma` keep their meaning (they are defined in
//! `plasma_store/exceptions.py`, as subclasses of `pyarrow.ArrowException` like the originals).
//! Connection and socket failures are `OSError`, as libplasma's IOError status was; bad
//! arguments are `ValueError`; the other refusals are `PlasmaError`.

use plasma_store::client::Error;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

static PLASMA_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static OBJECT_EXISTS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static OBJECT_NOT_FOUND: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static STORE_FULL: PyOnceLock<Py<PyType>> = PyOnceLock::new();

const EXCEPTIONS: &str = "plasma_store.exceptions";

/// Which Python exception a client error becomes.
enum Kind {
    Plasma(&'static PyOnceLock<Py<PyType>>, &'static str),
    Os(Option<i32>),
    Value,
}

fn kind(e: &Error) -> Kind {
    match e {
        Error::ObjectExists(_) => Kind::Plasma(&OBJECT_EXISTS, "PlasmaObjectExists"),
        Error::ObjectNotFound(_) => Kind::Plasma(&OBJECT_NOT_FOUND, "PlasmaObjectNotFound"),
        Error::OutOfMemory(_) | Error::QuotaRefused { .. } => {
            Kind::Plasma(&STORE_FULL, "PlasmaStoreFull")
        }
        Error::Connect { source, .. } => Kind::Os(source.raw_os_error()),
        Error::Io(source) => Kind::Os(source.raw_os_error()),
        Error::Disconnected { .. }
        | Error::Protocol(_)
        | Error::UnexpectedReply { .. }
        | Error::BadReply(_) => Kind::Os(None),
        Error::InvalidArgument(_) => Kind::Value,
        _ => Kind::Plasma(&PLASMA_ERROR, "PlasmaError"),
    }
}

/// The Python exception for a client error.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match kind(&e) {
        Kind::Os(Some(errno)) => PyOSError::new_err((errno, msg)),
        Kind::Os(None) => PyOSError::new_err(msg),
        Kind::Value => PyValueError::new_err(msg),
        Kind::Plasma(cell, name) => Python::attach(|py| plasma_err(py, cell, name, msg)),
    }
}

fn plasma_err(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    msg: String,
) -> PyErr {
    match cell.import(py, EXCEPTIONS, name) {
        Ok(ty) => PyErr::from_type(ty.clone(), msg),
        Err(e) => e,
    }
}

/// `PlasmaObjectNotFound(msg)`.
pub fn not_found(py: Python<'_>, msg: String) -> PyErr {
    plasma_err(py, &OBJECT_NOT_FOUND, "PlasmaObjectNotFound", msg)
}

/// `PlasmaError(msg)`.
pub fn plasma_error(py: Python<'_>, msg: String) -> PyErr {
    plasma_err(py, &PLASMA_ERROR, "PlasmaError", msg)
}

/// Converts a client result.
pub trait IntoPy<T> {
    /// The result with its error as a Python exception.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
