"""The store's Prometheus endpoint (``--metrics-listen``), scraped over real HTTP and parsed
with the ``prometheus_client`` package's OpenMetrics parser: the figures match what the test
did; stuck and misbehaving scrapers cost the store nothing; bad requests get HTTP errors."""

import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import plasma_store as plasma


@pytest.fixture
def metrics_store(tmp_path):
    """A store with a spill directory and metrics on an ephemeral loopback port; yields
    (socket path, metrics URL)."""
    spill = tmp_path / "spill"
    spill.mkdir()
    proc, sock, url = start_store(tmp_path, "-m", "1000000", "-e", f"file://{spill}",
                                  "--max-connections", "4")
    try:
        yield sock, url
        assert proc.poll() is None, "the store died during the test"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def scrape(url):
    """{(name, labels as a sorted tuple): value} of one scrape, via the real parser."""
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def requests(samples, kind):
    return value(samples, "plasma_requests_total", type=kind)


def test_the_figures_match_what_clients_did(metrics_store):
    path, url = metrics_store
    a = plasma.connect(path)
    b = plasma.connect(path)
    before = scrape(url)
    assert value(before, "plasma_capacity_bytes") == 1000000
    assert value(before, "plasma_clients") == 2

    first = plasma.ObjectID(b"1" * 20)
    second = plasma.ObjectID(b"2" * 20)
    a.create_and_seal(first, b"x" * 1000, b"m" * 10)
    a.create_and_seal(second, b"y" * 2000)
    unsealed = a.create(plasma.ObjectID(b"3" * 20), 500)
    for _ in range(7):
        b.contains(first)
    s = scrape(url)
    assert value(s, "plasma_used_bytes") == 1010 + 2000 + 500
    assert value(s, "plasma_objects", state="sealed") == 2
    assert value(s, "plasma_objects", state="created") == 1
    assert requests(s, "create_and_seal") - requests(before, "create_and_seal") == 2
    assert requests(s, "create") - requests(before, "create") == 1
    assert requests(s, "contains") - requests(before, "contains") == 7
    # One label value per request type, each a counter.
    kinds = {labels for (name, labels) in s if name == "plasma_requests_total"}
    assert len(kinds) >= 19 and (("type", "get"),) in kinds

    # evict(1) takes exactly the least recently used object, to the spill directory.
    assert b.evict(1) == 1010
    s = scrape(url)
    assert value(s, "plasma_evicted_objects_total") == 1
    assert value(s, "plasma_evicted_bytes_total") == 1010
    assert value(s, "plasma_spilled_bytes_total") == 1010
    assert value(s, "plasma_restored_bytes_total") == 0
    assert value(s, "plasma_used_bytes") == 2000 + 500
    # A get brings it back.
    (buf,) = b.get_buffers([first])
    assert buf.to_pybytes() == b"x" * 1000
    s = scrape(url)
    assert value(s, "plasma_restored_bytes_total") == 1010
    assert value(s, "plasma_used_bytes") == 1010 + 2000 + 500
    del buf, unsealed

    # A get that waits.
    c = plasma.connect(path)
    later = plasma.ObjectID(b"4" * 20)
    got = []
    waiter = threading.Thread(target=lambda: got.append(c.get_buffers([later], -1)))
    waiter.start()
    deadline = time.monotonic() + 30
    while value(scrape(url), "plasma_waiting_gets") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    s = scrape(url)
    assert value(s, "plasma_clients") == 3
    a.create_and_seal(later, b"late")
    waiter.join(30)
    assert got and got[0][0].to_pybytes() == b"late"
    assert value(scrape(url), "plasma_waiting_gets") == 0

    # --max-connections 4: a fifth connection is refused.
    d = plasma.connect(path)
    with socket.socket(socket.AF_UNIX) as extra:
        extra.connect(path)
        extra.settimeout(30)
        assert extra.recv(1) == b"", "the store closes a refused connection"
    s = scrape(url)
    assert value(s, "plasma_refused_connections_total") == 1
    assert value(s, "plasma_clients") == 4
    d.disconnect()


def raw_http(url, request):
    """Sends raw bytes to the metrics port; returns the response's status line."""
    host, port = re.match(r"http://([^/:]+):(\d+)/", url).groups()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the store answered and closed already (a full-size request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def test_bad_requests_get_http_errors(metrics_store):
    _, url = metrics_store
    for method in ("POST", "PUT", "DELETE"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(url, data=b"", method=method))
        assert e.value.code == 405
        assert e.value.headers["Allow"] == "GET"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url.replace("/metrics", "/other"))
    assert e.value.code == 404
    assert raw_http(url, b"\x16\x03\x01 not http at all\r\n\r\n") == "HTTP/1.1 400 Bad Request"
    assert raw_http(url, b"GET /metrics HTTP/1.1\r\nHost") == "HTTP/1.1 400 Bad Request"
    huge = b"GET /metrics HTTP/1.1\r\nX-A: " + b"a" * (8192 - 27)
    assert raw_http(url, huge) == "HTTP/1.1 431 Request Header Fields Too Large"
    # And it still serves.
    assert value(scrape(url), "plasma_capacity_bytes") == 1000000


def test_stuck_scrapers_cost_the_store_nothing(metrics_store):
    path, url = metrics_store
    host, port = re.match(r"http://([^/:]+):(\d+)/", url).groups()
    # More stuck scrapers than the store serves at once: half requests, never read.
    stuck = []
    for _ in range(12):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(b"GET /metr")
        stuck.append(s)
    # Clients are served meanwhile.
    client = plasma.connect(path)
    for i in range(100):
        oid = client.put_raw_buffer(bytes([i]) * 100)
        (buf,) = client.get_buffers([oid])
        assert buf.to_pybytes() == bytes([i]) * 100
    # The stuck ones beyond the limit were closed at once; the others are dropped when
    # their deadline passes. Either way each ends with the store closing it.
    closed = 0
    for s in stuck:
        try:
            data = s.recv(1024)
        except ConnectionResetError:
            data = b""
        assert data == b""
        closed += 1
        s.close()
    assert closed == 12
    # Then scrapes work again, and the clients' work is all there.
    s = scrape(url)
    assert value(s, "plasma_objects", state="sealed") == 100
    assert requests(s, "get") >= 100


def start_store(tmp_path, *flags):
    """A store with metrics on an ephemeral port and `flags`; returns (proc, socket, url).
    A store that does not come up is killed."""
    sock = tmp_path / "full.sock"
    log = tmp_path / "full.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [plasma.find_plasma_store_binary(), "-s", str(sock), "--metrics-listen", "0",
             *flags], stderr=err, env=dict(os.environ, RUST_LOG="info"))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            m = re.search(r"metrics at (http://\S+/metrics)", log.read_text())
            if m and sock.exists():
                return proc, str(sock), m.group(1)
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def test_waiting_creates_and_the_fallback_tier_are_counted(tmp_path):
    fallback = tmp_path / "fallback"
    fallback.mkdir()
    proc, path, url = start_store(tmp_path, "-m", "1000000", "--create-wait", "20000",
                                  "--fallback-dir", str(fallback))
    try:
        a = plasma.connect(path)
        b = plasma.connect(path)
        s = scrape(url)
        assert value(s, "plasma_waiting_creates") == 0
        assert value(s, "plasma_fallback_bytes") == 0
        # Larger than shared memory: straight to the fallback tier.
        big = plasma.ObjectID(b"B" * 20)
        buf = a.create(big, 3_000_000)
        memoryview(buf).cast("B")[:] = b"x" * 3_000_000
        del buf
        a.seal(big)
        s = scrape(url)
        assert value(s, "plasma_fallback_bytes") >= 3_000_000
        assert value(s, "plasma_fallback_segments") == 1
        # Shared memory held by a's unsealed object: b's create waits until a goes.
        holder = plasma.connect(path)
        held = plasma.ObjectID(b"H" * 20)
        buf = holder.create(held, 900_000)
        waiting = plasma.ObjectID(b"W" * 20)
        done = threading.Event()
        t = threading.Thread(target=lambda: (b.create(waiting, 500_000), done.set()))
        t.start()
        deadline = time.monotonic() + 10
        while value(scrape(url), "plasma_waiting_creates") != 1:
            assert time.monotonic() < deadline, "the create never showed as waiting"
            time.sleep(0.02)
        assert not done.is_set()
        del buf
        holder.disconnect()  # aborts its unsealed object
        t.join(10)
        assert done.is_set()
        s = scrape(url)
        assert value(s, "plasma_waiting_creates") == 0
        a.delete([big])
        assert value(scrape(url), "plasma_fallback_bytes") == 0
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)
