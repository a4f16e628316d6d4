"""One ``pip install`` gives the client and the daemon: the package's wheel, installed into a
fresh venv, puts a working ``plasma_store`` command in that venv, and
``plasma_store.start_plasma_store()`` works with PATH holding only the venv's bin directory
and no PLASMA_STORE_BIN.

The wheel is the one ``run-tests.sh`` builds once (``$PLASMA_WHEEL``); without it these tests
are skipped (building a wheel here would take minutes).
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

WHEEL = os.environ.get("PLASMA_WHEEL")

pytestmark = pytest.mark.skipif(
    not WHEEL, reason="PLASMA_WHEEL is not set (python/run-tests.sh builds the wheel)")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A new venv with only the wheel (and what it depends on) installed."""
    root = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLASMA_")}
    subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", WHEEL], check=True, env=env)
    return root


def bare_env(venv):
    """PATH is the venv's bin and nothing else; no PLASMA_* variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PLASMA_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = str(venv / "bin")
    env["RUST_LOG"] = "info"  # the tests read the daemon's log
    return env


def test_the_plasma_store_command_is_on_the_venvs_path(venv):
    env = bare_env(venv)
    out = subprocess.run(["plasma_store", "--version"], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("plasma_store "), out.stdout
    helped = subprocess.run(["plasma_store", "--help"], env=env, capture_output=True,
                            text=True, check=True)
    assert "-m BYTES" in helped.stdout
    bad = subprocess.run(["plasma_store", "--bogus"], env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "unknown flag" in bad.stderr


def serve_then_signal(venv, tmp_path, sig):
    """Starts the command, waits until it serves, sends ``sig``; checks a clean stop."""
    sock = tmp_path / "plasma.sock"
    proc = subprocess.Popen(["plasma_store", "-m", "1000000", "-s", str(sock)],
                            env=bare_env(venv), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                break
            except OSError:
                assert time.monotonic() < deadline, "the store did not start"
                time.sleep(0.01)
        # The daemon runs in the process that was started (exec, same pid), and no thread
        # of it could take the signal away from the daemon's signalfd.
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            with open(f"/proc/{proc.pid}/task/{task}/status") as f:
                blocked = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
            assert blocked & (1 << (signal.SIGINT - 1)) and blocked & (1 << (signal.SIGTERM - 1))
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert f"{signal.Signals(sig).name} received, shutting down" in err, err
        assert "warning" not in err, err
        assert not sock.exists(), "the store removes its socket when it stops"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_command_serves_and_stops_cleanly_on_a_signal(venv, tmp_path, sig):
    serve_then_signal(venv, tmp_path, sig)


START_AND_USE = """
import plasma_store as plasma
with plasma.start_plasma_store(10**7) as (path, proc):
    client = plasma.connect(path)
    oid = client.put(b"installed")
    assert client.get(oid) == b"installed"
    print("ok", proc.args[0])
"""


def test_start_plasma_store_works_with_nothing_else(venv, tmp_path):
    out = subprocess.run([str(venv / "bin" / "python"), "-c", START_AND_USE],
                         env=bare_env(venv), cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", str(venv / "bin" / "plasma_store")]


def test_start_plasma_store_finds_the_command_without_it_on_path(venv, tmp_path):
    env = bare_env(venv)
    env["PATH"] = "/nonexistent"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", START_AND_USE],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", str(venv / "bin" / "plasma_store")]


def test_signals_still_stop_it_when_numpy_starts_threads(venv, tmp_path):
    # pyarrow imports numpy when it is installed, and numpy's OpenBLAS starts threads that
    # block no signal; the command must not run the daemon among them. (Last in this
    # module: the venv is no longer bare afterwards.)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", "numpy"], check=True)
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import os, plasma_store; print(len(os.listdir('/proc/self/task')))"],
        env=bare_env(venv), capture_output=True, text=True, check=True)
    assert int(probe.stdout) > 2, "numpy should have started threads"
    serve_then_signal(venv, tmp_path, signal.SIGTERM)
