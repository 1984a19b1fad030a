"""The merge operator's algorithms: a three-way merge of two variants, and which two to merge.

Pure functions. `merge_text` merges two texts changed from a common base
line by line, as diff3 does: the lines all three share (difflib's matching
blocks of base against each side, intersected) split the files into
stable regions and changed ones; a region changed on one side only takes
that side, one changed identically on both takes it once, and one changed
differently on both is a conflict, written with the markers below.
`merge_files` does it for every mutable file of two variants;
`choose_pair` picks two strong variants from different lineages and their
nearest common ancestor, the merge's base.

The markers are not git's: a conflict region sits inside the SEARCH text
of the agent's reply (`evolve.agent.edits`), whose `=======` separator a
git-style region would end early.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

OPEN, BASE, THEIRS, CLOSE = "<<<<<<< CONFLICT", "||||||| BASE", "------- THEIRS", ">>>>>>> END CONFLICT"
MARKERS = (OPEN, BASE, THEIRS, CLOSE)


class MergeError(ValueError):
    """Two variants cannot be merged line by line (a file that is not text); the message is one line."""


@dataclass(frozen=True)
class Conflict:
    """A region both sides changed differently: the base's, ours' and theirs' lines (0-based, end exclusive)."""

    base: tuple[int, int]
    ours: tuple[int, int]
    theirs: tuple[int, int]


@dataclass(frozen=True)
class TextMerge:
    text: str  # the merged text; each conflict is written between the markers
    conflicts: list = field(default_factory=list)  # of Conflict


def _sync_regions(base: list[str], ours: list[str], theirs: list[str]) -> list[tuple]:
    """Returns (base start, base end, ours start, ours end, theirs start, theirs end) of the lines all three share."""
    a = difflib.SequenceMatcher(None, base, ours, autojunk=False).get_matching_blocks()
    b = difflib.SequenceMatcher(None, base, theirs, autojunk=False).get_matching_blocks()
    ia = ib = 0
    out = []
    while ia < len(a) and ib < len(b):
        abase, amatch, alen = a[ia]
        bbase, bmatch, blen = b[ib]
        lo, hi = max(abase, bbase), min(abase + alen, bbase + blen)
        if lo < hi:
            oa, ob = amatch + lo - abase, bmatch + lo - bbase
            out.append((lo, hi, oa, oa + hi - lo, ob, ob + hi - lo))
        if abase + alen < bbase + blen:
            ia += 1
        else:
            ib += 1
    out.append((len(base), len(base), len(ours), len(ours), len(theirs), len(theirs)))
    return out


def _ended(lines: list[str]) -> list[str]:
    """The lines with a newline after the last one, so a marker line never joins it."""
    return lines[:-1] + [lines[-1] + "\n"] if lines and not lines[-1].endswith("\n") else lines


def merge_text(base: str, ours: str, theirs: str, labels: tuple[str, str, str] = ("", "", "")) -> TextMerge:
    """Returns the three-way merge of `ours` and `theirs`, both changed from `base`.

    `labels` (ours, base, theirs) follow the markers of a conflict region:

        <<<<<<< CONFLICT ours-label
        ours' lines
        ||||||| BASE base-label
        the base's lines
        ------- THEIRS theirs-label
        theirs' lines
        >>>>>>> END CONFLICT
    """
    if ours == theirs or theirs == base:
        return TextMerge(ours)
    if ours == base:
        return TextMerge(theirs)
    z, a, b = (t.splitlines(keepends=True) for t in (base, ours, theirs))
    out: list[str] = []
    conflicts = []
    iz = ia = ib = 0
    for zs, ze, as_, ae, bs, be in _sync_regions(z, a, b):
        za, aa, bb = z[iz:zs], a[ia:as_], b[ib:bs]
        if aa or bb or za:
            if aa == bb:
                out += aa
            elif aa == za:
                out += bb
            elif bb == za:
                out += aa
            else:
                conflicts.append(Conflict((iz, zs), (ia, as_), (ib, bs)))
                lo, lz, lt = (f" {x}" if x else "" for x in labels)
                out += [f"{OPEN}{lo}\n", *_ended(aa), f"{BASE}{lz}\n", *_ended(za),
                        f"{THEIRS}{lt}\n", *_ended(bb), f"{CLOSE}\n"]
        out += z[zs:ze]
        iz, ia, ib = ze, ae, be
    return TextMerge("".join(out), conflicts)


def marker_lines(text: str) -> list[int]:
    """Returns the 1-based numbers of the lines that are conflict markers."""
    return [i for i, line in enumerate(text.split("\n"), 1) if line.startswith(MARKERS)]


@dataclass(frozen=True)
class FilesMerge:
    files: dict  # path -> bytes: the merged files, conflict regions marked
    conflicts: dict  # path -> list of Conflict, for the files with any
    from_theirs: list  # paths whose merged text takes anything from theirs

    @property
    def n_conflicts(self) -> int:
        return sum(len(c) for c in self.conflicts.values())


def _text(path: str, side: str, data: bytes | None) -> str:
    try:
        return (data or b"").decode()
    except UnicodeDecodeError:
        raise MergeError(f"{path}: {side}'s file is not UTF-8 text; it cannot be merged line by line") from None


def merge_files(base: dict, ours: dict, theirs: dict, mutable: list[str],
                labels: tuple[str, str, str] = ("ours", "base", "theirs")) -> FilesMerge:
    """Returns the three-way merge of two variants' files (path -> bytes) changed from `base`'s.

    Only mutable files are merged; every other file must be the same on
    all three (no operator may change one), and is kept as it is.
    """
    out, conflicts, from_theirs = {}, {}, []
    for path in sorted(set(base) | set(ours) | set(theirs)):
        z, a, b = base.get(path), ours.get(path), theirs.get(path)
        if path not in mutable:
            if not (z == a == b):
                raise MergeError(f"{path}: not mutable, yet it differs between the variants")
            if a is not None:
                out[path] = a
            continue
        if a == b or b == z:
            merged, found = a, []
        elif a == z:
            merged, found = b, []
        else:
            m = merge_text(_text(path, "the base", z), _text(path, "ours", a), _text(path, "theirs", b), labels)
            merged, found = m.text.encode(), m.conflicts
        if merged != a:
            from_theirs.append(path)
        if found:
            conflicts[path] = found
        if merged is not None:
            out[path] = merged
    return FilesMerge(out, conflicts, from_theirs)


def first_parent_chain(parents: dict, vid: str) -> list[str]:
    """Returns `vid`, its first parent, that one's first parent, ... up to a root (the seed)."""
    chain, seen = [vid], {vid}
    while parents.get(chain[-1]):
        up = parents[chain[-1]][0]
        if up in seen:
            raise ValueError(f"variant {up} is its own ancestor")
        chain.append(up)
        seen.add(up)
    return chain


def ancestors(parents: dict, vid: str) -> set[str]:
    """Returns every variant `vid` descends from, through any parent."""
    out, todo = set(), list(parents.get(vid, ()))
    while todo:
        v = todo.pop()
        if v not in out:
            out.add(v)
            todo.extend(parents.get(v, ()))
    return out


def common_base(parents: dict, a: str, b: str) -> str | None:
    """Returns the nearest variant on both first-parent chains (the seed at the latest), or None."""
    on_a = set(first_parent_chain(parents, a))
    return next((v for v in first_parent_chain(parents, b) if v in on_a), None)


def choose_pair(parents: dict, scores: dict, pool: int, skip=frozenset()) -> tuple[str, str, str] | None:
    """Returns (ours, theirs, base) for the next merge, or None when no pair qualifies.

    `parents`: variant -> its parents' ids (every variant the search knows);
    `scores`: variant -> score, higher is better (completed variants only).
    The `pool` best-scored variants are paired, the best pairs first (by
    the sum of their ranks); a pair qualifies when neither is an ancestor of
    the other, their first-parent chains meet at a known variant (the base)
    and it is not in `skip` (frozensets of pairs already tried). Ours is
    the better of the two.
    """
    top = sorted(scores, key=lambda v: (-scores[v], v))[:pool]
    pairs = sorted(((i, j) for i in range(len(top)) for j in range(i + 1, len(top))),
                   key=lambda p: (p[0] + p[1], p[0]))
    for i, j in pairs:
        a, b = top[i], top[j]
        if frozenset((a, b)) in skip or a in ancestors(parents, b) or b in ancestors(parents, a):
            continue
        base = common_base(parents, a, b)
        if base is not None and base in parents:
            return a, b, base
    return None
