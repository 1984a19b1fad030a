"""The walls around a variant's process: what its code can see, change and start.

A variant's recipe runs inside the harness's training process, a fresh
zygote child per rank. Before anything of the variant is imported, that
child calls `enter(policy)`:

- files: a private mount namespace in which every file system is
  read-only but the trial's own output folder (and /dev/shm, which
  DeepSpeed's CPU op needs), and the held-out split and the corpus it was
  cut from read as empty;
- processes: a private PID namespace with its own /proc. The variant sees
  no other process (nor any other process's view of the files, through
  /proc/<pid>/root), can signal none, and whatever it starts dies with it;
- locking: a second, nested user namespace, so that the mounts are locked:
  the variant's code, root inside it or not, cannot unmount or remount
  them;
- no new privileges, and a cap on the memory it may allocate (RLIMIT_DATA).

From the import of the recipe on, `guard()` adds an audit hook that ends
the process at the first attempt to start a process, to connect, bind or
send on a socket (the ranks' own gloo connections are made before, in
C++), or to load native code through ctypes; the reason reaches the waiter
outside, so the variant can neither catch it nor hide it.

Entering forks once: the calling process stays outside as a waiter and
`enter` returns in the child, which is the first process of the new PID
namespace. The waiter turns the child's end into a reason (`exit_reason`),
and dies taking the child with it.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38

# audit events refused once the variant's code may run: (event prefix, what the variant tried)
REFUSED = (("subprocess.Popen", "start a process"), ("os.system", "start a process"),
           ("os.exec", "start a process"), ("os.posix_spawn", "start a process"),
           ("os.spawn", "start a process"), ("os.fork", "start a process"),
           ("os.forkpty", "start a process"), ("pty.spawn", "start a process"),
           ("socket.connect", "open a network connection"), ("socket.bind", "open a network socket"),
           ("socket.sendto", "send on a network socket"), ("socket.sendmsg", "send on a network socket"),
           ("ctypes.dlopen", "load native code"), ("ctypes.dlsym", "load native code"),
           ("ctypes.cdata", "reach native memory"), ("sys.settrace", "trace the harness"),
           ("sys.setprofile", "trace the harness"), ("gc.get_", "search the interpreter's objects"))

_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any guard is up
_entered = False
_report_fd = -1  # the pipe to the waiter, in the sandboxed process
REFUSED_EXIT = 86  # the status of a process the guard ended


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


SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1  # Linux 5.12+


def _read_only(path: str, on: bool) -> None:
    """Makes the mount tree at `path` read-only (`on`) or writable again, recursively."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY if on else 0, 0 if on else MOUNT_ATTR_RDONLY, 0, 0)
    _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path.encode(),
                         ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
           f"mount_setattr {path}")


def _hide(path: str, empty_file: str) -> None:
    if os.path.isdir(path):
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
    elif os.path.exists(path):
        _mount(empty_file, path, None, MS_BIND)


def enter(policy: dict, on_exit) -> None:
    """Puts this process's future in a sandbox; returns in the sandboxed child only.

    `policy`: {"writable": [dirs], "hidden": [paths], "memory_bytes": int
    or 0}. Everything but the writable folders is read-only; the hidden
    paths read as empty. The waiter left outside calls `on_exit(reason)`
    with `exit_reason(status)` when the child ends, then exits.
    """
    global _entered
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID), "unshare (user, mount, pid)")
    _map_ids(uid, gid)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    writable = [str(Path(w).resolve()) for w in policy.get("writable", []) if os.path.isdir(w)]
    for w in writable:  # mounts of their own, made writable again below
        _mount(w, w, None, MS_BIND | MS_REC)
    if policy.get("hidden"):
        empty = os.path.join(writable[0], ".sandbox-empty")
        open(empty, "w").close()
        for h in policy["hidden"]:
            _hide(str(Path(h).resolve()), empty)
    _read_only("/", True)
    for w in writable:
        _read_only(w, False)
    r, w = os.pipe()
    pid = os.fork()
    if pid:  # the waiter: outside the new PID namespace
        os.close(w)
        _, status = os.waitpid(pid, 0)
        os.set_blocking(r, False)
        try:
            detail = os.read(r, 512).decode(errors="replace")
        except OSError:
            detail = ""
        on_exit(exit_reason(status, detail))
        os._exit(0)
    global _report_fd
    os.close(r)
    _report_fd = w
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getppid() == 1:  # the waiter died before the line above
        os._exit(1)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare (lock)")  # the mounts are locked now
    _map_ids(0, 0)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    limit = int(policy.get("memory_bytes") or 0)
    if limit:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if writable:  # temporary files go to the one place it may write
        tmp = Path(writable[0]) / ".tmp"
        tmp.mkdir(exist_ok=True)
        os.environ["TMPDIR"] = str(tmp)
        tempfile.tempdir = None
    _entered = True


def policy_for(config: dict, out_dir: str) -> dict | None:
    """Returns the sandbox policy of a rank writing to `out_dir`, or None when the search runs without one."""
    base = config.get("sandbox")
    if not base:
        return None
    return {**base, "writable": [str(out_dir), "/dev/shm"]}


def exit_reason(status: int, detail: str = "") -> str | None:
    """Returns why a sandboxed process ended, for the variant's record; None for SIGKILL (lost, retried)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL:  # from outside: the OOM killer, a time-out, a lost node
            return None
        return f"the variant's process was killed by {signal.Signals(sig).name}"
    code = os.WEXITSTATUS(status)
    if code == REFUSED_EXIT:
        return detail or "sandbox: the variant made a call the sandbox refuses; its process was killed"
    return f"the variant's process exited with status {code} before finishing"


def guard() -> None:
    """From now on, a call in REFUSED ends this process at once (a no-op outside a sandbox).

    The reason goes to the waiter outside through a pipe, so the variant's
    code can neither catch the refusal nor hide it. The hook is a closure
    that no module holds, over values copied now; the calls that could
    reach it (tracing, the garbage collector's lists) are refused too.
    """
    if not _entered:
        return
    fd, refused, exit_, write = _report_fd, tuple(REFUSED), os._exit, os.write

    def hook(event: str, args) -> None:
        for prefix, what in refused:
            if event.startswith(prefix):
                break
        else:
            if not (event == "object.__setattr__" and args and args[0] is hook):
                return
            what = "change the sandbox's guard"
        reason = f"sandbox: the variant tried to {what} ({event}); its process was killed"
        try:
            write(fd, reason.encode()[:500])
        finally:
            exit_(REFUSED_EXIT)

    sys.addaudithook(hook)


def probe() -> str | None:
    """Returns None if this machine can set up the sandbox, else the one-line reason why not."""
    with tempfile.TemporaryDirectory() as d:
        pid = os.fork()
        if pid == 0:
            try:
                enter({"writable": [d], "hidden": [d + "/secret"]}, on_exit=lambda reason: None)
                Path(d, "written").write_text("ok")
                os._exit(0)
            except BaseException as e:  # report; never raise in a forked child
                try:
                    Path(d, "why").write_text(" ".join(str(e).split()))
                finally:
                    os._exit(1)
        os.waitpid(pid, 0)
        why = Path(d, "why")
        if why.exists():
            return why.read_text()
        return None if Path(d, "written").exists() else "sandbox: the sandboxed process could not write"


if __name__ == "__main__":  # a check in a clean process: `python -m evolve.sandbox`
    reason = probe()
    print(reason or "ok")
    sys.exit(1 if reason else 0)
