"""Transparent remote gets: two stores and two gateways on loopback. A pyarrow 11 client of
store B gets objects sealed in store A through B's gateway, unchanged; and the faults of
issue 10, each leaving both stores consistent, the gateways serving, and the next get
succeeding."""

import hashlib
import subprocess
import sys

import pyarrow.flight as fl
import pytest

from conftest import MIB, free_port, oid, pattern, run11, self_signed, wait_until

GET11 = """
import sys, hashlib, pyarrow.plasma as plasma
c = plasma.connect(sys.argv[1])
ids = [plasma.ObjectID(bytes.fromhex(h)) for h in sys.argv[3:]]
for r in c.get_buffers(ids, timeout_ms=int(sys.argv[2]), with_meta=True):
    if r is None or r[1] is None:
        print("none")
    else:
        meta, data = r
        print(hashlib.sha256(data).hexdigest(), bytes(meta).hex(), flush=True)
"""


def get11(store, ids, timeout_ms=30000):
    """Gets ``ids`` from ``store`` with pyarrow 11: a (sha256, metadata hex) or None each."""
    out = run11(GET11, store.path, timeout_ms, *[i.binary().hex() for i in ids])
    return [None if line == "none" else tuple(line.split(" ") + [""])[:2]
            for line in out.strip().splitlines()]


def start_get11(store, ids, timeout_ms=30000):
    from conftest import PY11
    return subprocess.Popen([PY11, "-c", GET11, store.path, str(timeout_ms),
                             *[i.binary().hex() for i in ids]],
                            stdout=subprocess.PIPE, text=True)


def expect(data, meta=b""):
    return (hashlib.sha256(data).hexdigest(), meta.hex())


def raw_digest(gw, i):
    c = fl.connect(gw.location())
    return c.do_get(fl.Ticket(b"raw:" + i.binary())).read_all().schema.metadata[b"plasma.digest"]


@pytest.fixture
def pair(cluster):
    """Stores A and B; A's gateway, and B's with A as its peer."""
    a, b = cluster.store("a"), cluster.store("b")
    ga = cluster.gateway("ga", a)
    gb = cluster.gateway("gb", b, peers=[ga.addr])
    return a, b, ga, gb


def test_remote_get_is_bit_exact(pair):
    a, b, ga, gb = pair
    objects = {oid(1): (pattern(1024), b""), oid(2): (pattern(64 * MIB, seed=2), b""),
               oid(3): (pattern(3000, seed=3), b"some metadata \x00\xff")}
    for i, (data, meta) in objects.items():
        a.client.put_raw_buffer(data, object_id=i, metadata=meta)
    got = get11(b, list(objects))
    assert got == [expect(d, m) for d, m in objects.values()]
    for i in objects:
        # The copy keeps the origin's digest, and is a sealed object of B like any other.
        assert b.client.hash(i) == a.client.hash(i)
        assert raw_digest(gb, i) == raw_digest(ga, i)
    assert b.client.list()[oid(2)]["data_size"] == 64 * MIB
    assert gb.log().count("pulled ") == 3


def test_one_transfer_for_many_waiting_gets(pair):
    a, b, ga, gb = pair
    waiting = [start_get11(b, [oid(7)]) for _ in range(4)]
    # Every get waits (the object exists nowhere yet), then it appears on A.
    wait_until(lambda: "pull of 00000007" in gb.log(), "the miss to be looked up")
    a.client.put_raw_buffer(pattern(8 * MIB), object_id=oid(7))
    # The failed lookup was reported; a new get misses again and is served.
    assert get11(b, [oid(7)]) == [expect(pattern(8 * MIB))]
    for p in waiting:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        assert out.split()[0] == expect(pattern(8 * MIB))[0]
    assert gb.log().count("pulled 00000007") == 1


def test_miss_no_peer_can_serve_times_out_then_retries(pair):
    a, b, ga, gb = pair
    assert get11(b, [oid(8)], timeout_ms=1500) == [None]
    wait_until(lambda: "pull of 00000008" in gb.log(), "the failed pull to be logged")
    assert gb.log().count("pull of 00000008") == 1
    a.client.put_raw_buffer(b"late", object_id=oid(8))
    assert get11(b, [oid(8)]) == [expect(b"late")]


def test_peer_down_or_slow_costs_only_its_lookup(cluster, tmp):
    a, b = cluster.store("a"), cluster.store("b")
    ga = cluster.gateway("ga", a)
    slow_port = free_port()
    slow = subprocess.Popen([sys.executable, "fakepeer.py", str(slow_port), "slow",
                             oid(9).binary().hex(), "10"], stdout=subprocess.PIPE, text=True)
    try:
        assert slow.stdout.readline().strip() == "ready"
        down = f"127.0.0.1:{free_port()}"
        gb = cluster.gateway("gb", b, peers=[down, f"127.0.0.1:{slow_port}", ga.addr])
        a.client.put_raw_buffer(pattern(5 * MIB), object_id=oid(9))
        assert get11(b, [oid(9)]) == [expect(pattern(5 * MIB))]
        assert "pulled 00000009" in gb.log()
    finally:
        slow.kill()
        slow.wait()


def stalled_peer(i, size):
    port = free_port()
    p = subprocess.Popen([sys.executable, "fakepeer.py", str(port), "stall", i.binary().hex(),
                          str(size)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p, port


def test_peer_killed_mid_transfer(cluster):
    a, b = cluster.store("a"), cluster.store("b")
    i, size = oid(10), 64 * MIB
    peer, port = stalled_peer(i, size)
    gb = cluster.gateway("gb", b, peers=[f"127.0.0.1:{port}"])
    waiting = start_get11(b, [i], timeout_ms=-1)
    try:
        assert peer.stdout.readline().strip() == "stalled"
        # B holds the half-received object, unsealed (invisible to gets).
        wait_until(lambda: b.unsealed() == [i], "the pull to create the object")
        peer.kill()
        peer.wait()
        wait_until(lambda: b.unsealed() == [], "the broken pull to be aborted")
        b.consistent()
        wait_until(lambda: "pull of 0000000a" in gb.log(), "the failure to be logged")
        # A real gateway takes the peer's address: the waiting get is still waiting, and the
        # next get (a new miss after the reported failure) is served.
        data = pattern(size, seed=10)
        a.client.put_raw_buffer(data, object_id=i)
        cluster.gateway("ga", a, port=port)
        assert get11(b, [i]) == [expect(data)]
        out, _ = waiting.communicate(timeout=60)
        assert out.split()[0] == expect(data)[0]
    finally:
        waiting.kill()
        peer.kill()


def test_gateway_killed_mid_transfer(cluster):
    a, b = cluster.store("a"), cluster.store("b")
    i, size = oid(11), 64 * MIB
    peer, port = stalled_peer(i, size)
    gb = cluster.gateway("gb", b, peers=[f"127.0.0.1:{port}"])
    try:
        waiting = start_get11(b, [i], timeout_ms=-1)
        assert peer.stdout.readline().strip() == "stalled"
        wait_until(lambda: b.unsealed() == [i], "the pull to create the object")
        gb.kill()
        # The store aborts what its gateway was writing when the gateway goes.
        wait_until(lambda: b.unsealed() == [], "the store to abort the gateway's object")
        b.consistent()
        peer.kill()
        peer.wait()
        data = pattern(size, seed=11)
        a.client.put_raw_buffer(data, object_id=i)
        ga = cluster.gateway("ga", a)
        gb2 = cluster.gateway("gb2", b, peers=[ga.addr])
        assert get11(b, [i]) == [expect(data)]
        out, _ = waiting.communicate(timeout=60)
        assert out.split()[0] == expect(data)[0]
        assert "pulled 0000000b" in gb2.log()
    finally:
        peer.kill()


def test_short_stream_from_peer_is_aborted(cluster):
    a, b = cluster.store("a"), cluster.store("b")
    i = oid(12)
    port = free_port()
    peer = subprocess.Popen([sys.executable, "fakepeer.py", str(port), "short",
                             i.binary().hex(), str(10 * MIB)], stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().strip() == "ready"
        gb = cluster.gateway("gb", b, peers=[f"127.0.0.1:{port}"])
        assert get11(b, [i], timeout_ms=2000) == [None]
        wait_until(lambda: "pull of 0000000c" in gb.log(), "the failure to be logged")
        assert "ended after 4194304 of the declared 10485760 bytes" in gb.log()
        b.consistent()
        assert b.objects() == {}
    finally:
        peer.kill()
        peer.wait()


def test_object_deleted_on_peer_during_pull(pair):
    a, b, ga, gb = pair
    i, data = oid(13), pattern(128 * MIB, seed=13)
    a.client.put_raw_buffer(data, object_id=i)
    waiting = start_get11(b, [i], timeout_ms=-1)
    # Delete on A as soon as B has started receiving: A's gateway holds a reference while it
    # sends, so the deletion waits for the transfer, which completes.
    wait_until(lambda: i in b.objects(), "the pull to start")
    a.client.delete([i])
    out, _ = waiting.communicate(timeout=120)
    assert out.split()[0] == expect(data)[0]
    wait_until(lambda: a.objects() == {}, "the deferred deletion on A")
    assert a.allocated() == 0
    b.consistent()


def test_wrong_token(cluster):
    a, b = cluster.store("a"), cluster.store("b")
    ga = cluster.gateway("ga", a, token="right")
    gb = cluster.gateway("gb", b, peers=[ga.addr], token="wrong")
    a.client.put_raw_buffer(b"guarded", object_id=oid(14))
    assert get11(b, [oid(14)], timeout_ms=1500) == [None]
    wait_until(lambda: "pull of 0000000e" in gb.log(), "the failed pull to be logged")
    assert "none of 1 peer(s) has the object (127.0.0.1" in gb.log()
    assert "bearer token" in gb.log()
    b.consistent()
    gb.stop()
    gb2 = cluster.gateway("gb2", b, peers=[ga.addr], token="right")
    assert get11(b, [oid(14)]) == [expect(b"guarded")]
    assert "pulled 0000000e" in gb2.log()


def test_get_delete_cycles_pull_again(pair):
    """After a pulled copy is deleted, the next get pulls it again: the gateway forgets an id
    as soon as its copy exists, so a miss right after the seal is not taken for a duplicate."""
    a, b, ga, gb = pair
    i, data = oid(15), pattern(2 * MIB, seed=15)
    a.client.put_raw_buffer(data, object_id=i)
    for _ in range(15):
        [buf] = b.client.get_buffers([i], timeout_ms=30000)
        assert buf is not None and buf.to_pybytes() == data
        del buf
        b.client.delete([i])
        wait_until(lambda: not b.client.contains(i), "the copy to be deleted")
    assert gb.log().count("pulled 0000000f") == 15


def test_remote_get_over_tls_with_token(cluster, tmp):
    ca, cert, key = self_signed(tmp)
    a, b = cluster.store("a"), cluster.store("b")
    tls = ["--tls-cert", cert, "--tls-key", key]
    ga = cluster.gateway("ga", a, token="t0k", extra=tls)
    gb = cluster.gateway("gb", b, token="t0k", peers=[f"localhost:{ga.port}"],
                         extra=tls + ["--peer-ca", ca])
    data = pattern(9 * MIB, seed=16)
    a.client.put_raw_buffer(data, object_id=oid(16), metadata=b"tls")
    assert get11(b, [oid(16)]) == [expect(data, b"tls")]
    assert "pulled 00000010" in gb.log()


def test_pull_into_a_full_store_fails_like_a_create(cluster):
    a, b = cluster.store("a"), cluster.store("b", memory=16 * MIB)
    ga = cluster.gateway("ga", a)
    gb = cluster.gateway("gb", b, peers=[ga.addr])
    a.client.put_raw_buffer(pattern(32 * MIB), object_id=oid(17))
    assert get11(b, [oid(17)], timeout_ms=2000) == [None]
    wait_until(lambda: "pull of 00000011" in gb.log(), "the failed pull to be logged")
    assert "no room" in gb.log()
    b.consistent()
    assert b.objects() == {}
    # The gateway keeps serving: a smaller object comes through.
    a.client.put_raw_buffer(pattern(4 * MIB), object_id=oid(18))
    assert get11(b, [oid(18)]) == [expect(pattern(4 * MIB))]
