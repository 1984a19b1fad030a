"""Proposals the agent finished, kept on disk the moment they are done.

An agent thread writes each finished proposal (accepted or rejected: its
files, rationale and every call with its tokens) to
`proposals/<proposal id>.json` before the searcher takes it in, which may
be a whole trial later when every slot is busy. A driver killed in between
loses nothing it paid for: `evolve resume` takes in each kept proposal the
restored searcher had not (see `LLMOperator.restore`). A child's files go
to the content-addressed store first, so a kept proposal is small.
"""

from __future__ import annotations

import json
from pathlib import Path

from evolve.agent.writer import Outcome, Request
from evolve.record.store import Store, atomic_write

FOLDER = "proposals"
REQUEST_FIELDS = ("proposal_id", "purpose", "model", "prompt_hash", "parent_id", "island",
                  "notebook_version", "created_at")
OPTIONAL_FIELDS = {"merge": dict}  # fields a proposal kept before they existed lacks


def keep(store: Store, out: Outcome) -> Path:
    """Writes the finished proposal `out` to the run's proposals/ folder, atomically."""
    req = out.request
    data = {"request": {**{k: getattr(req, k) for k in (*REQUEST_FIELDS, *OPTIONAL_FIELDS)}, "arm": req.arm},
            "ok": out.ok, "stage": out.stage, "reason": out.reason,
            "files": store.put_files(out.files) if out.files is not None else None,
            "rationale": out.rationale, "changes": out.changes, "text": out.text,
            "calls": out.calls, "smoke_seconds": out.smoke_seconds, "tunable": out.tunable}
    path = store.root / FOLDER / f"{req.proposal_id}.json"
    atomic_write(path, json.dumps(data, sort_keys=True).encode())
    return path


def load(store: Store, skip: set[str] = frozenset()) -> tuple[list[Outcome], list[str]]:
    """Returns (the kept proposals whose ids are not in `skip`, oldest request first; one line per unreadable file)."""
    outs, bad = [], []
    for path in sorted((store.root / FOLDER).glob("*.json")):
        if path.stem in skip:
            continue
        try:
            data = json.loads(path.read_text())
            req = Request(messages=[], **{k: data["request"][k] for k in REQUEST_FIELDS},
                          arm=str(data["request"].get("arm") or ""),  # no arm: kept before the bandit
                          **{k: make(data["request"].get(k) or make()) for k, make in OPTIONAL_FIELDS.items()})
            files = ({rel: store.get_blob(key) for rel, key in data["files"].items()}
                     if data["files"] is not None else None)
            outs.append(Outcome(req, data["ok"], data["stage"], data["reason"], files=files,
                                rationale=data["rationale"], changes=data["changes"], text=data["text"],
                                calls=data["calls"], smoke_seconds=data["smoke_seconds"],
                                tunable=data.get("tunable") or {}))  # none kept before the hybrid search
        except (OSError, ValueError, KeyError, TypeError, FileNotFoundError) as e:
            bad.append(f"{FOLDER}/{path.name} is unreadable ({' '.join(str(e).split())[:200]}); left out")
    return sorted(outs, key=lambda o: o.request.created_at), bad
