"""The walkthrough of the original Plasma documentation, run against our daemon with pyarrow 11.

A user who followed the Arrow docs starts the store with `-m 1000000000 -s /tmp/plasma`,
connects from pyarrow, creates, writes and seals an object, gets it from a second process
(blocking and with a timeout), and stores an Arrow tensor and a pandas DataFrame. Each step
here is one of those, with the same calls. The socket lives in a temporary directory instead
of /tmp/plasma so that runs cannot collide; the flags are otherwise the documented ones.

Run: PLASMA_STORE_BIN=target/debug/plasma_store .venv/bin/python -m pytest tests/python
"""

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.plasma as plasma
import pytest

STORE = os.environ.get("PLASMA_STORE_BIN", "target/debug/plasma_store")


@pytest.fixture
def store():
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "plasma")
        proc = subprocess.Popen([STORE, "-m", "1000000000", "-s", sock])
        try:
            client = plasma.connect(sock)
            yield sock, client
            client.disconnect()
            assert proc.poll() is None, "the store died during the test"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
            assert not os.path.exists(sock), "the store left its socket behind"


def run_in_other_process(code, *args):
    """Runs `code` in a fresh Python process; returns its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_create_write_seal_and_get_from_another_process(store):
    sock, client = store
    assert client.store_capacity() == 1000000000
    object_id = plasma.ObjectID(20 * b"a")
    buffer = memoryview(client.create(object_id, 1000))
    for i in range(1000):
        buffer[i] = i % 128
    client.seal(object_id)

    got = run_in_other_process(
        """
        import sys, pyarrow.plasma as plasma
        client = plasma.connect(sys.argv[1])
        [buf] = client.get_buffers([plasma.ObjectID(20 * b"a")])
        print(bytes(memoryview(buf)).hex())
        """,
        sock,
    )
    assert bytes.fromhex(got) == bytes(i % 128 for i in range(1000))


def test_blocking_get_in_another_process_waits_for_the_seal(store):
    sock, client = store
    object_id = plasma.ObjectID(20 * b"b")
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, pyarrow.plasma as plasma
                client = plasma.connect(sys.argv[1])
                oid = plasma.ObjectID(20 * b"b")
                # Not there yet: a get with a timeout returns None.
                assert client.get_buffers([oid], timeout_ms=50) == [None]
                print("waiting", flush=True)
                [buf] = client.get_buffers([oid])  # blocks until sealed
                print(bytes(memoryview(buf)).decode(), flush=True)
                """
            ),
            sock,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == "waiting"
    time.sleep(0.2)
    assert reader.poll() is None, "the get returned before the object was sealed"
    buf = client.create(object_id, 5)
    pa.FixedSizeBufferWriter(buf).write(b"hello")
    client.seal(object_id)
    out, _ = reader.communicate(timeout=30)
    assert out.strip() == "hello"
    assert reader.returncode == 0


def test_arrow_tensor(store):
    sock, client = store
    data = np.random.randn(10, 4)
    tensor = pa.Tensor.from_numpy(data)
    object_id = plasma.ObjectID(np.random.bytes(20))
    data_size = pa.ipc.get_tensor_size(tensor)
    buf = client.create(object_id, data_size)
    stream = pa.FixedSizeBufferWriter(buf)
    stream.set_memcopy_threads(4)
    pa.ipc.write_tensor(tensor, stream)
    client.seal(object_id)

    got = run_in_other_process(
        """
        import sys, numpy as np, pyarrow as pa, pyarrow.plasma as plasma
        client = plasma.connect(sys.argv[1])
        [buf] = client.get_buffers([plasma.ObjectID(bytes.fromhex(sys.argv[2]))])
        array = pa.ipc.read_tensor(pa.BufferReader(buf)).to_numpy()
        print(array.tobytes().hex())
        """,
        sock,
        object_id.binary().hex(),
    )
    assert np.array_equal(np.frombuffer(bytes.fromhex(got)).reshape(10, 4), data)


def test_pandas_dataframe(store):
    sock, client = store
    d = {"one": pd.Series([1.0, 2.0, 3.0], index=["a", "b", "c"]),
         "two": pd.Series([1.0, 2.0, 3.0, 4.0], index=["a", "b", "c", "d"])}
    df = pd.DataFrame(d)
    record_batch = pa.RecordBatch.from_pandas(df)
    mock_sink = pa.MockOutputStream()
    with pa.RecordBatchStreamWriter(mock_sink, record_batch.schema) as writer:
        writer.write_batch(record_batch)
    data_size = mock_sink.size()
    object_id = plasma.ObjectID(np.random.bytes(20))
    buf = client.create(object_id, data_size)
    stream = pa.FixedSizeBufferWriter(buf)
    with pa.RecordBatchStreamWriter(stream, record_batch.schema) as writer:
        writer.write_batch(record_batch)
    client.seal(object_id)

    got = run_in_other_process(
        """
        import pickle, sys, pyarrow as pa, pyarrow.plasma as plasma
        client = plasma.connect(sys.argv[1])
        [data] = client.get_buffers([plasma.ObjectID(bytes.fromhex(sys.argv[2]))])
        reader = pa.RecordBatchStreamReader(pa.BufferReader(data))
        print(pickle.dumps(reader.read_next_batch().to_pandas()).hex())
        """,
        sock,
        object_id.binary().hex(),
    )
    pd.testing.assert_frame_equal(pickle.loads(bytes.fromhex(got)), df)
