"""Parsing an agent's reply into edits, and applying them to a variant's files.

The reply format (also shown to the agent in every prompt):

    RATIONALE: why this change should lower the held-out loss

    FILE: config.yaml
    <<<<<<< SEARCH
    lr: 1.0e-3            # peak learning rate
    =======
    lr: 2.0e-3            # peak learning rate
    >>>>>>> REPLACE

    FILE: guidelines.md
    ```
    (the whole new file)
    ```

Strict where it matters (every edit names a file, a SEARCH text must match
exactly once) and forgiving where it is safe (code fences around blocks,
trailing spaces, CRLF line ends). Pure functions; errors are one line.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

MAX_REPLY_CHARS = 200_000  # a longer reply is rejected before parsing


class EditError(ValueError):
    """The reply cannot be parsed or applied; the message is one line."""


@dataclass(frozen=True)
class Edit:
    path: str
    search: str | None  # None: `replace` is the whole new file
    replace: str


_FILE = re.compile(r"^\s*FILE:\s*(?P<path>\S+)\s*$", re.M)
_BLOCK = re.compile(r"<<<<<<< SEARCH\n(?P<search>.*?)\n?=======\n(?P<replace>.*?)\n?>>>>>>> REPLACE", re.S)
_FENCE = re.compile(r"^```[\w.+-]*\n(?P<body>.*?)\n?```\s*$", re.S)


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n"))


def parse_reply(text: str) -> tuple[str, list[Edit]]:
    """Returns (rationale, edits) of an agent's reply; raises EditError if none."""
    if text is None or not text.strip():
        raise EditError("reply is empty")
    if len(text) > MAX_REPLY_CHARS:
        raise EditError(f"reply is {len(text):,} characters, over the limit of {MAX_REPLY_CHARS:,}")
    text = _normalise(text)
    m = re.search(r"RATIONALE:\s*(?P<r>.*?)(?=^\s*FILE:|\Z)", text, re.S | re.M)
    rationale = " ".join(m["r"].split()) if m else ""
    if not rationale:
        raise EditError("reply has no RATIONALE")
    heads = list(_FILE.finditer(text))
    if not heads:
        raise EditError("reply has no FILE: section")
    edits: list[Edit] = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[head.end():end].strip("\n")
        path = clean_path(head["path"])
        blocks = list(_BLOCK.finditer(body))
        if blocks:
            edits.extend(Edit(path, b["search"], b["replace"]) for b in blocks)
            continue
        fence = _FENCE.match(body.strip())
        if not fence:
            raise EditError(f"FILE: {path}: expected SEARCH/REPLACE blocks or one fenced whole file")
        edits.append(Edit(path, None, fence["body"] + "\n"))
    return rationale, edits


def _find(lines: list[str], search: list[str]) -> list[int]:
    """Returns every index where `search` matches `lines`, trailing spaces ignored."""
    k = len(search)
    return [i for i in range(len(lines) - k + 1) if lines[i:i + k] == search]


def apply_edits(files: dict[str, bytes], edits: list[Edit]) -> dict[str, bytes]:
    """Returns the files with every edit applied, in order; raises EditError.

    A SEARCH text matches whole lines, trailing spaces and line ends aside,
    and must match exactly once; lines outside the match keep their bytes.
    """
    out = dict(files)
    for e in edits:
        if e.search is None:
            out[e.path] = e.replace.encode()
            continue
        if e.path not in out:
            raise EditError(f"FILE: {e.path}: no such file to edit")
        try:
            text = out[e.path].decode()
        except UnicodeDecodeError:
            raise EditError(f"FILE: {e.path}: not UTF-8 text") from None
        lines = text.split("\n")
        search = _normalise(e.search).strip("\n").split("\n")
        if not any(s.strip() for s in search):
            raise EditError(f"FILE: {e.path}: empty SEARCH text")
        hits = _find([ln.rstrip().rstrip("\r") for ln in lines], search)
        if len(hits) != 1:
            first = next(s for s in search if s.strip())[:60]
            what = "not found" if not hits else f"found {len(hits)} times"
            raise EditError(f"FILE: {e.path}: SEARCH text {what}: {first.strip()!r}")
        replace = _normalise(e.replace).strip("\n")
        new = replace.split("\n") if replace else []
        i = hits[0]
        out[e.path] = "\n".join(lines[:i] + new + lines[i + len(search):]).encode()
    return out


def clean_path(path: str) -> str:
    """Returns a reply's file path without quotes or a leading ./"""
    path = path.strip("`'\"")
    while path.startswith("./"):
        path = path[2:]
    return path


def check_paths(paths: list[str], mutable: list[str], sealed: list[str]) -> None:
    """Raises EditError naming the first path that is sealed or outside the mutable surface.

    `mutable` and the reply's paths are relative to the scaffold; `sealed`
    holds the experiment's sealed paths (relative to the experiment root),
    so `FILE: harness/evaluate.py` and `FILE: ../harness/evaluate.py` both
    read as sealed.
    """
    for path in paths:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        tail = "/".join(p for p in parts if p != "..")
        if any(fnmatch.fnmatchcase(tail, s) or fnmatch.fnmatchcase(tail, "*/" + s) for s in sealed):
            raise EditError(f"FILE: {path}: sealed; the agent may not change it")
        if path not in mutable:
            raise EditError(f"FILE: {path}: outside the mutable surface ({', '.join(mutable)})")
