//! `ObjectID`: 20 bytes naming an object, as in `pyarrow.plasma`.

use plasma_store::client::ObjectId;
use plasma_store::protocol::OBJECT_ID_LEN;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyBytes, PyTuple};

/// An ObjectID: exactly 20 bytes that name an object in the store.
///
/// ``ObjectID(b"...")`` takes 20 bytes; ``ObjectID.from_random()`` makes a random one.
/// ObjectIDs compare equal by value, are hashable (usable as dict keys) and picklable (to
/// pass them to other processes). ``repr`` is ``ObjectID(<40 hex digits>)``.
#[pyclass(module = "plasma_store", name = "ObjectID", frozen, weakref)]
#[derive(Clone, Copy)]
pub struct PyObjectId {
    pub id: ObjectId,
}

#[pymethods]
impl PyObjectId {
    #[new]
    fn new(object_id: &Bound<'_, PyAny>) -> PyResult<PyObjectId> {
        if let Ok(b) = object_id.cast::<PyBytes>()
            && let Ok(id) = ObjectId::try_from(b.as_bytes())
        {
            return Ok(PyObjectId { id });
        }
        Err(PyValueError::new_err(format!(
            "Object ID must be {OBJECT_ID_LEN} bytes, is {}",
            object_id.repr().map(|r| r.to_string()).unwrap_or_default()
        )))
    }

    /// A random ObjectID (from the operating system's random source, so ids made in forked
    /// processes differ too).
    #[staticmethod]
    fn from_random() -> PyResult<PyObjectId> {
        Ok(PyObjectId { id: random_id()? })
    }

    /// The 20 bytes of the id.
    fn binary<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.id.as_bytes())
    }

    /// The id as 40 lower-case hex digits.
    fn hex(&self) -> String {
        self.id.hex()
    }

    fn __repr__(&self) -> String {
        format!("ObjectID({})", self.id.hex())
    }

    fn __hash__(&self) -> isize {
        // Ids are usually random; mix all 20 bytes anyway, for ids that are not.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in self.id.as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // Never -1 (Python's error value for hashes).
        (h >> 2) as isize
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> Py<PyAny> {
        let py = other.py();
        let Ok(other) = other.cast::<PyObjectId>() else {
            return py.NotImplemented();
        };
        let eq = self.id == other.get().id;
        match op {
            CompareOp::Eq => eq.into_pyobject(py).unwrap().to_owned().into_any().unbind(),
            CompareOp::Ne => (!eq)
                .into_pyobject(py)
                .unwrap()
                .to_owned()
                .into_any()
                .unbind(),
            _ => py.NotImplemented(),
        }
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let args = PyTuple::new(py, [PyBytes::new(py, slf.get().id.as_bytes())])?;
        PyTuple::new(py, [slf.get_type().into_any(), args.into_any()])
    }
}

/// A random id from the OS.
pub fn random_id() -> PyResult<ObjectId> {
    let mut b = [0u8; OBJECT_ID_LEN];
    getrandom::fill(&mut b)
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("no random bytes: {e}")))?;
    Ok(ObjectId(b))
}

/// An object id argument: an `ObjectID`, or (a convenience the original lacks) its 20 bytes.
pub fn extract_id(obj: &Bound<'_, PyAny>) -> PyResult<ObjectId> {
    if let Ok(o) = obj.cast::<PyObjectId>() {
        return Ok(o.get().id);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return ObjectId::try_from(b.as_bytes()).map_err(|_| {
            PyValueError::new_err(format!(
                "Object ID must be {OBJECT_ID_LEN} bytes, is {} bytes",
                b.as_bytes().len()
            ))
        });
    }
    Err(PyTypeError::new_err(format!(
        "expected an ObjectID, got {}",
        obj.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
}

/// A list of object ids: any iterable of them (a single id is accepted as a list of one).
pub fn extract_ids(obj: &Bound<'_, PyAny>) -> PyResult<Vec<ObjectId>> {
    if obj.cast::<PyObjectId>().is_ok() || obj.cast::<PyBytes>().is_ok() {
        return Ok(vec![extract_id(obj)?]);
    }
    let mut ids = Vec::new();
    for item in obj.try_iter()? {
        ids.push(extract_id(&item?)?);
    }
    Ok(ids)
}

/// A new `ObjectID` object.
pub fn new_id(py: Python<'_>, id: ObjectId) -> PyResult<Bound<'_, PyObjectId>> {
    Bound::new(py, PyObjectId { id })
}
