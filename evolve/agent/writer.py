"""Writing proposals: one request to the LLM, its repair rounds and its checks.

`write_child` and `write_notebook` are plain functions of a `Request`, a
client and a smoke-run callable; `Agent` runs them on daemon threads in the
driver so that the searcher's `suggest` never waits on the network. The
threads hold the HTTP clients (and so the API key) in this process only;
smoke runs go out as Ray tasks. A thread never touches the searcher: it
returns an `Outcome`, which the searcher absorbs on its own thread.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from evolve.agent.cascade import Rejected, check_reply
from evolve.agent.client import Completion, LLMError, make_client, price
from evolve.agent.edits import MAX_TUNABLE, EditError, check_tunable, parse_tunable
from evolve.agent.prompts import NOTEBOOK_MAX_CHARS, repair_messages, tunable_format
from evolve.errors import one_line


@dataclass
class Request:
    """One thing asked of the agent: a child of `parent_id`, a merge, or a notebook update."""

    proposal_id: str
    purpose: str  # "child", "merge" or "notebook"
    messages: list
    model: int  # index into the operator's model entries
    prompt_hash: str = ""
    parent_id: str | None = None
    island: int = 0
    parent_files: dict = field(default_factory=dict)  # path -> bytes, all of the parent's files
    mutable: list = field(default_factory=list)
    sealed: list = field(default_factory=list)
    known_ids: frozenset = frozenset()
    repair_rounds: int = 1
    notebook_version: int = 0
    created_at: float = field(default_factory=time.time)
    settings_file: str = ""  # hybrid: the settings file a TUNABLE block names keys of; empty: no block read
    arm: str = ""  # the searcher's bandit arm that chose the model; "" when the bandit is off
    # a merge: {"other": theirs' id, "base": the base's id, "conflicted": [paths], "conflicts": n,
    # "from_theirs": [paths]}; parent_id is ours, parent_files the merged files with the conflicts marked
    merge: dict = field(default_factory=dict)


@dataclass
class Outcome:
    request: Request
    ok: bool
    stage: str | None = None  # the stage that rejected it (see cascade.STAGES)
    reason: str | None = None
    files: dict | None = None  # the child's files, when ok
    rationale: str = ""
    changes: list = field(default_factory=list)
    text: str = ""  # the new notebook, when ok
    calls: list = field(default_factory=list)  # one dict per LLM call, for the audit
    smoke_seconds: float | None = None
    tunable: dict = field(default_factory=dict)  # hybrid: key -> [low, high, log] the reply declared

    @property
    def prompt_tokens(self) -> int:
        return sum(c["prompt_tokens"] for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c["completion_tokens"] for c in self.calls)

    @property
    def price(self) -> float:
        return sum(c["price"] for c in self.calls)

    @property
    def latency_s(self) -> float:
        return sum(c["latency_s"] for c in self.calls)


def _call(client, entry: dict, messages: list, attempt: int, cache=None,
          proposal_id: str = "") -> tuple[Completion | None, dict]:
    """Returns (completion or None, the audit entry of this call); a reply in `cache` costs nothing."""
    tag = f"{proposal_id}/{attempt}"
    row = {"attempt": attempt, "messages": messages, "reply": None, "prompt_tokens": 0,
           "completion_tokens": 0, "latency_s": 0.0, "price": 0.0, "model": entry["model"],
           "stage": None, "reason": None, "cached": False}
    kept = cache.get(entry, messages, tag) if cache is not None else None
    if kept is not None:
        row.update(reply=kept.text, model=kept.model, cached=True)
        return kept, row
    t0 = time.monotonic()
    try:
        c = client.complete(messages)
    except LLMError as e:
        row.update(latency_s=time.monotonic() - t0, stage="endpoint", reason=str(e))
        return None, row
    if cache is not None:
        cache.put(entry, messages, tag, c)  # paid for: kept before it is used
    row.update(reply=c.text, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
               latency_s=c.latency_s, price=price(entry, c), model=c.model)
    return c, row


def write_child(req: Request, client, entry: dict, smoke=None, cache=None) -> Outcome:
    """Asks for a child, sends a rejected reply back up to `repair_rounds` times, checks it.

    `smoke(files)` runs the import and smoke stages (raising Rejected);
    None skips them. `cache` (a `ReplyCache`) answers requests already paid for.
    """
    messages, calls, last = req.messages, [], None
    for attempt in range(req.repair_rounds + 1):
        c, row = _call(client, entry, messages, attempt, cache, req.proposal_id)
        calls.append(row)
        if c is None:
            return Outcome(req, False, "endpoint", row["reason"], calls=calls)
        try:
            files, rationale, changes = check_reply(c.text, req.parent_files, req.mutable, req.sealed,
                                                    req.known_ids, tuple(req.merge.get("conflicted", ())))
            tunable = reply_tunable(c.text, files, req.settings_file)
            seconds = smoke(files) if smoke is not None else None
            return Outcome(req, True, files=files, rationale=rationale, changes=changes, calls=calls,
                           smoke_seconds=seconds, tunable=tunable)
        except Rejected as r:
            last = r
            row.update(stage=r.stage, reason=r.reason)
            fmt = tunable_format(req.settings_file, MAX_TUNABLE) if req.settings_file else ""
            messages = repair_messages(messages, c.text, f"{r.stage}: {r.reason}", fmt)
    return Outcome(req, False, last.stage, last.reason, calls=calls)


def reply_tunable(reply: str, files: dict, settings_file: str) -> dict:
    """The reply's TUNABLE block checked against the child's settings file; {} when not asked for (no file).

    Raises Rejected: "parse" for a malformed block, "policy" for a key the
    file does not hold as a number.
    """
    if not settings_file:
        return {}
    try:
        declared = parse_tunable(reply)
    except EditError as e:
        raise Rejected("parse", str(e)) from None
    try:
        return check_tunable(declared, files.get(settings_file), settings_file)
    except EditError as e:
        raise Rejected("policy", str(e)) from None


def write_notebook(req: Request, client, entry: dict, cache=None) -> Outcome:
    """Asks for the rewritten research notebook."""
    c, row = _call(client, entry, req.messages, 0, cache, req.proposal_id)
    if c is None:
        return Outcome(req, False, "endpoint", row["reason"], calls=[row])
    text = c.text.strip()
    if not text:
        row.update(stage="parse", reason="the notebook reply is empty")
        return Outcome(req, False, "parse", row["reason"], calls=[row])
    return Outcome(req, True, text=text[:NOTEBOOK_MAX_CHARS], calls=[row])


class Agent:
    """Worker threads writing proposals; `submit` returns at once, `poll` collects.

    The threads are daemons: a search that ends, or a Ctrl-C, never waits
    on a request the endpoint is still sitting on.
    """

    def __init__(self, entries: list[dict], timeout_s: float, retries: int, parallel: int,
                 smoke=None, seed: int = 0, cache=None, keep=None):
        self.entries = entries
        self.cache = cache  # a ReplyCache, or None
        self.keep = keep  # keep(outcome): makes a finished proposal durable before it is polled
        self.clients = [make_client(e, timeout_s, retries, seed) for e in entries]
        self.smoke = smoke  # smoke(request, files) -> seconds, raises Rejected
        self.pending: dict[str, Request] = {}  # proposal id -> request, until polled
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name=f"evolve-agent-{i}", daemon=True)
                         for i in range(parallel + 1)]  # + 1: a notebook update never blocks a child
        for t in self._threads:
            t.start()

    def submit(self, req: Request) -> None:
        self.pending[req.proposal_id] = req
        self._todo.put(req)

    def _work(self) -> None:
        while True:
            req = self._todo.get()
            if req is None:
                return
            out = self._run(req)
            if self.keep is not None:
                try:
                    self.keep(out)
                except Exception:  # the proposal is still used; only a kill before it is polled loses it
                    pass
            self._done.put(out)

    def _run(self, req: Request) -> Outcome:
        client, entry = self.clients[req.model], self.entries[req.model]
        try:
            if req.purpose == "notebook":
                return write_notebook(req, client, entry, self.cache)
            smoke = None if self.smoke is None else (lambda files: self.smoke(req, files))
            return write_child(req, client, entry, smoke, self.cache)
        except Exception as e:  # a bug or a lost Ray task: the proposal is lost, not the search
            return Outcome(req, False, "error", one_line(e))

    def in_flight(self, purpose: str | None = None) -> int:
        return sum(1 for r in self.pending.values() if purpose in (None, r.purpose))

    def poll(self) -> list[Outcome]:
        """Returns the outcomes finished since the last poll, oldest request first."""
        outs = []
        while True:
            try:
                out = self._done.get_nowait()
            except queue.Empty:
                break
            if self.pending.pop(out.request.proposal_id, None) is not None:
                outs.append(out)
        return sorted(outs, key=lambda o: o.request.created_at)

    def close(self) -> None:
        """Lets the threads go; a request still out is abandoned, not awaited."""
        for _ in self._threads:
            self._todo.put(None)
        for c in self.clients:
            if hasattr(c, "close"):
                try:
                    c.close()
                except Exception:
                    pass
        self.pending.clear()
