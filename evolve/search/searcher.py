"""The Ray Tune Searcher: holds the population, picks parents, makes children.

A thin adapter over pure functions (`evolve.search.selection`, the operators):
`suggest` never blocks on anything slower than a few file writes; each
finished trial is written to the store before the searcher counts it.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import pickle
import random
import time
from collections import Counter
from pathlib import Path

from ray.tune.search import Searcher

from evolve.agent.cascade import Rejected, check_syntax
from evolve.agent.operator import DONE, WAIT, Brief, LLMOperator, MergeBrief
from evolve.agent.prompts import Candidate
from evolve.messages import RecordError, TrialConfig, TrialOutcome, curve_row
from evolve.record.seals import sealed_paths, surface_violations
from evolve.record.store import Store, atomic_write, parsed
from evolve.record.weights import INHERIT, read_inherit
from evolve.search import confirm, hybrid
from evolve.search import merge as merging
from evolve.search import selection as pop
from evolve.search import studies, tunestate
from evolve.search.bandit import Bandit, model_arms, reward
from evolve.search.facts import read_meta, task_facts
from evolve.search.heuristic import crossover, perturb
from evolve.search.inherit import inherit_refusal, inherit_tokens
from evolve.spec import model_entries
from evolve.variant import Variant

MAX_DUPLICATE_TRIES = 20  # fresh mutations tried before a suggestion gives up
BANDIT_FILE = "bandit.json"  # the bandit's state in the run folder, for `evolve status` and notebooks
MERGE_POOL = 8  # the best variants a merge's two parents are drawn from
SIBLINGS_SHOWN = 5  # a parent's latest children that failed or were stopped, in a brief


class EvolveSearcher(Searcher):
    """Evolutionary search over scaffold variants, islands plus tournaments."""

    def __init__(self, spec, store: Store, trial_context: dict, seed_files: dict[str, bytes],
                 log=print):
        # No metric for Tune: the curve reports carry none, and the searcher
        # reads the fitness from the final result itself.
        super().__init__(metric=None, mode=None)
        self.spec = spec
        self.store = store
        self.context = trial_context  # fields every trial's config carries
        self.log = log
        prefix = spec.scaffold.rstrip("/") + "/"
        self.mutable = [m[len(prefix):] for m in spec.mutable]
        self.settings_file = spec.operator.heuristic.file[len(prefix):]
        scaffold = spec.path(spec.scaffold).resolve()
        self.sealed_in_scaffold = sorted(p.relative_to(scaffold).as_posix()
                                         for p in sealed_paths(spec.root, spec.sealed)
                                         if p.is_relative_to(scaffold))
        self.rng = random.Random(spec.seed)
        self.variants: dict[str, Variant] = {}
        self.results: dict[str, dict] = {}  # variant id -> {"status", "fitness", ...}
        self.scores: dict[str, float] = {}  # variant id -> finite score (higher is better), completed only
        self._best: str | None = None
        self.islands: list[list[str]] = [[] for _ in range(spec.selection.islands)]
        # kept as results come in, so a suggestion costs the same with 10 or 10,000 variants
        self.on_island: list[set] = [set() for _ in self.islands]
        self.island_scored: list[list[tuple[str, float]]] = [[] for _ in self.islands]
        self.live: dict[str, str] = {}  # trial id -> variant id
        self.requeued: list[str] = []  # variants whose trial Tune lost in a resume: suggested again first
        self.curves: dict[str, list] = {}  # trial id -> learning curve so far
        self.n_suggested = 0
        self.n_recorded = 0
        self.confirm_plan: list | None = None  # (variant, seed) re-runs still to suggest
        self.confirm_live: dict[str, tuple] = {}  # trial id -> (variant, seed) of a re-run
        self.confirm_total: int | None = None  # the re-runs planned, for the progress line
        seed = Variant(files=store.put_files(seed_files), operator="seed",
                       record={"kind": "seed", "rationale": "the scaffold as written"})
        self.seed_id = seed.id
        self._pending_seed = seed
        self.n_briefs = 0  # drives the islands' round robin of the agent's requests
        # hybrid: each code variant's tuning (evolve.search.hybrid), and the code variant of each trial
        self.hybrid = spec.operator.kind == "hybrid"
        self.tunings: dict[str, hybrid.Tuning] = {}
        self.tuning_of: dict[str, str] = {}
        if self.hybrid:
            studies.check_sampler(spec.operator.hybrid_sampler)  # one line, before anything starts
        self.bandit, self.llm_arms = new_bandit(spec)
        self.merge_tried: set[frozenset] = set()  # pairs of variants a merge was tried on, never again
        self.merge_said: set[str] = set()  # the merge operator's once-only lines already printed
        self.child_failures: dict[str, list[dict]] = {}  # parent id -> its children that failed or were stopped
        self.llm = (LLMOperator(spec, trial_context, self.mutable, self.sealed_in_scaffold, log)
                    if spec.operator.kind in ("llm", "hybrid") else None)
        if self.llm is not None:  # the agent starts on the seed's children before Tune starts
            self._admit(seed)
            self.llm.start()
            self.agent_turn()

    # -- Tune's contract -------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode come from the experiment spec

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return True  # the searcher counts its own trials in flight (see `suggest`)

    def suggest(self, trial_id: str):
        # Its own count, not Tune's ConcurrencyLimiter: the limiter's saved set of live
        # trials can disagree with the trials Tune restores, and then waits forever.
        if len(self.live) + len(self.confirm_live) >= self.spec.budget.concurrent:
            return None
        if self.n_suggested >= self.spec.budget.trials:
            return self._suggest_rerun(trial_id)
        if self.requeued:
            child = self.variants[self.requeued.pop(0)]  # admitted before; `_admit` again changes nothing
        elif self._pending_seed is not None:
            child, self._pending_seed = self._pending_seed, None
        else:
            if self.hybrid:
                config = self._suggest_tuning(trial_id)
                if config is not None:
                    return config
                if not self.scores and any(not t.finished() for t in self.tunings.values()):
                    return None  # new code comes only from tuned code variants: wait for a tuning to finish
            # a clean three-way merge of two strong variants, when one is due (a conflicted one goes to the agent)
            child = self._merge() if self._merge_due() else None
            if child is None:
                child = self._operate()
                if not isinstance(child, Variant):
                    return child  # None (ask again shortly) or FINISHED
        self._admit(child)
        self.live[trial_id] = child.id
        self.n_suggested += 1
        if self.llm is not None:
            self.agent_turn()  # keep the agent writing ahead of the next free slot
        return self._trial_config(child.id, trial_id).to_dict()

    def _operate(self):
        """Returns the next child from the agent or the heuristic operator, or None (not yet) or FINISHED."""
        if self.llm is not None:
            self.agent_turn()
        if self.bandit is not None:
            child = self._bandit_child()
            if child == DONE:
                return Searcher.FINISHED
        else:
            got = self.llm.take(frozenset(self.variants)) if self.llm is not None else None
            if got == WAIT:
                return None  # Tune asks again shortly; the agent is writing
            if got == DONE:
                return Searcher.FINISHED
            child = got if isinstance(got, Variant) else self._propose()
        if child is None and self.llm is not None and self.llm.state == "ok":
            return None  # the heuristic has nothing new; the agent will
        if child is None:
            self.log(f"evolve: no new variant after {MAX_DUPLICATE_TRIES} tries; stopping")
            return Searcher.FINISHED
        return child

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Keeps each live trial's learning curve, for a trial the scheduler stops early."""
        if trial_id in self.live and "dev_loss" in result and "result_json" not in result:
            self.curves.setdefault(trial_id, []).append(curve_row(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self.confirm_live:
            self._record_rerun(trial_id, result, error)
            return
        vid = self.live.pop(trial_id, None)
        curve = self.curves.pop(trial_id, [])
        if vid is None or vid in self.results:
            return  # unknown, or already recorded (a repeated callback)
        outcome = read_outcome(result)
        resumed = outcome.summary.get("resumed_at_tokens") if outcome is not None else None
        if resumed is not None:  # restored from a checkpoint: the curve before it too
            outcome = outcome.replace(summary={**outcome.summary, "curve": [p for p in curve if p[0] <= resumed]
                                               + list(outcome.summary.get("curve") or [])})
        if outcome is None and not error and result and "dev_loss" in result:
            point = curve_row(result)
            if not curve or curve[-1] != point:
                curve.append(point)  # the result the scheduler stopped it on
        if outcome is None and not error and curve:  # the scheduler stopped it: a result, not a failure
            outcome = TrialOutcome.stopped(curve)
        if error or outcome is None:
            outcome = TrialOutcome.failed(f"the trial errored before reporting, {self.spec.trial.max_failures} "
                                          f"retries included (see its error.txt under tune/)")
        self._record(vid, trial_id, outcome)

    # -- confirmation: re-runs of the top candidates once the budget is spent (evolve.search.confirm) --
    def _suggest_rerun(self, trial_id: str):
        c = self.spec.confirm
        if not c.top:
            return Searcher.FINISHED
        if self.confirm_plan is None:
            if self.live or self.n_recorded < self.n_suggested:
                return None  # the budget's last trials are still training
            rows = [{"variant_id": v, "status": r["status"], "fitness": r["fitness"],
                     "parent_ids": list(self.variants[v].parents)} for v, r in self.results.items()]
            seeds = [self.spec.seed + 1 + i for i in range(c.seeds)]
            self.confirm_plan = confirm.plan(rows, self.seed_id, self.spec.objective.mode, c.top, seeds)
            self.confirm_total = len(self.confirm_plan)
            running = set(self.confirm_live.values())  # re-runs a resume found Tune running already
            self.confirm_plan = [p for p in self.confirm_plan if tuple(p) not in running]
            n = len({v for v, _ in self.confirm_plan})
            self.log(f"evolve: confirming: {len(self.confirm_plan)} re-runs of {n} variants (the seed, the top "
                     f"{c.top} and their parents) with seeds {', '.join(map(str, seeds))}")
        while self.confirm_plan and confirm.recorded(self.store.root, *self.confirm_plan[0]):
            self.confirm_plan.pop(0)  # recorded before a resume
        if not self.confirm_plan:
            return Searcher.FINISHED
        vid, seed = self.confirm_plan.pop(0)
        self.confirm_live[trial_id] = (vid, seed)
        key = confirm.rerun_key(vid, seed)
        config = self._trial_config(vid, trial_id)
        return config.replace(seed=seed, confirm=True, trial_key=key, checkpoint_tokens=0, keep_weights=False,
                              out_dir=str(Path(config.out_dir).parent / key)).to_dict()

    def _record_rerun(self, trial_id: str, result: dict | None, error: bool) -> None:
        vid, seed = self.confirm_live.pop(trial_id)
        outcome = read_outcome(result)
        if error or outcome is None:
            outcome = TrialOutcome.failed("the re-run errored before reporting")
        confirm.record(self.store.root, vid, seed, outcome.to_dict())
        got = (f"{self.spec.objective.metric} {outcome.fitness:.4f}" if outcome.status == "completed"
               else f"FAILED: {outcome.failure_reason}")
        self.log(f"[confirm] {vid[:8]} seed {seed} | {got}")

    def close(self) -> None:
        """Stops the agent's threads (proposals still being written are dropped)."""
        if self.llm is not None:
            self.llm.close()

    def save(self, checkpoint_path: str):
        state = {k: v for k, v in self.__dict__.items() if k not in ("store", "log")}
        state["rng"] = self.rng.getstate()
        atomic_write(Path(checkpoint_path), pickle.dumps(state))

    def restore(self, checkpoint_path: str):
        self.close()  # this process's agent threads, if any, before they are replaced
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        rng_state = state.pop("rng")
        self.__dict__.update(state)
        if "child_failures" not in state:  # a state saved before the briefs carried the parent's failed children
            self.child_failures = self._failed_children()
        self.rng = random.Random()
        self.rng.setstate(rng_state)
        if self.llm is not None:
            self.llm.log = self.log
        absorbed = self.absorb_recorded()  # the store is the record; Tune's snapshot may be older
        if absorbed:
            self.log(f"evolve: resume: {absorbed} result(s) recorded after Tune's last snapshot taken from the store")
        self._match_tune(Path(checkpoint_path).parent)  # Tune's experiment state sits beside this file
        if self.hybrid:
            self._forget_lost_trials()
        if self.llm is not None:
            kept = self.llm.restore(frozenset(self.variants))
            if kept:
                self.log(f"evolve: resume: {kept} proposal(s) the agent finished after Tune's last snapshot "
                         f"taken from proposals/ (not asked for again)")
        if self.bandit is not None:
            if self.llm is not None:
                self._bandit_rejections()
            # children still training are those Tune runs again, whatever the snapshot counted
            self.bandit.set_pending(Counter(self.variants[v].record.get("arm")
                                            for v in [*self.live.values(), *self.requeued]))
            self._save_bandit()

    def __getstate__(self):  # Tuner pickles the searcher; the log callable may not pickle
        state = dict(self.__dict__)
        state["log"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name, default in (("hybrid", False), ("tunings", {}), ("tuning_of", {})):
            self.__dict__.setdefault(name, default)  # a state saved before the hybrid search
        self.__dict__.setdefault("bandit", None)  # a state saved before the bandit
        self.__dict__.setdefault("llm_arms", {})
        self.__dict__.setdefault("merge_tried", set())  # a state saved before the merge operator
        self.__dict__.setdefault("merge_said", set())
        self.__dict__.setdefault("confirm_total", None)  # a state saved before the progress line: shown as "?"
        self.__dict__.setdefault("requeued", [])  # a state saved before the searcher matched Tune's trials
        if "n_briefs" not in state:  # a state saved when the agent kept this count itself
            self.n_briefs = getattr(self.llm, "n_child_requests", 0) if self.llm is not None else 0
        if "child_failures" not in state:  # a state saved before the briefs carried the parent's failed children
            self.child_failures = self._failed_children()
        self.log = self.log or print
        if getattr(self, "llm", None) is not None:
            self.llm.log = self.log

    # -- the agent: plain data out, children back -------------------------------------
    def agent_turn(self) -> None:
        """Has the LLM operator take in its finished proposals, then hands it a brief per request it wants."""
        known = frozenset(self.variants)
        self.llm.absorb(known)
        if self.bandit is not None:
            self._bandit_rejections()
        left = self.spec.budget.trials - self.n_suggested - (self._pending_seed is not None)
        if self.hybrid:
            left = hybrid_code_left(left, [t.target - t.asked for t in self.tunings.values() if t.to_ask()],
                                    self.spec.operator.hybrid_trials, bool(self.scores))
        self.llm.submit([self._brief() for _ in range(self.llm.wants(left))], known)

    def _brief(self) -> Brief:
        """The parent (a tournament on the next island in turn) and the inspirations for one request."""
        island = pop.island_for(self.n_briefs, len(self.islands))
        self.n_briefs += 1
        parent = pop.select_parents(self.rng, self._members(island), self.spec.selection.tournament, 1)[0]
        k = self.spec.operator.inspirations
        best = [v for _, v in heapq.nsmallest(k + 1, ((-sc, v) for v, sc in self.scores.items())) if v != parent]
        arm = self.bandit.choose(self.rng, among=self.llm_arms) if self.bandit and self.llm_arms else ""
        files = self.store.read_files(self.variants[parent])
        settings = files.get(self.settings_file)
        facts = task_facts(self.spec, read_meta(self.context["data_dir"]),
                           settings.decode("utf-8", "replace") if settings is not None else None,
                           self.results.get(parent))
        return Brief(parent=self.candidate(parent), parent_files=files,
                     inspirations=tuple(self.candidate(v) for v in best[:k]), island=island, facts=facts,
                     siblings=tuple(self.child_failures.get(parent, [])[-SIBLINGS_SHOWN:]),
                     model=self.llm_arms[arm] if arm else None, arm=arm)

    def candidate(self, vid: str) -> Candidate:
        """A variant as a prompt shows it: its mutable files, fitness, curve, metrics, rationale and speed."""
        files = self.store.read_files(self.variants[vid])
        shown = {p: files[p].decode("utf-8", "replace") for p in self.mutable if p in files}
        r = self.results.get(vid) or {}
        speed = {k: r[k] for k in ("tokens_per_s", "mfu", "trial_seconds") if r.get(k) is not None}
        return Candidate(vid, shown, r.get("fitness"), r.get("curve") or [], r.get("metrics") or {},
                         self.variants[vid].record.get("rationale", ""), speed)

    # -- population ------------------------------------------------------------
    def _members(self, island: int) -> list[tuple[str, float]]:
        """Returns the scored members to select from: the island's, else anyone's, else the seed."""
        if self.island_scored[island]:
            return self.island_scored[island]
        return list(self.scores.items()) or [(self.seed_id, 0.0)]

    def _propose(self, arm: str | None = None) -> Variant | None:
        """A heuristic child; `arm` ("perturb" or "crossover", drawn by the bandit) fixes the kind.

        None when no new child came of MAX_DUPLICATE_TRIES tries (a crossover
        arm also when its parents cannot be crossed into anything new).
        """
        island = pop.island_for(self.n_suggested, len(self.islands))
        members = self._members(island)
        h = self.spec.operator.heuristic
        for _ in range(MAX_DUPLICATE_TRIES):
            parents = pop.select_parents(self.rng, members, self.spec.selection.tournament, 2)
            files = self.store.read_files(self.variants[parents[0]])
            text = files[self.settings_file].decode()
            record = None
            if arm == "crossover" and len(parents) < 2:
                return None  # one scored variant: nothing to cross it with
            if len(parents) == 2 and (arm == "crossover" if arm else self.rng.random() < h.crossover_rate):
                other = self.store.read_files(self.variants[parents[1]])[self.settings_file].decode()
                new_text, record = crossover(self.rng, text, other, h)
                used = parents
                if arm == "crossover" and not record["changes"]:
                    continue
            if record is None or not record["changes"]:
                try:
                    new_text, record = perturb(self.rng, text, h)
                except ValueError as e:  # e.g. an LLM-written settings file with no key it may change
                    self.log(f"evolve: heuristic operator: {e}")
                    return None
                used = parents[:1]
            child_files = {**files, self.settings_file: new_text.encode()}
            bad = surface_violations(files, child_files, self.mutable)
            if bad:  # the operator itself broke the policy: a bug, not a variant
                raise RuntimeError(f"operator changed files outside the mutable surface: {bad}")
            if arm:
                record["arm"] = arm
            child = Variant(files=self.store.put_files(child_files), parents=tuple(used),
                            operator=record["kind"], record=record, island=island)
            if child.id not in self.variants:
                return child
        return None

    # -- the merge operator (evolve.search.merge) ------------------------------------
    def _merge_due(self) -> bool:
        """Whether this suggestion is a merge (`operator.merge_rate`); draws nothing when merges are off."""
        rate = self.spec.operator.merge_rate
        if rate <= 0 or (self.llm is not None and self.llm.spent()):
            return False
        return self.rng.random() < rate

    def _merge(self) -> Variant | None:
        """Returns a clean three-way merge of two strong variants from different lineages, or None.

        Pairs are tried best first, each once. A conflicted pair goes to the
        LLM operator, whose resolved child comes back through `take`; with no
        agent that answers it is left out and the next pair is tried.
        """
        parents = {v: x.parents for v, x in self.variants.items()}
        island = pop.island_for(self.n_suggested, len(self.islands))
        while (pair := merging.choose_pair(parents, self.scores, MERGE_POOL, self.merge_tried)) is not None:
            a, b, base = pair
            self.merge_tried.add(frozenset((a, b)))
            files = {v: self.store.read_files(self.variants[v]) for v in pair}
            try:
                m = merging.merge_files(files[base], files[a], files[b], self.mutable, labels=(a, base, b))
                for path in ([] if m.conflicts else m.from_theirs):
                    check_syntax(path, m.files[path])  # two clean edits may still break a file together
            except (merging.MergeError, Rejected) as e:
                self.log(f"evolve: merge of {a[:8]} and {b[:8]} left out: {e}")
                continue
            for side in (a, b):
                bad = surface_violations(files[side], m.files, self.mutable)
                if bad:  # the merge itself broke the policy: a bug, not a variant
                    raise RuntimeError(f"merge changed files outside the mutable surface: {bad}")
            if m.conflicts:
                if self.llm is not None and self.llm.state == "ok":
                    if self.llm.merges_pending():  # one at a time: the pair waits for its turn
                        self.merge_tried.discard(frozenset((a, b)))
                        return None
                    self.llm.submit_merge(MergeBrief(self.candidate(a), self.candidate(b), base, m.files,
                                                     tuple(m.conflicts), m.n_conflicts, tuple(m.from_theirs),
                                                     island), frozenset(self.variants))
                    return None
                if "conflict" not in self.merge_said:
                    self.merge_said.add("conflict")
                    self.log(f"evolve: merge: {a[:8]} and {b[:8]} conflict in {', '.join(m.conflicts)}; a conflicted "
                             f"pair is merged only by an LLM operator that answers (operator.kind: llm), so such "
                             f"pairs are left out and others tried")
                continue
            taken = ", ".join(m.from_theirs) or "nothing"
            record = {"kind": "merge", "base": base, "conflicts": 0, "conflicts_resolved": 0, "resolved_by": None,
                      "from_theirs": list(m.from_theirs),
                      "changes": [{"file": p, "how": "merged"} for p in m.from_theirs],
                      "rationale": f"merged {a[:8]} and {b[:8]} from their ancestor {base[:8]} "
                                   f"({taken} with {b[:8]}'s changes)"}
            child = Variant(files=self.store.put_files(m.files), parents=(a, b), operator="merge",
                            record=record, island=island)
            if child.id not in self.variants:  # else theirs' changes were ours' already
                return child
        return None

    def _admit(self, child: Variant) -> None:
        if self.hybrid:  # the seed is admitted twice when an agent writes: once is its record made
            child = self.variants.get(child.id, child) if child.id in self.tuning_of else self._start_tuning(child)
        self.store.put_variant(child)
        self.variants[child.id] = child
        homes = range(len(self.islands)) if child.id == self.seed_id else [child.island]
        for i in homes:  # the seed belongs to every island
            self._join(i, child.id)

    def _join(self, island: int, vid: str) -> None:
        if vid not in self.on_island[island]:
            self.on_island[island].add(vid)
            self.islands[island].append(vid)
            if vid in self.scores:
                self.island_scored[island].append((vid, self.scores[vid]))

    def _trial_config(self, vid: str, trial_id: str) -> TrialConfig:
        run = Path(self.store.root).resolve()
        variant_dir = self.store.materialize(self.variants[vid], run / "work" / vid)
        config = TrialConfig.from_dict({**self.context, "variant_id": vid, "trial_id": trial_id,
                                        "variant_dir": str(variant_dir), "out_dir": str(run / "trials" / vid)})
        op = self.spec.operator
        if not op.inherit:
            return config
        config = config.replace(keep_weights=True)  # any variant may be a parent
        v = self.variants[vid]
        # a hybrid study compares its trials like with like: each trains from scratch
        parent = v.parents[0] if v.parents and v.operator != "tune" else None
        tokens = read_inherit(run, parent) if parent else None
        if tokens is None or inherit_refusal(self.store.read_files(self.variants[parent]), self.store.read_files(v),
                                             self.settings_file, op.shape_keys) is not None:
            return config
        return config.replace(resume_from=str(run / INHERIT / parent / "weights"), inherited_from=parent,
                              inherited_tokens=tokens,
                              train_tokens=inherit_tokens(op.inherit_tokens, self.spec.budget.train_tokens))

    def _record(self, vid: str, trial_id: str, outcome: TrialOutcome) -> None:
        row = result_row(self.variants[vid], trial_id, outcome)
        self.store.append_result(row)  # durable before the searcher counts it
        self.store.compact()  # one merged file per COMPACT_AT results keeps a large population quick to load
        self._count(vid, row)
        self.log(self._result_line(vid, outcome))
        if self.llm is not None:
            v = self.variants[vid]
            parent = self.results.get(v.parents[0]) if v.parents else None
            self.llm.on_result(vid, v.parents[0] if v.parents else None, v.record.get("rationale") or v.operator,
                               outcome.to_dict(), parent["fitness"] if parent else None)
            self.agent_turn()

    def _count(self, vid: str, row: dict) -> None:
        """Takes a recorded result into the searcher's state (scores, best, islands, migration)."""
        curve, fitness = row["curve"], row["fitness"]
        self.results[vid] = {"status": row["status"], "fitness": fitness, "curve": curve,
                             "metrics": row["metrics"], "tokens_per_s": _finite(row.get("tokens_per_s")),
                             "mfu": _finite(row.get("mfu")), "trial_seconds": _finite(row.get("trial_seconds")),
                             "failure_reason": row.get("failure_reason"),
                             "n_params": _count_of(row.get("n_params")),  # absent from rows older than it
                             "optimizer_steps": _count_of(row.get("optimizer_steps"))}
        failed = self._failed_child(vid)
        if failed is not None:
            self.child_failures.setdefault(self.variants[vid].parents[0], []).append(failed)
        if self.bandit is not None:
            self._bandit_reward(vid, row)
        score = pop.score(fitness, self.spec.objective.mode)
        if math.isfinite(score) and (self._best is None or score > self._score_of(self._best)):
            self._best = vid
        if self.hybrid:  # a trial is a parent only as the best of a code variant's finished tuning
            self._tuned(vid, row)
        elif math.isfinite(score):
            self._select_from(vid, score)
        self.n_recorded += 1
        self._migrate_if_due()

    def _score_of(self, vid: str) -> float:
        return pop.score(self.results[vid]["fitness"], self.spec.objective.mode)

    def _select_from(self, vid: str, score: float) -> None:
        """Makes `vid` a member to select parents from, on every island it is on."""
        self.scores[vid] = score
        for i, members in enumerate(self.on_island):
            if vid in members:
                self.island_scored[i].append((vid, score))

    # -- hybrid: code variants tuned by Optuna (evolve.search.hybrid, evolve.search.studies) --------
    def _start_tuning(self, child: Variant) -> Variant:
        """Takes in a code variant, or a tuning trial read back from the store after a resume; returns it to admit.

        A code variant gets its study and a record naming it as its own
        code variant, with its space; its own trial is the first of its tuning.
        """
        cv = child.record.get("code_variant")
        if child.operator == "tune" and cv in self.tunings:  # suggested after the snapshot
            t = self.tunings[cv]
            t.asked += 1
            t.trials.append(child.id)
            self.tuning_of[child.id] = cv
            return child
        op = self.spec.operator
        text = self.store.read_files(child)[self.settings_file].decode("utf-8", "replace")
        space = hybrid.tuning_space(text, op.heuristic, child.record.get("tunable"))
        study = (studies.new_study(op.hybrid_sampler, self.spec.seed + len(self.tunings), self.spec.objective.mode,
                                   op.hybrid_trials) if space and op.hybrid_trials > 1 else None)
        self.tunings[child.id] = hybrid.Tuning(child.id, space, op.hybrid_trials, study, trials=[child.id])
        self.tuning_of[child.id] = child.id
        record = {**child.record, "code_variant": child.id,
                  "tuning": {"trials": op.hybrid_trials, "sampler": op.hybrid_sampler, "keys": sorted(space)}}
        return dataclasses.replace(child, record=record)

    def _suggest_tuning(self, trial_id: str) -> dict | None:
        """The config of the next tuning trial of the oldest code variant with one to ask, or None."""
        for cv, t in self.tunings.items():
            while t.to_ask():
                child = self._ask(cv, t)
                if child is None:
                    continue
                self._admit(child)
                self.live[trial_id] = child.id
                self.n_suggested += 1
                return self._trial_config(child.id, trial_id).to_dict()
        return None

    def _ask(self, cv: str, t: hybrid.Tuning) -> Variant | None:
        """Asks the study of `cv` for settings not trained yet; None when a draw is a known variant (told as such)."""
        files = self.store.read_files(self.variants[cv])
        try:
            number, values = studies.ask(t)
            text = hybrid.settings_text(files[self.settings_file].decode(), values)
        except (KeyError, ValueError) as e:  # a settings file the values cannot be written into
            self.log(f"evolve: hybrid: {cv[:8]}: tuning stops: {' '.join(str(e).split())[:200]}")
            t.exhausted = True
            self._finish_if_done(cv, t)
            return None
        shown = hybrid.written(values)
        child = Variant(files=self.store.put_files({**files, self.settings_file: text.encode()}), parents=(cv,),
                        operator="tune", island=self.variants[cv].island,
                        record={"kind": "tune", "code_variant": cv, "values": shown, "trial": t.asked + 1,
                                "rationale": f"tuning trial {t.asked + 1} of {cv[:8]}: "
                                             + ", ".join(f"{k} {v!r}" for k, v in shown.items())})
        if child.id in self.variants:  # drawn before: the study learns what it scored (pruned: still training)
            r = self.results.get(child.id)
            studies.tell_number(t, number, r["fitness"] if r else None, r["status"] if r else "stopped")
            t.duplicates += 1
            if t.duplicates >= MAX_DUPLICATE_TRIES:
                t.exhausted = True
                self._finish_if_done(cv, t)
            return None
        t.asked += 1
        t.trials.append(child.id)
        t.numbers[child.id] = number
        self.tuning_of[child.id] = cv
        return child

    def _tuned(self, vid: str, row: dict) -> None:
        """Tells the study of the trial's code variant how it did; the last trial finishes the tuning."""
        cv = self.tuning_of.get(vid)
        t = self.tunings.get(cv)
        if t is None:
            return
        v = self.variants[vid]
        values = (v.record.get("values") if v.operator == "tune"
                  else hybrid.current_values(self.store.read_files(v)[self.settings_file].decode(), t.space))
        if t.study is not None:
            studies.tell(t, vid, values or {}, row["fitness"], row["status"])
        t.done += 1
        self._finish_if_done(cv, t)

    def _finish_if_done(self, cv: str, t: hybrid.Tuning) -> None:
        """When every trial of `cv` is back: its best trial (the code with its tuned numbers) becomes selectable."""
        if not t.finished() or t.best is not None or cv in self.scores:
            return
        scored = [(self._score_of(v), v) for v in t.trials if v in self.results]
        scored = [(sc, v) for sc, v in scored if math.isfinite(sc)]
        if not scored:
            self.log(f"evolve: hybrid: code variant {cv[:8]}: every one of its {t.done} trials failed")
            return
        score, best = max(scored)
        t.best = best
        for i, members in enumerate(self.on_island):  # the best joins its code variant's islands
            if cv in members and best not in members:
                self._join(i, best)
        self._select_from(best, score)
        values = self.variants[best].record.get("values") if best != cv else "as written"
        self.log(f"evolve: hybrid: code variant {cv[:8]} tuned: {t.done} trials, best {best[:8]} "
                 f"{self.spec.objective.metric} {self.results[best]['fitness']:.4f} ({values})")

    def absorb_recorded(self) -> int:
        """Counts the results the store holds that this state has not (recorded after its snapshot).

        Returns how many. A variant suggested after the snapshot counts as
        suggested, and a trial still live for a recorded variant is dropped,
        so no finished variant is trained again and none is counted twice.
        """
        new = 0
        rows = self.store.read_results().to_pylist()
        for line in self.store.unreadable:
            self.log(f"evolve: warning: {line}")
        for row in rows:
            vid = row["variant_id"]
            if vid in self.results:
                continue
            row = parsed(row)
            self._count_suggested(vid)
            self._count(vid, row)
            for trial_id in [t for t, v in self.live.items() if v == vid]:
                del self.live[trial_id]
                self.curves.pop(trial_id, None)
            new += 1
        return new

    def _count_suggested(self, vid: str) -> None:
        """Counts a variant as suggested if the snapshot this state came from had not (it was suggested after).

        KeyError (or the store's error) if the store does not hold it.
        """
        if self._pending_seed is not None and vid == self._pending_seed.id:
            variant, self._pending_seed = self._pending_seed, None
        elif vid in self.requeued:
            self.requeued.remove(vid)
            variant = self.variants[vid]
        elif vid in self.variants:
            return  # counted when it was suggested
        else:
            variant = self.store.get_variant(vid)
        self._admit(variant)
        self.n_suggested += 1

    def _match_tune(self, tune_dir: Path) -> None:
        """Makes the live trials those Tune runs again from its newest experiment state (evolve.search.tunestate).

        A trial Tune saved after the searcher's snapshot is counted (its
        variant read from the store); a trial the searcher counted that
        Tune never saved is lost, and its variant is suggested again (a
        tuning's lost trial: `_forget_lost_trials` asks another).
        """
        try:
            again = tunestate.trials_run_again(tune_dir)
        except ValueError as e:
            self.log(f"evolve: warning: resume: Ray Tune's trials not matched with the searcher's: {e}")
            return
        if again is None:
            return
        m = tunestate.match(self.live, self.confirm_live, again, set(self.results))
        for tid, vid in m.adopt.items():
            try:
                self._count_suggested(vid)
            except (KeyError, OSError, ValueError) as e:
                self.log(f"evolve: warning: resume: Tune runs trial {tid} of variant {vid[:8]}, "
                         f"which the store cannot give: {' '.join(str(e).split())[:200]}")
                continue
            self.live[tid] = vid
        for tid, vid in m.lose.items():
            del self.live[tid]
            self.curves.pop(tid, None)
            if vid not in self.tuning_of:
                self.requeued.append(vid)
                self.n_suggested -= 1
        for tid, pair in m.adopt_reruns.items():
            self.confirm_live[tid] = pair
            if self.confirm_plan:
                self.confirm_plan = [p for p in self.confirm_plan if tuple(p) != pair]
        for tid, pair in m.lose_reruns.items():
            del self.confirm_live[tid]
            if self.confirm_plan is not None:
                self.confirm_plan.insert(0, pair)  # `_suggest_rerun` skips it if it was recorded
        found = len(m.adopt) + len(m.adopt_reruns)
        lost = len(m.lose) + len(m.lose_reruns)
        if found or lost:
            self.log(f"evolve: resume: Ray Tune's state and the searcher's differ: {found} trial(s) Tune runs "
                     f"again taken in, {lost} it never saved to be suggested again")

    def _forget_lost_trials(self) -> None:
        """After a resume: a tuning's trial neither recorded nor live was suggested after the snapshot and is lost.

        (A code variant read back from the store for its tuning trial's
        result counts its own trial, which no one will train.) The study is
        told it failed, and the tuning asks for another in its place.
        """
        live = set(self.live.values())
        for cv, t in self.tunings.items():
            lost = [v for v in t.trials if v not in self.results and v not in live]
            for v in lost:
                t.trials.remove(v)
                number = t.numbers.pop(v, None)
                if number is not None:
                    studies.tell_number(t, number, None, "failed")
            t.asked -= len(lost)
            self._finish_if_done(cv, t)

    # -- the bandit: which operator writes the next child (evolve.search.bandit) ---------------
    def _bandit_child(self):
        """The next child by the arm the bandit draws; None when none came, DONE when the LLM budget ended the search.

        A drawn LLM arm takes a ready child of its model, else the oldest
        ready one (credited to the model that wrote it); with none ready a
        heuristic arm is drawn instead, and the LLM arm is not counted as
        pulled. A crossover arm whose parents cross into nothing new falls
        back to perturb the same way.
        """
        if self.llm is not None and self.llm.finished():
            return DONE
        arm = self.bandit.choose(self.rng)
        child = None
        if arm in self.llm_arms:
            child = self.llm.take_arm(frozenset(self.variants), arm)
            if child is not None:
                arm = child.record.get("arm") or arm
            else:
                arm = self.bandit.choose(self.rng, among=[a for a in HEURISTIC_ARMS if a in self.bandit.arms])
        if child is None and arm == "crossover":
            child = self._propose("crossover")
            arm = "crossover" if child is not None else "perturb"
        if child is None:
            child = self._propose("perturb")
        if child is not None:
            self.bandit.pull(arm)
            self._save_bandit()
        return child

    def _bandit_reward(self, vid: str, row: dict) -> None:
        """Takes a recorded child's gain per million tokens into the arm that made it."""
        v = self.variants[vid]
        arm = v.record.get("arm")
        if not arm or not v.parents:
            return  # the seed, or a child made while the bandit was off
        if arm not in self.bandit.arms:
            self.log(f"evolve: warning: bandit: {vid} was made by arm {arm!r}, not one of this search's; not counted")
            return
        parent = self.results.get(v.parents[0]) or {}
        # the tokens the searcher gave the trial, never the count its rank reported (a variant could shrink it
        # to buy its arm a larger reward per token); a failed or stopped child's reward is 0 whatever it spent
        op = self.spec.operator
        tokens = (inherit_tokens(op.inherit_tokens, self.spec.budget.train_tokens) if row.get("inherited_from")
                  else self.spec.budget.train_tokens)
        self.bandit.update(arm, reward(_finite(row["fitness"]), _finite(parent.get("fitness")), row["status"],
                                       float(tokens), self.spec.objective.mode))
        self._save_bandit()

    def _bandit_rejections(self) -> None:
        """Counts each LLM proposal the checks rejected as a pull of its model that bought nothing."""
        for arm in self.llm.take_rejected_arms():
            if arm in self.bandit.arms:
                self.bandit.update(arm, 0.0, pulled=False)
                self._save_bandit()

    def _save_bandit(self) -> None:
        data = {**self.bandit.to_dict(), "updated_at": time.time()}
        atomic_write(Path(self.store.root) / BANDIT_FILE, json.dumps(data, indent=1, sort_keys=True).encode())

    def _failed_child(self, vid: str) -> dict | None:
        """A recorded child that failed or was stopped, as a brief shows it (None otherwise, or the seed)."""
        r, v = self.results.get(vid), self.variants.get(vid)
        if r is None or v is None or not v.parents or r["status"] not in ("failed", "stopped"):
            return None
        return {"variant_id": vid, "status": r["status"], "reason": (r.get("failure_reason") or "")[:400],
                "change": (v.record.get("rationale") or v.operator)[:300]}

    def _failed_children(self) -> dict[str, list[dict]]:
        """Every parent's children that failed or were stopped, from the results (a state saved before them)."""
        out: dict[str, list[dict]] = {}
        for vid in self.results:
            failed = self._failed_child(vid)
            if failed is not None:
                out.setdefault(self.variants[vid].parents[0], []).append(failed)
        return out

    def _migrate_if_due(self) -> None:
        if self.n_recorded % self.spec.selection.migrate_every:
            return
        for vid, dest in pop.migrations(self.islands, self.scores):
            self._join(dest, vid)

    def best_id(self) -> str | None:
        return self._best

    def _result_line(self, vid: str, outcome: TrialOutcome) -> str:
        v = self.variants[vid]
        parent = ",".join(p[:8] for p in v.parents) or "-"
        what = v.record.get("rationale", v.operator)
        if outcome.status == "completed":
            got = f"{self.spec.objective.metric} {outcome.fitness:.4f}"
        else:
            what_happened = "STOPPED" if outcome.status == "stopped" else "FAILED"
            got = f"{what_happened}: {outcome.failure_reason}"
        best = self.best_id()
        best_txt = f"{self.results[best]['fitness']:.4f} ({best[:8]})" if best else "-"
        return (f"[{self.n_recorded:>3}/{self.spec.budget.trials}] {vid[:8]} <- {parent:<17} "
                f"{what[:60]:<60} | {got} | best {best_txt}")


def hybrid_code_left(left: int, to_ask: list[int], per_code: int, any_tuned: bool) -> int:
    """Code variants the agent may still write: the trials the budget leaves after the tunings' own, a code variant's worth each.

    None while no code variant has finished its tuning: new code comes only from tuned ones.
    """
    if not any_tuned:
        return 0
    rest = left - sum(to_ask)
    return max(0, -(-rest // per_code))
HEURISTIC_ARMS = ("perturb", "crossover")


def new_bandit(spec) -> tuple[Bandit | None, dict[str, int]]:
    """The search's bandit (None when `operator.bandit` is off) and its LLM arms (name -> model entry index).

    Arms: perturb; crossover unless `crossover_rate` is 0; with an LLM
    operator one per model that may be drawn.
    """
    op = spec.operator
    if op.bandit == "off":
        return None, {}
    llm = model_arms(model_entries(op)) if op.kind == "llm" else {}
    heuristic = [a for a in HEURISTIC_ARMS if a != "crossover" or op.heuristic.crossover_rate > 0]
    return Bandit(op.bandit, [*heuristic, *llm]), llm


def result_row(v: Variant, trial_id: str, outcome: TrialOutcome) -> dict:
    """Returns the population row of one finished trial of variant `v`."""
    summary = outcome.summary
    curve = summary.get("curve") or []
    return {
        "variant_id": v.id, "parent_ids": list(v.parents), "operator": v.operator,
        "record": v.record, "island": v.island, "status": outcome.status,
        "failure_reason": outcome.failure_reason, "fitness": outcome.fitness,
        "metrics": outcome.metrics, "curve": curve,
        "final_train_loss": curve[-1][1] if curve else None,
        "final_dev_loss": curve[-1][2] if curve else None,
        "train_seconds": summary.get("train_seconds"),
        "trial_seconds": outcome.trial_seconds,
        "tokens_trained": summary.get("tokens_trained"),
        "setup_seconds": summary.get("setup_seconds"), "eval_seconds": outcome.eval_seconds,
        "trial_id": trial_id, "created_at": v.created_at,
        "started_at": outcome.trial_started_at,
        "first_step_at": summary.get("first_step_at"), "last_step_at": summary.get("last_step_at"),
        "finished_at": time.time(),
        "tokens_per_s": _times(summary.get("tokens_per_s"), summary.get("world_size")),
        "mfu": summary.get("mfu"), "gpu_hours": outcome.gpu_hours,
        "inherited_from": outcome.inherited_from or None, "tokens_inherited": outcome.tokens_inherited or None,
        "n_params": _count_of(summary.get("n_params")), "optimizer_steps": _count_of(summary.get("optimizer_steps")),
    }


def read_outcome(result: dict | None) -> TrialOutcome | None:
    """The outcome a trial's final result carries, checked; None if it carries none (stopped, or errored).

    An outcome that does not read back (a result from another version, or
    damaged) is a failed trial with the reason, not a crash of the search.
    """
    if not result or "result_json" not in result:
        return None
    try:
        return TrialOutcome.from_json(result["result_json"])
    except RecordError as e:
        return TrialOutcome.failed(f"the trial's result could not be read: {e}")


def _finite(x) -> float | None:
    """Returns `x` as a float, or None for a missing value (None or NaN from an older row)."""
    try:
        return float(x) if x is not None and math.isfinite(float(x)) else None
    except (TypeError, ValueError):
        return None


def _count_of(x) -> int | None:
    """Returns `x` if it is a count (an int, 0 or more), else None (missing, or not one)."""
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def _times(rate, world) -> float | None:
    """Returns a rank's rate times the ranks (every rank trains as fast in data parallelism)."""
    return None if rate is None else float(rate) * int(world or 1)
