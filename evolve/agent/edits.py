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

Under `operator.kind: hybrid` a TUNABLE block may follow the rationale,
before the first FILE: settings keys a classical optimiser tunes, each
with a range, `log` for a log-uniform one (`parse_tunable`, then
`check_tunable` against the child's settings file):

    TUNABLE:
    lr: [1.0e-4, 1.0e-2] log
    warmup_frac: [0.0, 0.2]

Strict where it matters (every edit names a file, a SEARCH text must match
exactly once) and forgiving where it is safe (code fences around blocks,
trailing spaces, CRLF line ends). Pure functions; errors are one line.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass

import yaml

MAX_REPLY_CHARS = 200_000  # a longer reply is rejected before parsing
MAX_TUNABLE = 8  # keys one TUNABLE block may declare


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
    m = re.search(r"RATIONALE:\s*(?P<r>.*?)(?=^\s*(?:FILE|TUNABLE):|\Z)", text, re.S | re.M)
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


_TUNABLE = re.compile(r"^\s*TUNABLE:[ \t]*$", re.M)
_RANGE = re.compile(r"^(?P<key>[A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*)*)\s*:\s*\[(?P<lo>[^,\]]*),(?P<hi>[^\]]*)\]"
                    r"\s*(?P<log>\w+)?$")


def _bound(key: str, text: str) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        raise EditError(f"TUNABLE: {key}: {text.strip()!r} is not a number") from None
    if not math.isfinite(v):
        raise EditError(f"TUNABLE: {key}: {text.strip()!r} is not a finite number")
    return v


def parse_tunable(text: str) -> dict[str, list]:
    """Returns {key: [low, high, log]} of a reply's TUNABLE block ({} without one); raises EditError.

    The block starts at a `TUNABLE:` line before the first FILE line and
    ends at a blank line or a FILE line; each line is `key: [low, high]`,
    optionally followed by `log`.
    """
    text = _normalise(text or "")
    head = _FILE.search(text)
    before = text[:head.start()] if head else text
    m = _TUNABLE.search(before)
    if m is None:
        return {}
    out: dict[str, list] = {}
    for line in before[m.end():].lstrip("\n").split("\n"):
        line = line.strip().strip("`")
        if not line:
            break
        r = _RANGE.match(line)
        if r is None:
            raise EditError(f"TUNABLE: expected 'key: [low, high]' or 'key: [low, high] log', got {line[:80]!r}")
        key = r["key"]
        if key in out:
            raise EditError(f"TUNABLE: {key}: declared twice")
        if r["log"] not in (None, "log"):
            raise EditError(f"TUNABLE: {key}: expected 'log' or nothing after the range, got {r['log']!r}")
        lo, hi = _bound(key, r["lo"]), _bound(key, r["hi"])
        if not lo < hi:
            raise EditError(f"TUNABLE: {key}: low {lo:g} is not below high {hi:g}")
        if r["log"] and lo <= 0:
            raise EditError(f"TUNABLE: {key}: a log range needs low above 0, got {lo:g}")
        out[key] = [lo, hi, bool(r["log"])]
        if len(out) > MAX_TUNABLE:
            raise EditError(f"TUNABLE: more than {MAX_TUNABLE} keys")
    if not out:
        raise EditError("TUNABLE: the block declares no key")
    return out


def check_tunable(tunable: dict, settings: bytes | None, settings_file: str) -> dict[str, list]:
    """Returns the declared ranges checked against the child's settings file; raises EditError.

    Each key must hold a number (not a boolean) in the file; an integer
    key's range is rounded inward to whole numbers.
    """
    if not tunable:
        return {}
    try:
        flat = _flat(yaml.safe_load((settings or b"").decode()) or {})
    except (UnicodeDecodeError, yaml.YAMLError):
        raise EditError(f"TUNABLE: {settings_file} is not readable YAML") from None
    out = {}
    for key, (lo, hi, log) in tunable.items():
        if key not in flat:
            raise EditError(f"TUNABLE: {key}: not a key of {settings_file}")
        v = flat[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise EditError(f"TUNABLE: {key}: {v!r} in {settings_file} is not a number")
        if isinstance(v, int):
            lo, hi = math.ceil(lo), math.floor(hi)
            if not lo < hi:
                raise EditError(f"TUNABLE: {key}: an integer key needs two whole numbers in its range")
        out[key] = [lo, hi, log]
    return out


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {}
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
