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
`{"op": "call", "secret": s, "fn": "module:function", "kwargs": {...}, "env": {...}, "log": path}`;
the child calls `function(report, **kwargs)` and answers with JSON lines
`{"pid": n}`, `{"report": {...}}`..., then `{"result": value}` or
`{"error": "one line"}`, and closes. The sealed evaluation runs the same
way, so neither the trial's process nor the zygote ever loads a variant.
With a sandbox policy, everything after `{"pid": n}` comes from the
sandbox's supervisor, which checks what the rank says (`evolve.rank.sandbox`).

Who may ask: one zygote serves one search (`search`, a key the driver
derives from its run folder) on one node. Its socket and the secret a
request must carry live in a folder only its user can open
(/tmp/evolve-<uid>, which no sandbox can see), the peer's uid is checked,
and it runs only the entry points in ENTRY_POINTS.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import hmac
import importlib
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from evolve.errors import one_line
from evolve.rank import sandbox

# The heavy modules (torch, transformers, DeepSpeed, the rank's entry points) are imported by the
# server only: the clients that import this module (relays, trials) never pay for them.

PRELOAD = ("numpy", "yaml", "torch", "torch.distributed", "transformers",
           "transformers.models.gpt2.modeling_gpt2", "deepspeed", "safetensors.torch",
           "evolve.rank.sandbox", "evolve.trial.evaluation")
IDLE_EXIT_S = 600.0  # a zygote with no request and no child for this long exits
START_TIMEOUT_S = 420.0  # the first start imports everything and may build the CPU op (minutes on a loaded node)


def code_digest(package: Path) -> str:
    """Returns a hash of every Python file under `package`, by path and content."""
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Returns the hash of evolve's whole package (not only this folder): a zygote never serves stale code."""
    return code_digest(Path(__file__).resolve().parents[1])


# What a client may ask a zygote to run; EVOLVE_ZYGOTE_ENTRY_POINTS (comma-separated, read when the
# zygote starts) adds more for tests and benchmarks.
ENTRY_POINTS = ("evolve.rank.entry:run_rank", "evolve.rank.entry:smoke_rank", "evolve.rank.entry:solo_rank",
                "evolve.trial.evaluation:evaluate_saved")
# What a request may set in the child's environment.
ENV_KEYS = re.compile(r"^(MASTER_ADDR|MASTER_PORT|RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|"
                      r"CUDA_VISIBLE_DEVICES|DS_ACCELERATOR|OMP_NUM_THREADS|GLOO_SOCKET_IFNAME|NCCL_\w+)$")
# Left out of the zygote's own environment, so no variant finds them in os.environ.
SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)|^(AWS_|GOOGLE_|AZURE_|OPENAI_)")


def folder() -> Path:
    """Returns the folder of this user's zygotes, made private to the user (mode 0700)."""
    d = Path(f"/tmp/evolve-{os.getuid()}")
    d.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or not os.path.isdir(d) or os.path.islink(d):
        raise RuntimeError(f"zygote: {d} is not a private folder of this user; remove it")
    return d


def socket_path(search: str = "") -> Path:
    """Returns this node's zygote socket for this search, interpreter, accelerator and code."""
    key = f"{search}|{sys.executable}|{os.environ.get('DS_ACCELERATOR', '')}|{_code_digest()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return folder() / f"{digest}.sock"


def secret(path: Path) -> str:
    """Returns the secret a request to the zygote at `path` must carry (readable by its user only)."""
    return path.with_suffix(".secret").read_text().strip()


# -- server ----------------------------------------------------------------------
def warm_tables() -> None:
    """Builds what transformers builds on first use and then keeps, so each child inherits it built.

    Its table of checkpoint weight renamings (about 1,100 entries, each compiling regular expressions)
    is built by a process's first `save_pretrained`: about 0.15 CPU-s in every rank that saves a model
    (`benchmarks/save_weights.py`), were it built there.
    """
    try:
        from transformers import conversion_mapping
    except ImportError:  # a transformers without the table
        return
    build = getattr(conversion_mapping, "get_checkpoint_conversion_mapping", None)
    if callable(build):
        build("gpt2")


def serve(path: Path) -> None:
    """Imports the heavy modules, then forks a child per request until idle."""
    for name in PRELOAD:
        importlib.import_module(name)
    # torch, transformers and DeepSpeed: the server imports them once; the clients (relays, trials) never
    import evolve.rank.entry  # noqa: F401  (the children run it)
    from evolve.warm.commop import load_cpu_comm_op

    if os.environ.get("DS_ACCELERATOR") == "cpu":
        load_cpu_comm_op()  # the children inherit it loaded, and never wait on torch's build lock
    warm_tables()

    key = secret(path)
    allowed = set(ENTRY_POINTS) | {e for e in os.environ.get("EVOLVE_ZYGOTE_ENTRY_POINTS", "").split(",") if e}
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
                request = json.loads(conn.makefile("r").readline(1 << 20) or "{}")
            except (OSError, ValueError):
                conn.close()
                continue
            why_not = _refuse(conn, request, key, allowed)
            if why_not:
                try:
                    _send(conn, {"error": f"zygote: {why_not}"})
                except OSError:
                    pass
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


def _refuse(conn: socket.socket, request, key: str, allowed: set[str]) -> str | None:
    """Returns why a request is refused (pure but for the peer's credentials), or None."""
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != os.getuid():
        return f"peer uid {uid} is not this zygote's user"
    if not isinstance(request, dict) or request.get("op") not in ("ping", "shutdown", "call"):
        return "unknown request"
    if request["op"] == "ping":
        return None
    if not hmac.compare_digest(str(request.get("secret", "")).encode(), key.encode()):
        return "wrong secret: not this search's zygote"
    if request["op"] == "call":
        if request.get("fn") not in allowed:
            return f"{str(request.get('fn'))[:80]!r} is not an entry point"
        bad = [k for k in (request.get("env") or {}) if not ENV_KEYS.match(str(k))]
        if bad:
            return f"environment variable {str(bad[0])[:40]!r} may not be set"
    return None


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _child(conn: socket.socket, request: dict) -> int:
    """Runs one rank of one trial; returns the exit status."""
    os.setsid()
    conn.settimeout(None)
    os.environ.update(request.get("env") or {})
    log = request.get("log")
    if log:  # in a trial folder, which a variant writes: never through a link it left there
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            _send(conn, {"pid": os.getpid()})
            _send(conn, {"error": f"zygote: the log {log} cannot be opened as a plain file ({os.strerror(e.errno)})"})
            return 1
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    send = functools.partial(_send, conn)
    try:
        send({"pid": os.getpid()})
        module, name = request["fn"].split(":")
        fn = getattr(importlib.import_module(module), name)  # before any wall: the harness's own code
        if request.get("sandbox"):  # returns in the sandboxed child; this process supervises it
            send = sandbox.enter(request["sandbox"], conn).send
        else:
            threading.Thread(target=_watch, args=(conn, os._exit), daemon=True).start()
        result = fn(lambda point: send({"report": point}), **request.get("kwargs", {}))
        send({"result": result})
        return 0
    except BaseException as e:  # the variant failed: its reason goes back, then exit
        try:
            send({"error": one_line(e, request.get("recipe"))})
        except OSError:
            pass
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _watch(conn: socket.socket, exit_) -> None:
    """Ends the child when its client goes away (the client never writes again: EOF means gone)."""
    try:
        conn.recv(1)
    except OSError:
        pass
    exit_(3)


# -- client ----------------------------------------------------------------------
def _connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return s
    except OSError:
        s.close()
        return None


def ping(path: Path | None = None, search: str = "") -> int | None:
    """Returns the zygote's pid if one answers at `path`, else None."""
    s = _connect(path or socket_path(search))
    if s is None:
        return None
    with s:
        s.settimeout(10.0)
        try:
            _send(s, {"op": "ping"})
            return json.loads(s.makefile("r").readline())["pong"]
        except (OSError, ValueError, KeyError):
            return None


def ensure(path: Path | None = None, search: str = "") -> Path:
    """Starts this node's zygote of `search` unless one answers; returns its socket path."""
    path = path or socket_path(search)
    if ping(path):
        return path
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter per node
        if ping(path):
            return path
        log = path.with_suffix(".log")
        secret = path.with_suffix(".secret")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items() if not SECRET_ENV.search(k)}
        # --daemon forks once more and the first process exits at once, so
        # the zygote is no child of the caller: Ray kills a worker's child
        # processes when the worker exits, and the zygote must outlive trials.
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "evolve.warm.zygote", "--daemon", str(path)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                    start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ping(path):
                return path
            if proc.poll() not in (None, 0):
                raise RuntimeError(f"zygote exited with status {proc.returncode}; see {log}")
            time.sleep(0.2)
        raise RuntimeError(f"zygote did not start within {START_TIMEOUT_S:g} s; see {log}")


_starting: dict[Path, threading.Thread] = {}  # starts begun by `start` in this process, by socket


def start(path: Path | None = None, search: str = "") -> Path:
    """Begins starting this node's zygote of `search` in a thread and returns its socket path at once.

    The zygote's imports (several seconds of CPU) then overlap whatever the
    caller does next (Ray's start); `ensure` waits for it, as it waits for
    any start under way (the start lock). A start that fails is left to
    `ensure`, which tries again and raises the reason.
    """
    path = path or socket_path(search)
    pending = _starting.get(path)
    if pending is None or not pending.is_alive():
        def begin():
            try:
                ensure(path)
            except Exception:  # ensure, called later, raises it
                pass
        _starting[path] = threading.Thread(target=begin, name="evolve-zygote-start", daemon=True)
        _starting[path].start()
    return path


@contextlib.contextmanager
def warming(search: str = ""):
    """Starts this node's zygote of `search` now (`start`) and shuts it down when the block ends."""
    start(search=search)
    try:
        yield
    finally:
        shutdown(search=search)


def shutdown(path: Path | None = None, search: str = "") -> bool:
    """Asks this node's zygote of `search` to exit; returns whether one was there.

    A start this process began (`start`) is waited for first: a zygote still
    importing would otherwise outlive this call, idle."""
    path = path or socket_path(search)
    pending = _starting.pop(path, None)
    if pending is not None:
        pending.join(START_TIMEOUT_S)
    s = _connect(path)
    if s is None:
        return False
    with s:
        try:
            _send(s, {"op": "shutdown", "secret": secret(path)})
        except OSError:
            return False
    return True


class ChildFailed(RuntimeError):
    """The forked training process failed; the message is its one-line reason."""


class ChildLost(ChildFailed):
    """The forked process ended without a result or an error: killed from outside, or crashed."""


POLL_S = 0.2  # how often a waiting call looks at its time-out and its cancel event


def call(fn: str, kwargs: dict, *, env: dict | None = None, log: str | None = None,
         recipe: str | None = None, on_report=None, timeout_s: float | None = None,
         cancel: threading.Event | None = None, sandbox: dict | None = None, search: str = ""):
    """Returns `fn(report, **kwargs)` run in a fresh child of this node's zygote.

    `fn` is "module:function"; the child's reports go to `on_report`; a
    failure raises ChildFailed with the child's one-line reason (pointing at
    the line of `recipe` it came from, where given). A child still running
    after `timeout_s`, or when `cancel` is set, is killed with everything
    it started. With a `sandbox` policy the child runs `fn` inside
    `evolve.rank.sandbox`'s walls. `search` names the zygote (one per search).
    """
    path = ensure(search=search)
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
        _send(conn, {"op": "call", "secret": secret(path), "fn": fn, "kwargs": kwargs, "env": env or {},
                     "log": log, "recipe": recipe, "sandbox": sandbox})
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
                    if pid is None and isinstance(msg["pid"], int) and msg["pid"] > 1:  # the first only
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
