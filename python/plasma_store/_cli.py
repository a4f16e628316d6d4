"""The ``plasma_store`` console script: the store daemon, run by this package's extension.

``pip install plasma-store`` puts ``plasma_store`` on PATH, with the daemon's usual flags
(``plasma_store -m 1GB -s /tmp/plasma``, ``--help``), as pyarrow's wheel did. The daemon is
the same Rust code as the repository's ``plasma_store`` binary (``plasma_store::cli::run``),
and behaves the same.

The daemon takes SIGINT and SIGTERM through a signalfd, with both blocked in its thread. A
signal sent to the process must not be delivered to another thread that leaves them
unblocked, or it would kill the process (SIGTERM) or be lost in Python's handler (SIGINT).
Importing this package imports pyarrow, which imports numpy when installed, whose OpenBLAS
starts such threads. So ``main`` does not run the daemon in this process: it replaces the
process (``exec``, same pid, for systemd and ``start_plasma_store``) with a bare interpreter
that loads only the extension module, by its path, without the package, and runs the
daemon there; that process checks that no other thread could take the signals.
"""

import os
import signal
import sys
import threading


def _threads_taking(signals):
    """Names of the other threads of this process that do not block all of ``signals``."""
    me = threading.get_native_id()
    found = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tasks:
        if tid == str(me):
            continue
        fields = {}
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
        except OSError:
            continue  # the thread has ended
        blocked = int(fields.get("SigBlk", "0"), 16)
        if any(not (blocked >> (int(s) - 1)) & 1 for s in signals):
            found.append(fields.get("Name", tid))
    return found


def run_here(ext, args):
    """Runs the daemon in this process (whose threads must block SIGINT and SIGTERM)."""
    others = _threads_taking([signal.SIGINT, signal.SIGTERM])
    if others:
        print(f"plasma_store: warning: threads {others} of this process do not block SIGINT "
              "and SIGTERM, which may then not stop the store", file=sys.stderr)
    return ext._run_store(list(args))


def main(argv=None):
    """Runs the daemon with ``argv`` (default: ``sys.argv[1:]``) in a process of its own
    (this one, replaced); see the module documentation."""
    from . import _plasma

    args = sys.argv[1:] if argv is None else list(argv)
    here = os.path.abspath(__file__)
    boot = (
        "import importlib.util, sys\n"
        "def load(name, path):\n"
        "    spec = importlib.util.spec_from_file_location(name, path)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "    return module\n"
        "ext = load('plasma_store._plasma', sys.argv[1])\n"
        "cli = load('plasma_store._cli', sys.argv[2])\n"
        "sys.exit(cli.run_here(ext, sys.argv[3:]))\n"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-I", "-c", boot, _plasma.__file__, here,
                              *args])


if __name__ == "__main__":
    sys.exit(main())
