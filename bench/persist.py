#!/usr/bin/env python3
"""Benchmark of `--persist DIR`: what recording costs the hot path, and how long recovery takes.

    bench/persist.sh [--rounds N] [--reps N] [--n OPS] [--objects N]

(`bench/persist.sh` builds the release daemon and the Rust driver, then runs this.)

1. Hot path: the Rust driver (`examples/bench_client`) runs `create-seal` and
   `create-and-seal` of 64-byte objects against three daemons started alike (`-m 1GiB`):
   without `--persist`, with `--persist` on a tmpfs (/dev/shm), and with `--persist` on the
   disk (a directory under target/). Each round starts the three afresh (fresh directories)
   and alternates `--reps` measurements between them in a rotating order; a round's figure is
   the median of its repetitions. Reported: ops/s and daemon CPU µs per op, median and
   min-max over rounds, and the ratio to the daemon without `--persist` (paired by round).
2. Recovery: a `--persist` store on tmpfs is filled with `--objects` sealed objects (batches of
   CreateAndSeal), killed with SIGKILL, and started again `--rounds` times (killed each time):
   seconds from spawn to a socket that accepts a connection, next to the start-up of an empty
   store with the same `-m`.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


class Daemon:
    def __init__(self, exe, memory, workdir, name, extra=()):
        self.socket = os.path.join(workdir, name + ".sock")
        self.log_path = os.path.join(workdir, name + ".log")
        self.log = open(self.log_path, "wb")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [exe, "-m", str(memory), "-s", self.socket, "--no-prefault", *extra],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    def wait_socket(self, timeout=120.0):
        deadline = time.perf_counter() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited: " + self.tail())
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.socket)
                return time.perf_counter() - self.t0
            except (FileNotFoundError, ConnectionRefusedError):
                if time.perf_counter() > deadline:
                    raise RuntimeError("daemon not ready: " + self.tail())
                time.sleep(0.0002)
            finally:
                s.close()

    def tail(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        self.log.close()
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass


def daemon_cpu_s(pid):
    """CPU seconds of the process so far, summed over its threads' schedstat."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total / 1e9


def drive(client, workload, sock, pid, n, size=64, batch=None):
    cmd = [client, workload, "--socket", sock, "--pid", str(pid), "--n", str(n),
           "--size", str(size)]
    if batch:
        cmd += ["--batch", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def mm(values, f="{:,.1f}"):
    return f"{f.format(statistics.median(values))} [{f.format(min(values))}–{f.format(max(values))}]"


def hot_path(a, memory, work, modes, workloads):
    res = {(m, w): {"ops": [], "cpu": []} for m in modes for w in workloads}
    names = list(modes)
    for r in range(a.rounds):
        # The three daemons run side by side (an idle daemon costs nothing); measurements
        # alternate between them in a rotating order, so that a change in the machine's
        # load hits all three alike. A round's figure is the median of its repetitions.
        daemons = {m: Daemon(a.ours, memory, work, f"hot-{r}-{i}", modes[m](r))
                   for i, m in enumerate(names)}
        for d in daemons.values():
            d.wait_socket()
            # Untimed warm-up: the first objects fault in fresh shared memory.
            for w in workloads:
                drive(a.bench_client, w, d.socket, d.proc.pid, a.n)
        for w in workloads:
            reps = {m: {"ops": [], "cpu": []} for m in names}
            for rep in range(a.reps):
                k = (r + rep) % len(names)
                for m in names[k:] + names[:k]:
                    d = daemons[m]
                    out = drive(a.bench_client, w, d.socket, d.proc.pid, a.n)
                    reps[m]["ops"].append(out["ops"] / out["seconds"])
                    reps[m]["cpu"].append(out["cpu_ns"] / 1000 / out["ops"])
            for m in names:
                res[(m, w)]["ops"].append(statistics.median(reps[m]["ops"]))
                res[(m, w)]["cpu"].append(statistics.median(reps[m]["cpu"]))
        for d in daemons.values():
            d.kill(signal.SIGTERM)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)

    print(f"\n### `--persist`: hot path ({a.rounds} rounds of {a.reps} alternating "
          f"measurements of {a.n:,} ops per daemon, 64 B objects, Rust client; median "
          "[min–max] over rounds of each round's median)\n")
    print("| workload | daemon | ops/s | ratio to no --persist | daemon CPU µs/op | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for w in workloads:
        base = res[("no --persist", w)]
        for m in modes:
            x = res[(m, w)]
            ops_ratio = [o / b for o, b in zip(x["ops"], base["ops"])]
            cpu_ratio = [c / b for c, b in zip(x["cpu"], base["cpu"])]
            print(f"| {w} | {m} | {mm(x['ops'], '{:,.0f}')} | {mm(ops_ratio, '{:.2f}')} "
                  f"| {mm(x['cpu'], '{:.1f}')} | {mm(cpu_ratio, '{:.2f}')} |")


def recovery(a, memory, work, shm):
    rec_dir = os.path.join(shm, "recovery")
    d = Daemon(a.ours, memory, work, "fill", ["--persist", rec_dir])
    d.wait_socket()
    t = time.perf_counter()
    drive(a.bench_client, "fill", d.socket, d.proc.pid, a.objects, size=64, batch=1000)
    fill_s = time.perf_counter() - t
    d.kill()
    log_mb = os.path.getsize(os.path.join(rec_dir, "objects.log")) / 1e6
    empty, full, cpu, reported = [], [], [], []
    for r in range(a.rounds):
        e = Daemon(a.ours, memory, work, f"empty-{r}")
        empty.append(e.wait_socket())
        e.kill()
        f = Daemon(a.ours, memory, work, f"rec-{r}", ["--persist", rec_dir])
        full.append(f.wait_socket())
        cpu.append(daemon_cpu_s(f.proc.pid))
        log = f.tail()
        f.kill()
        marker = f"recovered {a.objects} objects"
        if marker not in log:
            raise RuntimeError("unexpected recovery: " + log)
        ms = int(log.split(marker)[1].split(" in ")[1].split(" ms")[0])
        reported.append(ms / 1000)
    print(f"\n### `--persist`: recovery of {a.objects:,} objects of 64 B "
          f"(log {log_mb:.0f} MB, DIR on tmpfs; filled in {fill_s:.1f} s; {a.rounds} "
          "restarts after SIGKILL; median [min–max])\n")
    print("| start-up | seconds to a ready socket | daemon CPU seconds by then |")
    print("|---|---:|---:|")
    print(f"| empty store, no --persist | {mm(empty, '{:.3f}')} | |")
    print(f"| --persist, {a.objects:,} objects recovered | {mm(full, '{:.3f}')} "
          f"| {mm(cpu, '{:.3f}')} |")
    print(f"| of which reading the log (the store's own log line) | {mm(reported, '{:.3f}')} | |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ours", required=True)
    p.add_argument("--bench-client", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=5_000, help="operations per measurement")
    p.add_argument("--reps", type=int, default=5, help="measurements per daemon per round")
    p.add_argument("--objects", type=int, default=1_000_000, help="objects for recovery")
    p.add_argument("--only", choices=["hot", "recovery"], help="run one part only")
    p.add_argument("--disk-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "..", "target", "bench-persist"))
    a = p.parse_args()
    memory = 1 << 30
    work = tempfile.mkdtemp(prefix="plasma-persist-bench-")
    shm = tempfile.mkdtemp(prefix="plasma-persist-bench-", dir="/dev/shm")
    os.makedirs(a.disk_dir, exist_ok=True)
    disk = tempfile.mkdtemp(prefix="persist-", dir=a.disk_dir)
    modes = {
        "no --persist": lambda r: [],
        "--persist on tmpfs": lambda r: ["--persist", os.path.join(shm, f"hot{r}")],
        "--persist on disk": lambda r: ["--persist", os.path.join(disk, f"hot{r}")],
    }
    workloads = ["create-seal", "create-and-seal"]
    try:
        if a.only != "recovery":
            hot_path(a, memory, work, modes, workloads)
        if a.only != "hot":
            recovery(a, memory, work, shm)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)


if __name__ == "__main__":
    main()
