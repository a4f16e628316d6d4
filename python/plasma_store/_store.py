"""Starting a store daemon for tests and scripts (``start_plasma_store``)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time

__all__ = ["start_plasma_store", "find_plasma_store_binary"]

ENV_VAR = "PLASMA_STORE_BIN"
BINARY_NAME = "plasma_store"


def find_plasma_store_binary():
    """Path of the store daemon: ``$PLASMA_STORE_BIN``; else the ``plasma_store`` command
    this package installs (in the scripts directory of the environment it is installed in,
    found even when that directory is not on ``PATH``); else ``plasma_store`` on ``PATH``.

    The installed command runs the daemon from this package's extension, the same code as
    the repository's ``plasma_store`` binary (``cargo build --release`` builds that one).
    """
    path = os.environ.get(ENV_VAR)
    if path:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise FileNotFoundError(
                f"{ENV_VAR}={path!r} is not an executable file")
        return path
    for scripts in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        path = os.path.join(scripts, BINARY_NAME)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    path = shutil.which(BINARY_NAME)
    if path:
        return path
    raise FileNotFoundError(
        f"cannot find the Plasma store daemon: set {ENV_VAR} to its path, or put "
        f"{BINARY_NAME!r} on PATH (pip install this package, which installs it, or build "
        "it in the plasma-store repository with 'cargo build --release')")


def _wait_until_listening(path, proc, timeout):
    deadline = time.monotonic() + timeout
    while True:
        rc = proc.poll()
        if rc is not None:
            raise RuntimeError(
                f"plasma_store exited unexpectedly with code {rc}")
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(path)
                    return
                except OSError:
                    pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"plasma_store did not listen on {path} within {timeout} s")
        time.sleep(0.005)


@contextlib.contextmanager
def start_plasma_store(plasma_store_memory, plasma_directory=None,
                       use_hugepages=False, external_store=None, *,
                       use_valgrind=False, use_profiler=False,
                       executable=None, extra_args=(), start_timeout=10.0):
    """Start a Plasma store daemon; yields ``(socket_path, proc)``.

    Like ``pyarrow.plasma.start_plasma_store``, but it starts this project's daemon (see
    :func:`find_plasma_store_binary`, or pass ``executable``). The socket lives in a new
    temporary directory. The store is ready when the context is entered (the helper waits
    until it accepts connections); on exit it gets SIGTERM (SIGKILL if it has not stopped
    after 5 s) and the directory is removed.

    Parameters
    ----------
    plasma_store_memory : int
        Capacity of the store in bytes (``-m``).
    plasma_directory : str, optional
        Directory for the shared-memory file (``-d``); default: anonymous memory.
    use_hugepages : bool
        Back the memory with huge pages (``-h``; needs a hugetlbfs ``plasma_directory``).
    external_store : str, optional
        Where evicted objects go (``-e``): ``hashtable://NAME`` or ``file:///DIR``.
    use_valgrind, use_profiler : bool
        Run the daemon under valgrind (memcheck or callgrind), as the original allowed.
    executable : str, optional
        Path of the daemon binary.
    extra_args : sequence of str
        More command-line flags for the daemon.
    start_timeout : float
        Seconds to wait for the daemon to listen.
    """
    if use_valgrind and use_profiler:
        raise ValueError("Cannot use valgrind and profiler at the same time.")
    command = [executable or find_plasma_store_binary()]
    tmpdir = tempfile.mkdtemp(prefix="plasma-")
    proc = None
    try:
        socket_path = os.path.join(tmpdir, "plasma.sock")
        command += ["-s", socket_path, "-m", str(int(plasma_store_memory))]
        if plasma_directory:
            command += ["-d", str(plasma_directory)]
        if use_hugepages:
            command += ["-h"]
        if external_store is not None:
            command += ["-e", external_store]
        command += list(extra_args)
        if use_valgrind:
            command = ["valgrind", "--track-origins=yes", "--leak-check=full",
                       "--error-exitcode=1"] + command
        elif use_profiler:
            command = ["valgrind", "--tool=callgrind"] + command
        proc = subprocess.Popen(command)
        slow = use_valgrind or use_profiler
        _wait_until_listening(socket_path, proc,
                              start_timeout * (10 if slow else 1))
        yield socket_path, proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmpdir, ignore_errors=True)
