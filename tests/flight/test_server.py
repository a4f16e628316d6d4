"""The Flight interface of one gateway, driven by today's pyarrow.flight: DoGet in both
forms, DoPut, ListFlights, GetFlightInfo, auth, bad input, the command line."""

import hashlib
import os
import signal
import socket
import subprocess

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from conftest import FLIGHT_BIN, MIB, oid, pattern, self_signed, wait_until

CHUNK = 4 * MIB


@pytest.fixture
def node(cluster):
    store = cluster.store("a")
    gw = cluster.gateway("ga", store)
    client = fl.connect(gw.location())
    return store, gw, client


def ipc_bytes(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=1000)
    return sink.getvalue().to_pybytes()


def opaque_bytes(reader_or_table):
    t = reader_or_table.read_all() if hasattr(reader_or_table, "read_all") else reader_or_table
    return b"".join(v.as_py() for chunk in t.column("data").chunks for v in chunk)


def test_natural_form_of_an_ipc_stream(node):
    store, _, client = node
    table = pa.table({"x": list(range(5000)), "s": [str(i) for i in range(5000)]})
    data = ipc_bytes(table)
    store.client.put_raw_buffer(data, object_id=oid(1))
    got = client.do_get(fl.Ticket(oid(1).binary())).read_all()
    assert got == pa.ipc.open_stream(data).read_all()
    assert got.num_rows == 5000


def test_opaque_form_with_metadata(node):
    store, _, client = node
    data = pattern(1024)
    store.client.put_raw_buffer(data, object_id=oid(2), metadata=b"meta\x00data")
    reader = client.do_get(fl.Ticket(oid(2).binary()))
    schema = reader.schema
    assert schema.field("data").type == pa.binary()
    assert not schema.field("data").nullable
    md = schema.metadata
    assert md[b"plasma.object_id"] == oid(2).binary().hex().encode()
    assert md[b"plasma.data_size"] == b"1024"
    assert md[b"plasma.metadata"] == b"meta\x00data".hex().encode()
    assert md[b"plasma.digest"] == store.client.hash(oid(2)).hex().encode()
    assert opaque_bytes(reader) == data


def test_raw_ticket_is_always_opaque_and_chunked(node):
    store, _, client = node
    # An IPC stream asked for raw: its bytes, not its table.
    data = ipc_bytes(pa.table({"x": [1, 2, 3]}))
    store.client.put_raw_buffer(data, object_id=oid(3))
    t = client.do_get(fl.Ticket(b"raw:" + oid(3).binary())).read_all()
    assert t.schema.names == ["data"]
    assert opaque_bytes(t) == data
    # Several chunks: rows of 4 MiB, the last one shorter, byte-exact.
    big = pattern(2 * CHUNK + 12345, seed=7)
    store.client.put_raw_buffer(big, object_id=oid(4))
    t = client.do_get(fl.Ticket(b"raw:" + oid(4).binary())).read_all()
    sizes = [len(v.as_py()) for c in t.column("data").chunks for v in c]
    assert sizes == [CHUNK, CHUNK, 12345]
    assert hashlib.sha256(opaque_bytes(t)).digest() == hashlib.sha256(big).digest()


def test_empty_object_has_no_rows(node):
    store, _, client = node
    store.client.put_raw_buffer(b"", object_id=oid(5), metadata=b"m")
    t = client.do_get(fl.Ticket(oid(5).binary())).read_all()
    assert t.num_rows == 0
    assert t.schema.metadata[b"plasma.data_size"] == b"0"
    assert t.schema.metadata[b"plasma.metadata"] == b"6d"


def test_missing_object_and_bad_tickets(node):
    store, gw, client = node
    with pytest.raises(pa.ArrowKeyError, match="not found error"):
        client.do_get(fl.Ticket(oid(99).binary())).read_all()
    for bad in [b"", b"short", b"raw:" + b"x" * 19, b"y" * 24]:
        with pytest.raises(pa.ArrowInvalid):
            client.do_get(fl.Ticket(bad)).read_all()
    # An unsealed object is not served.
    store.client.create(oid(6), 10)
    with pytest.raises(pa.ArrowKeyError, match="not found error"):
        client.do_get(fl.Ticket(oid(6).binary())).read_all()
    store.client.seal(oid(6))
    assert opaque_bytes(client.do_get(fl.Ticket(oid(6).binary()))) == bytes(10)


def put(client, id_hex, table, chunksize=None):
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(id_hex), table.schema)
    writer.write_table(table, max_chunksize=chunksize)
    writer.close()


def opaque_table(data, metadata=b"", size=True, chunk=CHUNK):
    md = {b"plasma.metadata": metadata.hex().encode()}
    if size:
        md[b"plasma.data_size"] = str(len(data)).encode()
    schema = pa.schema([pa.field("data", pa.binary(), nullable=False)], metadata=md)
    rows = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    return pa.table({"data": pa.array(rows, pa.binary())}, schema=schema)


@pytest.mark.parametrize("size", [True, False])
def test_do_put_opaque(node, size):
    store, _, client = node
    data = pattern(3 * MIB + 5, seed=3)
    put(client, oid(10).binary().hex(), opaque_table(data, b"md!", size=size, chunk=MIB))
    [buf] = store.client.get_buffers([oid(10)], timeout_ms=0)
    assert buf.to_pybytes() == data
    assert store.client.get_metadata([oid(10)], timeout_ms=0)[0].to_pybytes() == b"md!"
    # And back out through DoGet, byte for byte.
    assert opaque_bytes(client.do_get(fl.Ticket(oid(10).binary()))) == data


def test_do_put_table_is_stored_as_ipc_stream(node):
    store, _, client = node
    table = pa.table({"a": list(range(10000)), "b": [float(i) / 3 for i in range(10000)]})
    put(client, oid(11).binary().hex(), table, chunksize=3000)
    [buf] = store.client.get_buffers([oid(11)], timeout_ms=0)
    assert pa.ipc.open_stream(buf).read_all() == table
    assert client.do_get(fl.Ticket(oid(11).binary())).read_all() == table


def test_do_put_existing_id_and_bad_descriptors(node):
    store, _, client = node
    store.client.put_raw_buffer(b"x", object_id=oid(12))
    with pytest.raises(pa.ArrowException, match="already exists error"):
        put(client, oid(12).binary().hex(), opaque_table(b"yy"))
    with pytest.raises(pa.ArrowInvalid):
        put(client, "not-hex", opaque_table(b"yy"))
    assert store.client.get_buffers([oid(12)], timeout_ms=0)[0].to_pybytes() == b"x"
    store.consistent()


def test_do_put_size_mismatch_stores_nothing(node):
    store, _, client = node
    before = store.allocated()
    t = opaque_table(b"z" * 100)
    # Declared 50 bytes, sends 100; then declared 200, sends 100.
    for declared in [b"50", b"200"]:
        md = dict(t.schema.metadata)
        md[b"plasma.data_size"] = declared
        with pytest.raises(pa.ArrowInvalid, match="declared"):
            put(client, oid(13).binary().hex(), t.replace_schema_metadata(md))
        assert not store.client.contains(oid(13))
    # Nulls in the opaque column: rejected.
    schema = pa.schema([pa.field("data", pa.binary(), nullable=False)])
    nulls = pa.Table.from_batches(
        [pa.RecordBatch.from_arrays([pa.array([b"a", None], pa.binary())], schema=schema)])
    with pytest.raises(pa.ArrowInvalid):
        put(client, oid(13).binary().hex(), nulls)
    store.consistent()
    assert store.allocated() == before
    # The id is free again.
    put(client, oid(13).binary().hex(), opaque_table(b"ok"))
    assert store.client.get_buffers([oid(13)], timeout_ms=0)[0].to_pybytes() == b"ok"


def test_list_flights_and_get_flight_info(node):
    store, _, client = node
    store.client.put_raw_buffer(pattern(1000), object_id=oid(20), metadata=b"abc")
    store.client.put_raw_buffer(pattern(5), object_id=oid(21))
    store.client.create(oid(22), 7)  # unsealed: not listed
    infos = {i.descriptor.path[0]: i for i in client.list_flights()}
    assert set(infos) == {oid(20).binary().hex().encode(), oid(21).binary().hex().encode()}
    i = infos[oid(20).binary().hex().encode()]
    assert i.total_bytes == 1000
    assert len(i.endpoints) == 1 and i.endpoints[0].ticket.ticket == oid(20).binary()
    assert i.schema.metadata[b"plasma.metadata_size"] == b"3"
    assert i.schema.metadata[b"plasma.digest"] == store.client.hash(oid(20)).hex().encode()
    one = client.get_flight_info(fl.FlightDescriptor.for_path(oid(21).binary().hex()))
    assert one.total_bytes == 5
    for absent in [oid(22), oid(23)]:
        with pytest.raises(pa.ArrowKeyError, match="not found error"):
            client.get_flight_info(fl.FlightDescriptor.for_path(absent.binary().hex()))
    store.client.seal(oid(22))


def test_token_required(cluster):
    store = cluster.store("a")
    gw = cluster.gateway("ga", store, token="s3cret")
    client = fl.connect(gw.location())
    store.client.put_raw_buffer(b"secret bytes", object_id=oid(30))
    ticket = fl.Ticket(oid(30).binary())
    for headers in [[], [(b"authorization", b"Bearer wrong")], [(b"authorization", b"s3cret")]]:
        opts = fl.FlightCallOptions(headers=headers)
        with pytest.raises(fl.FlightUnauthenticatedError):
            client.do_get(ticket, options=opts).read_all()
        with pytest.raises(fl.FlightUnauthenticatedError):
            list(client.list_flights(options=opts))
        with pytest.raises(fl.FlightUnauthenticatedError):
            w, _ = client.do_put(fl.FlightDescriptor.for_path(oid(31).binary().hex()),
                                 opaque_table(b"x").schema, options=opts)
            w.write_table(opaque_table(b"x"))
            w.close()
    assert not store.client.contains(oid(31))
    ok = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer s3cret")])
    assert opaque_bytes(client.do_get(ticket, options=ok)) == b"secret bytes"


def test_tls(cluster, tmp):
    ca, cert, key = self_signed(tmp)
    store = cluster.store("a")
    gw = cluster.gateway("ga", store, extra=["--tls-cert", cert, "--tls-key", key])
    store.client.put_raw_buffer(b"over tls", object_id=oid(40))
    with open(ca, "rb") as f:
        client = fl.connect(f"grpc+tls://localhost:{gw.port}", tls_root_certs=f.read())
    assert opaque_bytes(client.do_get(fl.Ticket(oid(40).binary()))) == b"over tls"
    # Plaintext is not answered.
    plain = fl.connect(gw.location())
    with pytest.raises(fl.FlightError):
        plain.do_get(fl.Ticket(oid(40).binary()), options=fl.FlightCallOptions(timeout=5)).read_all()


def test_command_line(cluster, tmp):
    for flag in ["--help", "--version"]:
        r = subprocess.run([FLIGHT_BIN, flag], capture_output=True, text=True)
        assert r.returncode == 0 and "plasma_flight" in r.stdout
    store = cluster.store("a")
    r = subprocess.run([FLIGHT_BIN, "-s", store.path, "--listen", "0.0.0.0:0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--token-file" in lines[0] and "non-loopback" in lines[0]
    r = subprocess.run([FLIGHT_BIN, "-s", store.path, "--tls-cert", "x.pem"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    # SIGINT and SIGTERM: clean exit 0.
    for sig in [signal.SIGINT, signal.SIGTERM]:
        gw = cluster.gateway(f"g{sig}", store)
        gw.proc.send_signal(sig)
        assert gw.proc.wait(timeout=20) == 0


def test_garbage_and_abandoned_puts_leave_nothing(cluster, tmp):
    store = cluster.store("a")
    gw = cluster.gateway("ga", store)
    client = fl.connect(gw.location())
    before = store.allocated()
    # Raw garbage on the port, and a half HTTP/2 preface.
    for junk in [os.urandom(4096), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(100)]:
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(junk)
    # A client that declares 64 MiB, sends 4 MiB and dies.
    code = f"""
import os, pyarrow as pa, pyarrow.flight as fl
md = {{b"plasma.data_size": str(64 << 20).encode()}}
schema = pa.schema([pa.field("data", pa.binary(), nullable=False)], metadata=md)
c = fl.connect("{gw.location()}")
w, _ = c.do_put(fl.FlightDescriptor.for_path("{oid(50).binary().hex()}"), schema)
w.write_table(pa.table({{"data": pa.array([b"q" * (4 << 20)], pa.binary())}}, schema=schema))
print("sent", flush=True)
import sys; sys.stdin.readline()
os._exit(1)
"""
    p = subprocess.Popen([sys_executable(), "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "sent"
    # The object exists unsealed while the client is alive.
    wait_until(lambda: oid(50) in store.objects(), "the DoPut to create its object")
    assert store.unsealed() == [oid(50)]
    p.stdin.write("\n")
    p.stdin.close()
    p.wait()
    wait_until(lambda: store.unsealed() == [], "the abandoned DoPut to be aborted")
    store.consistent()
    assert store.allocated() == before
    # The gateway keeps serving, and the id can be put again.
    put(client, oid(50).binary().hex(), opaque_table(b"again"))
    assert opaque_bytes(client.do_get(fl.Ticket(oid(50).binary()))) == b"again"


def sys_executable():
    import sys
    return sys.executable


def test_one_gateway_per_store_and_store_gone(cluster):
    store = cluster.store("a")
    gw = cluster.gateway("ga", store)
    r = subprocess.run([FLIGHT_BIN, "-s", store.path, "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "another connection is registered" in r.stderr
    # The first one still serves.
    store.client.put_raw_buffer(b"still here", object_id=oid(60))
    assert opaque_bytes(fl.connect(gw.location()).do_get(fl.Ticket(oid(60).binary()))) \
        == b"still here"
    # Its store goes away: the gateway exits with an error saying so.
    store.killed_by_test = True
    store.proc.send_signal(signal.SIGKILL)
    store.proc.wait()
    assert gw.proc.wait(timeout=30) != 0
    assert "the store went away" in gw.log()
