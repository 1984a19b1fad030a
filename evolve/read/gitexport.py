"""The lineage as a git repository: a commit per variant, its parents as commit parents.

`export_git(run_dir, dest)` streams every variant of a run into `git
fast-import` (one process, however large the population): each variant's
files as one commit whose parents are its parent variants' commits (a
crossover is a merge), dated when the variant was proposed, with the
operator's rationale as the subject and its record, status and fitness
in the body. Every variant gets a tag named by its id; `main` points at
the champion (the best completed variant), so `git log main` is the path
from the seed to it and `git diff`, `git show` and `git revert` work as
on any repository.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from evolve.record.store import Store
from evolve.spec import SpecError, run_settings
from evolve.variant import Variant

IDENTITY = "evolve <evolve@localhost>"


def lineage_order(variants: dict[str, Variant]) -> list[str]:
    """Returns the variant ids with every parent before its children, oldest first otherwise."""
    order, done = [], set()

    def visit(vid: str, path: tuple = ()) -> None:
        if vid in done or vid not in variants:
            return
        if vid in path:
            raise ValueError(f"variant {vid} is its own ancestor")
        for p in variants[vid].parents:
            visit(p, path + (vid,))
        done.add(vid)
        order.append(vid)

    for vid in sorted(variants, key=lambda v: (variants[v].created_at, v)):
        visit(vid)
    return order


def message(v: Variant, row: dict | None, metric: str) -> str:
    """Returns the commit message of variant `v`: rationale, then what happened to it."""
    rationale = (v.record.get("rationale") or v.operator).strip()
    subject, _, rest = rationale.partition("\n")
    lines = [f"{v.operator}: {subject}"[:200], ""]
    if rest.strip():
        lines += [rest.strip(), ""]
    lines.append(f"variant: {v.id}")
    if v.parents:
        lines.append(f"parents: {', '.join(v.parents)}")
    if row is None:
        lines.append("status: not trained")
    elif row["status"] == "completed" and row["fitness"] is not None and math.isfinite(row["fitness"]):
        lines.append(f"status: completed, {metric} {row['fitness']:.6g}")
    else:
        lines.append(f"status: {row['status']}: {row.get('failure_reason') or ''}".rstrip(": "))
    lines += ["", "record: " + json.dumps(v.record, sort_keys=True, default=str)]
    return "\n".join(lines) + "\n"


def _data(payload: bytes) -> bytes:
    return b"data %d\n" % len(payload) + payload + b"\n"


def export_git(run_dir: str | Path, dest: str | Path) -> dict:
    """Writes the run's lineage as a new git repository at `dest`; returns {"variants", "champion"}."""
    run_dir, dest = Path(run_dir), Path(dest)
    if not (run_dir / "variants").is_dir():
        raise SpecError(f"export-git: {str(run_dir)!r} is not a run directory (no variants/ folder)")
    if dest.exists() and any(dest.iterdir()):
        raise SpecError(f"export-git: {str(dest)!r} exists and is not empty")
    store = Store(run_dir)
    variants = {vid: store.get_variant(vid) for vid in store.variant_ids()}
    rows = {r["variant_id"]: r for r in store.read_results().to_pylist()}
    saved = run_settings(run_dir).objective
    objective = {"metric": saved.metric, "mode": saved.mode}
    order = lineage_order(variants)

    stream, marks, blob_marks = [], {}, {}
    for vid in order:
        v = variants[vid]
        for rel, key in sorted(v.files.items()):
            if key not in blob_marks:
                blob_marks[key] = len(blob_marks) + 1
                stream.append(b"blob\nmark :%d\n" % blob_marks[key] + _data(store.get_blob(key)))
    base = len(blob_marks)
    for i, vid in enumerate(order):
        v = variants[vid]
        marks[vid] = base + i + 1
        when = int(v.created_at)
        head = [f"commit refs/tags/{vid}", f"mark :{marks[vid]}",
                f"author {IDENTITY} {when} +0000", f"committer {IDENTITY} {when} +0000"]
        parents = [p for p in v.parents if p in marks]
        body = "\n".join(head).encode() + b"\n" + _data(message(v, rows.get(vid), objective["metric"]).encode())
        if parents:
            body += f"from :{marks[parents[0]]}\n".encode()
            body += b"".join(f"merge :{marks[p]}\n".encode() for p in parents[1:])
        body += b"deleteall\n" + b"".join(f"M 100644 :{blob_marks[key]} {rel}\n".encode()
                                          for rel, key in sorted(v.files.items()))
        stream.append(body + b"\n")
    champion = _champion(rows, objective["mode"]) or (order[0] if order else None)
    if champion is not None:
        stream.append(f"reset refs/heads/main\nfrom :{marks[champion]}\n\n".encode())

    dest.mkdir(parents=True, exist_ok=True)
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "fast-import", "--quiet", stdin=b"".join(stream))
    if champion is not None:
        _git(dest, "checkout", "-q", "main")
    return {"variants": len(order), "champion": champion}


def _champion(rows: dict, mode: str) -> str | None:
    done = [(r["fitness"], vid) for vid, r in rows.items()
            if r["status"] == "completed" and r["fitness"] is not None and math.isfinite(r["fitness"])]
    if not done:
        return None
    return (min(done) if mode == "min" else max(done))[1]


def _git(repo: Path, *args: str, stdin: bytes | None = None) -> None:
    out = subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True)
    if out.returncode != 0:
        err = " ".join(out.stderr.decode(errors="replace").split())[:300]
        raise SpecError(f"export-git: git {args[0]} failed: {err}")
