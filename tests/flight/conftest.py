"""Fixtures for the Flight gateway tests: real stores (``plasma_store``) and real gateways
(``plasma_flight``) on loopback, a ``pyarrow.flight`` client (today's pyarrow), the project's
``plasma_store`` Python client for setting up and inspecting stores, and pyarrow 11's
``pyarrow.plasma`` in a child interpreter for the gets that must come from an unchanged
client.

Binaries: ``$PLASMA_STORE_BIN`` and ``$PLASMA_FLIGHT_BIN``; pyarrow 11's interpreter:
``$PLASMA_PYARROW11_PYTHON``. ``scripts/flight-tests.sh`` builds and sets all three.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import plasma_store as plasma

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STORE_BIN = os.environ.get("PLASMA_STORE_BIN", os.path.join(REPO, "target/release/plasma_store"))
FLIGHT_BIN = os.environ.get("PLASMA_FLIGHT_BIN", os.path.join(REPO, "target/release/plasma_flight"))
PY11 = os.environ.get("PLASMA_PYARROW11_PYTHON", os.path.join(REPO, ".venv/bin/python"))

MIB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, what, timeout=60.0):
    """Polls ``cond`` until it is true; fails naming ``what`` after ``timeout`` seconds (a
    bound on a hang, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Store:
    """A plasma_store daemon in a private directory."""

    def __init__(self, tmp, name, memory):
        self.path = os.path.join(tmp, name + ".sock")
        self.log = open(os.path.join(tmp, name + ".log"), "w+")
        self.proc = subprocess.Popen([STORE_BIN, "-m", str(memory), "-s", self.path],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: os.path.exists(self.path) or self.proc.poll() is not None,
                   "the store socket")
        assert self.proc.poll() is None, "the store did not start"
        self.client = plasma.connect(self.path)
        self.killed_by_test = False

    def objects(self):
        return self.client.list()

    def unsealed(self):
        return [i for i, o in self.objects().items() if o["state"] != "sealed"]

    def allocated(self):
        m = re.search(r"allocated bytes: (\d+)", self.client.debug_string())
        return int(m.group(1))

    def consistent(self):
        """No unsealed leftovers, and the allocated bytes are those of the listed objects."""
        objs = self.objects()
        assert [i for i, o in objs.items() if o["state"] != "sealed"] == []
        expect = sum(o["data_size"] + o["metadata_size"] for o in objs.values())
        assert self.allocated() == expect

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=20) == 0


class Gateway:
    """A plasma_flight process."""

    def __init__(self, tmp, name, store, peers=(), token=None, port=None, extra=()):
        self.tmp, self.name, self.store = tmp, name, store
        self.peers, self.token, self.extra = list(peers), token, list(extra)
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self):
        args = [FLIGHT_BIN, "-s", self.store.path, "--listen", self.addr]
        for p in self.peers:
            args += ["--peer", p]
        if self.token is not None:
            tf = os.path.join(self.tmp, self.name + ".token")
            with open(tf, "w") as f:
                f.write(self.token + "\n")
            args += ["--token-file", tf]
        args += self.extra
        self.logpath = os.path.join(self.tmp, self.name + ".log")
        self.logfile = open(self.logpath, "a")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.proc = subprocess.Popen(args, stdout=self.logfile, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: "serving Flight" in self.log() or self.proc.poll() is not None,
                   f"gateway {self.name} to start")
        assert self.proc.poll() is None, self.log()

    def log(self):
        with open(self.logpath) as f:
            return f.read()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=20) == 0, self.log()

    def location(self):
        return f"grpc://{self.addr}"


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="flight-") as d:
        yield d


@pytest.fixture
def cluster(tmp):
    """Starts stores and gateways; checks at the end that each store is consistent and every
    process still alive (and stops cleanly)."""
    stores, gateways = [], []

    class C:
        def store(self, name, memory=512 * MIB):
            s = Store(tmp, name, memory)
            stores.append(s)
            return s

        def gateway(self, name, store, **kw):
            g = Gateway(tmp, name, store, **kw)
            gateways.append(g)
            return g

    yield C()
    try:
        for g in gateways:
            if g.proc.poll() is None:
                g.stop()
        for s in stores:
            if s.killed_by_test:
                continue
            assert s.proc.poll() is None, "a store died"
            s.consistent()
    finally:
        for g in gateways:
            if g.proc.poll() is None:
                g.kill()
        for s in stores:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()


def run11(code, *args, timeout=120):
    """Runs ``code`` with pyarrow 11 (``pyarrow.plasma``); returns its stdout."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([PY11, "-c", code, *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def oid(n):
    """A deterministic ObjectID from a small number (test-readable ids)."""
    return plasma.ObjectID(n.to_bytes(4, "big") * 5)


def pattern(size, seed=1):
    """``size`` reproducible pseudo-random bytes."""
    import random
    return random.Random(seed).randbytes(size)


def self_signed(tmp):
    """A test CA and a certificate it signed for localhost / 127.0.0.1 (rustls refuses a CA
    certificate as a server's): (ca, cert, key) paths."""
    ca, ca_key = os.path.join(tmp, "ca.pem"), os.path.join(tmp, "ca.key")
    cert, key, csr = (os.path.join(tmp, n) for n in ["cert.pem", "key.pem", "cert.csr"])
    ext = os.path.join(tmp, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "1", "-subj", "/CN=plasma test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "1", "-extfile", ext)
    return ca, cert, key
