"""Weights a completed trial keeps for its children: `inherit/<variant>/` in the run folder.

With `operator.inherit`, every trial keeps its final DeepSpeed checkpoint
(weights and optimizer state, sealed out of the trial folder by the trial
process), and a child that changes only settings continues from it
(`evolve.search.inherit`). The folder holds `weights/` (the checkpoint) and
`inherit.json`, written by the trial process, never by the variant's.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from evolve.record.store import atomic_write

INHERIT = "inherit"  # run_dir/inherit/<variant>/: its final weights and optimizer state, for its children


def keep_weights(run_dir: Path, vid: str, sealed: Path, tokens: int) -> Path:
    """Keeps a completed trial's final checkpoint (already sealed) as `inherit/<vid>/`, atomically.

    `inherit.json` beside it is written here, by the trial process: the
    tokens the weights hold are the ones the searcher gave the trial, not
    what the variant's process wrote into its checkpoint.
    """
    dest = run_dir / INHERIT / vid
    tmp = run_dir / INHERIT / f".{vid}.{uuid.uuid4().hex[:8]}.tmp"
    shutil.copytree(sealed, tmp / "weights", symlinks=True)
    # not uploaded from here (a cloud run folder's sweeper uploads inherit/ once it is in place)
    atomic_write(tmp / "inherit.json", json.dumps({"variant_id": vid, "tokens": tokens}).encode(), upload=False)
    shutil.rmtree(dest, ignore_errors=True)  # a retried trial's
    os.replace(tmp, dest)
    return dest


def read_inherit(run_dir: Path, vid: str) -> int | None:
    """The tokens `vid`'s kept weights hold, or None when it kept none (or they are unreadable)."""
    try:
        meta = json.loads((Path(run_dir) / INHERIT / vid / "inherit.json").read_text())
        tokens = meta["tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tokens if isinstance(tokens, int) and tokens > 0 and meta.get("variant_id") == vid else None
