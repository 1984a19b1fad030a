"""The checks an agent's reply passes before any training: cheapest first.

    parse -> policy -> apply -> conflict -> duplicate -> syntax -> import -> smoke

`parse` reads the reply into edits; `policy` refuses a path that is sealed
or outside the mutable surface (before applying, so such an edit is named
for what it is, not as a missing file) and checks the applied result once
more; `apply` needs every SEARCH text to match once; `conflict` (a merge's
reply only) needs every conflict region of the merged files resolved, no
marker line left (`evolve.search.merge`); `duplicate` compares
the child's content hash with every variant the search knows; `syntax`
compiles Python and parses YAML without running anything; `import` and
`smoke` run the child for a few optimizer steps in a fresh process (a child
of the node's warm zygote) that is killed at a time-out. Each stage raises
`Rejected(stage, reason)`; the stage names are the keys of the rejection
counts.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import yaml

from evolve.agent.edits import EditError, apply_edits, check_paths, parse_reply
from evolve.messages import TrialConfig
from evolve.rank.sandbox import policy_for
from evolve.record.seals import surface_violations
from evolve.search.merge import CLOSE, OPEN, marker_lines
from evolve.variant import content_hash, variant_id
from evolve.warm import zygote

# Ray is imported inside the smoke stage, the only stage that needs a cluster.

STAGES = ("endpoint", "parse", "policy", "apply", "conflict", "duplicate", "syntax", "import", "smoke")


class Rejected(Exception):
    """A proposal failed a stage; `reason` is one line."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


def check_reply(reply: str, parent_files: dict[str, bytes], mutable: list[str], sealed: list[str],
                known_ids, unresolved: tuple = ()) -> tuple[dict[str, bytes], str, list[dict]]:
    """Returns (child files, rationale, changes) of a reply, or raises Rejected.

    Runs the stages that need no process: parse, policy, apply, conflict,
    duplicate, syntax. `unresolved`: the files of a merge whose conflict
    regions the reply must resolve. `changes` lists each file the child
    changes and how.
    """
    try:
        rationale, edits = parse_reply(reply)
    except EditError as e:
        raise Rejected("parse", str(e)) from None
    try:
        check_paths([e.path for e in edits], mutable, sealed)
    except EditError as e:
        raise Rejected("policy", str(e)) from None
    try:
        child = apply_edits(parent_files, edits)
    except EditError as e:
        raise Rejected("apply", str(e)) from None
    bad = surface_violations(parent_files, child, mutable)
    if bad:
        raise Rejected("policy", f"changes files outside the mutable surface: {', '.join(bad)}")
    for path in unresolved:
        left = marker_lines(child[path].decode("utf-8", "replace")) if path in child else []
        if left:
            raise Rejected("conflict", f"FILE: {path}: {len(left)} conflict marker line(s) left, the first at line "
                                       f"{left[0]}; replace each region from {OPEN} to {CLOSE} with its resolution")
    changed = sorted(p for p in child if child[p] != parent_files.get(p))
    if not changed:
        raise Rejected("duplicate", "the edits leave every file as it was")
    vid = variant_id({p: content_hash(b) for p, b in child.items()})
    if vid in known_ids:
        raise Rejected("duplicate", f"the child is identical to variant {vid}")
    for path in changed:
        check_syntax(path, child[path])
    kinds = {e.path: ("rewritten" if e.search is None else "edited") for e in edits}
    changes = [{"file": p, "how": kinds.get(p, "edited")} for p in changed]
    return child, rationale, changes


def check_syntax(path: str, data: bytes) -> None:
    """Raises Rejected("syntax") if a changed file is not text, valid Python or valid YAML."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise Rejected("syntax", f"{path}: not UTF-8 text") from None
    if path.endswith(".py"):
        try:
            compile(text, path, "exec", dont_inherit=True)
        except SyntaxError as e:
            raise Rejected("syntax", f"{path} line {e.lineno}: {e.msg}") from None
        except ValueError as e:  # null bytes
            raise Rejected("syntax", f"{path}: {e}") from None
    elif path.endswith((".yaml", ".yml")):
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = " ".join(str(e).split())[:200]
            raise Rejected("syntax", f"{path}: not valid YAML: {first}") from None


def smoke_run(files: dict[str, bytes], context: dict, work_dir: str, steps: int,
              timeout_s: float) -> float:
    """Runs a child for `steps` optimizer steps in a fresh process; returns its seconds.

    The process is a child of this node's CPU zygote (forked warm, so the
    check costs the steps, not the imports) and is killed, with all it
    started, after `timeout_s`. Raises Rejected("import") if the recipe
    does not import, Rejected("smoke") if it fails or runs too long.
    """

    # The CPU zygote is keyed by DS_ACCELERATOR: set it for this call only,
    # so a pooled Ray worker that later hosts a GPU trial is left as it was.
    before = os.environ.get("DS_ACCELERATOR")
    os.environ["DS_ACCELERATOR"] = "cpu"
    work = Path(work_dir)
    variant_dir, out_dir = work / "variant", work / "out"
    try:
        for rel, data in files.items():
            target = variant_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = TrialConfig.from_dict({**context, "variant_dir": str(variant_dir), "out_dir": str(out_dir),
                                        "max_steps": steps})
        seen = []
        try:
            result = zygote.call("evolve.rank.entry:smoke_rank", {"config": config.to_dict()},
                                 env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
                                 log=str(work / "smoke.log"), recipe=str(variant_dir / "recipe.py"),
                                 on_report=seen.append, timeout_s=timeout_s,
                                 sandbox=policy_for(config, str(out_dir)), search=config.search)
        except zygote.ChildFailed as e:
            raise Rejected("smoke" if seen else "import", str(e)) from None
        return float(result["seconds"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if before is None:
            os.environ.pop("DS_ACCELERATOR", None)
        else:
            os.environ["DS_ACCELERATOR"] = before


def _smoke_result(files: dict[str, bytes], context: dict, work_dir: str, steps: int,
                  timeout_s: float) -> dict:
    try:
        return {"seconds": smoke_run(files, context, work_dir, steps, timeout_s)}
    except Rejected as r:
        return {"stage": r.stage, "reason": r.reason}


@functools.lru_cache(maxsize=1)
def smoke_task():
    """Returns the smoke run as a Ray task answering {"seconds"} or {"stage", "reason"}.

    It holds no CPU: it borrows one for a few seconds, where asking for one
    would queue it behind the trials and leave their slots waiting on it.
    """
    import ray

    return ray.remote(num_cpus=0, max_retries=0)(_smoke_result)
