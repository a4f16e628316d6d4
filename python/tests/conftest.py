"""Fixtures: a fresh store daemon per test, and clients connected to it.

The daemon is found like ``plasma_store.start_plasma_store`` finds it: ``$PLASMA_STORE_BIN``
or ``plasma_store`` on PATH (``run-tests.sh`` builds it and sets the variable).
"""

import os
import signal
import subprocess
import sys

import pytest

import plasma_store as plasma

DEFAULT_MEMORY = 10 ** 8


def _stop(proc):
    """SIGTERM the store and check that it was alive and exits cleanly."""
    assert proc.poll() is None, "the store died during the test"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0


@pytest.fixture
def store():
    """(socket_path, proc) of a fresh 100 MB store."""
    with plasma.start_plasma_store(DEFAULT_MEMORY) as (path, proc):
        yield path, proc
        _stop(proc)


@pytest.fixture
def store_factory():
    """Starts stores with other options; each is checked and stopped at the end."""
    contexts = []

    def start(memory=DEFAULT_MEMORY, **kwargs):
        ctx = plasma.start_plasma_store(memory, **kwargs)
        path, proc = ctx.__enter__()
        contexts.append((ctx, proc))
        return path, proc

    yield start
    for ctx, proc in contexts:
        try:
            _stop(proc)
        finally:
            ctx.__exit__(None, None, None)


@pytest.fixture
def client(store):
    return plasma.connect(store[0])


@pytest.fixture
def client2(store):
    return plasma.connect(store[0])


# Child interpreters run in this directory: in python/ the source tree would shadow the
# installed package (``-c`` puts the working directory first on sys.path).
HERE = os.path.dirname(os.path.abspath(__file__))


def run_python(code, *args, python=sys.executable, timeout=60, check=True):
    """Runs ``code`` in a new interpreter; returns the CompletedProcess (text output)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([python, "-c", code, *map(str, args)], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=timeout,
                          check=check)


def start_python(code, *args, python=sys.executable):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.Popen([python, "-c", code, *map(str, args)], env=env, cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
