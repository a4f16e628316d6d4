"""Interoperability with pyarrow 11's plasma client, against our daemon: objects written by
one client are read bit-exact by the other, digests (``hash``) agree, and blocking gets wait
for the other client's seals.

pyarrow 11 needs Python <= 3.11 and numpy < 2, so it runs in its own venv: the one
``scripts/setup-venv.sh`` creates at the repository root (``.venv``), or the interpreter named
by ``$PLASMA_PYARROW11_PYTHON``. Without it these tests are skipped.
"""

import functools
import hashlib
import json
import os
import time

import numpy as np
import pyarrow as pa
import pytest

import plasma_store as plasma
from conftest import run_python, start_python

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV_VAR = "PLASMA_PYARROW11_PYTHON"


@functools.lru_cache(maxsize=None)
def pyarrow11_python():
    """The interpreter with pyarrow 11, or the reason there is none."""
    candidate = os.environ.get(ENV_VAR) or os.path.join(REPO, ".venv", "bin", "python")
    if not os.access(candidate, os.X_OK):
        return None, (f"no pyarrow 11 interpreter at {candidate}: run scripts/setup-venv.sh "
                      f"or set {ENV_VAR}")
    probe = run_python("import pyarrow, pyarrow.plasma; print(pyarrow.__version__)",
                       python=candidate, check=False)
    if probe.returncode != 0 or not probe.stdout.startswith("11."):
        return None, (f"{candidate} has no pyarrow 11 with plasma "
                      f"({(probe.stdout + probe.stderr).strip()[-200:]})")
    return candidate, None


@pytest.fixture
def pa11():
    python, why = pyarrow11_python()
    if python is None:
        pytest.skip(why)
    return python


def digest(data):
    return hashlib.sha256(data).hexdigest()


READ_WITH_PYARROW11 = """
import hashlib, json, sys
import pyarrow as pa, pyarrow.plasma as plasma
client = plasma.connect(sys.argv[1])
ids = [plasma.ObjectID(bytes.fromhex(h)) for h in sys.argv[2:]]
out = {}
listing = client.list()
for object_id, (meta, data) in zip(ids, client.get_buffers(ids, timeout_ms=1000, with_meta=True)):
    out[object_id.binary().hex()] = {
        "size": data.size,
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": meta.hex(),
        "hash": client.hash(object_id).hex(),
        "state": listing[object_id]["state"],
    }
    if meta == b"arrow-stream":
        out[object_id.binary().hex()]["table"] = (
            pa.ipc.open_stream(pa.BufferReader(data)).read_all().to_pydict())
print(json.dumps(out))
"""


def test_pyarrow11_reads_what_we_write(store, pa11):
    client = plasma.connect(store[0])
    rng = np.random.default_rng(11)
    expected = {}

    a = plasma.ObjectID.from_random()  # create, write with numpy, seal
    data_a = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    np.frombuffer(client.create(a, len(data_a), b"meta-a"), np.uint8)[:] = \
        np.frombuffer(data_a, np.uint8)
    client.seal(a)
    expected[a] = (data_a, b"meta-a")

    b = plasma.ObjectID.from_random()  # create_and_seal, no data
    client.create_and_seal(b, b"", b"only metadata")
    expected[b] = (b"", b"only metadata")

    c = plasma.ObjectID.from_random()  # large: copied and hashed in parts, on threads
    data_c = rng.integers(0, 256, 9 * (1 << 20) + 7, dtype=np.uint8).tobytes()
    client.put_raw_buffer(data_c, object_id=c, metadata=b"big")
    expected[c] = (data_c, b"big")

    d = plasma.ObjectID.from_random()  # an Arrow record batch stream written by new pyarrow
    table = pa.table({"x": [1, 2, 3], "s": ["a", "b", None]})
    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    buffer = client.create(d, sink.size(), b"arrow-stream")
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(buffer), table.schema) as w:
        w.write_table(table)
    client.seal(d)
    expected[d] = (buffer.to_pybytes(), b"arrow-stream")
    del buffer

    e = plasma.ObjectID.from_random()  # empty
    client.create_and_seal(e, b"")
    expected[e] = (b"", b"")

    ids = list(expected)
    out = run_python(READ_WITH_PYARROW11, store[0], *(i.binary().hex() for i in ids),
                     python=pa11).stdout
    seen = json.loads(out)
    for object_id, (data, meta) in expected.items():
        got = seen[object_id.binary().hex()]
        assert got["size"] == len(data)
        assert got["sha256"] == digest(data)
        assert bytes.fromhex(got["metadata"]) == meta
        assert got["state"] == "sealed"
        # Both clients compute the same digest.
        assert bytes.fromhex(got["hash"]) == client.hash(object_id)
    assert seen[d.binary().hex()]["table"] == table.to_pydict()


WRITE_WITH_PYARROW11 = """
import hashlib, json, sys
import numpy as np, pyarrow.plasma as plasma
client = plasma.connect(sys.argv[1])
rng = np.random.RandomState(7)
out = {}

def record(object_id, data, meta):
    out[object_id.binary().hex()] = {"sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data), "metadata": meta.hex(), "hash": client.hash(object_id).hex()}

a = plasma.ObjectID.from_random()
data = rng.bytes(5000)
buf = client.create(a, len(data), b"from-create")
np.frombuffer(buf, dtype=np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
client.seal(a)
record(a, data, b"from-create")

b = plasma.ObjectID.from_random()
client.create_and_seal(b, b"small", b"cs")
record(b, b"small", b"cs")

c = plasma.ObjectID.from_random()
data = rng.bytes(2 * (1 << 20) + 3)
client.put_raw_buffer(data, object_id=c, metadata=b"meta")
record(c, data, b"meta")

d = client.put({"pyarrow": "serialization"})
print(json.dumps({"objects": out, "serialized": d.binary().hex()}))
"""


def test_we_read_what_pyarrow11_writes(store, pa11):
    client = plasma.connect(store[0])
    out = json.loads(run_python(WRITE_WITH_PYARROW11, store[0], python=pa11).stdout)
    for hex_id, want in out["objects"].items():
        object_id = plasma.ObjectID(bytes.fromhex(hex_id))
        [(meta, data)] = client.get_buffers([object_id], timeout_ms=0, with_meta=True)
        assert data.size == want["size"]
        assert digest(data) == want["sha256"]
        assert meta == bytes.fromhex(want["metadata"])
        assert client.hash(object_id) == bytes.fromhex(want["hash"])
    # pyarrow's put() used pyarrow's removed serialization: get() says so, the bytes are
    # still there for get_buffers().
    serialized = plasma.ObjectID(bytes.fromhex(out["serialized"]))
    with pytest.raises(ValueError, match="put()"):
        client.get(serialized)
    assert client.get_buffers([serialized])[0].size > 0


BLOCKED_GET_PYARROW11 = """
import sys, pyarrow.plasma as plasma
client = plasma.connect(sys.argv[1])
object_id = plasma.ObjectID(bytes.fromhex(sys.argv[2]))
print("ready", flush=True)
[buffer] = client.get_buffers([object_id])
print(buffer.to_pybytes().hex(), flush=True)
"""

SEAL_LATER_PYARROW11 = """
import sys, time, pyarrow.plasma as plasma
client = plasma.connect(sys.argv[1])
object_id = plasma.ObjectID(bytes.fromhex(sys.argv[2]))
buf = client.create(object_id, 5, b"m")
time.sleep(0.3)
memoryview(buf).cast("B")[:] = b"later"
client.seal(object_id)
"""


def test_blocking_gets_across_clients(store, pa11):
    client = plasma.connect(store[0])
    # pyarrow 11 waits for our seal...
    object_id = plasma.ObjectID.from_random()
    reader = start_python(BLOCKED_GET_PYARROW11, store[0], object_id.binary().hex(),
                          python=pa11)
    assert reader.stdout.readline() == "ready\n"
    time.sleep(0.2)
    assert reader.poll() is None
    client.put_raw_buffer(b"sealed by us", object_id=object_id)
    out, err = reader.communicate(timeout=20)
    assert reader.returncode == 0, err
    assert bytes.fromhex(out.strip()) == b"sealed by us"

    # ...and we wait for pyarrow 11's, with notifications of it.
    client.subscribe()
    assert client.get_next_notification() == (object_id, 12, 0)
    other = plasma.ObjectID.from_random()
    writer = start_python(SEAL_LATER_PYARROW11, store[0], other.binary().hex(), python=pa11)
    start = time.monotonic()
    [(meta, data)] = client.get_buffers([other], timeout_ms=20000, with_meta=True)
    assert time.monotonic() - start >= 0.2
    assert (meta, data.to_pybytes()) == (b"m", b"later")
    assert client.get_next_notification() == (other, 5, 1)
    assert writer.wait(timeout=20) == 0
