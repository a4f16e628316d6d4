//! Object memory as Python sees it.
//!
//! [`PlasmaMemory`] owns a buffer of the Rust client (so it holds the object's reference) and
//! exports the bytes through the buffer protocol. The client hands out `pyarrow.Buffer`s made
//! with `pyarrow.py_buffer(memory)`: pyarrow keeps the export, and so the `PlasmaMemory`, alive
//! for as long as the Buffer or anything sliced or read zero-copy from it (arrays, record
//! batches, numpy views) lives. When the last of them goes, the object is released.
//!
//! [`RawBuf`] is the other direction: a view of any Python object that exports a contiguous
//! buffer, to copy it into the store.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard};

use plasma_store::client::{MappingGuard, MutableBuffer, ObjectBuffer};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// Locks, ignoring poisoning (a panic while holding these locks leaves nothing half done).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The state of an object this client created, shared by its Python memory and the client
/// (which seals it in place).
pub enum WriterSlot {
    /// Not sealed yet: the writable buffer.
    Writable(MutableBuffer),
    /// Sealed through `PlasmaClient.seal` while the memory was alive: the read-only buffer
    /// that now holds the reference.
    Sealed(ObjectBuffer),
    /// The seal failed and the buffer is gone (the mapping guard keeps the bytes mapped).
    Gone,
}

/// What keeps a [`PlasmaMemory`]'s object referenced and its bytes mapped.
pub enum Holder {
    /// A sealed object from a get; its data and metadata views share it.
    Sealed(#[allow(dead_code)] Arc<ObjectBuffer>),
    /// An object this client created.
    Created {
        _slot: Arc<Mutex<WriterSlot>>,
        _guard: MappingGuard,
    },
}

/// Memory of one object in the store (its data or its metadata), exported through the buffer
/// protocol. Returned wrapped in `pyarrow.Buffer`s, or as the base of zero-copy values that
/// ``PlasmaClient.get`` unpickles. Holds a reference to the object until it is garbage
/// collected.
#[pyclass(module = "plasma_store", name = "PlasmaMemory", frozen)]
pub struct PlasmaMemory {
    holder: Option<Holder>,
    ptr: usize,
    len: usize,
    readonly: bool,
}

impl PlasmaMemory {
    /// A read-only view of `len` bytes at `ptr`, which must lie inside `object`.
    pub fn sealed(object: &Arc<ObjectBuffer>, ptr: *const u8, len: usize) -> PlasmaMemory {
        PlasmaMemory {
            holder: Some(Holder::Sealed(Arc::clone(object))),
            ptr: ptr as usize,
            len,
            readonly: true,
        }
    }

    /// The writable data of a created object. `ptr`/`len` are its data bytes; the guard
    /// keeps them mapped whatever happens to the buffer in `slot`.
    pub fn created(
        slot: Arc<Mutex<WriterSlot>>,
        guard: MappingGuard,
        ptr: *mut u8,
        len: usize,
    ) -> Self {
        PlasmaMemory {
            holder: Some(Holder::Created {
                _slot: slot,
                _guard: guard,
            }),
            ptr: ptr as usize,
            len,
            readonly: false,
        }
    }
}

#[pymethods]
impl PlasmaMemory {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        // SAFETY: `view` is the caller's Py_buffer to fill. PyBuffer_FillInfo checks `flags`
        // (refusing a writable export of read-only memory), fills a 1-D unsigned-byte view and
        // takes a new reference to `slf`, which keeps the memory alive until the view is
        // released. The bytes stay mapped for as long as `slf` lives (see `holder`).
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                me.ptr as *mut c_void,
                me.len as ffi::Py_ssize_t,
                c_int::from(me.readonly),
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        let kind = if self.readonly {
            "read-only"
        } else {
            "writable"
        };
        format!("<plasma_store.PlasmaMemory: {} {kind} bytes>", self.len)
    }
}

impl Drop for PlasmaMemory {
    fn drop(&mut self) {
        if let Some(holder) = self.holder.take() {
            // Releasing takes the client's lock, which a blocking call of another thread may
            // hold: never wait for it with the GIL held (pyarrow's PlasmaBuffer did the same).
            Python::attach(|py| py.detach(move || drop(holder)));
        }
    }
}

/// Wraps memory in a `pyarrow.Buffer` (zero-copy; the Buffer keeps `memory` alive).
pub fn py_buffer<'py>(py: Python<'py>, memory: PlasmaMemory) -> PyResult<Bound<'py, PyAny>> {
    static PY_BUFFER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let f = PY_BUFFER.import(py, "pyarrow", "py_buffer")?;
    f.call1((Bound::new(py, memory)?,))
}

/// Drops client buffers without holding the GIL (they may wait for the client's lock).
pub fn drop_detached<T: Send>(py: Python<'_>, value: T) {
    py.detach(move || drop(value));
}

/// A contiguous buffer exported by a Python object, read as raw bytes.
pub struct RawBuf {
    view: Box<ffi::Py_buffer>,
}

impl RawBuf {
    /// Asks `obj` for its bytes (C or Fortran contiguous, any item type).
    pub fn get(obj: &Bound<'_, PyAny>) -> PyResult<RawBuf> {
        // SAFETY: a zeroed Py_buffer is a valid out-parameter; PyObject_GetBuffer fills it on
        // success (and then it must be released exactly once, in Drop), and leaves an
        // exception set on failure.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        let rc =
            unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_ANY_CONTIGUOUS) };
        if rc == -1 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(RawBuf { view })
    }

    /// Address of the first byte.
    pub fn addr(&self) -> usize {
        self.view.buf as usize
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        usize::try_from(self.view.len).unwrap_or(0)
    }

    /// The bytes, copied (under the GIL, so no Python code changes them meanwhile).
    pub fn to_vec(&self) -> Vec<u8> {
        if self.len() == 0 {
            return Vec::new();
        }
        // SAFETY: the exporter guarantees `len` readable bytes at `buf` while the view is held;
        // with the GIL held no Python code runs to change them during the copy.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }.to_vec()
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: the view was filled by PyObject_GetBuffer and is released once, here, with
        // the GIL held.
        Python::attach(|_| unsafe { ffi::PyBuffer_Release(&mut *self.view) });
    }
}

/// Copies below this size are done by the calling thread alone.
const PARALLEL_COPY_MIN: usize = 1 << 20;
/// Most threads one copy uses.
const MAX_COPY_THREADS: usize = 64;

/// Copies `dst.len()` bytes from address `src` into `dst`, with up to `threads` threads for
/// large copies (pyarrow's `memcopy_threads`).
///
/// # Safety
/// `src` must point to `dst.len()` readable bytes that stay valid during the call and do not
/// overlap `dst`.
pub unsafe fn copy_from(dst: &mut [u8], src: usize, threads: usize) {
    let n = dst.len();
    if n == 0 {
        return;
    }
    // As many threads as asked for (pyarrow's meaning of memcopy_threads), each copying at
    // least PARALLEL_COPY_MIN bytes.
    let threads = threads
        .clamp(1, MAX_COPY_THREADS)
        .min(n.div_ceil(PARALLEL_COPY_MIN));
    if threads <= 1 {
        // SAFETY: by the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), n) };
        return;
    }
    // Page-aligned chunks, so no two threads fault in the same page.
    let chunk = n.div_ceil(threads).next_multiple_of(4096);
    std::thread::scope(|s| {
        let mut parts = dst.chunks_mut(chunk).enumerate();
        let first = parts.next();
        for (i, part) in parts {
            let from = src + i * chunk;
            // SAFETY: `from..from+part.len()` is the matching slice of the caller's source.
            s.spawn(move || unsafe {
                std::ptr::copy_nonoverlapping(from as *const u8, part.as_mut_ptr(), part.len())
            });
        }
        if let Some((_, part)) = first {
            // SAFETY: as above, for the first chunk.
            unsafe {
                std::ptr::copy_nonoverlapping(src as *const u8, part.as_mut_ptr(), part.len())
            };
        }
    });
}
