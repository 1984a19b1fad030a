"""The LLM operator as the searcher drives it: pipeline, fallback, budget, notebook.

Lives on the searcher's thread, and is given plain data, never the
searcher: the ids of the variants already known, how many children the
budget still allows, and for each new request a `Brief` (the parent and the
inspirations as the prompt shows them). On each turn the searcher has it
`absorb` the proposals the agent finished (audit rows written, tokens
counted, accepted children queued as ready), asks how many requests it
`wants`, and `submit`s that many briefs, so that by the time a trial slot
frees up a checked child is usually waiting. `take` answers with a ready
child, WAIT (a slot may wait up to `operator.wait_s` for the agent),
HEURISTIC (the searcher's own operator writes this child) or DONE (the
`budget.llm_tokens` is spent and nothing is left in flight).

States: "ok"; "down" after `max_failures` failures in a row (endpoint
errors and rejected replies alike), when the heuristic operator writes
children and one probe request every `probe_every_s` tests the agent
again; "off" when no endpoint is configured, for good. Each change is
logged once.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

from evolve.agent import audit, notebook, outbox
from evolve.agent.cascade import STAGES, Rejected, smoke_task
from evolve.agent.client import hold_keys, pick
from evolve.agent.edits import MAX_TUNABLE
from evolve.agent.prompts import (
    Candidate,
    TaskFacts,
    child_messages,
    merge_messages,
    notebook_messages,
    prompt_hash,
    tunable_format,
)
from evolve.agent.replies import ReplyCache
from evolve.agent.writer import Agent, Outcome, Request
from evolve.record.store import Store
from evolve.spec import model_entries
from evolve.variant import Variant

# Ray is imported inside the one function that asks the cluster for resources.

WAIT, HEURISTIC, DONE = "wait", "heuristic", "done"
RECENT_FAILURES = 3  # failure reasons shown in a prompt


@dataclass(frozen=True)
class Brief:
    """What the searcher hands the agent for one child: plain data, chosen by the searcher."""

    parent: Candidate
    parent_files: dict  # path -> bytes: every file of the parent, the sealed ones included
    inspirations: tuple  # of Candidate: strong variants other than the parent
    island: int
    model: int | None = None  # the model entry to write it (drawn by the searcher's bandit); None: drawn by weight
    arm: str = ""  # the bandit's name for that model, kept in the child's record
    facts: TaskFacts | None = None  # what the harness and the spec fix, with the parent's recorded counts
    siblings: tuple = ()  # the parent's latest children that failed or were stopped: dicts of
    # variant_id, status, change, reason


@dataclass(frozen=True)
class MergeBrief:
    """What the searcher hands the agent for a merge whose conflicts it must resolve: plain data."""

    ours: Candidate
    theirs: Candidate
    base_id: str
    files: dict  # path -> bytes: the merged files, conflict regions marked, the sealed ones included
    conflicted: tuple  # paths of the files with conflict regions
    conflicts: int  # regions in all
    from_theirs: tuple  # paths whose merged text takes anything from theirs
    island: int


class LLMOperator:
    def __init__(self, spec, context: dict, mutable: list[str], sealed_in_scaffold: list[str], log=print):
        self.spec, self.op, self.context = spec, spec.operator, context
        self.mutable, self.sealed_in_scaffold = list(mutable), list(sealed_in_scaffold)
        self.rng = random.Random(spec.seed)  # which model writes each request
        self.entries = model_entries(spec.operator)
        hold_keys(e["api_key_env"] for e in self.entries)  # before anything starts a process
        self.state = "ok" if self.entries else "off"
        self.ready: deque[Variant] = deque()
        self.failures_in_row = 0
        self.rejections: Counter = Counter()
        self.recent_failures: deque[str] = deque(maxlen=RECENT_FAILURES)
        self.usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "price": 0.0}
        self.accepted = 0
        self.heuristic_fills = 0
        self.wait_seconds = 0.0  # free slots' time spent waiting for the agent
        self.notebook_text, self.notebook_version = "", 0
        self.events: list[dict] = []  # since the last notebook update
        self.n_requests = 0
        self.absorbed: set[str] = set()  # proposal ids taken in (see `restore`)
        self.n_child_requests = 0
        self.waiting_since: float | None = None
        self.last_probe = 0.0
        self.said: set[str] = set()
        self.rejected_arms: list[str] = []  # the bandit arms of proposals rejected since the searcher last asked
        self.log = log
        self._agent: Agent | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_agent"], state["log"] = None, None  # threads and clients are rebuilt on use
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.log = self.log or print
        self.__dict__.setdefault("rng", random.Random(self.spec.seed))  # a state saved before the agent had its own
        self.__dict__.setdefault("rejected_arms", [])  # ... and before the bandit
        self.waiting_since = None  # a monotonic time from another process means nothing here

    def say_once(self, key: str, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            self.log(text)

    # -- the searcher's questions ------------------------------------------------
    def start(self) -> None:
        if self.state == "off":
            self.say_once("off", f"evolve: operator.kind is {self.op.kind} but no endpoint is configured "
                                 "(operator.base_url is empty); the heuristic operator writes every child")

    @property
    def store(self) -> Store:
        return Store(self.context["run_dir"])

    def _drop_known(self, known: frozenset) -> None:
        """Drops the ready children whose files a variant admitted since has (the heuristic got there first)."""
        for child in [c for c in self.ready if c.id in known]:
            self.ready.remove(child)
            self.rejections["duplicate"] += 1
            self.accepted -= 1
            audit.append(self.store.root, [{
                "proposal_id": child.record["proposal_id"], "purpose": "merge" if child.operator == "merge" else "child",
                "attempt": -1,
                "parent_id": child.parents[0], "outcome": "rejected", "stage": "duplicate",
                "reason": f"variant {child.id} was trained before this proposal's turn came",
                "finished_at": time.time()}])

    def take(self, known: frozenset) -> Variant | str:
        """Returns a checked child for the next trial, or WAIT, HEURISTIC or DONE; `known`: the variants admitted."""
        self._drop_known(known)
        if self.ready:
            self._stop_waiting()
            return self.ready.popleft()
        if self.state == "off":
            return HEURISTIC
        if self.spent():
            if self.agent.in_flight("child") and not self._waited_too_long():
                return WAIT
            self._stop_waiting()
            self.say_once("spent", f"evolve: the LLM token budget is spent ({self.tokens():,} of "
                                   f"{self.spec.budget.llm_tokens:,}); no new proposals, the search ends")
            return DONE
        if self.state == "down":
            self._stop_waiting()
            return HEURISTIC
        if not self._waited_too_long():
            return WAIT
        self._stop_waiting()
        self.heuristic_fills += 1
        self.say_once("slow", f"evolve: no proposal from the agent within {self.op.wait_s:g} s; "
                              "the heuristic operator fills free slots while it is busy")
        return HEURISTIC

    def take_arm(self, known: frozenset, arm: str) -> Variant | None:
        """For a bandit's draw: a ready child written for `arm`, else the oldest ready one, else None (never waits)."""
        self._drop_known(known)
        child = next((c for c in self.ready if c.record.get("arm") == arm), None)
        if child is None and self.ready:
            child = self.ready[0]
        if child is not None:
            self.ready.remove(child)
        return child

    def finished(self) -> bool:
        """True once the LLM token budget is spent and nothing is ready or being written: the search ends."""
        if self.state == "off" or not self.spent() or self.ready or self.agent.in_flight("child"):
            return False
        self.say_once("spent", f"evolve: the LLM token budget is spent ({self.tokens():,} of "
                               f"{self.spec.budget.llm_tokens:,}); no new proposals, the search ends")
        return True

    def take_rejected_arms(self) -> list[str]:
        """The bandit arms of the proposals rejected since the last call (each once)."""
        out, self.rejected_arms = self.rejected_arms, []
        return out

    def _waited_too_long(self) -> bool:
        """Starts the wait clock on the first call; True once `wait_s` has passed."""
        now = time.monotonic()
        if self.waiting_since is None:
            self.waiting_since = now
        return now - self.waiting_since >= self.op.wait_s

    def _stop_waiting(self) -> None:
        if self.waiting_since is not None:
            self.wait_seconds += time.monotonic() - self.waiting_since
            self.waiting_since = None

    def on_result(self, vid: str, parent_id: str | None, change: str, outcome: dict,
                  parent_fitness: float | None) -> None:
        """Notes a finished trial for the notebook and the prompts' failure list."""
        metric = self.spec.objective.metric
        event = {"variant": vid, "parent": parent_id, "change": change[:300], "status": outcome["status"],
                 metric: outcome.get("fitness"), f"parent_{metric}": parent_fitness}
        if outcome["status"] != "completed":
            event["reason"] = (outcome.get("failure_reason") or "")[:300]
            self.recent_failures.append(f"{vid} (trained, failed): {event['reason']}")
        self.events.append(event)

    # -- the pipeline ---------------------------------------------------------------
    @property
    def agent(self) -> Agent:
        if self._agent is None:
            self._agent = Agent(self.entries, self.op.timeout_s, self.op.retries, self.op.parallel,
                                smoke=self._smoke if self.op.smoke_steps else None, seed=self.spec.seed,
                                cache=ReplyCache(self.context["run_dir"]),
                                keep=lambda out: outbox.keep(Store(self.context["run_dir"]), out))
        return self._agent

    def close(self) -> None:
        """Stops the agent's threads; a later `take` starts new ones."""
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    def tokens(self) -> int:
        return self.usage["prompt_tokens"] + self.usage["completion_tokens"]

    def spent(self) -> bool:
        return 0 < self.spec.budget.llm_tokens <= self.tokens()

    def absorb(self, known: frozenset) -> None:
        """Takes in the proposals the agent finished since the last turn."""
        if self.state == "off":
            return
        for outcome in self.agent.poll():
            self._absorb(known, outcome)

    def wants(self, left: int) -> int:
        """How many new child requests to submit now; `left`: children the budget allows beyond those suggested."""
        if self.state == "off" or self.spent():
            return 0
        return requests_wanted(self.state, self.agent.in_flight("child"), len(self.ready), left, self.op.parallel,
                               self.op.ahead, time.monotonic() - self.last_probe >= self.op.probe_every_s)

    def submit(self, briefs: list[Brief], known: frozenset) -> None:
        """Sends a child request for each brief, then the notebook's when it is due."""
        if self.state == "off":
            return
        for brief in briefs:
            if self.state == "down":
                self.last_probe = time.monotonic()
            self._submit(self._child_request(brief, known))
        if (not self.spent() and self.op.notebook_every and not self.agent.in_flight("notebook")
                and len([e for e in self.events if "variant" in e]) >= self.op.notebook_every):
            self._submit(self._notebook_request())

    def merges_pending(self) -> int:
        """Merge requests in flight plus resolved merges waiting for a slot."""
        return self.agent.in_flight("merge") + sum(1 for c in self.ready if c.operator == "merge")

    def submit_merge(self, brief: MergeBrief, known: frozenset) -> None:
        """Sends the request to resolve one merge's conflicts; its child comes back through `take`."""
        text = {p: brief.files[p].decode("utf-8", "replace") for p in brief.conflicted}
        messages = merge_messages(brief.ours, brief.theirs, brief.base_id, text, self.spec.objective.metric,
                                  self.spec.objective.mode, sealed=tuple(self.sealed_in_scaffold))
        h = prompt_hash(messages)
        self._submit(Request(
            proposal_id=f"{self.n_requests:05d}-{h[:8]}", purpose="merge", messages=messages,
            model=pick(self.rng, self.entries), prompt_hash=h, parent_id=brief.ours.variant_id,
            island=brief.island, parent_files=brief.files, mutable=list(self.mutable),
            sealed=list(self.spec.sealed) + list(self.sealed_in_scaffold),
            known_ids=known | {r.id for r in self.ready}, repair_rounds=self.op.repair_rounds,
            notebook_version=self.notebook_version,
            merge={"other": brief.theirs.variant_id, "base": brief.base_id, "conflicted": list(brief.conflicted),
                   "conflicts": brief.conflicts, "from_theirs": list(brief.from_theirs)}))

    def _submit(self, req: Request) -> None:
        self.n_requests += 1
        self.n_child_requests += req.purpose == "child"
        self.agent.submit(req)

    def restore(self, known: frozenset) -> int:
        """Takes in the proposals the agent finished after the snapshot this state was restored from.

        They are kept in proposals/ (see `evolve.agent.outbox`); each is taken in
        once, so a reply paid for before a kill is used, not bought again,
        and its audit rows are written only if they were not before the
        kill. Returns how many were taken in.
        """
        self.ready = deque(c for c in self.ready if c.id not in known)  # trained since the snapshot
        audited = set(audit.read(self.store.root).column("proposal_id").to_pylist())
        outs, bad = outbox.load(self.store, skip=self.absorbed)
        for line in bad:
            self.log(f"evolve: warning: {line}")
        for out in outs:
            self._absorb(known, out, audited=out.request.proposal_id in audited)
        return len(outs)

    def _absorb(self, known: frozenset, out: Outcome, audited: bool = False) -> None:
        """Takes in one finished proposal; `audited`: its audit rows exist already (a resume)."""
        req = out.request
        self.absorbed.add(req.proposal_id)
        self.usage["calls"] += len(out.calls)
        self.usage["prompt_tokens"] += out.prompt_tokens
        self.usage["completion_tokens"] += out.completion_tokens
        self.usage["price"] += out.price
        child = None
        if req.purpose == "notebook":
            if out.ok:
                self.notebook_version += 1
                self.notebook_text = out.text
                notebook.save(self.store, self.notebook_version, out.text, req.proposal_id,
                              out.calls[-1]["model"])
        elif out.ok:
            record = {"kind": "llm", "rationale": out.rationale, "changes": out.changes,
                      "model": out.calls[-1]["model"], "proposal_id": req.proposal_id,
                      "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                      "price": out.price, "latency_s": round(out.latency_s, 3),
                      "repairs": len(out.calls) - 1, "notebook_version": req.notebook_version,
                      "smoke_seconds": out.smoke_seconds}
            if out.tunable:
                record["tunable"] = out.tunable
            if req.arm:
                record["arm"] = req.arm
            parents, operator = (req.parent_id,), "llm"
            if req.purpose == "merge":
                m = req.merge
                parents, operator = (req.parent_id, m["other"]), "merge"
                record.update(kind="merge", base=m["base"], conflicts=m["conflicts"],
                              conflicts_resolved=m["conflicts"], resolved_by="llm", conflicted=m["conflicted"],
                              from_theirs=m["from_theirs"])
            child = Variant(files=self.store.put_files(out.files), parents=parents,
                            operator=operator, record=record, island=req.island)
            if audited and child.id in known:  # accepted, then trained, after the snapshot
                self.accepted += 1
                self.failures_in_row = 0
                return
            if child.id in known or any(child.id == r.id for r in self.ready):
                out = Outcome(req, False, "duplicate", f"the child is identical to variant {child.id}",
                              calls=out.calls)
                child = None
            else:
                self.ready.append(child)
                self.accepted += 1
        if not audited:
            self._write_audit(out, child)
        if req.purpose == "notebook":
            return
        accepted = out.ok and child is not None
        self.failures_in_row = 0 if accepted else self.failures_in_row + 1
        before, self.state = self.state, agent_state(self.state, accepted, self.failures_in_row, self.op.max_failures)
        if accepted:
            if before == "down":
                self.said.discard("down")
                self.log("evolve: the LLM operator answers again; it writes children from now on")
            return
        self.rejections[out.stage] += 1
        if req.arm:
            self.rejected_arms.append(req.arm)
        reason = f"rejected at {out.stage}: {out.reason}"
        if out.stage != "endpoint":
            self.recent_failures.append(f"a proposal {reason}"[:400])
        self.events.append({"rejected_at": out.stage, "reason": (out.reason or "")[:300]})
        if before == "ok" and self.state == "down":
            self.last_probe = time.monotonic()
            self.say_once("down", f"evolve: the LLM operator failed {self.failures_in_row} times in a row "
                                  f"(last: {reason}); the heuristic operator takes over until it recovers")

    def _write_audit(self, out: Outcome, child: Variant | None) -> None:
        req, now = out.request, time.time()
        rows = [{**call, "proposal_id": req.proposal_id, "purpose": req.purpose,
                 "parent_id": req.parent_id, "variant_id": child.id if child else None,
                 "outcome": "accepted" if out.ok else "rejected",
                 "stage": call["stage"] or (None if out.ok or i < len(out.calls) - 1 else out.stage),
                 "reason": call["reason"] or (None if out.ok or i < len(out.calls) - 1 else out.reason),
                 "rationale": out.rationale or None, "prompt_hash": req.prompt_hash,
                 "notebook_version": req.notebook_version, "created_at": req.created_at,
                 "finished_at": now}
                for i, call in enumerate(out.calls)]
        if not rows:  # it failed before any call (an internal error): keep the reason anyway
            rows = [{"proposal_id": req.proposal_id, "purpose": req.purpose, "attempt": 0,
                     "parent_id": req.parent_id, "outcome": "rejected", "stage": out.stage,
                     "reason": out.reason, "messages": req.messages, "prompt_tokens": 0,
                     "completion_tokens": 0, "latency_s": 0.0, "price": 0.0, "prompt_hash": req.prompt_hash,
                     "notebook_version": req.notebook_version, "created_at": req.created_at,
                     "finished_at": now}]
        audit.append(self.store.root, rows)

    # -- requests ---------------------------------------------------------------------
    @property
    def settings_file(self) -> str:
        """Hybrid: the settings file a reply's TUNABLE block names keys of (relative to the scaffold); else ""."""
        if self.op.kind != "hybrid":
            return ""
        return self.op.heuristic.file[len(self.spec.scaffold.rstrip("/") + "/"):]

    def _child_request(self, brief: Brief, known: frozenset) -> Request:
        settings = self.settings_file
        messages = child_messages(brief.parent, list(brief.inspirations), list(self.recent_failures),
                                  self.notebook_text, self.spec.objective.metric, self.spec.objective.mode,
                                  sealed=tuple(self.sealed_in_scaffold), facts=brief.facts,
                                  siblings=brief.siblings, in_flight=self.in_flight(),
                                  max_chars=self.op.prompt_chars,
                                  tunable=tunable_format(settings, MAX_TUNABLE) if settings else "")
        h = prompt_hash(messages)
        model = pick(self.rng, self.entries) if brief.model is None else brief.model
        return Request(proposal_id=f"{self.n_requests:05d}-{h[:8]}", purpose="child", messages=messages,
                       model=model, arm=brief.arm, prompt_hash=h, parent_id=brief.parent.variant_id,
                       island=brief.island, parent_files=brief.parent_files, mutable=list(self.mutable),
                       sealed=list(self.spec.sealed) + list(self.sealed_in_scaffold),
                       known_ids=known | {r.id for r in self.ready},
                       repair_rounds=self.op.repair_rounds, notebook_version=self.notebook_version,
                       settings_file=settings)

    def in_flight(self) -> list[dict]:
        """The changes already under way: checked children waiting for a slot, then the requests being written."""
        ready = [{"parent": c.parents[0], "rationale": c.record.get("rationale") or "",
                  "files": [ch["file"] for ch in c.record.get("changes") or []]} for c in self.ready]
        writing = [{"parent": r.parent_id, "rationale": None} for r in
                   sorted(self.agent.pending.values(), key=lambda r: r.proposal_id) if r.purpose == "child"]
        return ready + writing

    def _notebook_request(self) -> Request:
        events, self.events = self.events, []
        messages = notebook_messages(self.notebook_text, events)
        h = prompt_hash(messages)
        return Request(proposal_id=f"{self.n_requests:05d}-{h[:8]}", purpose="notebook",
                       messages=messages, model=pick(self.rng, self.entries), prompt_hash=h,
                       notebook_version=self.notebook_version)

    def _smoke(self, req: Request, files: dict) -> float:
        """Runs the import and smoke stages as a Ray task; raises Rejected."""
        import ray

        work = Path(self.context["run_dir"]) / "work" / "smoke" / req.proposal_id
        ref = smoke_task().remote(files, self.context, str(work), self.op.smoke_steps,
                                  self.op.smoke_timeout_s)
        out = ray.get(ref, timeout=self.op.smoke_timeout_s + 120)
        if "stage" in out:
            raise Rejected(out["stage"], out["reason"])
        return out["seconds"]

    # -- reporting ----------------------------------------------------------------------
    def summary(self) -> str:
        rej = ", ".join(f"{k} {self.rejections[k]}" for k in STAGES + ("error",) if self.rejections[k])
        u = self.usage
        cost = f", price {u['price']:.4f}" if u["price"] else ""
        return (f"agent: {self.accepted} proposals accepted, rejected: {rej or 'none'}; "
                f"{u['calls']} calls, {u['prompt_tokens']:,} prompt + {u['completion_tokens']:,} "
                f"completion tokens{cost}; free slots waited {self.wait_seconds:.0f} s for it, "
                f"{self.heuristic_fills} filled by the heuristic operator instead; "
                f"notebook version {self.notebook_version}")


def requests_wanted(state: str, in_flight: int, ready: int, left: int, parallel: int, ahead: int,
                    probe_due: bool) -> int:
    """How many child requests to add to those in flight (pure).

    "ok": enough to keep `parallel` in flight and `ahead` children ready or
    coming, never more than the budget has left. "down": one probe, when
    nothing is in flight and the probe interval has passed. "off": none.
    """
    if state == "down":
        return 1 if in_flight == 0 and probe_due else 0
    if state != "ok":
        return 0
    return max(0, min(parallel - in_flight, max(1, ahead) - ready - in_flight, left - ready - in_flight))


def agent_state(state: str, accepted: bool, failures_in_row: int, max_failures: int) -> str:
    """The agent's state after one finished proposal (pure).

    "off" (no endpoint) is for good. An accepted child makes it "ok" again;
    `max_failures` failures in a row (endpoint errors and rejected replies
    alike) take an "ok" agent "down", where the heuristic operator writes
    children and one probe at a time tests the agent.
    """
    if state == "off":
        return "off"
    if accepted:
        return "ok"
    return "down" if state == "ok" and failures_in_row >= max_failures else state
