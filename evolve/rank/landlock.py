"""Landlock, the kernel's unprivileged file allowlist, through its three system calls.

A process that calls `restrict(read, write)` can from then on open only
what lies beneath the `read` paths (to read, list and map) and the
`write` paths (also to create, change and remove). Rules follow inodes,
not names, so no symlink, bind mount or /proc/<pid>/root path reaches
past them. The restriction is inherited by every thread and process the
caller starts later, and no process can lift it. Threads that exist
already are not restricted, so `evolve.rank.sandbox` calls it while the rank
is still single-threaded. Signals to processes outside the caller's
domain are refused too, where the kernel knows how (ABI 6, Linux 6.12).

The interface is three system calls and two structs (Linux 5.13+, see
Documentation/userspace-api/landlock.rst); no maintained Python binding
exists yet, so they are called through ctypes here.
"""

from __future__ import annotations

import ctypes
import os

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # same on x86_64 and aarch64
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
SCOPE_SIGNAL = 1 << 1  # ABI 6

FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # rights a rule on a file may carry
READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | MAKE_FIFO
         | REFER | TRUNCATE | IOCTL_DEV)

_libc = ctypes.CDLL(None, use_errno=True)


class LandlockError(RuntimeError):
    """Landlock is missing or refused a step; the message is one line."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi() -> int:
    """Returns the kernel's Landlock ABI version, 0 where it has none (or it is disabled)."""
    v = _libc.syscall(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                      ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(0, v)


def _handled(version: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if version >= 2:
        rights |= REFER
    if version >= 3:
        rights |= TRUNCATE
    if version >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(read: list[str], write: list[str], listable: list[str] = ()) -> int:
    """Confines this thread, and all it starts, to `read` and `write`; returns the ABI used.

    `listable` folders may be listed but not read beneath (a folder that
    holds something hidden). A path that does not exist is skipped. Raises LandlockError when the
    kernel has no Landlock or refuses the ruleset.
    """
    version = abi()
    if version < 1:
        raise LandlockError("landlock: not available in this kernel (or disabled at boot)")
    handled = _handled(version)
    attr = _RulesetAttr(handled, 0, SCOPE_SIGNAL if version >= 6 else 0)
    size = ctypes.sizeof(attr) if version >= 6 else (16 if version >= 4 else 8)
    ruleset = _libc.syscall(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                            ctypes.c_uint32(0))
    if ruleset < 0:
        raise LandlockError(f"landlock: create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for paths, rights in ((listable, READ_DIR), (read, READ), (write, READ | WRITE)):
            for path in paths:
                _add(ruleset, path, rights & handled)
        if _libc.syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise LandlockError(f"landlock: restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return version


def _add(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= FILE_ONLY
        rule = _PathBeneath(rights, fd)
        if _libc.syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                         ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise LandlockError(f"landlock: add_rule {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
