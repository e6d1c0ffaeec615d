"""A fork server for the rule scripts: jobs start in a process that has already imported everything.

A Snakemake ``script:`` job is a new Python interpreter that imports numpy, astropy, numba (and
loads its compiled code), matplotlib, emcee ... before doing its work: 0.5-1 s per job, more than
the work of most jobs of a night (issue 22). Here the first job of a run starts, beside itself, a
*fork server*: a background process that imports what the rule scripts import once, then waits on a
Unix socket. Every later job hands itself over at its first line (:func:`continue_in_forkserver`):
the job's process sends its script, working directory, environment and its standard streams to the
server, which forks a *worker*; the worker runs the script (each job still in its own process, so
one crash never reaches another job) and the job's process waits for it and exits with its status.

* The server is keyed by everything that decides what the imported code is: the Python
  executable, the package's sources (paths, sizes and times), the site-packages folder, the
  environment variables read at import (``NUMBA_*``, ``MPL*``, ``ASTROPY*``, ``HOME`` ...), the
  user, the SLURM job and the control group (a batch system's allocation). A changed source file
  starts a new server; the old one ends when idle.
* It ends after ``BANDERSNAKE_FORKSERVER_IDLE`` seconds without a job (default 60). With every
  rule script's modules imported it holds ~300 MB, shared with its workers (copy on write).
* A job that cannot reach a server (none yet, a stale socket, any error) runs itself, as without
  the server. ``processing.fork_server: false`` in the config (or ``BANDERSNAKE_FORKSERVER=0``)
  turns it off; it is also off inside containers.
* A worker killed or crashing ends its job with an error; a job cancelled by Snakemake (its
  process killed) takes its worker down with it (the worker watches the connection).
* Snakemake's ``benchmark:`` records measure the job's own process, which only waits: the worker's
  CPU time and peak memory are written at the end of the job's log (``forkserver:`` line).
* A worker has the server's resource limits, priority and BLAS thread pool (sized by the
  environment of the job that started the server); numba's threads are set per job from its
  ``threads``. On SLURM each allocation has its own server (the key holds ``SLURM_JOB_ID``).

Usage (Snakemake does the first; the second is what :func:`start_server` runs)::

    from bandersnake.forkserver import continue_in_forkserver
    continue_in_forkserver()                 # first line of a rule script

    python -m bandersnake.forkserver serve SOCKET
"""

import ast
import hashlib
import os
import pickle
import socket
import struct
import sys
from pathlib import Path

SWITCH = "BANDERSNAKE_FORKSERVER"
IDLE_ENV = "BANDERSNAKE_FORKSERVER_IDLE"
DIR_ENV = "BANDERSNAKE_FORKSERVER_DIR"
DEFAULT_IDLE_S = 60.0
PACKAGE_DIR = Path(__file__).resolve().parent
SCRIPTS_DIR = PACKAGE_DIR.parents[0] / "scripts"
# Environment read by the libraries at import (thread pools, caches, backends): a server imported
# under other values is another server.
# (Not the BLAS thread counts Snakemake sets per job from its threads: one server serves both.)
KEY_ENV_PREFIXES = ("NUMBA_", "MPL", "ASTROPY", "XDG_", "PYTHON", "HOME", "SLURM_JOB_ID")
# Imported by the server first, whether or not a core is free: what the masters' jobs import (the
# first jobs after the inventory, which starts the server).
FIRST_SCRIPTS = ("master_bias", "master_dark", "master_flat", "bad_pixel_map")
# The order of the background imports: the night's chain first.
SCRIPT_ORDER = FIRST_SCRIPTS + ("photometry_streaming", "analysis_differential", "transit_fit", "analysis_plots",
                                "transit_plots", "analysis_exports", "night_summary", "publish")
# What a rule script's job imports inside the stage functions (not at the script's top), imported
# by the server before it forks that script's worker. Only a hint: a worker imports what is missing.
_MASTERS = ("numba", "bandersnake.calibration.combine", "bandersnake.ingest.inventory", "astropy.io.misc.yaml")
_FIT = ("emcee", "batman", "celerite2", "scipy.optimize", "yaml", "astropy.io.misc.yaml",
        "bandersnake.transitfit.fit", "bandersnake.transitfit.night", "bandersnake.analysis.transit")
_FIGURES = ("matplotlib.pyplot", "matplotlib.backends.backend_agg")
DEEP_IMPORTS = {
    "inventory": ("astropy.time",),
    "master_bias": _MASTERS,
    "master_dark": _MASTERS,
    "master_flat": _MASTERS,
    "photometry_streaming": ("numba", "astropy.time", "astropy.coordinates"),
    "analysis_differential": ("astropy.time", "astropy.coordinates", "scipy.special"),
    "analysis_plots": _FIGURES,
    "transit_fit": _FIT,
    "transit_plots": _FIGURES + ("bandersnake.transitfit.plots",),
    "joint_fit": _FIT + _FIGURES + ("bandersnake.transitfit.plots",),
    "night_summary": ("yaml", "astropy.io.misc.yaml"),
}
MESSAGE_MAX = 1 << 24
_in_worker = False


# ---------------------------------------------------------------------------------------- client
def enabled():
    """Whether jobs hand over to a fork server here (switch on, not inside a container)."""
    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not (hasattr(os, "fork") and hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX")):
        return False
    return not any(k in os.environ for k in ("SINGULARITY_CONTAINER", "APPTAINER_CONTAINER"))


def server_key():
    """Hex digest of what decides the imported code and its set-up (see the module docstring)."""
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0{os.getuid()}\0{PACKAGE_DIR}\0".encode())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for p in sys.path:      # a package installed or removed changes its folder's time
        if p.endswith("site-packages") and os.path.isdir(p):
            h.update(f"{p}\0{os.stat(p).st_mtime_ns}\0".encode())
    for name in sorted(os.environ):
        if name.startswith(KEY_ENV_PREFIXES):
            h.update(f"{name}={os.environ[name]}\0".encode())
    # A batch system's allocation (SLURM, PBS, LSF ...) is a control group: a job never runs in a
    # server another allocation started (that server dies, and its CPUs are not this job's)
    try:
        h.update(Path("/proc/self/cgroup").read_bytes())
    except OSError:
        pass
    return h.hexdigest()[:20]


def socket_dir():
    """Private folder of the user's sockets (mode 0700): ``$BANDERSNAKE_FORKSERVER_DIR``, else
    ``$XDG_RUNTIME_DIR/bandersnake``, else ``/tmp/bandersnake-<uid>``."""
    base = os.environ.get(DIR_ENV)
    if not base:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = os.path.join(runtime, "bandersnake") if runtime and os.path.isdir(runtime) \
            else f"/tmp/bandersnake-{os.getuid()}"
    os.makedirs(base, mode=0o700, exist_ok=True)
    st = os.stat(base)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{base}: not a private folder of this user")
    return base


def _send(sock, obj, fds=()):
    data = pickle.dumps(obj)
    header = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(sock, [header + data], list(fds))
    else:
        sock.sendall(header + data)


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return None
        buf += part
    return buf


def _recv(sock):
    header = _recv_exact(sock, 4)
    if header is None:
        return None
    n = struct.unpack("!I", header)[0]
    if n > MESSAGE_MAX:
        raise ValueError("fork server message too long")
    data = _recv_exact(sock, n)
    return None if data is None else pickle.loads(data)


def continue_in_forkserver():
    """Run the rest of the running rule script in a worker forked from the fork server, then exit
    with its status; return at once (the script goes on here) in the worker itself, when the
    server is off, or when no server answers (one is then started for the next jobs).

    The worker runs the file Python was started with (``sys.argv[0]``: Snakemake's copy of the
    rule script behind its preamble, which sets ``snakemake`` again).
    """
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if _in_worker or not enabled() or not (script.endswith(".py") and os.path.isfile(script)):
        return
    try:
        path = os.path.join(socket_dir(), f"{server_key()}.sock")
    except Exception:      # noqa: BLE001 - never fail a job for the sake of speed
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        if not _server_starting(path):
            start_server(path)
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    request = {"script": script, "cwd": os.getcwd(), "env": dict(os.environ), "argv": list(sys.argv),
               "umask": _umask()}
    try:
        _send(sock, request, fds=(0, 1, 2))
        started = _recv(sock)
    except (OSError, EOFError, pickle.UnpicklingError):
        started = None
    if started is None:
        # no worker took the job (the server was ending): run it here
        sock.close()
        return
    try:
        reply = _recv(sock)
    except (OSError, EOFError, pickle.UnpicklingError):
        reply = None
    if reply is None:
        print("bandersnake fork server: the job's worker ended without a status (killed, or crashed); "
              "see the rule's log", file=sys.stderr)
        raise SystemExit(1)
    raise SystemExit(reply["status"])


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _server_starting(path):
    """Whether a server holds the lock of ``path`` (it is importing, the socket opens soon)."""
    import fcntl

    try:
        with open(path[:-len(".sock")] + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
    except OSError:
        return True


def start_server(path):
    """Start a fork server on ``path`` in the background."""
    import subprocess

    log = open(path[:-len(".sock")] + ".log", "ab")
    try:
        subprocess.Popen([sys.executable, "-m", "bandersnake.forkserver", "serve", path],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                         start_new_session=True, cwd=str(PACKAGE_DIR.parent))
    except OSError:
        pass
    finally:
        log.close()


# ---------------------------------------------------------------------------------------- server
def script_imports(path):
    """Modules a script imports at its top level, with the names taken from each.

    Returns
    -------
    list of (str, tuple of str)
        Module name and the names imported from it (lazy entry points are resolved by getattr).
    """
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return []
    out = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            out += [(a.name, ()) for a in node.names]
    return out


def script_name(path):
    """Rule script name of Snakemake's copy ``.snakemake/scripts/tmpXXXX.<name>.py``."""
    return Path(path).stem.rsplit(".", 1)[-1]


class _Preloader:
    """Imports done once in the server: on demand (before forking a script's worker), and in
    the background, one module at a time, while a core is free (the night's chain first)."""

    def __init__(self):
        self.done = set()
        order = {name: i for i, name in enumerate(SCRIPT_ORDER)}
        scripts = sorted(SCRIPTS_DIR.glob("*.py"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
        self.pending = [item for path in scripts for item in self._wanted(path)]
        self.first = {item for name in FIRST_SCRIPTS for item in self._wanted(SCRIPTS_DIR / f"{name}.py")}

    @staticmethod
    def _wanted(path):
        return script_imports(path) + [(m, ()) for m in DEEP_IMPORTS.get(script_name(path), ())]

    def _load(self, module, names):
        if (module, names) in self.done:
            return
        self.done.add((module, names))
        _import(module, names)
        if "numba" in sys.modules and "numba-target" not in self.done:
            self.done.add("numba-target")
            _prepare_numba()

    def script(self, path):
        """Import what the script at ``path`` will import (top level and :data:`DEEP_IMPORTS`)."""
        for module, names in self._wanted(path):
            self._load(module, names)

    def urgent(self):
        """Whether the next module of the plan is one of the :data:`FIRST_SCRIPTS`' imports."""
        return bool(self.pending) and self.pending[0] in self.first

    def next(self):
        """Import the next module of the plan not imported yet; False when none is left."""
        while self.pending:
            item = self.pending.pop(0)
            if item not in self.done:
                self._load(*item)
                return True
        return False


def _spare_core(cpus):
    """Whether fewer threads than ``cpus`` (besides this process) are runnable right now
    (``/proc/loadavg``: any process of the machine counts, not only this server's workers)."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return False
    return running - 1 < cpus


def _import(module, names):
    import importlib

    try:
        mod = importlib.import_module(module)
        for name in names:
            getattr(mod, name)
    except Exception as err:      # noqa: BLE001 - the worker meets (and reports) it again
        print(f"preload {module}: {err!r}", file=sys.stderr, flush=True)


def _prepare_numba():
    """Initialise numba's CPU target (LLVM, the registries, the BLAS bindings: ~0.35 s at each
    process's first compiled call) with a tiny function; no parallel code runs, so no thread pool
    exists when workers are forked."""
    try:
        import numba

        numba.njit(lambda x: x + 1)(1)
    except Exception as err:      # noqa: BLE001
        print(f"preload numba: {err!r}", file=sys.stderr, flush=True)


def _receive_job(conn):
    """The job's request and its three standard streams (file descriptors)."""
    conn.settimeout(10.0)
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(msg) < 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("incomplete request")
    try:
        n = struct.unpack("!I", msg[:4])[0]
        data = msg[4:]
        if len(data) < n:
            data += _recv_exact(conn, n - len(data)) or b""
        conn.settimeout(None)
        return pickle.loads(data), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def serve(path, idle_s=None):
    """Listen on ``path`` and fork a worker per job until idle for ``idle_s`` seconds.

    Modules are imported in the server, once: before the worker of the first script needing
    them is forked, and in the background between jobs (the socket is open at once): the
    masters' first, then those of every rule script while a core is free. One server per path:
    a second one started at the same time finds the lock taken and ends.
    """
    import fcntl
    import select
    import signal
    import time

    idle_s = float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)) if idle_s is None else idle_s
    lock = open(path[:-len(".sock")] + ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return
    os.environ.setdefault("MPLBACKEND", "Agg")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)      # workers are reaped by the kernel
    preload = _Preloader()
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    Path(path[:-len(".sock")] + ".pid").write_text(f"{os.getpid()}\n")

    def take_job():
        conn, _ = server.accept()
        try:
            request, fds = _receive_job(conn)
        except (OSError, ValueError, pickle.PickleError, EOFError):
            conn.close()
            return
        preload.script(request["script"])
        if os.fork() == 0:
            server.close()
            lock.close()
            _worker(conn, request, fds)          # never returns
        for fd in fds:
            os.close(fd)
        conn.close()

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            # the masters' modules at once (their jobs come first), the others on a free core
            background = bool(preload.pending) and (preload.urgent() or _spare_core(cpus))
            if select.select([server], [], [], 0 if background else 0.5)[0]:
                take_job()
                last = time.monotonic()
            elif background:
                preload.next()
        # Ending: no new connections, then the ones already queued are served.
        try:
            os.unlink(path)
        except OSError:
            pass
        while select.select([server], [], [], 0)[0]:
            take_job()
    finally:
        server.close()
        _remove_files(path)


def _remove_files(path):
    """The ending server's pid and lock files, and its log when empty (a log with errors stays)."""
    stem = path[:-len(".sock")]
    for suffix in (".pid", ".lock", ".log"):
        try:
            if suffix != ".log" or os.path.getsize(stem + suffix) == 0:
                os.unlink(stem + suffix)
        except OSError:
            pass


def _watch_client(conn):
    """Kill the worker's process group when the job's process goes away before the worker ends."""
    import signal
    import threading

    def watch():
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        if not _finished.is_set():
            os.killpg(os.getpgid(0), signal.SIGKILL)

    _finished = threading.Event()
    threading.Thread(target=watch, daemon=True).start()
    return _finished


def _worker(conn, request, fds):
    """Forked worker: take over the job's streams, folder and environment, run its script, reply
    with the status and exit."""
    import builtins
    import resource
    import signal
    import tempfile
    import traceback

    global _in_worker
    _in_worker = True
    status = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setpgid(0, 0)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.umask(request["umask"])
        tempfile.tempdir = None      # from the job's TMPDIR, not the server's
        sys.argv = request["argv"]
        _send(conn, {"worker": os.getpid()})
        finished = _watch_client(conn)
        namespace = {"__name__": "__main__", "__file__": request["script"], "__builtins__": builtins}
        preloaded = set(sys.modules)
        try:
            code = compile(Path(request["script"]).read_bytes(), request["script"], "exec")
            exec(code, namespace)
            status = 0
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if stop.code is not None and not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
        except BaseException:      # noqa: BLE001 - reported like an uncaught exception
            traceback.print_exc()
            status = 1
        finished.set()
        sys.stdout.flush()
        sys.stderr.flush()
        _log_usage(namespace, resource, set(sys.modules) - preloaded)
        _send(conn, {"status": status})
    except BaseException:      # noqa: BLE001
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except Exception:      # noqa: BLE001
            pass
    finally:
        os._exit(status if isinstance(status, int) else 1)


def _log_usage(namespace, resource, imported):
    """Append the worker's CPU time and peak memory to the job's log (the ``benchmark:`` record
    sees only the waiting job process), and the packages it had to import itself (not preloaded)."""
    smk = namespace.get("snakemake")
    logs = list(getattr(smk, "log", []) or [])
    if not logs:
        return
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    rss_mb = max(own.ru_maxrss, kids.ru_maxrss) / 1024.0
    try:
        with open(logs[0], "a") as fh:
            # BANDERSNAKE_FORKSERVER_DEBUG=1: every module (to tune DEEP_IMPORTS), else the packages
            depth = None if os.environ.get("BANDERSNAKE_FORKSERVER_DEBUG") else 1
            packages = sorted({".".join(m.split(".")[:depth]) for m in imported})
            fh.write(f"forkserver: worker {os.getpid()}: {cpu:.2f} CPU-s (with its child processes), "
                     f"max RSS {rss_mb:.0f} MB; imported {len(imported)} modules itself "
                     f"({', '.join(packages[:None if depth is None else 12]) or 'none'})\n")
    except OSError:
        pass


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a fork server on SOCKET (what jobs start by themselves)")
    s.add_argument("socket")
    s.add_argument("--idle", type=float, default=None, help=f"seconds without a job before it ends "
                   f"(default ${IDLE_ENV} or {DEFAULT_IDLE_S:g})")
    args = ap.parse_args(argv)
    serve(args.socket, args.idle)


if __name__ == "__main__":
    # run as the package's module, not as a second copy named __main__: workers check its flag
    from bandersnake.forkserver import main as _main

    _main()
