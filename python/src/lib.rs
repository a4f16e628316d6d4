//! `plasma_store._plasma`: the native part of the `plasma_store` Python package, a client for
//! Plasma stores (this crate's daemon, or Arrow's original `plasma-store-server`) with the API
//! of the removed `pyarrow.plasma`.

mod client;
mod errors;
mod ids;
mod memory;
mod pickled;

use std::path::PathBuf;

use plasma_store::client::{Client, DEFAULT_CONNECT_DELAY, DEFAULT_CONNECT_RETRIES};
use pyo3::exceptions::{PyNotImplementedError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::client::{ObjectNotAvailable, PlasmaClient};
use crate::errors::IntoPy;
use crate::ids::PyObjectId;
use crate::memory::PlasmaMemory;

/// Connects to the Plasma store listening on the Unix socket ``store_socket_name``.
///
/// ``connect(store_socket_name, num_retries=-1)`` as in pyarrow 11: the connection is retried
/// ``num_retries`` times, 100 ms apart (-1: 80 times, libplasma's default), then OSError.
/// The older form ``connect(store_socket_name, manager_socket_name, release_delay,
/// num_retries=-1)`` is accepted too: the manager name must be empty (the plasma manager no
/// longer exists) and the release delay is ignored (pyarrow had already dropped it).
#[pyfunction]
#[pyo3(signature = (store_socket_name, *args, num_retries=None, manager_socket_name=None, release_delay=None))]
fn connect(
    py: Python<'_>,
    store_socket_name: PathBuf,
    args: &Bound<'_, PyTuple>,
    num_retries: Option<i64>,
    manager_socket_name: Option<String>,
    release_delay: Option<i64>,
) -> PyResult<PlasmaClient> {
    let _ = release_delay;
    let mut manager = manager_socket_name;
    let mut retries = num_retries;
    let legacy = args.len() > 0 && args.get_item(0)?.cast::<PyString>().is_ok();
    let positional_retries = if legacy {
        if args.len() > 3 {
            return Err(PyTypeError::new_err(
                "connect() takes at most 4 positional arguments (store_socket_name, \
                 manager_socket_name, release_delay, num_retries)",
            ));
        }
        manager = Some(args.get_item(0)?.extract()?);
        if args.len() > 1 {
            let _release_delay: i64 = args.get_item(1)?.extract()?;
        }
        args.get_item(2).ok()
    } else {
        if args.len() > 1 {
            return Err(PyTypeError::new_err(
                "connect() takes store_socket_name and num_retries (or the legacy \
                 store_socket_name, manager_socket_name, release_delay, num_retries)",
            ));
        }
        args.get_item(0).ok()
    };
    if let Some(r) = positional_retries {
        if retries.is_some() {
            return Err(PyTypeError::new_err("connect() got num_retries twice"));
        }
        retries = Some(r.extract()?);
    }
    if manager.as_deref().is_some_and(|m| !m.is_empty()) {
        return Err(PyNotImplementedError::new_err(
            "the plasma manager no longer exists: pass an empty manager_socket_name",
        ));
    }
    let retries = match retries {
        Some(r) if r >= 0 => u32::try_from(r).unwrap_or(u32::MAX),
        _ => DEFAULT_CONNECT_RETRIES,
    };
    let name = store_socket_name.to_string_lossy().into_owned();
    let client = py
        .detach(|| Client::connect_with_retries(&store_socket_name, retries, DEFAULT_CONNECT_DELAY))
        .py()?;
    Ok(PlasmaClient::new(client, name))
}

/// Runs the store daemon in this process with the command-line arguments ``args`` (without
/// the program name), exactly as the ``plasma_store`` binary does, until SIGINT or SIGTERM;
/// returns its exit code. For the ``plasma_store`` console script (``plasma_store._cli``):
/// the daemon takes SIGINT and SIGTERM through a signalfd, so it must run in a process
/// whose other threads (if any) block them.
#[pyfunction]
fn _run_store(py: Python<'_>, args: Vec<String>) -> i32 {
    // The daemon's exit codes are 0 and 1; ExitCode does not say which, so compare.
    py.detach(|| {
        if plasma_store::cli::run(args) == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        }
    })
}

#[pymodule]
fn _plasma(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(_run_store, m)?)?;
    m.add_class::<PyObjectId>()?;
    m.add_class::<PlasmaClient>()?;
    m.add_class::<PlasmaMemory>()?;
    m.add_class::<ObjectNotAvailable>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
