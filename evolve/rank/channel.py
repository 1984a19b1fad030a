"""A rank's result channel: what a sandboxed process may say to the outside, and how it is read.

The rank writes JSON lines on a pipe; the supervisor outside reads them
as untrusted input. A line is at most `MAX_LINE` bytes and holds exactly
one of: {"report": {name: number, bool, short string or null}} (a curve
point), {"result": value} or {"error": "one line"}. Anything else ends
the rank with a reason naming what was wrong.
"""

from __future__ import annotations

import json
import math
import os

MAX_LINE = 1 << 16  # bytes in one message
MAX_REPORTS = 100_000  # curve points in one run
MAX_KEYS, MAX_STR = 64, 4096  # fields in a point, characters in a string field
MAX_ENTRIES = 200_000  # files and folders a trial folder may hold


class ChannelError(ValueError):
    """The rank broke the channel's rules; the message is one line."""


class Writer:
    """The rank's end: one JSON line per message."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


def check(msg) -> dict:
    """Returns `msg` if it is a well-formed message, else raises ChannelError (pure)."""
    if not isinstance(msg, dict) or len(msg) != 1 or next(iter(msg)) not in ("report", "result", "error"):
        raise ChannelError("the variant sent a malformed message on its result channel "
                           "(expected one of report, result, error)")
    kind, body = next(iter(msg.items()))
    if kind == "error":
        if not isinstance(body, str):
            raise ChannelError("the variant sent an error that is not a string on its result channel")
        return {"error": " ".join(body.split())[:600]}
    if kind == "report":
        if not isinstance(body, dict) or len(body) > MAX_KEYS:
            raise ChannelError("the variant sent a curve point that is not a small mapping")
        for k, v in body.items():
            ok = (isinstance(k, str) and len(k) <= 64
                  and (v is None or isinstance(v, bool) or (isinstance(v, int) and abs(v) < 2**63)
                       or (isinstance(v, float) and not math.isnan(v))
                       or (isinstance(v, str) and len(v) <= MAX_STR)))
            if not ok:
                raise ChannelError(f"the variant sent a curve point with a bad field {str(k)[:40]!r}")
    return msg


class Reader:
    """The supervisor's end: feed it bytes, get checked messages."""

    def __init__(self):
        self.buf, self.reports = b"", 0

    def feed(self, chunk: bytes) -> list[dict]:
        self.buf += chunk
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if len(line) > MAX_LINE:
                raise ChannelError(f"the variant sent a message over {MAX_LINE:,} bytes on its result channel")
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                raise ChannelError("the variant sent a line that is not JSON on its result channel") from None
            msg = check(msg)
            if "report" in msg:
                self.reports += 1
                if self.reports > MAX_REPORTS:
                    raise ChannelError(f"the variant sent more than {MAX_REPORTS:,} curve points")
            out.append(msg)
        if len(self.buf) > MAX_LINE:
            raise ChannelError(f"the variant sent a message over {MAX_LINE:,} bytes on its result channel")
        return out


def folder_usage(folder: str, cap: int) -> int:
    """Returns the bytes (allocated blocks) under `folder`; stops counting past `cap` or MAX_ENTRIES
    entries (then returns cap + 1)."""
    total, entries, stack = 0, 0, [folder]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                entries += 1
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                if total > cap or entries > MAX_ENTRIES:
                    return cap + 1
    return total
