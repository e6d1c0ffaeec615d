"""The fork server of the rule scripts (bandersnake.forkserver, issue 22): a job handed over runs in
a worker forked from a warm server, with its streams, folder, environment and exit status; a
cancelled job takes its worker down; the switch turns it off; a changed source is another server."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT

from bandersnake import forkserver

SCRIPT = """
import os, sys, time
from bandersnake.forkserver import continue_in_forkserver
continue_in_forkserver()
print("parent", os.getppid(), "runner", os.getpid(), "cwd", os.getcwd(), "var", os.environ.get("JOB_VAR"), flush=True)
print("to stderr", file=sys.stderr, flush=True)
action = os.environ.get("JOB_ACTION", "")
if action == "exit3":
    sys.exit(3)
if action == "raise":
    raise RuntimeError("a job's own failure")
if action == "sleep":
    open(os.environ["JOB_PIDFILE"], "w").write(str(os.getpid()))
    time.sleep(60)
"""


@pytest.fixture
def server_env():
    """A private socket folder (short path: AF_UNIX paths are limited to ~107 bytes) and a short
    idle time; the servers started there are stopped afterwards."""
    folder = tempfile.mkdtemp(prefix="bsfs", dir="/tmp")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow"), BANDERSNAKE_FORKSERVER_DIR=folder,
               BANDERSNAKE_FORKSERVER_IDLE="20")
    env.pop("BANDERSNAKE_FORKSERVER", None)
    yield env
    for pid_file in Path(folder).glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    shutil.rmtree(folder, ignore_errors=True)


def _job(tmp_path, env, **extra):
    """Run the job script once (as Snakemake runs a rule script); return the CompletedProcess with
    the job process's pid as ``pid``."""
    script = tmp_path / "tmpjob.test_job.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=dict(env, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid
    return done


def _wait_for_server(env, timeout=30.0):
    folder = Path(env["BANDERSNAKE_FORKSERVER_DIR"])
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if list(folder.glob("*.sock")):
            return
        time.sleep(0.1)
    raise AssertionError(f"no fork server socket in {folder} after {timeout} s: "
                         + "".join(p.read_text() for p in folder.glob("*.log")))


def _fields(stdout):
    words = stdout.split()
    return {words[i]: words[i + 1] for i in range(0, 8, 2)}


def test_job_runs_in_a_forked_worker_with_its_streams_folder_and_status(tmp_path, server_env):
    first = _job(tmp_path, server_env, JOB_VAR="one")
    assert first.returncode == 0, first.stderr
    f = _fields(first.stdout)
    # no server yet: the job ran itself and started one
    assert int(f["runner"]) == first.pid
    _wait_for_server(server_env)

    second = _job(tmp_path, server_env, JOB_VAR="two")
    assert second.returncode == 0, second.stderr
    f = _fields(second.stdout)
    assert int(f["runner"]) != second.pid, "the job was not handed over"
    assert int(f["parent"]) != second.pid      # a child of the server, not of the job
    # the worker works in the job's folder, with the job's environment and standard streams
    assert f["cwd"] == str(tmp_path) and f["var"] == "two"
    assert "to stderr" in second.stderr

    assert _job(tmp_path, server_env, JOB_ACTION="exit3").returncode == 3
    failed = _job(tmp_path, server_env, JOB_ACTION="raise")
    assert failed.returncode == 1
    assert "RuntimeError: a job's own failure" in failed.stderr


def test_a_cancelled_job_takes_its_worker_down(tmp_path, server_env):
    _job(tmp_path, server_env)
    _wait_for_server(server_env)
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "tmpjob.test_job.py"
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                            env=dict(server_env, JOB_ACTION="sleep", JOB_PIDFILE=str(pid_file)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < end:
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    assert worker != proc.pid
    proc.send_signal(signal.SIGTERM)      # what Snakemake does to a cancelled job
    proc.wait(timeout=10)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"worker {worker} still runs after its job was killed")


def test_a_job_no_worker_took_runs_itself(tmp_path, server_env):
    """A server that ends while a job connects (its socket closed unanswered) must not fail the job."""
    import socket
    import threading

    env = dict(server_env)
    script = tmp_path / "tmpjob.test_job.py"
    script.write_text(SCRIPT)
    key = subprocess.run([sys.executable, "-c", "from bandersnake import forkserver as f; print(f.server_key())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fake.bind(str(Path(env["BANDERSNAKE_FORKSERVER_DIR"]) / f"{key}.sock"))
    fake.listen(4)

    called = threading.Event()

    def hang_up():
        conn, _ = fake.accept()
        conn.recv(1 << 16)
        called.set()
        conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    job = _job(tmp_path, env, BANDERSNAKE_FORKSERVER_IDLE="1")
    fake.close()
    assert called.is_set(), "the job did not reach the (fake) server"
    assert job.returncode == 0, job.stderr
    assert int(_fields(job.stdout)["runner"]) == job.pid


def test_switch_off_runs_the_job_itself(tmp_path, server_env):
    _job(tmp_path, server_env)
    _wait_for_server(server_env)
    off = _job(tmp_path, server_env, BANDERSNAKE_FORKSERVER="0")
    assert off.returncode == 0 and int(_fields(off.stdout)["runner"]) == off.pid


def test_server_key_follows_sources_and_import_environment(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("x = 1\n")
    monkeypatch.setattr(forkserver, "PACKAGE_DIR", pkg)
    key = forkserver.server_key()
    assert forkserver.server_key() == key
    # Snakemake sets the BLAS thread counts per job: one server serves jobs of any thread count
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert forkserver.server_key() == key
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert forkserver.server_key() != key
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    (pkg / "mod.py").write_text("x = 22\n")      # an edited source: the old server's code is stale
    assert forkserver.server_key() != key


def test_preload_covers_the_night_scripts():
    """Every module a rule script imports at its top is importable by name (a renamed entry point
    would otherwise only show as a slower job)."""
    import importlib

    for script in sorted(forkserver.SCRIPTS_DIR.glob("*.py")):
        for module, names in forkserver.script_imports(script):
            mod = importlib.import_module(module)
            for name in names:
                assert hasattr(mod, name), f"{script.name}: {module}.{name}"
    for modules in forkserver.DEEP_IMPORTS.values():
        for module in modules:
            assert importlib.util.find_spec(module) is not None, module
