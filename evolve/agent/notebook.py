"""The agent's research notebook, versioned like a variant.

    notebook/<version>.json   {version, parent, text (content hash), proposal_id, model, created_at}

Each version's text is a blob in the run's content-addressed store; a
version names the one it rewrote, so the notebook's history is a chain.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from evolve.record.store import Store, atomic_write


def save(store: Store, version: int, text: str, proposal_id: str, model: str) -> dict:
    """Stores notebook `version` (its parent is version - 1); returns its manifest."""
    manifest = {"version": version, "parent": version - 1 if version > 1 else None,
                "text": store.put_blob(text.encode()), "proposal_id": proposal_id, "model": model,
                "created_at": time.time()}
    atomic_write(store.root / "notebook" / f"{version:05d}.json",
                 json.dumps(manifest, sort_keys=True, indent=1).encode())
    return manifest


def versions(run_dir: str | Path) -> list[dict]:
    """Returns every notebook version, oldest first, each with its text."""
    store = Store(run_dir)
    out = []
    for path in sorted((Path(run_dir) / "notebook").glob("*.json")):
        manifest = json.loads(path.read_text())
        manifest["text"] = store.get_blob(manifest["text"]).decode()
        out.append(manifest)
    return out
