"""Benchmark of the Flight gateway (issue 10), side by side in one run:

- a 1 GiB remote get over loopback (a pyarrow 11 client of store B gets an object that only
  store A holds; B's gateway pulls it from A's) in GB/s, next to a plain TCP copy of the same
  bytes between two processes on the same machine (the limit);
- small-object (1 KiB) remote get latency, p50 and p99, next to a local get of the same
  objects.

Each round measures every workload once; the table gives the median over rounds and the
min-max. Run with bench/flight.sh (builds the release binaries, finds pyarrow 11).
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.plasma as plasma

GIB = 1 << 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.02)


class Procs:
    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def store(self, name, memory):
        path = os.path.join(self.tmp, name)
        p = subprocess.Popen([ARGS.store, "-m", str(memory), "-s", path],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_for(lambda: os.path.exists(path), "a store")
        return path

    def gateway(self, sock, peers=()):
        port = free_port()
        args = [ARGS.flight, "-s", sock, "--listen", f"127.0.0.1:{port}"]
        for peer in peers:
            args += ["--peer", peer]
        log = open(os.path.join(self.tmp, f"gw{port}.log"), "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))
        self.procs.append(p)

        def up():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(up, "a gateway")
        return f"127.0.0.1:{port}"

    def stop(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            p.wait()


TCP_SENDER = """
import socket, sys
n = int(sys.argv[2])
data = bytearray(n)
data[::4096] = b"x" * len(data[::4096])
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(data)
s.close()
"""


def tcp_copy(n):
    """Seconds to move n bytes over a loopback TCP connection into a pre-touched buffer."""
    buf = bytearray(n)
    buf[::4096] = b"y" * len(buf[::4096])
    view = memoryview(buf)
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        port = ls.getsockname()[1]
        sender = subprocess.Popen([sys.executable, "-c", TCP_SENDER, str(port), str(n)])
        conn, _ = ls.accept()
        with conn:
            got = conn.recv_into(view, n)
            t0 = time.perf_counter()
            while got < n:
                r = conn.recv_into(view[got:], n - got)
                if r == 0:
                    break
                got += r
            t = time.perf_counter() - t0
        sender.wait()
    assert got == n
    return t


def remote_get(sock_b, client_b, oid, n):
    """Seconds for a get on B of an object only A holds (B's copy deleted afterwards)."""
    c = plasma.connect(sock_b)
    t0 = time.perf_counter()
    [buf] = c.get_buffers([oid], timeout_ms=120000)
    t = time.perf_counter() - t0
    assert buf is not None and len(buf) == n
    del buf
    # pyarrow 11 releases lazily: disconnecting drops its references, so the delete is not
    # deferred and the next round pulls again.
    c.disconnect()
    client_b.delete([oid])
    wait_for(lambda: not client_b.contains(oid), "the copy on B to be deleted")
    return t


def small_latencies(client_a, sock_b, ids):
    """Per-object seconds of gets on B (remote) and on A (local) of 1 KiB objects."""
    client_b = plasma.connect(sock_b)
    remote, local = [], []
    for i in ids:
        t0 = time.perf_counter()
        [b] = client_b.get_buffers([i], timeout_ms=10000)
        remote.append(time.perf_counter() - t0)
        assert b is not None
        del b
        t0 = time.perf_counter()
        [b] = client_a.get_buffers([i], timeout_ms=10000)
        local.append(time.perf_counter() - t0)
        del b
    client_b.disconnect()
    client_b = plasma.connect(sock_b)
    client_b.delete(ids)
    wait_for(lambda: not any(client_b.contains(i) for i in ids), "the copies on B to be deleted")
    return remote, local


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    tmp = tempfile.mkdtemp(prefix="flight-bench-")
    procs = Procs(tmp)
    try:
        a = procs.store("a", int(1.5 * GIB))
        b = procs.store("b", int(1.5 * GIB))
        ga = procs.gateway(a)
        procs.gateway(b, peers=[ga])
        ca, cb = plasma.connect(a), plasma.connect(b)
        big = plasma.ObjectID(b"B" * 20)
        buf = ca.create(big, GIB)
        np.frombuffer(buf, dtype=np.uint8)[::4096] = 122
        del buf
        ca.seal(big)
        small = [plasma.ObjectID(os.urandom(20)) for _ in range(ARGS.small)]
        for i in small:
            ca.put_raw_buffer(os.urandom(1024), object_id=i)

        rows = {k: [] for k in ["remote", "tcp", "ratio", "r50", "r99", "l50", "l99"]}
        for r in range(ARGS.rounds):
            t_remote = remote_get(b, cb, big, GIB)
            t_tcp = tcp_copy(GIB)
            rem, loc = small_latencies(ca, b, small)
            rows["remote"].append(GIB / t_remote / 1e9)
            rows["tcp"].append(GIB / t_tcp / 1e9)
            rows["ratio"].append(t_tcp / t_remote)
            rows["r50"].append(pct(rem, 0.5) * 1e6)
            rows["r99"].append(pct(rem, 0.99) * 1e6)
            rows["l50"].append(pct(loc, 0.5) * 1e6)
            rows["l99"].append(pct(loc, 0.99) * 1e6)
            print(f"round {r + 1}: remote {rows['remote'][-1]:.2f} GB/s, tcp "
                  f"{rows['tcp'][-1]:.2f} GB/s; small remote p50 {rows['r50'][-1]:.0f} us "
                  f"p99 {rows['r99'][-1]:.0f} us, local p50 {rows['l50'][-1]:.0f} us",
                  file=sys.stderr, flush=True)
    finally:
        procs.stop()

    def cell(k, fmt):
        xs = rows[k]
        return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"

    load = os.getloadavg()[0]
    print(f"\nFlight gateway benchmark: {ARGS.rounds} rounds, median (min-max); "
          f"load average {load:.1f} on {os.cpu_count()} CPUs\n")
    print("| workload | gateway | baseline | gateway / baseline | target |")
    print("|---|---|---|---|---|")
    print(f"| 1 GiB remote get vs plain TCP copy, GB/s | {cell('remote', '{:.2f}')} | "
          f"{cell('tcp', '{:.2f}')} | {cell('ratio', '{:.2f}')} | >= 0.5 |")
    print(f"| 1 KiB get p50, us: remote vs local | {cell('r50', '{:.0f}')} | "
          f"{cell('l50', '{:.0f}')} | {statistics.median(rows['r50']) / statistics.median(rows['l50']):.0f}x "
          f"| remote p50 <= 1000 us |")
    print(f"| 1 KiB get p99, us: remote vs local | {cell('r99', '{:.0f}')} | "
          f"{cell('l99', '{:.0f}')} | | |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--flight", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--small", type=int, default=300, help="small objects per round")
    ARGS = p.parse_args()
    main()
