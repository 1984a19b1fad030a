"""Replies already paid for, kept by the hash of what was asked.

Every completion the agent receives is written to `replies/<hash>.json` in
the run folder (atomically) before it is used, the hash covering the
proposal's id and attempt, the model entry's model, temperature and token
limit, and the whole conversation sent. When the same request is made
again, as after `evolve resume` restores the operator's request counter and
rebuilds the same prompt from the same state, the kept reply is used and
nothing is paid: the audit row says so, with no tokens and no price. Two
proposals that happen to send the same prompt within a run have different
ids, so each still gets its own sample.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evolve.agent.client import Completion
from evolve.record.store import atomic_write


def request_hash(entry: dict, messages: list, tag: str) -> str:
    key = json.dumps({"tag": tag, "model": entry["model"], "temperature": entry.get("temperature"),
                      "max_tokens": entry.get("max_tokens"), "messages": messages}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


class ReplyCache:
    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / "replies"

    def get(self, entry: dict, messages: list, tag: str) -> Completion | None:
        """Returns the kept reply to this request, or None (also for an unreadable file)."""
        path = self.root / f"{request_hash(entry, messages, tag)}.json"
        try:
            kept = json.loads(path.read_text())
            return Completion(text=kept["text"], prompt_tokens=0, completion_tokens=0, latency_s=0.0,
                              model=kept["model"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, entry: dict, messages: list, tag: str, c: Completion) -> None:
        atomic_write(self.root / f"{request_hash(entry, messages, tag)}.json",
                     json.dumps({"text": c.text, "model": c.model, "prompt_tokens": c.prompt_tokens,
                                 "completion_tokens": c.completion_tokens}).encode())
