//! `PlasmaClient`: the API of `pyarrow.plasma.PlasmaClient` over the Rust client.
//!
//! Every call that talks to the store runs without the GIL. Buffers come back as
//! `pyarrow.Buffer`s over the shared memory (see `memory.rs`).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use plasma_store::client::{Client, ObjectBuffer, ObjectId, Subscription};
use plasma_store::digest::object_digest;
use plasma_store::protocol::decode_notification;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::errors::{IntoPy, not_found, plasma_error};
use crate::ids::{PyObjectId, extract_id, extract_ids, new_id, random_id};
use crate::memory::{PlasmaMemory, RawBuf, WriterSlot, copy_from, drop_detached, lock, py_buffer};
use crate::pickled::Layout;

/// Placeholder that ``PlasmaClient.get`` returns (the class itself) for an object that was not
/// available within the timeout.
#[pyclass(module = "plasma_store", name = "ObjectNotAvailable", frozen)]
pub struct ObjectNotAvailable;

/// A connection to a Plasma store; make one with ``plasma_store.connect``.
///
/// Thread-safe: calls from several threads are serialized on the connection (a ``get`` that
/// waits holds it; use one client per thread for concurrent waits). Blocking calls release the
/// GIL.
#[pyclass(module = "plasma_store", name = "PlasmaClient", frozen, weakref)]
pub struct PlasmaClient {
    client: Client,
    socket_name: String,
    /// The slots of created objects whose Python memory may still be alive, so that `seal`
    /// can seal them in place (their memory keeps its reference, as with the original).
    writers: Mutex<Writers>,
    subscription: Mutex<Option<Subscription>>,
    /// The notification socket's fd (-1 before `subscribe`); readable without the lock above,
    /// which a waiting `get_next_notification` holds.
    notification_fd: AtomicI32,
}

#[derive(Default)]
struct Writers {
    slots: HashMap<ObjectId, Weak<Mutex<WriterSlot>>>,
    /// Size after the last sweep of dead entries.
    swept: usize,
}

impl Writers {
    fn insert(&mut self, id: ObjectId, slot: &Arc<Mutex<WriterSlot>>) {
        self.slots.insert(id, Arc::downgrade(slot));
        if self.slots.len() > 2 * self.swept.max(32) {
            self.slots.retain(|_, w| w.strong_count() > 0);
            self.swept = self.slots.len();
        }
    }
}

impl PlasmaClient {
    pub fn new(client: Client, socket_name: String) -> PlasmaClient {
        PlasmaClient {
            client,
            socket_name,
            writers: Mutex::new(Writers::default()),
            subscription: Mutex::new(None),
            notification_fd: AtomicI32::new(-1),
        }
    }

    /// Gets objects (without the GIL); each found one shared by the views made of it.
    fn fetch(
        &self,
        py: Python<'_>,
        ids: &[ObjectId],
        timeout_ms: i64,
    ) -> PyResult<Vec<Option<Arc<ObjectBuffer>>>> {
        let found = py.detach(|| self.client.get(ids, timeout_ms)).py()?;
        Ok(found.into_iter().map(|o| o.map(Arc::new)).collect())
    }

    /// Creates, fills (with `fill`, given the data bytes, without the GIL) and seals an object.
    fn create_filled(
        &self,
        py: Python<'_>,
        id: ObjectId,
        size: u64,
        metadata: &[u8],
        fill: impl FnOnce(&mut [u8]) + Send,
    ) -> PyResult<()> {
        py.detach(|| {
            let mut buf = self.client.create(id, size, metadata)?;
            fill(buf.data_mut());
            // The sealed buffer releases the object as it goes.
            buf.seal().map(drop)
        })
        .py()
    }
}

/// Builds a list with `f` applied to each fetched object. If `f` fails, the objects not yet
/// handed to it are released without the GIL.
fn wrap_each<'py>(
    py: Python<'py>,
    found: Vec<Option<Arc<ObjectBuffer>>>,
    mut f: impl FnMut(Option<Arc<ObjectBuffer>>) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    let mut rest = found.into_iter();
    while let Some(object) = rest.next() {
        if let Err(e) = f(object).and_then(|item| out.append(item)) {
            drop_detached(py, rest.collect::<Vec<_>>());
            return Err(e);
        }
    }
    Ok(out)
}

/// Bytes of a bytes-like argument (copied unless it is `bytes`), passed to `f`.
fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let raw = RawBuf::get(obj)?;
    Ok(f(&raw.to_vec()))
}

fn metadata_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<u8>> {
    match obj {
        None => Ok(Vec::new()),
        Some(o) if o.is_none() => Ok(Vec::new()),
        Some(o) => with_bytes(o, <[u8]>::to_vec),
    }
}

fn pickle_fn<'py>(py: Python<'py>, name: &str) -> PyResult<&'py Bound<'py, PyAny>> {
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let cell = if name == "dumps" { &DUMPS } else { &LOADS };
    cell.import(py, "pickle", name)
}

fn no_serialization_context(ctx: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    match ctx {
        Some(c) if !c.is_none() => Err(PyValueError::new_err(
            "serialization_context is not supported: pyarrow's serialization was removed, \
             plasma_store pickles values (protocol 5); use copyreg or __reduce__ to customize",
        )),
        _ => Ok(()),
    }
}

#[pymethods]
impl PlasmaClient {
    /// The socket path this client connected to.
    #[getter]
    fn store_socket_name(&self) -> &str {
        &self.socket_name
    }

    fn __repr__(&self) -> String {
        format!(
            "<plasma_store.PlasmaClient connected to {:?}>",
            self.socket_name
        )
    }

    /// Creates an object of ``data_size`` bytes (followed by ``metadata``) and returns its
    /// data as a writable ``pyarrow.Buffer`` over the shared memory. Write it (numpy,
    /// ``pyarrow.FixedSizeBufferWriter``, memoryview...), then ``seal(object_id)``.
    ///
    /// Raises PlasmaObjectExists if the id exists, PlasmaStoreFull if the store cannot make
    /// room for it.
    #[pyo3(signature = (object_id, data_size, metadata=None))]
    fn create<'py>(
        &self,
        py: Python<'py>,
        object_id: &Bound<'py, PyAny>,
        data_size: u64,
        metadata: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = extract_id(object_id)?;
        let metadata = metadata_arg(metadata)?;
        let mut buf = py
            .detach(|| self.client.create(id, data_size, &metadata))
            .py()?;
        let data = buf.data_mut();
        let (ptr, len) = (data.as_mut_ptr(), data.len());
        let guard = buf.mapping_guard();
        let slot = Arc::new(Mutex::new(WriterSlot::Writable(buf)));
        lock(&self.writers).insert(id, &slot);
        py_buffer(py, PlasmaMemory::created(slot, guard, ptr, len))
    }

    /// Seals an object this client created: it becomes immutable and visible to all clients.
    /// A buffer from ``create`` stays usable (read it; writing after the seal breaks the
    /// store's contract) and keeps the object referenced until it is garbage collected.
    fn seal(&self, py: Python<'_>, object_id: &Bound<'_, PyAny>) -> PyResult<()> {
        let id = extract_id(object_id)?;
        let slot = lock(&self.writers)
            .slots
            .remove(&id)
            .and_then(|w| w.upgrade());
        py.detach(move || {
            if let Some(slot) = slot {
                let mut state = lock(&slot);
                if let WriterSlot::Writable(_) = &*state {
                    let WriterSlot::Writable(buf) =
                        std::mem::replace(&mut *state, WriterSlot::Gone)
                    else {
                        unreachable!()
                    };
                    *state = WriterSlot::Sealed(buf.seal()?);
                    return Ok(());
                }
            }
            self.client.seal(id)
        })
        .py()
    }

    /// Creates and seals an object holding ``data`` (bytes-like) and ``metadata`` in one
    /// message to the store.
    #[pyo3(signature = (object_id, data, metadata=None))]
    fn create_and_seal(
        &self,
        py: Python<'_>,
        object_id: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let id = extract_id(object_id)?;
        let metadata = metadata_arg(metadata)?;
        with_bytes(data, |data| {
            py.detach(|| self.client.create_and_seal(id, data, &metadata))
                .py()
        })?
    }

    /// Gets the data of objects as read-only ``pyarrow.Buffer``s over the shared memory, one
    /// per id, ``None`` for objects not available within ``timeout_ms`` (-1: wait for all of
    /// them, 0: do not wait). With ``with_meta=True`` each entry is ``(metadata_bytes,
    /// buffer)`` (``(None, None)`` when not available). Each buffer keeps its object
    /// referenced (so not evicted) until it is garbage collected.
    #[pyo3(signature = (object_ids, timeout_ms=-1, with_meta=false))]
    fn get_buffers<'py>(
        &self,
        py: Python<'py>,
        object_ids: &Bound<'py, PyAny>,
        timeout_ms: i64,
        with_meta: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let ids = extract_ids(object_ids)?;
        let found = self.fetch(py, &ids, timeout_ms)?;
        wrap_each(py, found, |object| {
            let Some(object) = object else {
                return Ok(if with_meta {
                    PyTuple::new(py, [py.None(), py.None()])?.into_any()
                } else {
                    py.None().into_bound(py)
                });
            };
            let data = object.data();
            let memory = PlasmaMemory::sealed(&object, data.as_ptr(), data.len());
            let meta = with_meta.then(|| PyBytes::new(py, object.metadata()));
            let result = py_buffer(py, memory);
            drop_detached(py, object);
            let buffer = result?;
            Ok(match meta {
                Some(meta) => PyTuple::new(py, [meta.into_any(), buffer])?.into_any(),
                None => buffer,
            })
        })
    }

    /// Gets the metadata of objects as read-only ``pyarrow.Buffer``s (``None`` when not
    /// available within ``timeout_ms``).
    #[pyo3(signature = (object_ids, timeout_ms=-1))]
    fn get_metadata<'py>(
        &self,
        py: Python<'py>,
        object_ids: &Bound<'py, PyAny>,
        timeout_ms: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let ids = extract_ids(object_ids)?;
        let found = self.fetch(py, &ids, timeout_ms)?;
        wrap_each(py, found, |object| {
            let Some(object) = object else {
                return Ok(py.None().into_bound(py));
            };
            let meta = object.metadata();
            let memory = PlasmaMemory::sealed(&object, meta.as_ptr(), meta.len());
            let result = py_buffer(py, memory);
            drop_detached(py, object);
            result
        })
    }

    /// Stores the bytes of ``value`` (any object exporting a contiguous buffer: bytes,
    /// bytearray, memoryview, numpy array, ``pyarrow.Buffer``...) as a new sealed object and
    /// returns its ObjectID (random unless ``object_id`` is given). Copies of 1 MiB or more use
    /// up to ``memcopy_threads`` threads.
    #[pyo3(signature = (value, object_id=None, metadata=None, memcopy_threads=6))]
    fn put_raw_buffer<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
        object_id: Option<&Bound<'py, PyAny>>,
        metadata: Option<&Bound<'py, PyAny>>,
        memcopy_threads: usize,
    ) -> PyResult<Bound<'py, PyObjectId>> {
        let id = match object_id {
            Some(o) if !o.is_none() => extract_id(o)?,
            _ => random_id()?,
        };
        let metadata = metadata_arg(metadata)?;
        let src = RawBuf::get(value)?;
        let (addr, len) = (src.addr(), src.len());
        py.detach(|| {
            let mut buf = self.client.create(id, len as u64, &metadata)?;
            let bytes: &[u8] = if len == 0 {
                &[]
            } else {
                // SAFETY: `src` holds the exporter's view, so `len` bytes at `addr` stay valid
                // (and unchanged: it is another object's memory, not this new object's) until
                // `src` is dropped below.
                unsafe { std::slice::from_raw_parts(addr as *const u8, len) }
            };
            // Copied and hashed in one pass; the seal sends that digest.
            buf.write_all(bytes, memcopy_threads);
            buf.seal().map(drop)
        })
        .py()?;
        drop(src);
        new_id(py, id)
    }

    /// Stores a Python value as a new sealed object and returns its ObjectID.
    ///
    /// The value is pickled with protocol 5 (pyarrow's serialization, which the original
    /// used, no longer exists). Large contiguous buffers inside it (numpy arrays, Arrow
    /// buffers, ...) are stored out-of-band, so ``get`` returns them zero-copy and read-only.
    #[pyo3(signature = (value, object_id=None, memcopy_threads=6, serialization_context=None))]
    fn put<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
        object_id: Option<&Bound<'py, PyAny>>,
        memcopy_threads: usize,
        serialization_context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyObjectId>> {
        no_serialization_context(serialization_context)?;
        let id = match object_id {
            Some(o) if !o.is_none() => extract_id(o)?,
            _ => random_id()?,
        };
        let buffers = PyList::empty(py);
        let kwargs = PyDict::new(py);
        kwargs.set_item("protocol", 5)?;
        kwargs.set_item("buffer_callback", buffers.getattr("append")?)?;
        let payload = pickle_fn(py, "dumps")?.call((value,), Some(&kwargs))?;
        let payload = payload.cast::<PyBytes>()?.as_bytes();
        let mut raws = Vec::with_capacity(buffers.len());
        for b in buffers.iter() {
            raws.push(RawBuf::get(&b.call_method0("raw")?)?);
        }
        let lens: Vec<usize> = raws.iter().map(RawBuf::len).collect();
        let layout = Layout::new(payload.len(), &lens);
        let sources: Vec<usize> = raws.iter().map(RawBuf::addr).collect();
        let header = layout.header();
        self.create_filled(py, id, layout.total as u64, b"", |dst| {
            dst[..header.len()].copy_from_slice(&header);
            let (off, len) = layout.pickle;
            dst[off..off + len].copy_from_slice(payload);
            for (&(off, len), &src) in layout.buffers.iter().zip(&sources) {
                // SAFETY: each source is a view held in `raws` for the whole call, of `len`
                // bytes, outside this new object.
                unsafe { copy_from(&mut dst[off..off + len], src, memcopy_threads) };
            }
        })?;
        drop(raws);
        new_id(py, id)
    }

    /// Gets Python values stored with ``put``: a list for a list of ids (``ObjectNotAvailable``
    /// for those not available within ``timeout_ms``), a single value for a single ObjectID.
    #[pyo3(signature = (object_ids, timeout_ms=-1, serialization_context=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        object_ids: &Bound<'py, PyAny>,
        timeout_ms: i64,
        serialization_context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        no_serialization_context(serialization_context)?;
        let single = object_ids.cast::<PyObjectId>().is_ok();
        let ids = extract_ids(object_ids)?;
        let found = self.fetch(py, &ids, timeout_ms)?;
        let loads = pickle_fn(py, "loads")?;
        let not_available = py.get_type::<ObjectNotAvailable>().into_any();
        let mut ids = ids.into_iter();
        let out = wrap_each(py, found, |object| {
            let id = ids.next().unwrap_or_default();
            let Some(object) = object else {
                return Ok(not_available.clone());
            };
            let value = unpickle(py, loads, id, &object);
            drop_detached(py, object);
            value
        })?;
        if single {
            return out.get_item(0);
        }
        Ok(out.into_any())
    }

    /// Whether the store holds this object, sealed.
    fn contains(&self, py: Python<'_>, object_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = extract_id(object_id)?;
        py.detach(|| self.client.contains(id)).py()
    }

    /// The 8-byte digest of a sealed object, as the original computes it (XXH64 of data and
    /// metadata). Raises PlasmaObjectNotFound if the object is not in the store.
    fn hash<'py>(
        &self,
        py: Python<'py>,
        object_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let id = extract_id(object_id)?;
        let digest = py
            .detach(|| -> Result<_, plasma_store::client::Error> {
                let mut found = self.client.get(&[id], 0)?;
                Ok(found
                    .pop()
                    .flatten()
                    .map(|o| object_digest(o.data(), o.metadata())))
            })
            .py()?;
        match digest {
            Some(d) => Ok(PyBytes::new(py, &d)),
            None => Err(not_found(py, format!("object {} not found", id.hex()))),
        }
    }

    /// Deletes objects. Missing ones are ignored; objects in use are deleted when their last
    /// user releases them.
    fn delete(&self, py: Python<'_>, object_ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = extract_ids(object_ids)?;
        py.detach(|| self.client.delete(&ids)).py()
    }

    /// Evicts unused objects, least recently used first, until at least ``num_bytes`` are
    /// freed; returns the number of bytes freed.
    fn evict(&self, py: Python<'_>, num_bytes: u64) -> PyResult<u64> {
        py.detach(|| self.client.evict(num_bytes)).py()
    }

    /// Every object in the store: ``{ObjectID: {"data_size", "metadata_size", "ref_count",
    /// "create_time", "construct_duration", "state"}}`` with state ``"created"`` or
    /// ``"sealed"``.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let infos = py.detach(|| self.client.list()).py()?;
        let out = PyDict::new(py);
        for info in infos {
            let entry = PyDict::new(py);
            entry.set_item("data_size", info.data_size)?;
            entry.set_item("metadata_size", info.metadata_size)?;
            entry.set_item("ref_count", info.ref_count)?;
            entry.set_item("create_time", info.create_time)?;
            entry.set_item("construct_duration", info.construct_duration)?;
            let state = if info.digest.is_some() {
                "sealed"
            } else {
                "created"
            };
            entry.set_item("state", state)?;
            out.set_item(new_id(py, info.object_id)?, entry)?;
        }
        Ok(out)
    }

    /// The store's capacity in bytes.
    fn store_capacity(&self) -> u64 {
        self.client.capacity()
    }

    /// Names this client and gives it an output memory quota (objects it creates are evicted
    /// from its quota first). Raises PlasmaStoreFull if the store refuses the quota.
    fn set_client_options(
        &self,
        py: Python<'_>,
        client_name: &str,
        limit_output_memory: u64,
    ) -> PyResult<()> {
        py.detach(|| self.client.set_options(client_name, limit_output_memory))
            .py()
    }

    /// The store's report on its memory use and eviction policy.
    fn debug_string(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.client.debug_string()).py()
    }

    /// Subscribes to notifications of sealed, deleted and evicted objects (read them with
    /// ``get_next_notification`` or from ``get_notification_socket``).
    fn subscribe(&self, py: Python<'_>) -> PyResult<()> {
        let sub = py.detach(|| self.client.subscribe()).py()?;
        self.notification_fd
            .store(sub.as_raw_fd(), Ordering::SeqCst);
        *lock(&self.subscription) = Some(sub);
        Ok(())
    }

    /// A ``socket.socket`` for the notification stream (a duplicate of the client's fd):
    /// each message is an 8-byte native-endian length and a body for
    /// ``decode_notifications``.
    fn get_notification_socket<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let fd = self.notification_fd.load(Ordering::SeqCst);
        if fd < 0 {
            return Err(plasma_error(
                py,
                "not subscribed: call subscribe() first".into(),
            ));
        }
        let socket = py.import("socket")?;
        let dup = py.import("os")?.call_method1("dup", (fd,))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("family", socket.getattr("AF_UNIX")?)?;
        kwargs.set_item("type", socket.getattr("SOCK_STREAM")?)?;
        kwargs.set_item("fileno", dup)?;
        socket.getattr("socket")?.call((), Some(&kwargs))
    }

    /// Decodes one notification body (the bytes after its 8-byte length): ``(object_ids,
    /// data_sizes, metadata_sizes)``, sizes -1 for deletions.
    fn decode_notifications<'py>(
        &self,
        py: Python<'py>,
        buf: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let infos = with_bytes(buf, decode_notification)?
            .map_err(|e| PyOSError::new_err(format!("bad notification: {e}")))?;
        let ids = PyList::empty(py);
        let mut data_sizes = Vec::with_capacity(infos.len());
        let mut metadata_sizes = Vec::with_capacity(infos.len());
        for info in infos {
            ids.append(new_id(py, info.object_id)?)?;
            let (d, m) = sizes(&info);
            data_sizes.push(d);
            metadata_sizes.push(m);
        }
        PyTuple::new(
            py,
            [
                ids.into_any(),
                PyList::new(py, data_sizes)?.into_any(),
                PyList::new(py, metadata_sizes)?.into_any(),
            ],
        )
    }

    /// Waits for the next notification: ``(object_id, data_size, metadata_size)``, sizes -1
    /// when the object was deleted or evicted.
    fn get_next_notification<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let next = py.detach(|| {
            let mut sub = lock(&self.subscription);
            sub.as_mut().map(|s| s.next_notification())
        });
        let info = match next {
            None => {
                return Err(plasma_error(
                    py,
                    "not subscribed: call subscribe() first".into(),
                ));
            }
            Some(r) => r.py()?.ok_or_else(|| {
                PyOSError::new_err(
                    "Failed to read object notification from Plasma socket: the store closed it",
                )
            })?,
        };
        let (d, m) = sizes(&info);
        PyTuple::new(
            py,
            [
                new_id(py, info.object_id)?.into_any(),
                d.into_pyobject(py)?.into_any(),
                m.into_pyobject(py)?.into_any(),
            ],
        )
    }

    /// Closes the connection. The store drops this client's references and aborts its
    /// unsealed objects; buffers already obtained stay mapped.
    fn disconnect(&self, py: Python<'_>) {
        py.detach(|| self.client.disconnect());
    }
}

fn sizes(info: &plasma_store::client::ObjectInfo) -> (i64, i64) {
    if info.is_deletion {
        (-1, -1)
    } else {
        (info.data_size, info.metadata_size)
    }
}

/// Unpickles an object `put` wrote, handing pickle zero-copy views for its buffers.
fn unpickle<'py>(
    py: Python<'py>,
    loads: &Bound<'py, PyAny>,
    id: ObjectId,
    object: &Arc<ObjectBuffer>,
) -> PyResult<Bound<'py, PyAny>> {
    let data = object.data();
    let layout = Layout::parse(data).map_err(|why| {
        PyValueError::new_err(format!(
            "object {} was not stored by plasma_store's put() ({why}); read it with \
             get_buffers() (pyarrow.plasma's put() used pyarrow's removed serialization)",
            id.hex()
        ))
    })?;
    let view = |(off, len): (usize, usize)| {
        Bound::new(py, PlasmaMemory::sealed(object, data[off..].as_ptr(), len))
    };
    let buffers = PyList::empty(py);
    for &part in &layout.buffers {
        buffers.append(view(part)?)?;
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("buffers", buffers)?;
    loads.call((view(layout.pickle)?,), Some(&kwargs))
}
