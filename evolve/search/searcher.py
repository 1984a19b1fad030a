"""The Ray Tune Searcher: holds the population, picks parents, makes children.

A thin adapter over pure functions (`evolve.search.selection`, the operators):
`suggest` never blocks on anything slower than a few file writes; each
finished trial is written to the store before the searcher counts it.
"""

from __future__ import annotations

import heapq
import math
import pickle
import random
import time
from pathlib import Path

from ray.tune.search import Searcher

from evolve.agent.operator import DONE, WAIT, Brief, LLMOperator
from evolve.agent.prompts import Candidate
from evolve.messages import RecordError, TrialConfig, TrialOutcome, curve_row
from evolve.record.seals import sealed_paths, surface_violations
from evolve.record.store import Store, atomic_write, parsed
from evolve.search import confirm
from evolve.search.facts import read_meta, task_facts
from evolve.search import selection as pop
from evolve.search.heuristic import crossover, perturb
from evolve.variant import Variant

MAX_DUPLICATE_TRIES = 20  # fresh mutations tried before a suggestion gives up
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
        self.curves: dict[str, list] = {}  # trial id -> learning curve so far
        self.n_suggested = 0
        self.n_recorded = 0
        self.confirm_plan: list | None = None  # (variant, seed) re-runs still to suggest
        self.confirm_live: dict[str, tuple] = {}  # trial id -> (variant, seed) of a re-run
        seed = Variant(files=store.put_files(seed_files), operator="seed",
                       record={"kind": "seed", "rationale": "the scaffold as written"})
        self.seed_id = seed.id
        self._pending_seed = seed
        self.n_briefs = 0  # drives the islands' round robin of the agent's requests
        self.child_failures: dict[str, list[dict]] = {}  # parent id -> its children that failed or were stopped
        self.llm = (LLMOperator(spec, trial_context, self.mutable, self.sealed_in_scaffold, log)
                    if spec.operator.kind == "llm" else None)
        if self.llm is not None:  # the agent starts on the seed's children before Tune starts
            self._admit(seed)
            self.llm.start()
            self.agent_turn()

    # -- Tune's contract -------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode come from the experiment spec

    def suggest(self, trial_id: str):
        if self.n_suggested >= self.spec.budget.trials:
            return self._suggest_rerun(trial_id)
        if self._pending_seed is not None:
            child, self._pending_seed = self._pending_seed, None
        else:
            if self.llm is not None:
                self.agent_turn()
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
        self._admit(child)
        self.live[trial_id] = child.id
        self.n_suggested += 1
        if self.llm is not None:
            self.agent_turn()  # keep the agent writing ahead of the next free slot
        return self._trial_config(child.id, trial_id).to_dict()

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
        return config.replace(seed=seed, confirm=True, trial_key=key, checkpoint_tokens=0,
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
        if self.llm is not None:
            kept = self.llm.restore(frozenset(self.variants))
            if kept:
                self.log(f"evolve: resume: {kept} proposal(s) the agent finished after Tune's last snapshot "
                         f"taken from proposals/ (not asked for again)")

    def __getstate__(self):  # Tuner pickles the searcher; the log callable may not pickle
        state = dict(self.__dict__)
        state["log"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
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
        left = self.spec.budget.trials - self.n_suggested - (self._pending_seed is not None)
        self.llm.submit([self._brief() for _ in range(self.llm.wants(left))], known)

    def _brief(self) -> Brief:
        """The parent (a tournament on the next island in turn) and the inspirations for one request."""
        island = pop.island_for(self.n_briefs, len(self.islands))
        self.n_briefs += 1
        parent = pop.select_parents(self.rng, self._members(island), self.spec.selection.tournament, 1)[0]
        k = self.spec.operator.inspirations
        best = [v for _, v in heapq.nsmallest(k + 1, ((-sc, v) for v, sc in self.scores.items())) if v != parent]
        files = self.store.read_files(self.variants[parent])
        settings = files.get(self.settings_file)
        facts = task_facts(self.spec, read_meta(self.context["data_dir"]),
                           settings.decode("utf-8", "replace") if settings is not None else None,
                           self.results.get(parent))
        return Brief(parent=self.candidate(parent), parent_files=files,
                     inspirations=tuple(self.candidate(v) for v in best[:k]), island=island, facts=facts,
                     siblings=tuple(self.child_failures.get(parent, [])[-SIBLINGS_SHOWN:]))

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

    def _propose(self) -> Variant | None:
        island = pop.island_for(self.n_suggested, len(self.islands))
        members = self._members(island)
        h = self.spec.operator.heuristic
        for _ in range(MAX_DUPLICATE_TRIES):
            parents = pop.select_parents(self.rng, members, self.spec.selection.tournament, 2)
            files = self.store.read_files(self.variants[parents[0]])
            text = files[self.settings_file].decode()
            record = None
            if len(parents) == 2 and self.rng.random() < h.crossover_rate:
                other = self.store.read_files(self.variants[parents[1]])[self.settings_file].decode()
                new_text, record = crossover(self.rng, text, other, h)
                used = parents
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
            child = Variant(files=self.store.put_files(child_files), parents=tuple(used),
                            operator=record["kind"], record=record, island=island)
            if child.id not in self.variants:
                return child
        return None

    def _admit(self, child: Variant) -> None:
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
        return TrialConfig.from_dict({**self.context, "variant_id": vid, "trial_id": trial_id,
                                      "variant_dir": str(variant_dir), "out_dir": str(run / "trials" / vid)})

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
        score = pop.score(fitness, self.spec.objective.mode)
        if math.isfinite(score):
            self.scores[vid] = score
            if self._best is None or score > self.scores[self._best]:
                self._best = vid
            for i, members in enumerate(self.on_island):
                if vid in members:
                    self.island_scored[i].append((vid, score))
        self.n_recorded += 1
        self._migrate_if_due()

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
            if vid not in self.variants:  # suggested after the snapshot
                self._admit(self.store.get_variant(vid))
                self.n_suggested += 1
            self._count(vid, row)
            for trial_id in [t for t, v in self.live.items() if v == vid]:
                del self.live[trial_id]
                self.curves.pop(trial_id, None)
            new += 1
        return new

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
