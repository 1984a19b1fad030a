"""The walls around a variant's process, enforced by the kernel.

A rank of a trial is a fresh child of the zygote. Before anything of the
variant is imported, the walls go up in two steps:

1. `enter(policy, conn)`, while the child is still single-threaded. It
   forks once: the parent stays outside as the supervisor (`_supervise`),
   the child is the rank.
   - level "full" (user namespaces allowed): a user, mount and PID
     namespace. The rank sees a read-only file system in which /tmp,
     /var/tmp, /run, the run folder, the zygote's folder and Ray's session
     folder are empty; only its variant's files, the training data (never
     the held-out split or its corpus), a resume checkpoint and its own
     trial folder (writable, no exec) are bound back. /dev/shm is the
     trial's own. It sees only its own processes. A second user namespace
     locks the mounts.
   - level "unprivileged" (no user namespaces: most containers): no
     namespaces; the same file view is an allowlist in Landlock.
   - both: no new privileges, a Landlock allowlist (reads: the system's
     and Python's files and the paths above; writes: its trial folder and
     /dev/shm), a memory cap (RLIMIT_DATA), a file-size cap (RLIMIT_FSIZE)
     and no core dumps. Signals leave the rank only to itself.
2. `confine()`, called by the harness after the rank's process group and
   DeepSpeed's communication are up and before the recipe is imported:
   the seccomp filter of `evolve.rank.syscalls` (no programs, processes,
   sockets or connections, ptrace, mounts, namespaces, bpf, io_uring...)
   in every thread, then an audit hook that only turns the common
   refusals into a readable reason.

The rank talks to the outside through one pipe, its result channel. The
supervisor reads it as untrusted input (`evolve.rank.channel`: size-capped
JSON lines, checked against a schema, one final result), forwards the
curve to the zygote's client, watches the trial folder's size, and sends
the one final message only after the rank has exited: no thread of the
variant outlives the answer.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from evolve.rank import channel, landlock, syscalls

LEVELS = ("full", "unprivileged")
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38

# Trees no rank sees (each emptied by a tmpfs at the full level, left out of Landlock's allowlist):
# other processes' sockets and files, Ray's session folder, the zygote's folder.
HIDDEN_TREES = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm")
# What a rank reads: the system's files (libraries, CUDA, ld.so's cache), nothing of any user's.
SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/sys")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/nvidiactl",
           "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset", "/dev/nvidia-caps", "/dev/dri",
           "/dev/infiniband", *(f"/dev/nvidia{i}" for i in range(16)))
PROC_FILES = ("/proc/cpuinfo", "/proc/meminfo", "/proc/stat")

# audit events reported with a readable reason once the variant's code may run; the kernel
# refuses the calls underneath them either way (evolve.rank.syscalls)
REPORTED = (("subprocess.Popen", "start a process"), ("os.system", "start a process"),
            ("os.exec", "start a process"), ("os.posix_spawn", "start a process"),
            ("os.spawn", "start a process"), ("os.fork", "start a process"),
            ("os.forkpty", "start a process"), ("pty.spawn", "start a process"),
            ("socket.connect", "open a network connection"), ("socket.bind", "open a network socket"),
            ("socket.sendto", "send on a network socket"), ("socket.sendmsg", "send on a network socket"),
            ("ctypes.dlopen", "load native code"), ("ctypes.dlsym", "load native code"),
            ("ctypes.cdata", "reach native memory"), ("sys.settrace", "trace the harness"),
            ("sys.setprofile", "trace the harness"), ("gc.get_", "search the interpreter's objects"))

_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any wall is up
_channel: channel.Writer | None = None  # the rank's result channel, once it is in a sandbox
_inherited: list[int] = []  # descriptors the rank got from the zygote, closed by confine()
REFUSED_EXIT = 86  # the status of a process the audit hook ended
SUPERVISE_POLL_S = 0.25
DISK_CHECK_S = 1.0


class SandboxError(RuntimeError):
    """The sandbox could not be set up (the kernel refused a step); one line."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise SandboxError(f"sandbox: {what}: {os.strerror(e)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(src and src.encode(), target.encode(), fstype and fstype.encode(),
                       ctypes.c_ulong(flags), data and data.encode()), f"mount {target}")


def _map_ids(outer_uid: int, outer_gid: int) -> None:
    """Maps this process's ids to root inside the user namespace it just made."""
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {outer_uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {outer_gid} 1")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000  # Linux 5.12+
ATTR_RDONLY, ATTR_NOSUID, ATTR_NODEV, ATTR_NOEXEC = 1, 2, 4, 8


def _set_attr(path: str, set_: int, clear: int) -> None:
    attr = _MountAttr(set_, clear, 0, 0)
    _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path.encode(),
                         ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
           f"mount_setattr {path}")


# -- what a rank may see ------------------------------------------------------------
def _real(path: str) -> str:
    return os.path.realpath(path)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def view(policy: dict) -> dict:
    """Returns the rank's file view (pure): trees emptied, paths kept readable, the writable folder.

    `policy`: "writable" (the trial folder), "read" (paths the rank needs:
    its variant, the training data, a checkpoint), "hidden" (the held-out
    split and its corpus: never readable, even beneath a kept path), and
    "hidden_trees" (the run folder, the zygote's and Ray's folders).
    """
    hidden = sorted({_real(h) for h in policy.get("hidden", [])} | set(_compiled(policy.get("hidden", []))))
    trees = sorted({_real(t) for t in (*HIDDEN_TREES, *policy.get("hidden_trees", []))})
    roots = [t for t in trees if not any(t != o and _under(t, o) for o in trees)]
    writable = _real(policy["writable"])
    python = [sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).resolve().parent),
              *(p for p in sys.path if p and os.path.isabs(p))]
    # a kept path must not uncover a hidden tree: a sys.path entry holding the run folder is left out
    # (hidden files beneath a kept path stay hidden: they are covered, or left out of Landlock's rules)
    python = sorted({_real(p) for p in python
                     if os.path.isdir(p) and not any(_under(x, _real(p)) for x in roots)})
    read = sorted({_real(p) for p in policy.get("read", []) if not any(_under(_real(p), h) for h in hidden)})
    return {"roots": roots, "hidden": hidden, "writable": writable, "read": read, "python": python,
            "shm": bool(policy.get("shm"))}


def _compiled(paths: list[str]) -> list[str]:
    """Returns the bytecode caches of the Python sources in `paths`: a hidden module is hidden compiled too."""
    out = []
    for p in paths:
        if p.endswith(".py"):
            stem = Path(_real(p))
            out += [str(c) for c in (stem.parent / "__pycache__").glob(f"{stem.stem}.*.pyc")]
    return out


def _rebind(fd: int, target: str, is_dir: bool) -> None:
    """Mounts what `fd` points at on `target`, making `target` inside an emptied tree first."""
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "w").close()
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)


def _mount_view(v: dict, shm: str) -> None:
    """Full level: empties the hidden trees, binds back what the rank keeps, locks all read-only."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    keep = [(p, False) for p in (*v["python"], *v["read"]) if any(_under(p, r) for r in v["roots"])]
    keep.append((v["writable"], True))
    fds = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p, _ in keep if os.path.exists(p)}
    shm_fd = os.open(shm, os.O_PATH | os.O_CLOEXEC)
    try:
        for root in v["roots"]:
            if os.path.isdir(root) and not os.path.islink(root):
                _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755")
        for path, _ in sorted(keep, key=lambda k: k[0].count("/")):
            if path in fds:
                _rebind(fds[path], path, os.path.isdir(f"/proc/self/fd/{fds[path]}"))
        _rebind(shm_fd, "/dev/shm", True)  # the trial's own: its ranks share it, no other trial sees it
        empty = os.path.join(v["writable"], ".sandbox-empty")
        open(empty, "w").close()
        for h in v["hidden"]:  # read as empty, wherever they are still visible (a corpus in the stdlib)
            if os.path.isdir(h):
                _mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
            elif os.path.exists(h):
                _mount(empty, h, None, MS_BIND)
    finally:
        for fd in (*fds.values(), shm_fd):
            os.close(fd)
    _set_attr("/", ATTR_RDONLY, 0)
    for w in (v["writable"], "/dev/shm"):
        _set_attr(w, ATTR_NOEXEC | ATTR_NOSUID | ATTR_NODEV, ATTR_RDONLY)


def _allow_around(root: str, hidden: list[str]) -> tuple[list[str], list[str]]:
    """Returns (listable dirs, readable paths) covering `root` but none of `hidden` (Landlock cannot subtract)."""
    inside = [h for h in hidden if _under(h, root)]
    if not inside:
        return [], [root]
    if root in inside or not os.path.isdir(root):
        return [], []
    dirs, paths = [root], []
    for entry in os.scandir(root):
        d, p = _allow_around(entry.path, inside)
        dirs += d
        paths += p
    return dirs, paths


def _landlock(v: dict, level: str) -> int:
    """Both levels: reads and writes only where the view allows; returns Landlock's ABI."""
    listable, read = [], []
    for p in (*SYSTEM_READ, *v["python"], *v["read"]):
        if os.path.exists(p):
            d, r = _allow_around(p, v["hidden"])
            listable += d
            read += r
    # /proc: at the full level it shows the rank's own processes only; otherwise just its own entry
    read += ["/proc"] if level == "full" else [f"/proc/{os.getpid()}", *PROC_FILES]
    # /dev/shm: NCCL's shared memory between a node's ranks; on the CPU nothing needs it
    write = [v["writable"], *DEVICES, *(["/dev/shm"] if v["shm"] else [])]
    return landlock.restrict(read, write, listable)


# -- entering ---------------------------------------------------------------------
def enter(policy: dict, conn: socket.socket) -> "channel.Writer":
    """Puts the rest of this process's life in the sandbox; returns in the sandboxed child only.

    Forks: the parent supervises the child (`_supervise`), relaying its
    checked messages to `conn`, and exits when it ends. The child returns
    with its result channel; it no longer holds `conn`.
    """
    global _channel, _inherited
    level = policy.get("level", "full")
    if level not in LEVELS:
        raise SandboxError(f"sandbox: unknown level {level!r} (expected one of {', '.join(LEVELS)})")
    v = view(policy)
    shm = os.path.join(v["writable"], ".shm")
    os.makedirs(shm, exist_ok=True)
    if level == "full":
        uid, gid = os.getuid(), os.getgid()
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID), "unshare (user, mount, pid)")
        _map_ids(uid, gid)
        _mount_view(v, shm)
    r, w = os.pipe()
    pid = os.fork()
    if pid:  # the supervisor: outside the rank's PID namespace, holding the client's connection
        os.close(w)
        _supervise(pid, r, conn, v["writable"], int(policy.get("disk_bytes") or 0))
        os._exit(0)
    os.close(r)
    conn.close()
    try:
        os.setsid()  # its own session and group: kill(0) and killpg reach only the rank
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        if os.getppid() == 1:  # the supervisor died before the line above
            os._exit(1)
        if level == "full":
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare (lock)")  # the mounts are locked now
            _map_ids(0, 0)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        if level == "unprivileged" or landlock.abi() > 0:
            _landlock(v, level)
        _limits(policy)
        tmp = Path(v["writable"]) / ".tmp"  # temporary files and caches go to the one place it may write
        tmp.mkdir(exist_ok=True)
        os.environ.update(TMPDIR=str(tmp), TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"),
                          TRITON_CACHE_DIR=str(tmp / "triton"))
        tempfile.tempdir = None
        _channel = channel.Writer(w)
        _inherited = [fd for fd in _open_fds() if fd > 2 and fd != w]
    except BaseException as e:  # report, then end: the rank must never run outside its walls
        try:
            os.write(w, (json.dumps({"error": " ".join(str(e).split())[:400]}) + "\n").encode())
        finally:
            os._exit(1)
    return _channel


def _limits(policy: dict) -> None:
    memory, disk = int(policy.get("memory_bytes") or 0), int(policy.get("disk_bytes") or 0)
    if memory:
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    if disk:  # one file can never be larger than the whole folder's cap
        resource.setrlimit(resource.RLIMIT_FSIZE, (disk, disk))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _open_fds() -> list[int]:
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


def entered() -> bool:
    return _channel is not None


def confine() -> None:
    """Raises the rank's last walls (a no-op outside a sandbox); called right before the recipe's import.

    Closes what the rank inherited from the zygote, installs the seccomp
    filter in every thread, then the audit hook that reports the common
    refusals in words.
    """
    if _channel is None:
        return
    for fd in _inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    syscalls.install()
    _guard(_channel.fd)


def _guard(fd: int) -> None:
    """From now on, an event in REPORTED ends this process with its reason on the result channel.

    The hook is a closure that no module holds, over values copied now;
    the calls that could reach it (tracing, the garbage collector's lists)
    are reported too. The kernel refuses the calls underneath either way.
    """
    reported, exit_, write, dumps = tuple(REPORTED), os._exit, os.write, json.dumps

    def hook(event: str, args) -> None:
        for prefix, what in reported:
            if event.startswith(prefix):
                break
        else:
            if not (event == "object.__setattr__" and args and args[0] is hook):
                return
            what = "change the sandbox's guard"
        reason = f"sandbox: the variant tried to {what} ({event}); its process was killed"
        try:
            write(fd, (dumps({"error": reason}) + "\n").encode())
        finally:
            exit_(REFUSED_EXIT)

    sys.addaudithook(hook)


def send(message: dict) -> None:
    """Writes one message on the rank's result channel."""
    _channel.send(message)


# -- the supervisor -----------------------------------------------------------------
def _supervise(pid: int, r: int, conn: socket.socket, folder: str, disk_bytes: int) -> None:
    """Relays the rank's checked messages to `conn` until it exits; then sends its one final answer."""
    reader = channel.Reader()
    final, kill_reason, status = None, None, None
    poller = select.poll()
    poller.register(r, select.POLLIN)
    poller.register(conn.fileno(), select.POLLIN)
    next_disk = time.monotonic() + DISK_CHECK_S
    pipe_open = True

    def kill(reason: str | None) -> None:
        nonlocal kill_reason
        if kill_reason is None and reason:
            kill_reason = reason
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    while status is None:
        for fd, _ in poller.poll(SUPERVISE_POLL_S * 1000):
            if fd == r:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    poller.unregister(r)
                    pipe_open = False
                    continue
                try:
                    for msg in reader.feed(chunk):
                        if "report" in msg:
                            _send(conn, msg)
                        elif final is None:  # the first result or error counts
                            final = msg
                            if "error" in msg:  # at once, as the rank saw it first; the rank is done
                                _send(conn, msg)
                                kill(None)
                except channel.ChannelError as e:
                    kill(f"sandbox: {e}; its process was killed")
            elif fd == conn.fileno():  # the client never writes: readable means it went away
                kill(None)
                os._exit(0)
        if disk_bytes and time.monotonic() >= next_disk and kill_reason is None:
            used = channel.folder_usage(folder, disk_bytes)
            if used > disk_bytes:
                kill(f"sandbox: the trial folder grew past its cap of {disk_bytes:,} bytes; "
                     f"its process was killed")
            next_disk = time.monotonic() + DISK_CHECK_S
        got, st = os.waitpid(pid, os.WNOHANG)
        if got:
            status = st
    if pipe_open:  # what it wrote just before it ended
        os.set_blocking(r, False)
        try:
            while chunk := os.read(r, 1 << 16):
                for msg in reader.feed(chunk):
                    if "report" in msg:
                        _send(conn, msg)
                    else:
                        final = final or msg
        except (OSError, channel.ChannelError):
            pass
    if final is not None and "error" in final and not kill_reason:
        return  # sent when it came
    if kill_reason:
        final = {"error": kill_reason}
    elif final is None or ("result" in final and status != 0):
        reason = exit_reason(status)
        final = None if reason is None else {"error": reason}
    if final is not None:
        try:
            _send(conn, final)
        except OSError:
            pass


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def exit_reason(status: int) -> str | None:
    """Returns why a sandboxed process ended, for the variant's record; None for SIGKILL (lost, retried)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL:  # from outside: the OOM killer, a time-out, a lost node
            return None
        if sig == signal.SIGSYS:
            return "sandbox: the variant made a system call of another ABI; its process was killed (SIGSYS)"
        if sig == signal.SIGXFSZ:
            return "sandbox: the variant wrote a file past the trial folder's cap; its process was killed (SIGXFSZ)"
        return f"the variant's process was killed by {signal.Signals(sig).name}"
    code = os.WEXITSTATUS(status)
    if code == REFUSED_EXIT:
        return "sandbox: the variant made a call the sandbox refuses; its process was killed"
    return f"the variant's process exited with status {code} before finishing"


def policy_for(config, out_dir: str) -> dict | None:
    """Returns the sandbox policy of a rank writing to `out_dir`, or None when the search runs without one.

    `config`: the trial's `evolve.messages.TrialConfig`.
    """
    base = config.sandbox
    if not base:
        return None
    data = Path(config.data_dir)
    read = [config.variant_dir, *(str(p) for p in data.iterdir() if p.name != "heldout.bin")]
    if config.resume_from:
        read.append(config.resume_from)
    trees = [config.run_dir or str(data.parent), *base.get("hidden_trees", [])]
    gpu = config.resources.gpus_per_worker > 0
    return {**base, "writable": str(out_dir), "read": read, "hidden_trees": trees, "shm": gpu}


# -- can this machine do it ----------------------------------------------------------
def run_sandboxed(policy: dict, fn, confined: bool = True) -> dict:
    """Runs `fn()` in a forked rank inside `policy`'s walls; returns the final message: {"result"} or {"error"}.

    For the probe and the tests: the same `enter` (and, with `confined`,
    `confine`) a trial's rank goes through, with the supervisor's answer.
    """
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        try:
            enter(policy, b)
            if confined:
                confine()
            send({"result": fn()})
            os._exit(0)
        except BaseException as e:  # report; never raise in a forked child
            try:
                _send(b, {"error": " ".join(f"{type(e).__name__}: {e}".split())})
            finally:
                os._exit(1)
    b.close()
    with a:
        a.settimeout(60)
        lines = a.makefile("r").read().splitlines()
    os.waitpid(pid, 0)
    msgs = [json.loads(x) for x in lines if x.strip()]
    return next((m for m in msgs if "result" in m or "error" in m),
                {"error": "sandbox: the sandboxed process ended without an answer"})


def probe(level: str = "full") -> str | None:
    """Returns None if this machine can set up the sandbox at `level`, else the one-line reason why not."""
    with tempfile.TemporaryDirectory() as d:
        out, secret = Path(d, "out"), Path(d, "secret")
        out.mkdir()
        secret.write_text("held out")
        final = run_sandboxed({"level": level, "writable": str(out), "hidden": [str(secret)], "read": [],
                               "hidden_trees": []},
                              lambda: {"leaked": _readable(str(secret)), "wrote": _writes(str(out))})
    if "error" in final:
        reason = final["error"]
        return reason if reason.startswith("sandbox") else f"sandbox ({level}): {reason}"
    if final["result"]["leaked"]:
        return f"sandbox ({level}): a hidden file was still readable"
    if not final["result"]["wrote"]:
        return f"sandbox ({level}): the sandboxed process could not write its folder"
    return None


def _readable(path: str) -> bool:
    try:
        return bool(Path(path).read_bytes())
    except OSError:
        return False


def _writes(folder: str) -> bool:
    try:
        Path(folder, "written").write_text("ok")
        return True
    except OSError:
        return False


def choose(setting: str) -> tuple[str | None, str]:
    """Returns (level, the one line `evolve run` prints) for `trial.sandbox`; level None: refused or off.

    "auto" takes the full level where user namespaces work, else the
    unprivileged one; "full" and "unprivileged" force theirs.
    """
    if setting == "off":
        return None, "sandbox: off (trial.sandbox=off): variants run with no walls"
    if setting in ("auto", "full"):
        why_not = probe("full")
        if why_not is None:
            return "full", "sandbox: full"
        if setting == "full":
            return None, why_not
    else:
        why_not = "forced by trial.sandbox=unprivileged"
    reason = probe("unprivileged")
    if reason is not None:
        return None, reason
    return "unprivileged", f"sandbox: unprivileged (no user namespaces): {why_not}"


if __name__ == "__main__":  # a check in a clean process: `python -m evolve.rank.sandbox [level]`
    level, line = choose(sys.argv[1] if len(sys.argv) > 1 else "auto")
    print(json.dumps({"level": level, "line": line}))
    sys.exit(0 if level else 1)
