"""The pyarrow.plasma documentation walkthrough, step by step, with plasma_store.

Start a store, connect, create/write/seal a buffer, get it from a second process (blocking,
and with a timeout), put/get Python values, an Arrow tensor, a pandas DataFrame through a
record batch stream.
"""

import time

import numpy as np
import pyarrow as pa
import pytest

import plasma_store as plasma
from conftest import run_python, start_python


def test_create_write_seal_then_get_in_this_process(store):
    client = plasma.connect(store[0])
    object_id = plasma.ObjectID(20 * b"a")
    buffer = memoryview(client.create(object_id, 1000))
    for i in range(1000):
        buffer[i] = i % 128
    client.seal(object_id)

    client2 = plasma.connect(store[0])
    [buffer2] = client2.get_buffers([object_id])
    view2 = memoryview(buffer2)
    assert view2[1] == 1 and bytes(view2[1:4]) == b"\x01\x02\x03"
    assert bytes(view2) == bytes(i % 128 for i in range(1000))
    assert client.list()[object_id]["state"] == "sealed"


READER = """
import sys, plasma_store as plasma
client = plasma.connect(sys.argv[1])
object_id = plasma.ObjectID(bytes.fromhex(sys.argv[2]))
timeout = int(sys.argv[3])
print("ready", flush=True)
[buffer] = client.get_buffers([object_id], timeout_ms=timeout)
print("none" if buffer is None else buffer.to_pybytes().hex(), flush=True)
"""


def test_second_process_blocks_until_the_object_is_sealed(store):
    client = plasma.connect(store[0])
    object_id = plasma.ObjectID.from_random()
    reader = start_python(READER, store[0], object_id.binary().hex(), -1)
    assert reader.stdout.readline() == "ready\n"
    buffer = client.create(object_id, 5)
    time.sleep(0.3)
    assert reader.poll() is None  # created is not enough: it waits for the seal
    memoryview(buffer).cast("B")[:] = b"hello"
    client.seal(object_id)
    out, err = reader.communicate(timeout=10)
    assert reader.returncode == 0, err
    assert bytes.fromhex(out.strip()) == b"hello"


def test_second_process_get_with_timeout(store):
    client = plasma.connect(store[0])
    object_id = plasma.ObjectID.from_random()
    start = time.monotonic()
    out = run_python(READER, store[0], object_id.binary().hex(), 200).stdout
    assert out.split() == ["ready", "none"]
    assert time.monotonic() - start >= 0.2

    client.put_raw_buffer(b"there now", object_id=object_id)
    out = run_python(READER, store[0], object_id.binary().hex(), 200).stdout
    assert bytes.fromhex(out.split()[1]) == b"there now"


def test_put_and_get_python_values(store):
    client = plasma.connect(store[0])
    object_id = client.put("hello, world")
    assert client.get(object_id) == "hello, world"
    # From another process too.
    code = ("import sys, plasma_store as plasma; c = plasma.connect(sys.argv[1]); "
            "print(c.get(plasma.ObjectID(bytes.fromhex(sys.argv[2]))))")
    out = run_python(code, store[0], object_id.binary().hex()).stdout
    assert out.strip() == "hello, world"


def test_arrow_tensor(store):
    client = plasma.connect(store[0])
    data = np.random.randn(10, 4)
    tensor = pa.Tensor.from_numpy(data)
    object_id = plasma.ObjectID(np.random.bytes(20))
    buf = client.create(object_id, pa.ipc.get_tensor_size(tensor))
    stream = pa.FixedSizeBufferWriter(buf)
    stream.set_memcopy_threads(4)
    pa.ipc.write_tensor(tensor, stream)
    client.seal(object_id)

    client2 = plasma.connect(store[0])
    [buf2] = client2.get_buffers([object_id])
    tensor2 = pa.ipc.read_tensor(pa.BufferReader(buf2))
    array = tensor2.to_numpy()
    np.testing.assert_equal(array, data)
    assert not array.flags.writeable  # zero-copy view of the sealed object


def test_pandas_dataframe_through_a_record_batch_stream(store):
    pd = pytest.importorskip("pandas")
    client = plasma.connect(store[0])
    df = pd.DataFrame({"a": np.arange(1000), "b": np.random.randn(1000),
                       "c": [f"row {i}" for i in range(1000)]})
    record_batch = pa.RecordBatch.from_pandas(df)

    mock_sink = pa.MockOutputStream()
    with pa.RecordBatchStreamWriter(mock_sink, record_batch.schema) as w:
        w.write_batch(record_batch)
    object_id = plasma.ObjectID(np.random.bytes(20))
    buf = client.create(object_id, mock_sink.size())
    with pa.RecordBatchStreamWriter(pa.FixedSizeBufferWriter(buf),
                                    record_batch.schema) as w:
        w.write_batch(record_batch)
    client.seal(object_id)

    # In another process, as the docs do it.
    code = """
import sys, pyarrow as pa, plasma_store as plasma
client = plasma.connect(sys.argv[1])
[data] = client.get_buffers([plasma.ObjectID(bytes.fromhex(sys.argv[2]))])
df = pa.RecordBatchStreamReader(pa.BufferReader(data)).read_next_batch().to_pandas()
print(len(df), df["a"].sum(), df["c"].iloc[-1])
"""
    out = run_python(code, store[0], object_id.binary().hex()).stdout.split(" ", 2)
    assert [int(out[0]), int(out[1]), out[2].strip()] == [1000, 499500, "row 999"]

    [data] = client.get_buffers([object_id])
    reader = pa.RecordBatchStreamReader(pa.BufferReader(data))
    pd.testing.assert_frame_equal(reader.read_next_batch().to_pandas(), df)
