#!/usr/bin/env python3
"""Benchmark: this crate's plasma_store against the reference plasma-store-server (pyarrow 11).

Run it through `bench/run.sh`, which builds the daemon and the Rust driver and finds the venv.

Both daemons run the same workloads with the same client, ours and ref interleaved
measurement by measurement, in the order ours, ref in even rounds and ref, ours in odd ones
(so a drift of the machine's speed during a round does not favour either). Every workload
runs twice: with the pyarrow 11 client (what users run; in this process, or in worker
processes where a workload needs several) and with the Rust client (`bench_client`, which
costs little, so its numbers show mostly the daemon's cost). The daemon's CPU time is read
from /proc/PID/stat (utime + stime) just before and after each timed part.

This file is also the pyarrow side of the drivers: `bench.py worker WORKLOAD ...` takes the
same arguments as `bench_client` and prints the same JSON (see examples/bench_client.rs).
"""

import argparse
import gc
import json
import os
import platform
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30


# --------------------------------------------------------------------------------------------
# Reading a daemon's /proc entries.


def daemon_ticks(pid):
    """utime + stime of the process, in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def daemon_ns(pid):
    """CPU time of the process in ns, summed over its threads' schedstat (exact)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total


def proc_status_kib(pid):
    """The kB fields of /proc/PID/status (VmRSS, RssAnon, RssFile, RssShmem, ...)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


# --------------------------------------------------------------------------------------------
# The pyarrow driver: the same workloads as examples/bench_client.rs.


def oid_bytes(tag, i):
    """Id of object i of the run tagged `tag`: tag (8 bytes LE), counter (8 bytes LE), zeros."""
    return tag.to_bytes(8, "little") + i.to_bytes(8, "little") + bytes(4)


def plasma_module():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import pyarrow.plasma as plasma

    return plasma


def py_timed(o, ops, body):
    """Runs body() as the timed part, with the daemon's CPU read around it."""
    if o.wait_go:
        print("ready", flush=True)
        sys.stdin.readline()
    gc.collect()
    gc.disable()
    try:
        c0, n0 = (daemon_ticks(o.pid), daemon_ns(o.pid)) if o.pid else (None, None)
        t0 = time.perf_counter()
        extra = body() or {}
        seconds = time.perf_counter() - t0
        c1, n1 = (daemon_ticks(o.pid), daemon_ns(o.pid)) if o.pid else (None, None)
    finally:
        gc.enable()
    out = {
        "ops": ops,
        "seconds": seconds,
        "cpu_ticks": None if c0 is None else c1 - c0,
        "cpu_ns": None if n0 is None else n1 - n0,
    }
    out.update(extra)
    return out


def py_ids(plasma, o, n=None):
    return [plasma.ObjectID(oid_bytes(o.tag, i)) for i in range(o.n if n is None else n)]


def py_delete_all(c, ids):
    for k in range(0, len(ids), 10_000):
        c.delete(ids[k : k + 10_000])


def py_create_seal(plasma, c, o):
    ids = py_ids(plasma, o)
    payload = b"\x5a" * o.size

    def body():
        for oid in ids:
            buf = c.create(oid, o.size)
            view = memoryview(buf).cast("B")
            view[:] = payload
            view.release()
            c.seal(oid)
            del buf  # the Release

    r = py_timed(o, o.n, body)
    py_delete_all(c, ids)
    return r


def py_create_and_seal(plasma, c, o):
    ids = py_ids(plasma, o)
    payload = b"\x5a" * o.size

    def body():
        for oid in ids:
            c.create_and_seal(oid, payload, b"")

    r = py_timed(o, o.n, body)
    py_delete_all(c, ids)
    return r


def py_one_object(plasma, c, o):
    oid = plasma.ObjectID(oid_bytes(o.tag, 0))
    c.create_and_seal(oid, b"\x5a" * o.size, b"")
    return oid


def py_get_release(plasma, c, o):
    oid = py_one_object(plasma, c, o)
    ids = [oid]

    def body():
        for _ in range(o.n):
            got = c.get_buffers(ids, timeout_ms=0)
            if got[0] is None:
                raise RuntimeError("get did not find the object")
            del got  # the Release

    r = py_timed(o, o.n, body)
    c.delete(ids)
    return r


def py_contains(plasma, c, o):
    oid = py_one_object(plasma, c, o)

    def body():
        for _ in range(o.n):
            if not c.contains(oid):
                raise RuntimeError("contains said false")

    r = py_timed(o, o.n, body)
    c.delete([oid])
    return r


def py_list(plasma, c, o):
    count = [0]

    def body():
        for _ in range(o.n):
            count[0] = len(c.list())
        return {"count": count[0]}

    return py_timed(o, o.n, body)


def py_put(plasma, c, o):
    import numpy as np

    src = np.full(o.size, 0xA5, dtype=np.uint8)  # written here: no page faults when copied
    each = []

    def body():
        for i in range(o.n):
            oid = plasma.ObjectID(oid_bytes(o.tag, i))
            t0 = time.perf_counter()
            buf = c.create(oid, o.size)
            np.frombuffer(buf, dtype=np.uint8)[:] = src
            c.seal(oid)
            each.append(time.perf_counter() - t0)
            del buf
            c.delete([oid])
        return {"each_s": each}

    return py_timed(o, o.n, body)


def py_wake(plasma, c, o):
    """Sealer side; the waiter is a `bench.py worker wake-waiter` child (see bench_client)."""
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "worker", "wake-waiter",
         "--socket", o.socket, "--tag", str(o.tag)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    child.stdout.readline()  # "ready": connected
    gap = o.gap_us / 1e6
    ids = py_ids(plasma, o)
    lat = []

    def body():
        for i, oid in enumerate(ids):
            buf = c.create(oid, 8)
            child.stdin.write(f"{i}\n")
            child.stdin.flush()
            child.stdout.readline()  # "r": about to call get
            time.sleep(gap)
            sealed_at = time.time_ns()
            c.seal(oid)
            woke_at = int(child.stdout.readline())
            lat.append(max(0, woke_at - sealed_at))
            del buf
        return {"lat_ns": lat}

    try:
        r = py_timed(o, o.n, body)
    finally:
        child.stdin.close()
        child.wait()
    py_delete_all(c, ids)
    return r


def py_wake_waiter(plasma, c, o):
    print("ready", flush=True)
    for line in sys.stdin:
        oid = plasma.ObjectID(oid_bytes(o.tag, int(line)))
        print("r", flush=True)
        got = c.get_buffers([oid], timeout_ms=-1)
        woke_at = time.time_ns()
        if got[0] is None:
            raise RuntimeError("blocked get returned without the object")
        del got
        print(woke_at, flush=True)


PY_WORKLOADS = {
    "create-seal": py_create_seal,
    "create-and-seal": py_create_and_seal,
    "get-release": py_get_release,
    "contains": py_contains,
    "list": py_list,
    "put": py_put,
    "wake": py_wake,
    "wake-waiter": py_wake_waiter,
}


def driver_parser():
    p = argparse.ArgumentParser(prog="bench.py worker")
    p.add_argument("workload", choices=sorted(PY_WORKLOADS))
    p.add_argument("--socket", required=True)
    p.add_argument("--pid", type=int)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--tag", type=int, default=1)
    p.add_argument("--gap-us", type=int, default=1000)
    p.add_argument("--wait-go", action="store_true")
    return p


def py_run(o):
    plasma = plasma_module()
    c = plasma.connect(o.socket)
    try:
        return PY_WORKLOADS[o.workload](plasma, c, o)
    finally:
        c.disconnect()


def worker_main(argv):
    o = driver_parser().parse_args(argv)
    r = py_run(o)
    if r is not None:
        print(json.dumps(r), flush=True)


# --------------------------------------------------------------------------------------------
# The harness.


class Daemon:
    """One running store: its process, socket and log."""

    def __init__(self, kind, exe, memory, workdir, extra=()):
        self.kind = kind
        self.memory = memory
        Daemon.count = getattr(Daemon, "count", 0) + 1
        self.socket = os.path.join(workdir, f"{kind}-{Daemon.count}.sock")
        self.log_path = os.path.join(workdir, f"{kind}-{Daemon.count}.log")
        self.log = open(self.log_path, "wb")
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(
            [exe, "-m", str(memory), "-s", self.socket, *extra],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )
        self.pid = self.proc.pid
        LIVE.add(self)

    def wait_socket(self, timeout=30.0):
        """Seconds from spawn until the socket accepts a connection (polled every 0.2 ms)."""
        deadline = time.perf_counter() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} daemon exited ({self.proc.returncode}): "
                                   + self.log_tail())
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.socket)
                return time.perf_counter() - self.t_start
            except (FileNotFoundError, ConnectionRefusedError):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{self.kind} daemon not ready after {timeout}s")
                time.sleep(0.0002)
            finally:
                s.close()

    def log_tail(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} daemon died ({self.proc.returncode}): "
                               + self.log_tail())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        LIVE.discard(self)
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass


LIVE = set()


class Bench:
    def __init__(self, args):
        self.args = args
        self.exe = {"ours": args.ours, "ref": args.ref}
        self.workdir = tempfile.mkdtemp(prefix="plasma-bench-")
        # metric key -> {"ours": [per-round values], "ref": [...]}
        self.values = {}
        self.meta = {}  # metric key -> (section, workload, metric, unit, better)
        self.levels = {}  # scaling metric key -> (operation, objects stored)
        self.raw = []  # every driver result, for the JSON file
        self.warm_busy = []  # warmup section: was ours still warming up after each workload

    # -- bookkeeping
    def record(self, section, workload, metric, unit, better, kind, value, level=None):
        """Adds one round's value. `level`, for the scaling rows: (operation, objects stored)."""
        key = (section, workload, metric)
        self.meta.setdefault(key, (section, workload, metric, unit, better))
        self.values.setdefault(key, {"ours": [], "ref": []})[kind].append(value)
        if level is not None:
            self.levels[key] = level

    def start(self, kind, memory, extra=()):
        d = Daemon(kind, self.exe[kind], memory, self.workdir, extra)
        d.wait_socket()
        return d

    @staticmethod
    def order(rnd):
        return ["ours", "ref"] if rnd % 2 == 0 else ["ref", "ours"]

    @staticmethod
    def tag():
        return random.getrandbits(63)

    # -- running one driver
    def drive(self, client, workload, d, **kw):
        """Runs one workload with client 'py' or 'rust' against daemon d; returns its JSON."""
        d.check_alive()
        opts = {"socket": d.socket, "pid": d.pid, "n": 10_000, "size": 64,
                "tag": self.tag(), "gap_us": 1000, "wait_go": False}
        opts.update(kw)
        if client == "py":
            r = py_run(argparse.Namespace(workload=workload, **opts))
        else:
            cmd = [self.args.bench_client, workload]
            for k, v in opts.items():
                if k != "wait_go" and v is not None:
                    cmd += ["--" + k.replace("_", "-"), str(v)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
        d.check_alive()
        r.update(client=client, daemon=d.kind, workload=workload)
        self.raw.append(r)
        return r

    def worker_cmd(self, client, workload, d, **kw):
        opts = {"socket": d.socket, "tag": self.tag(), **kw}
        flags = [x for k, v in opts.items() for x in ("--" + k.replace("_", "-"), str(v))]
        if client == "py":
            return [sys.executable, os.path.abspath(__file__), "worker", workload, *flags,
                    "--wait-go"]
        return [self.args.bench_client, workload, *flags, "--wait-go"]

    def record_ops(self, section, workload, client, r, kind):
        label = CLIENT_LABEL[client]
        self.record(section, workload, f"{label} ops/s", "ops/s", "higher", kind,
                    r["ops"] / r["seconds"])
        self.record(section, workload, f"{label} daemon CPU µs/op", "µs", "lower", kind,
                    cpu_seconds(r) / r["ops"] * 1e6)

    # -- the sections
    def section_ops(self, rnd):
        a = self.args
        pair = {k: self.start(k, a.memory) for k in ("ours", "ref")}
        try:
            for workload, title in OPS_WORKLOADS:
                for client in CLIENTS:
                    for kind in self.order(rnd):
                        r = self.drive(client, workload, pair[kind], n=a.n)
                        self.record_ops("per-op", title, client, r, kind)
            for client in CLIENTS:
                for kind in self.order(rnd):
                    r = self.drive(client, "wake", pair[kind], n=a.wake_n, gap_us=a.wake_gap_us)
                    lat = sorted(r["lat_ns"])
                    label = CLIENT_LABEL[client]
                    self.record("per-op", "blocked get woken by a seal in another process",
                                f"{label} median µs", "µs", "lower", kind,
                                statistics.median(lat) / 1e3)
                    self.record("per-op", "blocked get woken by a seal in another process",
                                f"{label} p90 µs", "µs", "lower", kind,
                                lat[int(len(lat) * 0.9)] / 1e3)
            for client in CLIENTS:
                for kind in self.order(rnd):
                    self.concurrent(client, pair[kind], rnd)
        finally:
            for d in pair.values():
                d.stop()

    def concurrent(self, client, d, rnd):
        a = self.args
        procs = [subprocess.Popen(self.worker_cmd(client, "create-seal", d, n=a.concurrent_n),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(a.clients)]
        try:
            for p in procs:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("a concurrent worker did not start")
            c0, n0 = daemon_ticks(d.pid), daemon_ns(d.pid)
            t0 = time.perf_counter()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [json.loads(p.stdout.readline()) for p in procs]
            seconds = time.perf_counter() - t0
            c1, n1 = daemon_ticks(d.pid), daemon_ns(d.pid)
        finally:
            for p in procs:
                p.stdin.close()
                p.wait()
        if any(p.returncode for p in procs):
            raise RuntimeError("a concurrent worker failed")
        d.check_alive()
        ops = sum(r["ops"] for r in results)
        r = {"client": client, "daemon": d.kind, "workload": "concurrent", "ops": ops,
             "seconds": seconds, "cpu_ticks": c1 - c0, "cpu_ns": n1 - n0, "workers": results}
        self.raw.append(r)
        title = f"{a.clients} concurrent clients, create+seal 64 B each"
        label = CLIENT_LABEL[client]
        self.record("per-op", title, f"{label} aggregate ops/s", "ops/s", "higher", d.kind,
                    ops / seconds)
        self.record("per-op", title, f"{label} daemon CPU µs/op", "µs", "lower", d.kind,
                    cpu_seconds(r) / ops * 1e6)

    def section_scaling(self, rnd):
        """One pair of daemons per level of objects stored, all alive at once, so that the
        levels are measured interleaved too and a drift of the machine does not show up as
        growth."""
        a = self.args
        daemons = {}
        try:
            for level in a.levels:
                for kind in self.order(rnd):
                    d = daemons[level, kind] = self.start(kind, a.memory)
                    self.drive("rust", "fill", d, n=level, batch=1000, pid=None)
            for workload, title in SCALING_WORKLOADS:
                for client in CLIENTS:
                    label = CLIENT_LABEL[client]
                    for level in a.levels:
                        row = f"{title} with {human_count(level)} objects stored"
                        for kind in self.order(rnd):
                            r = self.drive(client, workload, daemons[level, kind],
                                           n=a.scaling_n)
                            self.record("scaling", row, f"{label} µs/op", "µs", "lower", kind,
                                        r["seconds"] / r["ops"] * 1e6, (title, level))
                            self.record("scaling", row, f"{label} daemon CPU µs/op", "µs",
                                        "lower", kind, cpu_seconds(r) / r["ops"] * 1e6,
                                        (title, level))
            for client in CLIENTS:
                label = CLIENT_LABEL[client]
                for level in a.levels:
                    row = f"list of {human_count(level)} objects"
                    for kind in self.order(rnd):
                        r = self.drive(client, "list", daemons[level, kind],
                                       n=max(1, min(100, 100_000 // level)))
                        if r["count"] != level:
                            raise RuntimeError(f"list saw {r['count']} objects, not {level}")
                        self.record("scaling", row, f"{label} ms/call", "ms", "lower", kind,
                                    r["seconds"] / r["ops"] * 1e3, ("list", level))
                        self.record("scaling", row, f"{label} daemon CPU ms/call", "ms",
                                    "lower", kind, cpu_seconds(r) / r["ops"] * 1e3,
                                    ("list", level))
        finally:
            for d in daemons.values():
                d.stop()

    def section_rss(self, rnd):
        a = self.args
        pair = {k: self.start(k, a.memory) for k in ("ours", "ref")}
        title = f"daemon memory after {human_count(a.rss_objects)} objects of 64 B"
        try:
            for kind in self.order(rnd):
                d = pair[kind]
                before = proc_status_kib(d.pid)
                self.drive("rust", "fill", d, n=a.rss_objects, batch=1)
                after = proc_status_kib(d.pid)
                self.raw.append({"daemon": kind, "workload": "rss", "idle": before,
                                 "after": after})
                self.record("memory", "idle daemon", "VmRSS MiB", "MiB", "lower", kind,
                            before["VmRSS"] / 1024)
                for field in ("VmRSS", "RssAnon", "RssShmem"):
                    if field in after:
                        self.record("memory", title, f"{field} MiB", "MiB", "lower", kind,
                                    after[field] / 1024)
        finally:
            for d in pair.values():
                d.stop()

    def section_put(self, rnd):
        a = self.args
        size_gb = a.put_size / 1e9
        for client in CLIENTS:
            for kind in self.order(rnd):
                d = self.start(kind, a.put_memory)
                try:
                    r = self.drive(client, "put", d, n=2, size=a.put_size)
                finally:
                    d.stop()
                label = CLIENT_LABEL[client]
                fresh, touched = r["each_s"]
                what = f"put {human_bytes(a.put_size)} (create, copy, seal)"
                self.record("put", f"{what} into fresh store memory", f"{label} GB/s", "GB/s",
                            "higher", kind, size_gb / fresh)
                self.record("put", f"{what} into memory touched once", f"{label} GB/s",
                            "GB/s", "higher", kind, size_gb / touched)
        # The same into fresh memory of a store that has been idle for a while after start-up
        # (a service started before its clients): both daemons get the same wait.
        for client in CLIENTS:
            for kind in self.order(rnd):
                d = self.start(kind, a.put_memory)
                try:
                    time.sleep(a.put_settle)
                    r = self.drive(client, "put", d, n=1, size=a.put_size)
                finally:
                    d.stop()
                label = CLIENT_LABEL[client]
                what = f"put {human_bytes(a.put_size)} (create, copy, seal)"
                self.record("put", f"{what} into fresh store memory, {a.put_settle:g} s after "
                            "start-up", f"{label} GB/s", "GB/s", "higher", kind,
                            size_gb / r["each_s"][0])

    def section_warmup(self, rnd):
        """The per-operation workloads on stores measured right after start-up with -m 4GiB,
        while ours makes its memory resident in the background: ours against the reference,
        and ours against ours with --no-prefault (shown in the 'ref' column). A fresh daemon
        per client; the workloads run at once, in the order of OPS_WORKLOADS."""
        a = self.args
        variants = [("ours", "ours", ()), ("ref", "ref", ()),
                    ("nopf", "ours", ("--no-prefault",))]
        order = variants if rnd % 2 == 0 else variants[::-1]
        for client in CLIENTS:
            label = CLIENT_LABEL[client]
            for name, kind, extra in order:
                d = self.start(kind, a.warm_memory, extra)
                try:
                    for workload, title in OPS_WORKLOADS:
                        r = self.drive(client, workload, d, n=a.n)
                        threads = len(os.listdir(f"/proc/{d.pid}/task"))
                        r["threads_after"] = threads
                        if name == "ours":
                            self.warm_busy.append(threads > 1)
                        rate = r["ops"] / r["seconds"]
                        cpu = cpu_seconds(r) / r["ops"] * 1e6
                        if name in ("ours", "ref"):
                            row = f"{title}, right after start-up"
                            self.record("warmup", row, f"{label} ops/s", "ops/s", "higher",
                                        name, rate)
                        if name in ("ours", "nopf"):
                            row = f"{title}, right after start-up (ref column: ours --no-prefault)"
                            col = "ours" if name == "ours" else "ref"
                            self.record("warmup", row, f"{label} ops/s", "ops/s", "higher",
                                        col, rate)
                            self.record("warmup", row, f"{label} daemon CPU µs/op (all threads)",
                                        "µs", "lower", col, cpu)
                finally:
                    d.stop()

    def section_startup(self, rnd):
        a = self.args
        plasma = plasma_module()
        samples = {"ours": [], "ref": []}
        for _ in range(a.startup_reps):
            for kind in self.order(rnd):
                d = Daemon(kind, self.exe[kind], a.startup_memory, self.workdir)
                try:
                    d.wait_socket()
                    c = plasma.connect(d.socket, 0)  # a ConnectRequest answered
                    samples[kind].append(time.perf_counter() - d.t_start)
                    c.disconnect()
                finally:
                    d.stop()
        for kind, s in samples.items():
            self.record("start-up", f"start-up to first reply, -m {human_bytes(a.startup_memory)}",
                        "ms (median of reps)", "ms", "lower", kind, statistics.median(s) * 1e3)

    def growth_table(self):
        """Per operation and metric: the median at the most objects stored over the median at
        the fewest, for each daemon (1.0 = the cost does not grow with the store)."""
        rows = {}
        for key, (op, level) in self.levels.items():
            metric = key[2]
            rows.setdefault((op, metric), {})[level] = self.values[key]
        if not rows:
            return []
        lo, hi = min(self.args.levels), max(self.args.levels)
        out = [f"### Growth from {human_count(lo)} to {human_count(hi)} objects stored "
               f"(median at {human_count(hi)} / median at {human_count(lo)}; 1.0 = flat; "
               "list returns every object, so it must grow)", "",
               "| operation | metric | ours | ref |", "|---|---|---:|---:|"]
        for (op, metric), by_level in rows.items():
            if lo not in by_level or hi not in by_level:
                continue
            g = {k: statistics.median(by_level[hi][k]) / max(1e-12, statistics.median(by_level[lo][k]))
                 for k in ("ours", "ref")}
            out.append(f"| {op} | {metric} | {g['ours']:.2f} | {g['ref']:.2f} |")
        return out + [""]

    # -- the whole run
    def run(self):
        a = self.args
        sections = [s for s in SECTIONS if s in a.sections]
        noise_before = machine_sample()
        usage0 = cpu_usage_snapshot()
        t0 = time.time()
        for rnd in range(a.rounds):
            for s in sections:
                ts = time.time()
                getattr(self, "section_" + s)(rnd)
                print(f"# round {rnd + 1}/{a.rounds}: {s} done in {time.time() - ts:.1f}s",
                      file=sys.stderr, flush=True)
        elapsed = time.time() - t0
        usage1 = cpu_usage_snapshot()
        noise_after = machine_sample()
        self.noise = {"before": noise_before, "after": noise_after,
                      "during": other_load(usage0, usage1), "elapsed_s": elapsed}

    def report(self):
        a = self.args
        lines = []
        lines.append(f"Rounds: {a.rounds}. Each cell: median over rounds; [min–max] over rounds.")
        lines.append("Ratio = ours/ref. 'better' says which direction is better for the metric;"
                     " 'verdict' compares the ranges (overlapping ranges = within noise).")
        lines.append("")
        for section in SECTION_TITLES:
            keys = [k for k in self.meta if k[0] == section]
            if not keys:
                continue
            lines.append(f"### {SECTION_TITLES[section]}")
            lines.append("")
            lines.append("| workload | metric | better | ours | ref | ours/ref | verdict "
                         "| ours min–max | ref min–max |")
            lines.append("|---|---|---|---:|---:|---:|---|---:|---:|")
            for key in keys:
                _, workload, metric, unit, better = self.meta[key]
                v = self.values[key]
                if not v["ours"] or not v["ref"]:
                    continue
                mo, mr = statistics.median(v["ours"]), statistics.median(v["ref"])
                ratio = mo / mr if mr else float("inf")
                lines.append(
                    f"| {workload} | {metric} | {better} | {fmt(mo)} | {fmt(mr)} | "
                    f"{ratio:.2f} | {verdict(v['ours'], v['ref'], better, a.rounds)} | "
                    f"{fmt(min(v['ours']))}–{fmt(max(v['ours']))} | "
                    f"{fmt(min(v['ref']))}–{fmt(max(v['ref']))} |")
            lines.append("")
        if self.warm_busy:
            lines.append(f"Warm-up section: ours was still making memory resident after "
                         f"{sum(self.warm_busy)} of {len(self.warm_busy)} workloads.")
            lines.append("")
        lines += self.growth_table()
        n = self.noise
        lines.append("Machine load from other processes: "
                     f"before the run {n['before']['busy_cpus']:.2f} of {os.cpu_count()} CPUs busy "
                     f"(load average {n['before']['loadavg']}), during it "
                     f"{n['during']['other_cpus']:.2f} CPUs busy with work not the benchmark's "
                     f"(steal {n['during']['steal_cpus']:.2f}), after it "
                     f"{n['after']['busy_cpus']:.2f} (load average {n['after']['loadavg']}). "
                     f"Run time {n['elapsed_s']:.0f} s.")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Definitions and helpers.

CLIENTS = ["py", "rust"]
CLIENT_LABEL = {"py": "pyarrow", "rust": "Rust"}
OPS_WORKLOADS = [
    ("create-seal", "create + seal, 64 B"),
    ("create-and-seal", "create_and_seal, 64 B"),
    ("get-release", "get + release of an existing object"),
    ("contains", "contains"),
]
SCALING_WORKLOADS = [
    ("get-release", "get + release"),
    ("contains", "contains"),
    ("create-seal", "create + seal 64 B"),
]
SECTIONS = ["ops", "scaling", "rss", "put", "startup", "warmup"]
SECTION_TITLES = {
    "per-op": "Per-operation workloads (store holds almost nothing)",
    "put": "Large puts (a fresh daemon per measurement)",
    "memory": "Daemon memory (from /proc/PID/status; objects made by the Rust client)",
    "start-up": "Start-up",
    "warmup": "Right after start-up with -m 4GiB, while memory is made resident",
    "scaling": "Scaling with the number of objects stored",
}


def fmt(x):
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def verdict(ours, ref, better, rounds):
    if rounds < 2:
        return "(1 round)"
    if max(ours) < min(ref):
        return "ours better" if better == "lower" else "ours worse"
    if min(ours) > max(ref):
        return "ours worse" if better == "lower" else "ours better"
    return "within noise"


def cpu_seconds(r):
    """The daemon's CPU time over a timed part: from the threads' schedstat (ns) where the
    kernel has it, else from /proc/PID/stat utime + stime (10 ms ticks)."""
    if r.get("cpu_ns") is not None:
        return r["cpu_ns"] / 1e9
    return r["cpu_ticks"] / CLK_TCK


def human_count(n):
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def human_bytes(n):
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def read_cpu_line():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy, v[7], sum(v[:8])


def machine_sample(seconds=1.0):
    """How many CPUs were busy over one second (nothing of ours runs then)."""
    b0, s0, t0 = read_cpu_line()
    time.sleep(seconds)
    b1, s1, t1 = read_cpu_line()
    cpus = os.cpu_count()
    total = max(1, t1 - t0)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {"busy_cpus": (b1 - b0) / total * cpus, "steal_cpus": (s1 - s0) / total * cpus,
            "loadavg": load}


def cpu_usage_snapshot():
    busy, steal, total = read_cpu_line()
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return {"busy": busy, "steal": steal, "total": total, "ours_s": ours,
            "wall": time.time()}


def other_load(u0, u1):
    """Average CPUs used by processes other than this benchmark (and its children) between
    two snapshots. Children count once they have been waited for, which all are by then."""
    cpus = os.cpu_count()
    jiffies = max(1, u1["total"] - u0["total"])
    wall = max(1e-9, u1["wall"] - u0["wall"])
    busy_cpus = (u1["busy"] - u0["busy"]) / jiffies * cpus
    ours_cpus = (u1["ours_s"] - u0["ours_s"]) / wall
    return {"busy_cpus": busy_cpus, "ours_cpus": ours_cpus,
            "other_cpus": max(0.0, busy_cpus - ours_cpus),
            "steal_cpus": (u1["steal"] - u0["steal"]) / jiffies * cpus}


def machine_description():
    info = {"kernel": platform.release(), "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "Hypervisor vendor", "Thread(s) per core",
                             "Core(s) per socket", "CPU max MHz"):
                info[k.strip()] = v.strip()
    except FileNotFoundError:
        pass
    with open("/proc/meminfo") as f:
        info["MemTotal"] = f.readline().split(":")[1].strip()
    return info


def parse_size(s):
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "k": 10**3, "M": 10**6,
             "G": 10**9}
    for u, m in units.items():
        if s.endswith(u):
            return int(s[: -len(u)]) * m
    return int(s)


def main(argv):
    if argv and argv[0] == "worker":
        return worker_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ours", required=True, help="our plasma_store binary")
    p.add_argument("--ref", required=True, help="the reference plasma-store-server binary")
    p.add_argument("--bench-client", required=True, help="the bench_client example binary")
    p.add_argument("--rounds", type=int)
    p.add_argument("--quick", action="store_true", help="one short round (under 2 minutes)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--markdown", help="write the tables here too")
    a = p.parse_args(argv)
    a.sections = a.sections.split(",")
    for s in a.sections:
        if s not in SECTIONS:
            p.error(f"unknown section {s}")
    a.memory = GIB  # -m of the daemons for per-op, scaling and memory workloads
    a.put_size = GIB
    a.put_memory = 2 * GIB
    a.put_settle = 2.0  # seconds a store is left idle before the "after start-up" put
    a.startup_memory = 4 * GIB
    a.warm_memory = 4 * GIB
    a.clients = 4
    a.rss_objects = 140_000
    a.wake_gap_us = 1000
    if a.quick:
        a.rounds = a.rounds or 1
        a.n, a.concurrent_n, a.wake_n, a.scaling_n = 10_000, 2500, 150, 5000
        a.levels = [1000, 100_000]
        a.startup_reps = 3
    else:
        a.rounds = a.rounds or 3
        a.n, a.concurrent_n, a.wake_n, a.scaling_n = 20_000, 5000, 300, 5000
        a.levels = [1000, 100_000, 1_000_000]
        a.startup_reps = 5

    bench = Bench(a)
    machine = machine_description()
    print("# machine: " + json.dumps(machine), file=sys.stderr, flush=True)
    ok = False
    try:
        bench.run()
        ok = True
    finally:
        for d in list(LIVE):
            d.stop()
        if ok:
            for name in os.listdir(bench.workdir):
                os.unlink(os.path.join(bench.workdir, name))
            os.rmdir(bench.workdir)
        else:
            print(f"# daemon logs kept in {bench.workdir}", file=sys.stderr)
    text = bench.report()
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "args": {k: v for k, v in vars(a).items()},
                       "noise": bench.noise,
                       "values": [{"section": k[0], "workload": k[1], "metric": k[2],
                                   **bench.values[k]} for k in bench.meta],
                       "raw": bench.raw}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
