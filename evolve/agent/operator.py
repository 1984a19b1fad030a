"""The LLM operator as the searcher drives it: pipeline, fallback, budget, notebook.

Lives on the searcher's thread. Each `take` first absorbs the proposals
the agent finished (audit rows written, tokens counted, accepted children
queued as ready) and tops up the requests in flight, so that by the time a
trial slot frees up a checked child is usually waiting. It answers with a
ready child, WAIT (a slot may wait up to `operator.wait_s` for the agent),
HEURISTIC (the searcher's own operator writes this child) or DONE (the
`budget.llm_tokens` is spent and nothing is left in flight).

States: "ok"; "down" after `max_failures` failures in a row (endpoint
errors and rejected replies alike), when the heuristic operator writes
children and one probe request every `probe_every_s` tests the agent
again; "off" when no endpoint is configured, for good. Each change is
logged once.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from pathlib import Path

from evolve.agent import audit, notebook, outbox
from evolve.agent.cascade import STAGES, Rejected, smoke_task
from evolve.agent.client import hold_keys, pick
from evolve.agent.prompts import Candidate, child_messages, notebook_messages, prompt_hash
from evolve.agent.replies import ReplyCache
from evolve.agent.writer import Agent, Outcome, Request
from evolve.record.store import Store
from evolve.search import selection as pop
from evolve.spec import model_entries
from evolve.variant import Variant

# Ray is imported inside the one function that asks the cluster for resources.

WAIT, HEURISTIC, DONE = "wait", "heuristic", "done"
RECENT_FAILURES = 3  # failure reasons shown in a prompt


class LLMOperator:
    def __init__(self, spec, context: dict, log=print):
        self.spec, self.op, self.context = spec, spec.operator, context
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
        self.n_child_requests = 0  # drives the islands' round robin
        self.waiting_since: float | None = None
        self.last_probe = 0.0
        self.said: set[str] = set()
        self.log = log
        self._agent: Agent | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_agent"], state["log"] = None, None  # threads and clients are rebuilt on use
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.log = self.log or print
        self.waiting_since = None  # a monotonic time from another process means nothing here

    def say_once(self, key: str, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            self.log(text)

    # -- the searcher's questions ------------------------------------------------
    def start(self) -> None:
        if self.state == "off":
            self.say_once("off", "evolve: operator.kind is llm but no endpoint is configured "
                                 "(operator.base_url is empty); the heuristic operator writes every child")

    def take(self, s) -> Variant | str:
        """Returns a checked child for the next trial, or WAIT, HEURISTIC or DONE."""
        self.pump(s)
        while self.ready:
            child = self.ready.popleft()
            if child.id in s.variants:  # the heuristic reached the same files first
                self.rejections["duplicate"] += 1
                self.accepted -= 1
                audit.append(s.store.root, [{
                    "proposal_id": child.record["proposal_id"], "purpose": "child", "attempt": -1,
                    "parent_id": child.parents[0], "outcome": "rejected", "stage": "duplicate",
                    "reason": f"variant {child.id} was trained before this proposal's turn came",
                    "finished_at": time.time()}])
                continue
            self._stop_waiting()
            return child
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

    def on_result(self, s, vid: str, outcome: dict) -> None:
        """Notes a finished trial for the notebook and the prompts' failure list."""
        v = s.variants[vid]
        parent = s.results.get(v.parents[0]) if v.parents else None
        event = {"variant": vid, "parent": v.parents[0] if v.parents else None,
                 "change": (v.record.get("rationale") or v.operator)[:300], "status": outcome["status"],
                 s.spec.objective.metric: outcome.get("fitness"),
                 f"parent_{s.spec.objective.metric}": parent["fitness"] if parent else None}
        if outcome["status"] != "completed":
            event["reason"] = (outcome.get("failure_reason") or "")[:300]
            self.recent_failures.append(f"{vid} (trained, failed): {event['reason']}")
        self.events.append(event)
        self.pump(s)

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

    def pump(self, s) -> None:
        """Absorbs finished proposals, then tops up the requests in flight."""
        if self.state == "off":
            return
        for outcome in self.agent.poll():
            self._absorb(s, outcome)
        if self.spent():
            return
        in_flight = self.agent.in_flight("child")
        if self.state == "down":
            if in_flight == 0 and time.monotonic() - self.last_probe >= self.op.probe_every_s:
                self.last_probe = time.monotonic()
                self._submit(self._child_request(s))
            return
        pending_seed = 1 if s._pending_seed is not None else 0
        left = s.spec.budget.trials - s.n_suggested - pending_seed - len(self.ready) - in_flight
        while (in_flight < self.op.parallel and len(self.ready) + in_flight < max(1, self.op.ahead)
               and left > 0):
            self._submit(self._child_request(s))
            in_flight, left = in_flight + 1, left - 1
        if (self.op.notebook_every and len([e for e in self.events if "variant" in e]) >= self.op.notebook_every
                and not self.agent.in_flight("notebook")):
            self._submit(self._notebook_request(s))

    def _submit(self, req: Request) -> None:
        self.n_requests += 1
        self.n_child_requests += req.purpose == "child"
        self.agent.submit(req)

    def restore(self, s) -> int:
        """Takes in the proposals the agent finished after the snapshot this state was restored from.

        They are kept in proposals/ (see `evolve.agent.outbox`); each is taken in
        once, so a reply paid for before a kill is used, not bought again,
        and its audit rows are written only if they were not before the
        kill. Returns how many were taken in.
        """
        self.ready = deque(c for c in self.ready if c.id not in s.variants)  # trained since the snapshot
        audited = set(audit.read(s.store.root).column("proposal_id").to_pylist())
        outs, bad = outbox.load(s.store, skip=self.absorbed)
        for line in bad:
            self.log(f"evolve: warning: {line}")
        for out in outs:
            self._absorb(s, out, audited=out.request.proposal_id in audited)
        return len(outs)

    def _absorb(self, s, out: Outcome, audited: bool = False) -> None:
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
                notebook.save(s.store, self.notebook_version, out.text, req.proposal_id,
                              out.calls[-1]["model"])
        elif out.ok:
            record = {"kind": "llm", "rationale": out.rationale, "changes": out.changes,
                      "model": out.calls[-1]["model"], "proposal_id": req.proposal_id,
                      "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                      "price": out.price, "latency_s": round(out.latency_s, 3),
                      "repairs": len(out.calls) - 1, "notebook_version": req.notebook_version,
                      "smoke_seconds": out.smoke_seconds}
            child = Variant(files=s.store.put_files(out.files), parents=(req.parent_id,),
                            operator="llm", record=record, island=req.island)
            if audited and child.id in s.variants:  # accepted, then trained, after the snapshot
                self.accepted += 1
                self.failures_in_row = 0
                return
            if child.id in s.variants or any(child.id == r.id for r in self.ready):
                out = Outcome(req, False, "duplicate", f"the child is identical to variant {child.id}",
                              calls=out.calls)
                child = None
            else:
                self.ready.append(child)
                self.accepted += 1
        if not audited:
            self._write_audit(s, out, child)
        if req.purpose == "notebook":
            return
        if out.ok and child is not None:
            self.failures_in_row = 0
            if self.state == "down":
                self.state = "ok"
                self.said.discard("down")
                self.log("evolve: the LLM operator answers again; it writes children from now on")
            return
        self.rejections[out.stage] += 1
        reason = f"rejected at {out.stage}: {out.reason}"
        if out.stage != "endpoint":
            self.recent_failures.append(f"a proposal {reason}"[:400])
        self.events.append({"rejected_at": out.stage, "reason": (out.reason or "")[:300]})
        self.failures_in_row += 1
        if self.state == "ok" and self.failures_in_row >= self.op.max_failures:
            self.state = "down"
            self.last_probe = time.monotonic()
            self.say_once("down", f"evolve: the LLM operator failed {self.failures_in_row} times in a row "
                                  f"(last: {reason}); the heuristic operator takes over until it recovers")

    def _write_audit(self, s, out: Outcome, child: Variant | None) -> None:
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
        audit.append(s.store.root, rows)

    # -- requests ---------------------------------------------------------------------
    def candidate(self, s, vid: str) -> Candidate:
        files = s.store.read_files(s.variants[vid])
        shown = {p: files[p].decode("utf-8", "replace") for p in s.mutable if p in files}
        r = s.results.get(vid) or {}
        speed = {k: r[k] for k in ("tokens_per_s", "mfu", "trial_seconds") if r.get(k) is not None}
        return Candidate(vid, shown, r.get("fitness"), r.get("curve") or [], r.get("metrics") or {},
                         s.variants[vid].record.get("rationale", ""), speed)

    def _child_request(self, s) -> Request:
        island = pop.island_for(self.n_child_requests, len(s.islands))
        parent = pop.select_parents(s.rng, s._members(island), s.spec.selection.tournament, 1)[0]
        ranked = heapq.nsmallest(self.op.inspirations + 1, ((-sc, v) for v, sc in s.scores.items()))
        ranked = [(-neg, v) for neg, v in ranked if v != parent]
        others = [self.candidate(s, v) for _, v in ranked[: self.op.inspirations]]
        messages = child_messages(self.candidate(s, parent), others, list(self.recent_failures),
                                  self.notebook_text, s.spec.objective.metric, s.spec.objective.mode,
                                  sealed=tuple(s.sealed_in_scaffold))
        h = prompt_hash(messages)
        known = frozenset(s.variants) | {r.id for r in self.ready}
        return Request(proposal_id=f"{self.n_requests:05d}-{h[:8]}", purpose="child", messages=messages,
                       model=pick(s.rng, self.entries), prompt_hash=h, parent_id=parent, island=island,
                       parent_files=s.store.read_files(s.variants[parent]), mutable=list(s.mutable),
                       sealed=list(s.spec.sealed) + list(s.sealed_in_scaffold), known_ids=known,
                       repair_rounds=self.op.repair_rounds, notebook_version=self.notebook_version)

    def _notebook_request(self, s) -> Request:
        events, self.events = self.events, []
        messages = notebook_messages(self.notebook_text, events)
        h = prompt_hash(messages)
        return Request(proposal_id=f"{self.n_requests:05d}-{h[:8]}", purpose="notebook",
                       messages=messages, model=pick(s.rng, self.entries), prompt_hash=h,
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
