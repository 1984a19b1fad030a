"""A warm process per node that forks one fresh child per rank of each trial.

Ray Train starts new worker processes for every trial, and importing torch,
transformers and DeepSpeed in each cost about 9 s of CPU on 2 cores. The
zygote imports them once; each rank of each trial then runs in a child
forked from it, warm within milliseconds.

Isolation: the zygote is a plain Python process (no Ray threads, no CUDA
context, no variant code). A variant's recipe is imported only in its child,
which exits after one run, so nothing a variant does to its process (global
state, monkeypatches, leaked threads) reaches the next variant or the
zygote. A child whose Ray Train worker goes away (a stopped trial) notices
its socket closing and exits.

Protocol, over a Unix socket: the client sends one JSON line
`{"op": "call", "fn": "module:function", "kwargs": {...}, "env": {...}, "log": path}`;
the child calls `function(report, **kwargs)` and answers with JSON lines
`{"pid": n}`, `{"report": {...}}`..., then `{"result": value}` or
`{"error": "one line"}`, and closes. The sealed evaluation runs the same
way, so neither the trial's process nor the zygote ever loads a variant.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

PRELOAD = ("numpy", "yaml", "torch", "torch.distributed", "transformers",
           "transformers.models.gpt2.modeling_gpt2", "deepspeed")
IDLE_EXIT_S = 600.0  # a zygote with no request and no child for this long exits
START_TIMEOUT_S = 420.0  # the first start imports everything and may build the CPU op (minutes on a loaded node)


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Returns a hash of evolve's own source: a zygote never serves stale code."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


def socket_path() -> Path:
    """Returns this node's zygote socket for this interpreter, accelerator and code."""
    key = f"{sys.executable}|{os.environ.get('DS_ACCELERATOR', '')}|{_code_digest()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(f"/tmp/evolve-zygote-{os.getuid()}-{digest}.sock")


# -- server ----------------------------------------------------------------------
def serve(path: Path) -> None:
    """Imports the heavy modules, then forks a child per request until idle."""
    for name in PRELOAD:
        importlib.import_module(name)
    import evolve.harness  # noqa: F401  (the children run it)
    from evolve.ops import load_cpu_comm_op

    if os.environ.get("DS_ACCELERATOR") == "cpu":
        load_cpu_comm_op()  # the children inherit it loaded, and never wait on torch's build lock

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp))
    server.listen(64)
    os.replace(tmp, path)  # clients only ever see a socket that listens
    inode = os.stat(path).st_ino
    server.settimeout(1.0)
    children: set[int] = set()
    last_busy = time.monotonic()
    try:
        while True:
            for pid in list(children):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    children.discard(pid)
            if children:
                last_busy = time.monotonic()
            try:
                conn, _ = server.accept()
            except socket.timeout:
                if time.monotonic() - last_busy > IDLE_EXIT_S:
                    return
                continue
            last_busy = time.monotonic()
            conn.settimeout(10.0)
            try:
                request = json.loads(conn.makefile("r").readline() or "{}")
            except (OSError, ValueError):
                conn.close()
                continue
            op = request.get("op")
            if op == "ping":
                conn.sendall(b'{"pong": %d}\n' % os.getpid())
                conn.close()
                continue
            if op == "shutdown":
                conn.close()
                return
            pid = os.fork()
            if pid == 0:
                server.close()
                os._exit(_child(conn, request))
            children.add(pid)
            conn.close()
    finally:
        server.close()
        try:
            if os.stat(path).st_ino == inode:  # not a newer zygote's socket
                path.unlink()
        except FileNotFoundError:
            pass


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _child(conn: socket.socket, request: dict) -> int:
    """Runs one rank of one trial; returns the exit status."""
    os.setsid()
    conn.settimeout(None)
    os.environ.update(request.get("env", {}))
    log = request.get("log")
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)

    def watch():  # the client never writes again: EOF means it is gone
        try:
            conn.recv(1)
        except OSError:
            pass
        os._exit(3)

    try:
        _send(conn, {"pid": os.getpid()})
        if request.get("sandbox"):  # returns in a sandboxed child; this process waits for it
            from evolve import sandbox

            def on_exit(reason):  # an end the child could not report itself; after a result, unread
                if reason is not None:
                    try:
                        _send(conn, {"error": reason})
                    except OSError:
                        pass

            sandbox.enter(request["sandbox"], on_exit)
        threading.Thread(target=watch, daemon=True).start()
        module, name = request["fn"].split(":")
        fn = getattr(importlib.import_module(module), name)
        result = fn(lambda point: _send(conn, {"report": point}), **request.get("kwargs", {}))
        _send(conn, {"result": result})
        return 0
    except BaseException as e:  # the variant failed: its reason goes back, then exit
        from evolve.harness import one_line

        try:
            _send(conn, {"error": one_line(e, request.get("recipe"))})
        except OSError:
            pass
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


# -- client ----------------------------------------------------------------------
def _connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return s
    except OSError:
        s.close()
        return None


def ping(path: Path | None = None) -> int | None:
    """Returns the zygote's pid if one answers at `path`, else None."""
    s = _connect(path or socket_path())
    if s is None:
        return None
    with s:
        s.settimeout(10.0)
        try:
            _send(s, {"op": "ping"})
            return json.loads(s.makefile("r").readline())["pong"]
        except (OSError, ValueError, KeyError):
            return None


def ensure(path: Path | None = None) -> Path:
    """Starts this node's zygote unless one answers; returns its socket path."""
    path = path or socket_path()
    if ping(path):
        return path
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter per node
        if ping(path):
            return path
        log = path.with_suffix(".log")
        # --daemon forks once more and the first process exits at once, so
        # the zygote is no child of the caller: Ray kills a worker's child
        # processes when the worker exits, and the zygote must outlive trials.
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "evolve.zygote", "--daemon", str(path)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ping(path):
                return path
            if proc.poll() not in (None, 0):
                raise RuntimeError(f"zygote exited with status {proc.returncode}; see {log}")
            time.sleep(0.2)
        raise RuntimeError(f"zygote did not start within {START_TIMEOUT_S:g} s; see {log}")


def shutdown(path: Path | None = None) -> bool:
    """Asks this node's zygote to exit; returns whether one was there."""
    s = _connect(path or socket_path())
    if s is None:
        return False
    with s:
        _send(s, {"op": "shutdown"})
    return True


class ChildFailed(RuntimeError):
    """The forked training process failed; the message is its one-line reason."""


class ChildLost(ChildFailed):
    """The forked process ended without a result or an error: killed from outside, or crashed."""


POLL_S = 0.2  # how often a waiting call looks at its time-out and its cancel event


def call(fn: str, kwargs: dict, *, env: dict | None = None, log: str | None = None,
         recipe: str | None = None, on_report=None, timeout_s: float | None = None,
         cancel: threading.Event | None = None, sandbox: dict | None = None):
    """Returns `fn(report, **kwargs)` run in a fresh child of this node's zygote.

    `fn` is "module:function"; the child's reports go to `on_report`; a
    failure raises ChildFailed with the child's one-line reason (pointing at
    the line of `recipe` it came from, where given). A child still running
    after `timeout_s`, or when `cancel` is set, is killed with everything
    it started. With a `sandbox` policy the child runs `fn` inside
    `evolve.sandbox`'s walls.
    """
    path = ensure()
    conn = _connect(path)
    if conn is None:
        raise RuntimeError(f"zygote at {path} stopped answering")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pid = None

    def kill(reason: str):
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)  # the child leads its own session
            except ProcessLookupError:
                pass
        return ChildFailed(reason)

    with conn:
        _send(conn, {"op": "call", "fn": fn, "kwargs": kwargs, "env": env or {}, "log": log,
                     "recipe": recipe, "sandbox": sandbox})
        conn.settimeout(POLL_S if deadline is not None or cancel is not None else None)
        buf = b""
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise kill(f"killed after {timeout_s:g} s without finishing")
            if cancel is not None and cancel.is_set():
                raise kill("cancelled")
            try:
                chunk = conn.recv(1 << 16)
            except (TimeoutError, socket.timeout):
                continue
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if "pid" in msg:
                    pid = msg["pid"]
                elif "report" in msg:
                    if on_report is not None:
                        on_report(msg["report"])
                elif "error" in msg:
                    raise ChildFailed(msg["error"])
                elif "result" in msg:
                    return msg["result"]
    raise ChildLost(f"process {pid} running {fn} ended without a result (killed or crashed)")


def main(argv: list[str]) -> None:
    if argv[0] == "--daemon":
        if os.fork():
            os._exit(0)
        os.setsid()
        argv = argv[1:]
    serve(Path(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
