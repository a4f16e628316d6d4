#!/usr/bin/env python3
"""Large puts through the two Python clients, on our daemon (issue 11, point 4).

    bench/first_touch.py --ours-python PY --ours-path DIR --pyarrow11 PY
                         [--store-bin PATH] [--rounds N] [--thp-dir DIR] [--gib N]

Rows, each round alternating the clients so both see the same machine load:

  fresh put      put_raw_buffer of 1 GiB into a fresh daemon (one per measurement): our Python
                 client (MADV_POPULATE_WRITE before the copy, one-pass copy+digest) against
                 pyarrow 11's put_raw_buffer. "warmed": the daemon's background warm-up has
                 made the segment resident, the client maps its pages for the first time;
                 "--no-prefault": nothing is resident yet.
  fresh put, -d  the same with -d DIR on a tmpfs mounted huge=always (--thp-dir), when given,
                 and pyarrow 11 on that mount against pyarrow 11 on the default memfd.
  touched put    put_raw_buffer of 1 GiB into memory an earlier object of the same size used
                 (our client), against np.copyto of 1 GiB into an already touched array in the
                 same process.

Prints one markdown table: per row the medians, the ratio of medians, and min-max over rounds.
Only put_raw_buffer is timed (the source array is made and touched first).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FRESH = r"""
import importlib, json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
plasma = importlib.import_module(sys.argv[1])
client = plasma.connect(sys.argv[2])
src = np.ones(int(sys.argv[3]), dtype=np.uint8)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c, start = cpu(), time.perf_counter()
client.put_raw_buffer(src)
print(json.dumps([time.perf_counter() - start, cpu() - c]))
"""

TOUCHED = r"""
import json, sys, time
import numpy as np
import plasma_store as plasma
client = plasma.connect(sys.argv[1])
n, rounds = int(sys.argv[2]), int(sys.argv[3])
src = np.ones(n, dtype=np.uint8)
dst = np.zeros(n, dtype=np.uint8)
dst[:] = 2
oid = client.put_raw_buffer(src)  # touches the store's memory and this client's mapping
client.delete([oid])
out = []
for _ in range(rounds):
    start = time.perf_counter()
    oid = client.put_raw_buffer(src)
    put = time.perf_counter() - start
    client.delete([oid])
    start = time.perf_counter()
    np.copyto(dst, src)
    copy = time.perf_counter() - start
    out.append([put, copy])
print(json.dumps(out))
"""


class Daemon:
    """A daemon; with `warm`, started with its background warm-up and waited for until its
    memory is resident (its debug line says so; at most 60 s)."""

    def __init__(self, store_bin, args, warm=False):
        self.tmp = tempfile.mkdtemp(prefix="plasma-ft-")
        self.sock = os.path.join(self.tmp, "sock")
        self.log = os.path.join(self.tmp, "log")
        level = "plasma_store::warmup=debug,warn" if warm else "warn"
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen([store_bin, "-s", self.sock, *args], stderr=f,
                                         env=dict(os.environ, RUST_LOG=level))
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the store did not start")
            time.sleep(0.005)
        deadline = time.monotonic() + 60
        while warm and time.monotonic() < deadline:
            with open(self.log) as f:
                if "shared memory is resident" in f.read():
                    break
            time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        os.unlink(self.log)
        os.rmdir(self.tmp)


def fresh_put(store_bin, python, module, env, size, extra, warm):
    args = ["-m", str(size + (256 << 20)), *extra]
    d = Daemon(store_bin, args if warm else args + ["--no-prefault"], warm)
    try:
        out = subprocess.run([python, "-c", FRESH, module, d.sock, str(size)], env=env,
                             check=True, capture_output=True, text=True, cwd="/")
        wall, cpu = json.loads(out.stdout)
        CPU.setdefault(module, []).append(cpu)
        return size / wall / 1e9
    finally:
        d.stop()


# Client CPU seconds (user + system, all threads) per put, by client module, for the row
# being measured.
CPU = {}


def row(name, ours, theirs):
    mo, mt = statistics.median(ours), statistics.median(theirs)
    cpu = ""
    if len(CPU) == 2:
        co, ct = (statistics.median(CPU[m]) for m in ("plasma_store", "pyarrow.plasma"))
        cpu = f" client CPU s/put {co:.2f} vs {ct:.2f} ({ct / co:.2f}×)"
    CPU.clear()
    return (f"| {name} | {mo:.2f} | {mt:.2f} | {mo / mt:.2f} | "
            f"{min(ours):.2f}–{max(ours):.2f} | {min(theirs):.2f}–{max(theirs):.2f} |{cpu} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours-python", required=True, help="interpreter for our client")
    ap.add_argument("--ours-path", default="", help="PYTHONPATH holding plasma_store")
    ap.add_argument("--pyarrow11", default=os.path.join(REPO, ".venv", "bin", "python"))
    ap.add_argument("--store-bin", default=os.path.join(REPO, "target", "release",
                                                        "plasma_store"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--thp-dir", help="a tmpfs mounted with huge=always, for -d")
    ap.add_argument("--gib", type=float, default=1.0)
    args = ap.parse_args()
    size = int(args.gib * (1 << 30))
    ours_env = dict(os.environ, PYTHONPATH=args.ours_path)
    theirs_env = dict(os.environ)
    theirs_env.pop("PYTHONPATH", None)

    lines = ["| row | ours GB/s (median) | other GB/s (median) | ratio | ours min–max | "
             "other min–max | note |", "|---|---:|---:|---:|---:|---:|---|"]
    variants = [
        ("fresh 1 GiB put_raw_buffer, memfd resident (warmed): ours vs pyarrow 11", [], True),
        ("fresh 1 GiB put_raw_buffer, memfd, --no-prefault: ours vs pyarrow 11", [], False),
    ]
    if args.thp_dir:
        variants.append(("fresh 1 GiB put_raw_buffer, -d tmpfs huge=always (warmed): ours vs "
                         "pyarrow 11", ["-d", args.thp_dir], True))
    for name, extra, warm in variants:
        CPU.clear()
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(fresh_put(args.store_bin, args.ours_python, "plasma_store", ours_env,
                                  size, extra, warm))
            theirs.append(fresh_put(args.store_bin, args.pyarrow11, "pyarrow.plasma",
                                    theirs_env, size, extra, warm))
        lines.append(row(name, ours, theirs))
    if args.thp_dir:
        # The same client (pyarrow 11) on the two kinds of memory, both warmed.
        CPU.clear()
        memfd, thp = [], []
        for _ in range(args.rounds):
            memfd.append(fresh_put(args.store_bin, args.pyarrow11, "pyarrow.plasma",
                                   theirs_env, size, [], True))
            thp.append(fresh_put(args.store_bin, args.pyarrow11, "pyarrow.plasma",
                                 theirs_env, size, ["-d", args.thp_dir], True))
        lines.append(row("fresh 1 GiB put, pyarrow 11: -d tmpfs huge=always vs memfd "
                         "(both warmed)", thp, memfd))

    d = Daemon(args.store_bin, ["-m", str(size + (256 << 20))])
    try:
        out = subprocess.run([args.ours_python, "-c", TOUCHED, d.sock, str(size),
                              str(args.rounds)], env=ours_env, check=True,
                             capture_output=True, text=True, cwd="/")
    finally:
        d.stop()
    pairs = json.loads(out.stdout)
    lines.append(row("touched 1 GiB: our put_raw_buffer vs np.copyto", [size / p / 1e9
                     for p, _ in pairs], [size / c / 1e9 for _, c in pairs]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
