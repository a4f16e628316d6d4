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


def listdir_now(path):
    return sorted(os.listdir(path))


WRITE_BIG = """
    import sys
    import numpy as np
    import pyarrow.plasma as plasma
    client = plasma.connect(sys.argv[1])
    size = int(sys.argv[2])
    data = np.random.default_rng(11).integers(0, 256, size, dtype=np.uint8)
    oid = plasma.ObjectID(b"f" * 20)
    buf = client.create(oid, size, metadata=b"meta")
    np.frombuffer(buf, dtype=np.uint8)[:] = data
    client.seal(oid)
    print(data.sum())
"""


def test_an_object_larger_than_shared_memory_falls_back_and_is_read_bit_exact():
    with tempfile.TemporaryDirectory() as fdir:
        size = 40 * MB
        with daemon("-m", str(8 * MB), "--fallback-dir", fdir) as (sock, log):
            out, err = start_client(WRITE_BIG, sock, str(size)).communicate(timeout=120)
            assert out.strip(), err
            # A second client (this process) reads it from the fallback segment.
            reader = plasma.connect(sock)
            [buf] = reader.get_buffers([plasma.ObjectID(b"f" * 20)], with_meta=False)
            expected = np.random.default_rng(11).integers(0, 256, size, dtype=np.uint8)
            assert np.array_equal(np.frombuffer(buf, dtype=np.uint8), expected)
            [meta] = reader.get_metadata([plasma.ObjectID(b"f" * 20)])
            assert bytes(meta) == b"meta"
            assert "fallback tier: segment" in open(log).read()
            # Shared-memory objects are served next to it as usual.
            small = reader.put(b"small")
            assert reader.get(small) == b"small"
            assert listdir_now(fdir) == []
            del buf, meta
            reader.disconnect()
        assert listdir_now(fdir) == []


CREATE_BIG = """
    import sys
    import pyarrow.plasma as plasma
    client = plasma.connect(sys.argv[1])
    try:
        client.create(plasma.ObjectID(b"g" * 20), int(sys.argv[2]))
    except plasma.PlasmaStoreFull:
        print("full")
    else:
        print("created")
"""


def test_the_fallback_limit_gives_plasma_store_full_and_the_store_lives_on():
    with tempfile.TemporaryDirectory() as fdir:
        args = ("-m", str(4 * MB), "--fallback-dir", fdir, "--fallback-limit", str(16 * MB))
        with daemon(*args) as (sock, log):
            out, err = start_client(CREATE_BIG, sock, str(20 * MB)).communicate(timeout=60)
            assert out.strip() == "full", err
            assert "would exceed --fallback-limit" in open(log).read()
            out, err = start_client(CREATE_BIG, sock, str(12 * MB)).communicate(timeout=60)
            assert out.strip() == "created", err
            client = plasma.connect(sock)
            assert client.get(client.put(b"x")) == b"x"
            client.disconnect()
        assert listdir_now(fdir) == []


@pytest.fixture
def small_tmpfs():
    """An 8 MiB tmpfs (needs root; the disk that fills up)."""
    with tempfile.TemporaryDirectory() as mnt:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", mnt])
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=True)


def test_a_full_disk_gives_plasma_store_full_never_a_sigbus(small_tmpfs):
    with daemon("-m", str(4 * MB), "--fallback-dir", small_tmpfs) as (sock, log):
        # 20 MiB do not fit on the 8 MiB disk: refused before the client writes anything.
        out, err = start_client(CREATE_BIG, sock, str(20 * MB)).communicate(timeout=60)
        assert out.strip() == "full", err
        assert "cannot reserve" in open(log).read()
        # 6 MiB do, and every byte can be written (reserved, so no SIGBUS).
        out, err = start_client(WRITE_BIG, sock, str(6 * MB)).communicate(timeout=60)
        assert out.strip(), err
        assert listdir_now(small_tmpfs) == []
    assert listdir_now(small_tmpfs) == []


def count_maps():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_client_mappings_stay_bounded_after_10000_fallback_objects():
    with tempfile.TemporaryDirectory() as fdir:
        with daemon("-m", str(64 * 1024), "--fallback-dir", fdir) as (sock, log):
            client = plasma.connect(sock)
            payload = np.arange(100_000 // 8, dtype=np.int64)
            counts = []
            for i in range(10_000):
                oid = plasma.ObjectID(i.to_bytes(20, "little"))
                buf = client.create(oid, payload.nbytes)
                np.frombuffer(buf, dtype=np.int64)[:] = payload
                client.seal(oid)
                del buf
                client.delete([oid])
                if i in (0, 9_999):
                    counts.append(count_maps())
            # One fallback segment, reused throughout: no mapping per object.
            assert counts[1] <= counts[0] + 2, counts
            assert open(log).read().count("fallback tier: segment") == 1
            client.disconnect()
        assert listdir_now(fdir) == []


HUGE_PAGES_SEEN = """
    import sys
    import numpy as np
    import pyarrow.plasma as plasma
    client = plasma.connect(sys.argv[1])
    oid = plasma.ObjectID(b"h" * 20)
    buf = client.create(oid, 32 << 20)
    np.frombuffer(buf, dtype=np.uint8)[:] = 1
    client.seal(oid)
    # kB of this process's shared mappings backed by 2 MiB pages (the segment's).
    pmd = 0
    with open("/proc/self/smaps") as f:
        for line in f:
            if line.startswith("ShmemPmdMapped:"):
                pmd = max(pmd, int(line.split()[1]))
    print(pmd)
"""


def test_a_segment_on_a_huge_always_tmpfs_reaches_clients_as_huge_pages():
    """-d on a tmpfs mounted huge=always (the README's recipe): pyarrow 11's mapping of the
    segment is made of 2 MiB pages (whether the warm-up or the client's writes brought them)."""
    with tempfile.TemporaryDirectory() as mnt:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=always,size=96M", "tmpfs",
                               mnt])
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        try:
            with daemon("-m", str(64 * MB), "-d", mnt) as (sock, log):
                out, err = start_client(HUGE_PAGES_SEEN, sock).communicate(timeout=60)
                assert int(out) >= 32 * 1024, err
            assert listdir_now(mnt) == []
        finally:
            subprocess.run(["umount", mnt], check=True)
