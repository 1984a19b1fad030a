"""The system-call filter a rank runs under once the variant's code may run (seccomp, via libseccomp).

Every call below fails with EPERM instead of running, in every thread
of the process and in anything it might start. It is installed after the
rank's process group (gloo or NCCL) and DeepSpeed's communication are
set up, so the rank keeps the connections it already has and can open
no new one. Nothing in here depends on Python: a native library, a
ctypes call or a private CPython module meets the same kernel check.

Built with libseccomp through `pyseccomp` (a ctypes binding that follows
libseccomp's own Python API), not hand-written BPF: libseccomp resolves
names per architecture and refuses the other ABIs of the machine (32-bit
and x32 calls on x86_64), which hand-written filters often forget.
"""

from __future__ import annotations

import errno
import os

# pyseccomp is imported inside the filter's builder: only a rank that confines itself loads
# libseccomp.

try:
    import pyseccomp as sc
except RuntimeError:  # pyseccomp found no libseccomp on this machine
    sc = None

REFUSED_ERRNO = errno.EPERM

# (system calls, what a variant would be doing with them)
REFUSED = (
    (("execve", "execveat"), "run another program"),
    (("fork", "vfork"), "start a process"),
    (("socket", "socketpair", "connect", "bind", "listen", "accept", "accept4"),
     "open a connection or a socket"),
    (("ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_open", "pidfd_getfd",
      "pidfd_send_signal", "kcmp"), "reach into another process"),
    (("mount", "umount2", "pivot_root", "unshare", "setns", "chroot", "move_mount", "open_tree", "fsopen",
      "fsconfig", "fsmount", "fspick", "mount_setattr", "open_by_handle_at", "name_to_handle_at"),
     "change or leave its file system view"),
    (("bpf", "perf_event_open", "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
      "keyctl", "add_key", "request_key", "fanotify_init", "lookup_dcookie", "quotactl", "acct", "syslog",
      "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
      "swapon", "swapoff", "iopl", "ioperm", "modify_ldt", "uselib", "personality", "vhangup",
      "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname"),
     "use a kernel interface the sandbox closes"),
    (("setsid", "setpgid"), "leave its process group"),
)
CLONE_THREAD = 0x00010000
ENOSYS_CALLS = ("clone3",)  # its flags sit behind a pointer; ENOSYS makes glibc fall back to clone


def build(pid: int):
    """Returns the filter for a process whose own pid is `pid` (signals go to itself only)."""
    if sc is None:
        raise RuntimeError("sandbox: libseccomp is not installed on this machine "
                           "(Debian and Ubuntu: apt-get install libseccomp2)")
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)  # another ABI's numbers: end the process
    f.set_attr(sc.Attr.CTL_TSYNC, 1)  # every thread of the process, not just the caller
    deny = sc.ERRNO(REFUSED_ERRNO)
    for names, _ in REFUSED:
        for name in names:
            f.add_rule(deny, name)
    for name in ENOSYS_CALLS:
        f.add_rule(sc.ERRNO(errno.ENOSYS), name)
    # clone makes threads (CLONE_THREAD set) and processes (not set): processes are refused
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    # signals: to itself (its own pid) and to nobody else, not even its process group (0) or all (-1)
    for name in ("kill", "tgkill", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        f.add_rule(deny, name, sc.Arg(0, sc.NE, pid))
    return f


def install() -> None:
    """Installs the filter in this process, for all its threads; raises OSError if refused."""
    build(os.getpid()).load()


def refused_names() -> list[str]:
    """Returns every system call the filter refuses, for the docs and the tests."""
    return sorted({n for names, _ in REFUSED for n in names} | set(ENOSYS_CALLS) | {"clone (processes)"})
