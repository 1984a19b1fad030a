"""Replies already paid for, kept by the hash of what was asked.

Every completion the agent receives is written to `replies/<hash>.json` in
the run folder (atomically) before it is used, the hash covering the model
entry's model, temperature and token limit and the whole conversation
sent. When the same request is made again, as after `evolve resume`
rebuilds the same prompt from the same state, the kept reply is used and
nothing is paid: the audit row says so, with no tokens and no price.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evolve.llm import Completion
from evolve.store import atomic_write


def request_hash(entry: dict, messages: list) -> str:
    key = json.dumps({"model": entry["model"], "temperature": entry.get("temperature"),
                      "max_tokens": entry.get("max_tokens"), "messages": messages}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


class ReplyCache:
    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / "replies"

    def get(self, entry: dict, messages: list) -> Completion | None:
        """Returns the kept reply to this request, or None (also for an unreadable file)."""
        path = self.root / f"{request_hash(entry, messages)}.json"
        try:
            kept = json.loads(path.read_text())
            return Completion(text=kept["text"], prompt_tokens=0, completion_tokens=0, latency_s=0.0,
                              model=kept["model"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, entry: dict, messages: list, c: Completion) -> None:
        atomic_write(self.root / f"{request_hash(entry, messages)}.json",
                     json.dumps({"text": c.text, "model": c.model, "prompt_tokens": c.prompt_tokens,
                                 "completion_tokens": c.completion_tokens}).encode())
