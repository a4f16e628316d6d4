"""A full store with the pyarrow 11 client: waiting creates (--create-wait) and the fallback
tier (--fallback-dir, --fallback-limit). The clients are pyarrow 11's, unchanged.

Run: PLASMA_STORE_BIN=target/debug/plasma_store .venv/bin/python -m pytest tests/python
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pyarrow.plasma as plasma
import pytest

STORE = os.environ.get("PLASMA_STORE_BIN", "target/debug/plasma_store")
MB = 1 << 20


@contextlib.contextmanager
def daemon(*args):
    """Starts the store with `args`; yields (socket, log path); checks it survived."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "plasma")
        log = os.path.join(tmp, "log")
        env = dict(os.environ, RUST_LOG="debug")
        with open(log, "w") as f:
            proc = subprocess.Popen([STORE, "-s", sock, *args], stderr=f, env=env)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                assert proc.poll() is None, open(log).read()
                assert time.monotonic() < deadline, "the store did not start"
                time.sleep(0.01)
            yield sock, log
            assert proc.poll() is None, "the store died during the test"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


def wait_for_log(log, text, count=1):
    """Waits until the store's log holds `text` `count` times (a synchronisation point)."""
    deadline = time.monotonic() + 60
    while open(log).read().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log"
        time.sleep(0.01)


def start_client(code, *args):
    """Starts `code` in a fresh Python process with pyarrow 11."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


CREATE_6MB = """
    import sys
    import numpy as np
    import pyarrow.plasma as plasma
    client = plasma.connect(sys.argv[1])
    oid = plasma.ObjectID(b"b" * 20)
    try:
        buf = client.create(oid, 6 << 20)
    except plasma.PlasmaStoreFull:
        print("full")
    else:
        np.frombuffer(buf, dtype=np.uint8)[:4] = np.frombuffer(b"done", dtype=np.uint8)
        client.seal(oid)
        print("created")
"""


def hold_8mb(client):
    oid = plasma.ObjectID(b"a" * 20)
    buf = client.create(oid, 8 * MB)
    client.seal(oid)
    return oid, buf


def test_a_waiting_create_succeeds_when_another_client_releases():
    with daemon("-m", str(10 * MB), "--create-wait", "60000") as (sock, log):
        holder = plasma.connect(sock)
        oid, buf = hold_8mb(holder)
        waiter = start_client(CREATE_6MB, sock)
        wait_for_log(log, "create waits for memory")
        assert waiter.poll() is None
        # Another client's requests are served while the create waits.
        assert holder.contains(oid)
        # Letting go of the buffer releases the object; it becomes evictable.
        del buf
        out, err = waiter.communicate(timeout=60)
        assert out.strip() == "created", err
        assert not holder.contains(oid)  # evicted to make room
        [b] = holder.get_buffers([plasma.ObjectID(b"b" * 20)])
        assert bytes(memoryview(b)[:4]) == b"done"
        holder.disconnect()


def test_a_waiting_create_fails_with_plasma_store_full_after_the_wait():
    with daemon("-m", str(10 * MB), "--create-wait", "300") as (sock, log):
        holder = plasma.connect(sock)
        oid, buf = hold_8mb(holder)
        waiter = start_client(CREATE_6MB, sock)
        out, err = waiter.communicate(timeout=60)
        assert out.strip() == "full", err
        assert open(log).read().count("create waits for memory") == 1
        # The held object is untouched and the store serves on.
        assert holder.contains(oid)
        assert np.frombuffer(buf, dtype=np.uint8)[0] == 0
        holder.disconnect()


def test_without_a_wait_a_full_store_answers_at_once():
    with daemon("-m", str(10 * MB)) as (sock, log):
        holder = plasma.connect(sock)
        oid, buf = hold_8mb(holder)
        out, err = start_client(CREATE_6MB, sock).communicate(timeout=60)
        assert out.strip() == "full", err
        assert "create waits for memory" not in open(log).read()
        holder.disconnect()
