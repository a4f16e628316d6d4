#!/usr/bin/env python3
"""Compares this package's client with pyarrow 11's plasma client on the same daemon.

    python bench_clients.py [--pyarrow11 PYTHON] [--ours PYTHON] [--store-bin PATH]
                            [--rounds N] [--only NAME]

Each client runs in its own interpreter (pyarrow 11 needs Python <= 3.11 and numpy < 2);
both connect to one store started from the daemon binary ($PLASMA_STORE_BIN, else
target/release/plasma_store of this repository: ``cargo build --release``). The rounds of
the two clients alternate, so both see the same machine load. Each row gives, per client,
the best and the median round in operations per second and the median CPU time per
operation (user + system time of the client process, all its threads); then the ratios
plasma_store / pyarrow 11 of the best rates, the median ratio of back-to-back rounds
("paired", the steadiest wall-clock figure on a busy machine) and the CPU-time ratio
(above 1: plasma_store uses less CPU, a figure other load on the machine barely moves):

  create+seal 1 KiB       create(id, 1024), write it, seal(id), drop the buffer
  create_and_seal 1 KiB   one-message create_and_seal(id, data)
  get+release 1 KiB       [b] = get_buffers([id]); del b   (a sealed object, not in use)
  put+get small dict      get(put(value)) of a small dict (pickle protocol 5 here,
                          pyarrow's own serialization in pyarrow 11)
  put_raw_buffer 100 MiB  put_raw_buffer(100 MiB numpy array), default memcopy_threads (6)
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

WORKER = r"""
import importlib, json, os, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
plasma = importlib.import_module(sys.argv[1])
client = plasma.connect(sys.argv[2])
N = 2000
SMALL = 1024
rng = np.random.RandomState(int.from_bytes(os.urandom(4), "little"))
data = rng.bytes(SMALL)

def ids(n):
    return [plasma.ObjectID(rng.bytes(20)) for _ in range(n)]

def create_seal(batch):
    for object_id in batch:
        buf = client.create(object_id, SMALL)
        memoryview(buf).cast("B")[:] = data
        client.seal(object_id)
        del buf

def create_and_seal(batch):
    for object_id in batch:
        client.create_and_seal(object_id, data)

sealed = ids(N)
for object_id in sealed:
    client.create_and_seal(object_id, data)

def get_release(_):
    for object_id in sealed:
        [buf] = client.get_buffers([object_id])
        del buf

value = {"name": "row", "values": list(range(10)), "score": 0.5}
def put_get_small(batch):
    for object_id in batch:
        client.put(value, object_id)
        assert client.get(object_id)["score"] == 0.5

big = np.frombuffer(rng.bytes(100 << 20), dtype=np.uint8)
def put_big(batch):
    client.put_raw_buffer(big, batch[0])


BENCH = {
    "create+seal 1 KiB": (create_seal, N),
    "create_and_seal 1 KiB": (create_and_seal, N),
    "get+release 1 KiB": (get_release, N),
    "put+get small dict": (put_get_small, N // 4),
    "put_raw_buffer 100 MiB": (put_big, 1),
}
put_big(ids(1))  # touch the store's pages once
print(json.dumps(list(BENCH)), flush=True)
for line in sys.stdin:
    fn, ops = BENCH[line.strip()]
    batch = ids(ops)
    cpu = time.process_time()
    start = time.perf_counter()
    fn(batch)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    client.delete(batch)  # keep the store from filling up (not timed)
    print(json.dumps([ops, elapsed, cpu]), flush=True)
"""


class Worker:
    def __init__(self, python, module, socket_path, cwd):
        self.proc = subprocess.Popen([python, "-c", WORKER, module, socket_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=cwd)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{module} worker ({python}) failed to start")
        self.benchmarks = json.loads(line)

    def round(self, name):
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        ops, elapsed, cpu = json.loads(self.proc.stdout.readline())
        return ops / elapsed, cpu / ops

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pyarrow11", default=os.environ.get(
        "PLASMA_PYARROW11_PYTHON", os.path.join(REPO, ".venv", "bin", "python")),
        help="interpreter with pyarrow 11 (default: the repository's .venv)")
    ap.add_argument("--ours", default=os.path.join(HERE, ".venv", "bin", "python"),
                    help="interpreter with plasma_store installed (default: python/.venv)")
    ap.add_argument("--store-bin", default=os.environ.get(
        "PLASMA_STORE_BIN", os.path.join(REPO, "target", "release", "plasma_store")))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only this benchmark (repeatable)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="plasma-bench-")
    path = os.path.join(tmp, "plasma.sock")
    store = subprocess.Popen([args.store_bin, "-s", path, "-m", str(10 ** 9)],
                             env=dict(os.environ, RUST_LOG="warn"))
    workers = []
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            if store.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the store did not start")
            time.sleep(0.01)
        workers = [Worker(args.ours, "plasma_store", path, tmp),
                   Worker(args.pyarrow11, "pyarrow.plasma", path, tmp)]
        print(f"daemon: {args.store_bin}; {args.rounds} alternating rounds")
        print(f"{'':<23}|{'plasma_store':^29}|{'pyarrow 11':^29}|{'ratios':^22}")
        print(f"{'benchmark':<23}|{'best/s':>9}{'median/s':>10}{'cpu us':>10}|"
              f"{'best/s':>9}{'median/s':>10}{'cpu us':>10}|"
              f"{'best':>7}{'paired':>8}{'cpu':>7}")
        for name in workers[0].benchmarks:
            if args.only and name not in args.only:
                continue
            rounds = ([], [])
            for r in range(args.rounds):
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for i in order:
                    rounds[i].append(workers[i].round(name))
            rates = [[rate for rate, _ in x] for x in rounds]
            cpus = [statistics.median(cpu for _, cpu in x) * 1e6 for x in rounds]
            (ob, om), (tb, tm) = ((max(x), statistics.median(x)) for x in rates)
            paired = statistics.median(a / b for a, b in zip(*rates))
            print(f"{name:<23}|{ob:>9.1f}{om:>10.1f}{cpus[0]:>10.1f}|"
                  f"{tb:>9.1f}{tm:>10.1f}{cpus[1]:>10.1f}|"
                  f"{ob / tb:>6.2f}x{paired:>7.2f}x{cpus[1] / cpus[0]:>6.2f}x")
    finally:
        for w in workers:
            w.close()
        store.send_signal(signal.SIGTERM)
        store.wait()
        try:
            os.rmdir(tmp)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
