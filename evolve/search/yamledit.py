"""Edits scalar values in YAML text in place, keeping comments and layout.

The heuristic operator changes numbers and choices in a scaffold's settings
file; rewriting the file with a YAML dumper would drop the comments that
document each value and turn a one-line change into a noisy diff.
"""

from __future__ import annotations

import math
import re

import yaml

_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w\-]*)\s*:(?P<rest>.*)$")


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: about 10x faster


def load(text: str):
    """Returns `yaml.safe_load(text)`, through libyaml where it is installed."""
    return yaml.load(text, Loader=_Loader)


def flatten(d: dict, prefix: str = "") -> dict:
    """Returns {dotted.key: scalar} for every scalar leaf of a nested mapping."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def format_scalar(value) -> str:
    """Returns YAML text that parses back to exactly `value`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"format_scalar: {value!r} is not finite")
        text = repr(value)  # the shortest text that reads back as the same float
        if "e" in text:
            mant, exp = text.split("e")
            if "." not in mant:
                mant += ".0"
            text = f"{mant}e{exp}"
        elif "." not in text:
            text += ".0"
        return text
    if isinstance(value, str):
        dumped = yaml.safe_dump(value, default_style=None).strip()
        return dumped.removesuffix("\n...").removesuffix("...").strip()
    if value is None:
        return "null"
    raise ValueError(f"format_scalar: cannot write {value!r}")


def _split_comment(rest: str) -> tuple[str, str]:
    """Returns (value text, ' # comment' or '') of what follows `key:`."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"" and quote is None:
            quote = ch
        elif ch == quote:
            quote = None
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i], rest[i:]
    return rest, ""


def set_value(text: str, dotted: str, value) -> str:
    """Returns `text` with the scalar at `dotted` replaced by `value`.

    Raises KeyError if the key is not a scalar line of the file.
    """
    path = dotted.split(".")
    lines = text.splitlines(keepends=True)
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    for i, line in enumerate(lines):
        m = _KEY_LINE.match(line.rstrip("\n"))
        if not m:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        keys = [k for _, k in stack] + [m["key"]]
        body, comment = _split_comment(m["rest"])
        if keys == path and body.strip():
            pad = body[: len(body) - len(body.lstrip())] or " "
            tail = body[len(body.rstrip()):]
            new = f"{m['indent']}{m['key']}:{pad}{format_scalar(value)}{tail}{comment}"
            lines[i] = new + ("\n" if line.endswith("\n") else "")
            out = "".join(lines)
            if flatten(load(out) or {}).get(dotted) != value:
                raise KeyError(f"{dotted}: could not set to {value!r} in place")
            return out
        if not body.strip():
            stack.append((indent, m["key"]))
    raise KeyError(f"{dotted}: no such scalar key")
