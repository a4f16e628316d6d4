"""plasma_store specifics: argument forms, buffer lifetimes and references, threads and the
GIL, the pickle layout of put/get, errors, and the helpers."""

import gc
import hashlib
import os
import pathlib
import pickle
import subprocess
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

import plasma_store as plasma

MiB = 1 << 20


def new_id():
    return plasma.ObjectID.from_random()


def ref_count(client, object_id):
    return client.list()[object_id]["ref_count"]


# --- connect ---------------------------------------------------------------------------

def test_connect_argument_forms(store):
    path = store[0]
    for client in [plasma.connect(path), plasma.connect(path, 5),
                   plasma.connect(path, num_retries=0),
                   plasma.connect(path, "", 0), plasma.connect(path, "", 0, 3),
                   plasma.connect(path, manager_socket_name="", release_delay=0),
                   plasma.connect(pathlib.Path(path))]:
        assert client.store_capacity() == 10 ** 8
        assert client.store_socket_name == path
    with pytest.raises(NotImplementedError):
        plasma.connect(path, "/tmp/manager", 0)
    with pytest.raises(TypeError):
        plasma.connect(path, 1, 2)
    with pytest.raises(TypeError):
        plasma.connect(path, 1, num_retries=1)


def test_connect_retries_until_the_store_listens(tmp_path):
    path = str(tmp_path / "late.sock")
    binary = plasma.find_plasma_store_binary()
    procs = []
    timer = threading.Timer(0.5, lambda: procs.append(
        subprocess.Popen([binary, "-s", path, "-m", "1000000"])))
    timer.start()
    try:
        start = time.monotonic()
        client = plasma.connect(path)  # 80 retries, 100 ms apart
        assert time.monotonic() - start >= 0.4
        assert client.store_capacity() == 1000000
    finally:
        timer.join()
        for p in procs:
            p.terminate()
            p.wait()


def test_connect_without_retries_fails_at_once(tmp_path):
    start = time.monotonic()
    with pytest.raises(OSError, match="could not connect"):
        plasma.connect(str(tmp_path / "nothing.sock"), num_retries=0)
    assert time.monotonic() - start < 1


# --- ObjectID ----------------------------------------------------------------------------

def test_object_id_api():
    raw = bytes(range(20))
    oid = plasma.ObjectID(raw)
    assert oid.binary() == raw
    assert repr(oid) == "ObjectID(" + raw.hex() + ")"
    assert oid.hex() == raw.hex()
    assert {oid: 1}[plasma.ObjectID(raw)] == 1
    assert len({new_id() for _ in range(1000)}) == 1000
    assert pickle.loads(pickle.dumps(oid, protocol=0)) == oid
    with pytest.raises(ValueError):
        plasma.ObjectID(bytearray(20))
    with pytest.raises(TypeError):
        oid < oid


def test_clients_and_ids_support_weak_references(client):
    import weakref
    assert weakref.ref(client)() is client
    oid = new_id()
    assert weakref.ref(oid)() is oid


def test_ids_may_be_given_as_bytes(client):
    raw = os.urandom(20)
    client.create_and_seal(raw, b"x")
    assert client.contains(plasma.ObjectID(raw))
    assert client.get_buffers([raw])[0].to_pybytes() == b"x"
    with pytest.raises(TypeError, match="ObjectID"):
        client.contains("not an id")
    with pytest.raises(ValueError):
        client.contains(b"short")


# --- buffers, references and lifetimes ----------------------------------------------------

def test_create_returns_a_mutable_arrow_buffer(client):
    object_id = new_id()
    buffer = client.create(object_id, 16, b"meta")
    assert isinstance(buffer, pa.Buffer) and isinstance(buffer, plasma.PlasmaBuffer)
    assert buffer.is_mutable and buffer.size == 16
    assert buffer.address % 64 == 0
    writer = pa.FixedSizeBufferWriter(buffer)
    writer.write(b"0123456789abcdef")
    client.seal(object_id)
    # The creator's buffer stays readable after the seal and still holds the object.
    assert buffer.to_pybytes() == b"0123456789abcdef"
    assert ref_count(client, object_id) == 1
    del writer, buffer
    gc.collect()
    assert ref_count(client, object_id) == 0
    [(meta, data)] = client.get_buffers([object_id], with_meta=True)
    assert (meta, data.to_pybytes()) == (b"meta", b"0123456789abcdef")


def test_seal_after_dropping_the_buffer(client):
    object_id = new_id()
    np.frombuffer(client.create(object_id, 4), np.uint8)[:] = [1, 2, 3, 4]
    gc.collect()
    assert client.list()[object_id]["state"] == "created"
    client.seal(object_id)
    assert client.get_buffers([object_id])[0].to_pybytes() == b"\x01\x02\x03\x04"
    assert ref_count(client, object_id) == 0


def test_get_buffers_hold_a_reference_until_the_last_view_goes(client, client2):
    object_id = client.put_raw_buffer(np.arange(100, dtype=np.int64))
    [buffer] = client2.get_buffers([object_id])
    [again] = client2.get_buffers([object_id])
    assert ref_count(client, object_id) == 1  # one per client, counted locally
    array = np.frombuffer(buffer, dtype=np.int64)
    del buffer, again
    gc.collect()
    assert ref_count(client, object_id) == 1  # the numpy view keeps it
    assert client.evict(10 ** 8) == 0  # referenced objects are not evicted
    assert array.sum() == 4950
    del array
    gc.collect()
    assert ref_count(client, object_id) == 0
    assert client.evict(1) == 800


def test_metadata_buffer_and_data_buffer_share_the_reference(client):
    object_id = client.put_raw_buffer(b"data", metadata=b"metadata")
    [meta] = client.get_metadata([object_id])
    assert meta.to_pybytes() == b"metadata"
    assert ref_count(client, object_id) == 1
    del meta
    gc.collect()
    assert ref_count(client, object_id) == 0
    assert client.get_metadata([new_id()], timeout_ms=0) == [None]


def test_delete(client):
    a = client.put_raw_buffer(b"a")
    b = client.put_raw_buffer(b"b")
    client.delete([a])
    assert not client.contains(a)
    [held] = client.get_buffers([b])
    client.delete(b)  # a single id is accepted too; deferred while in use
    assert client.contains(b)
    assert held.to_pybytes() == b"b"
    del held
    gc.collect()
    assert not client.contains(b)
    client.delete([new_id()])  # missing ids are ignored


def test_seal_errors(client):
    with pytest.raises(plasma.PlasmaObjectNotFound):
        client.seal(new_id())
    object_id = new_id()
    buffer = client.create(object_id, 1)
    client.seal(object_id)
    with pytest.raises(plasma.PlasmaError, match="already sealed"):
        client.seal(object_id)
    del buffer


def test_blocking_get_of_own_unsealed_object_raises_instead_of_hanging(client):
    object_id = new_id()
    buffer = client.create(object_id, 1)
    with pytest.raises(plasma.PlasmaError, match="not sealed"):
        client.get_buffers([object_id])
    del buffer


def test_exception_hierarchy():
    for exc in [plasma.PlasmaObjectExists, plasma.PlasmaObjectNotFound,
                plasma.PlasmaStoreFull]:
        assert issubclass(exc, plasma.PlasmaError)
        assert issubclass(exc, pa.ArrowException)


def test_object_larger_than_the_store(client):
    with pytest.raises(plasma.PlasmaStoreFull):
        client.create(new_id(), 10 ** 8 + 1)
    with pytest.raises(plasma.PlasmaStoreFull):
        client.put_raw_buffer(np.zeros(10 ** 8 + 1, np.uint8))


# --- put / get ---------------------------------------------------------------------------

def test_put_get_numpy_is_zero_copy_and_read_only(client, client2):
    array = np.random.randn(1000, 100)
    object_id = client.put({"x": array, "name": "test", "n": [1, 2, 3]})
    value = client2.get(object_id)
    np.testing.assert_array_equal(value["x"], array)
    assert value["name"] == "test" and value["n"] == [1, 2, 3]
    assert not value["x"].flags.writeable
    [buffer] = client2.get_buffers([object_id])
    start = value["x"].__array_interface__["data"][0]
    assert buffer.address <= start < buffer.address + buffer.size
    assert start % 64 == 0
    del buffer
    assert ref_count(client, object_id) == 1  # the array holds the object
    del value
    gc.collect()
    assert ref_count(client, object_id) == 0


def test_put_get_various_values(client):
    values = [0, -1.5, "ünïcode", b"bytes", None, (1, "a"), {"a": {"b": [1, 2]}},
              np.arange(10)[::2],  # not contiguous: pickled in-band
              np.asfortranarray(np.ones((3, 4))),
              pa.array([1, 2, None]), pa.table({"a": [1, 2], "b": ["x", "y"]}),
              list(range(10000))]
    ids = [client.put(v) for v in values]
    got = client.get(ids)
    for want, have in zip(values, got):
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(want, have)
        elif isinstance(want, (pa.Array, pa.Table)):
            assert want.equals(have)
        else:
            assert want == have


def test_put_with_explicit_id_and_existing_id(client):
    object_id = new_id()
    assert client.put(1, object_id) == object_id
    with pytest.raises(plasma.PlasmaObjectExists):
        client.put(2, object_id=object_id)
    assert client.get(object_id) == 1


def test_get_of_a_raw_object_says_so(client):
    object_id = client.put_raw_buffer(b"just bytes")
    with pytest.raises(ValueError, match="put()"):
        client.get(object_id)


def test_put_raw_buffer_accepts_buffers_of_any_item_type(client):
    array = np.linspace(0, 1, 1000)
    for value in [array, memoryview(b"mv"), bytearray(b"ba"), pa.py_buffer(b"pa")]:
        object_id = client.put_raw_buffer(value)
        [buffer] = client.get_buffers([object_id])
        assert buffer.to_pybytes() == bytes(memoryview(value).cast("B"))
    with pytest.raises((BufferError, ValueError)):  # numpy: "ndarray is not contiguous"
        client.put_raw_buffer(np.arange(10)[::2])


def test_large_put_raw_buffer_is_bit_exact(store_factory):
    client = plasma.connect(store_factory(3 * 10 ** 8)[0])
    data = np.random.default_rng(1).integers(0, 256, 100 * MiB + 3, dtype=np.uint8)
    for threads in [1, 6]:
        object_id = client.put_raw_buffer(data, memcopy_threads=threads)
        [buffer] = client.get_buffers([object_id])
        assert buffer.size == data.size
        assert (hashlib.sha256(buffer).digest()
                == hashlib.sha256(data).digest())
        del buffer
        client.delete([object_id])


def test_create_and_seal_accepts_bytes_like(client):
    for data in [bytearray(b"abc"), memoryview(b"abc"), np.frombuffer(b"abc", np.uint8)]:
        object_id = new_id()
        client.create_and_seal(object_id, data, bytearray(b"m"))
        [(meta, buffer)] = client.get_buffers([object_id], with_meta=True)
        assert (meta, buffer.to_pybytes()) == (b"m", b"abc")


# --- hash --------------------------------------------------------------------------------

def test_hash_matches_the_reference_digest(client):
    # Captured from pyarrow 11: 16 bytes of 0xAB with metadata "MD".
    object_id = new_id()
    client.create_and_seal(object_id, b"\xab" * 16, b"MD")
    assert client.hash(object_id) == bytes.fromhex("684b4b8449f602d2")


def test_hash_of_large_objects_does_not_depend_on_how_they_were_written(client):
    data = os.urandom(3 * MiB + 5)
    a, b = new_id(), new_id()
    client.create_and_seal(a, data, b"meta")
    np.frombuffer(client.create(b, len(data), b"meta"), np.uint8)[:] = \
        np.frombuffer(data, np.uint8)
    client.seal(b)
    assert client.hash(a) == client.hash(b)
    assert client.hash(a) != client.hash(client.put_raw_buffer(data, metadata=b"metb"))


# --- threads and the GIL -----------------------------------------------------------------

def test_blocking_get_releases_the_gil(store):
    waiter, writer = plasma.connect(store[0]), plasma.connect(store[0])
    object_id = new_id()
    result = []
    t = threading.Thread(target=lambda: result.append(
        waiter.get_buffers([object_id], timeout_ms=-1)[0].to_pybytes()))
    t.start()
    # Python code keeps running while the other thread waits in the store.
    ticks = 0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        ticks += 1
    assert ticks > 1000 and t.is_alive()
    writer.put_raw_buffer(b"done", object_id=object_id)
    t.join(timeout=10)
    assert result == [b"done"]


def test_one_client_from_many_threads(client):
    errors = []

    def work(n):
        try:
            for i in range(200):
                object_id = client.put((n, i))
                assert client.get(object_id) == (n, i)
                [buffer] = client.get_buffers([object_id])
                del buffer
                client.delete([object_id])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert client.list() == {}


# --- notifications, quotas, disconnect -----------------------------------------------------

def test_notification_errors(client):
    with pytest.raises(plasma.PlasmaError, match="subscribe"):
        client.get_next_notification()
    with pytest.raises(plasma.PlasmaError, match="subscribe"):
        client.get_notification_socket()
    client.subscribe()
    with pytest.raises(plasma.PlasmaError):
        client.subscribe()


def test_notification_of_deletion_and_already_sealed_objects(client, client2):
    first = client.put_raw_buffer(b"before")
    client2.subscribe()
    # Objects sealed before the subscription are announced first.
    assert client2.get_next_notification() == (first, 6, 0)
    client.delete([first])
    assert client2.get_next_notification() == (first, -1, -1)


def test_set_client_options(store):
    client = plasma.connect(store[0])
    client.set_client_options("worker", 10 ** 6)
    assert "worker" in client.debug_string()
    other = plasma.connect(store[0])
    with pytest.raises(plasma.PlasmaStoreFull):
        other.set_client_options("greedy", 10 ** 8)


def test_disconnect_keeps_buffers_readable(store):
    client = plasma.connect(store[0])
    object_id = client.put_raw_buffer(b"still here")
    [buffer] = client.get_buffers([object_id])
    client.subscribe()
    client.disconnect()
    client.disconnect()
    assert buffer.to_pybytes() == b"still here"
    with pytest.raises(OSError):
        client.contains(object_id)
    # What the store sent before is still there (the already sealed object); then the end.
    assert client.get_next_notification() == (object_id, 10, 0)
    with pytest.raises(OSError):
        client.get_next_notification()
    del buffer
    gc.collect()
    other = plasma.connect(store[0])
    assert ref_count(other, object_id) == 0


def test_debug_string_and_evict_types(client):
    assert isinstance(client.debug_string(), str)
    assert client.evict(0) == 0


# --- start_plasma_store --------------------------------------------------------------------

def test_start_plasma_store_stops_the_daemon_and_cleans_up():
    with plasma.start_plasma_store(10 ** 6) as (path, proc):
        assert os.path.exists(path)
        assert plasma.connect(path).store_capacity() == 10 ** 6
    assert proc.returncode == 0  # stopped with SIGTERM, cleanly
    assert not os.path.exists(os.path.dirname(path))


def test_start_plasma_store_reports_a_daemon_that_fails(monkeypatch):
    with pytest.raises(RuntimeError, match="exited"):
        with plasma.start_plasma_store(-5):
            pass
    monkeypatch.setenv("PLASMA_STORE_BIN", "/nonexistent/plasma_store")
    with pytest.raises(FileNotFoundError, match="PLASMA_STORE_BIN"):
        with plasma.start_plasma_store(10 ** 6):
            pass
