"""Reading a run: the population as a DataFrame, lineage, diffs, summaries."""

from __future__ import annotations

import difflib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from evolve.agent import audit
from evolve.read import lineage
from evolve.record import mirror
from evolve.record.store import Store
from evolve.spec import run_settings

# pyarrow's Table is built only by the one function that returns one.


class Population(pd.DataFrame):
    """The population, one row a variant, with lineage helpers."""

    _metadata = ["run_dir", "mode"]

    @property
    def _constructor(self):
        return Population

    def lineage(self, variant: str = "best") -> list[str]:
        """Returns the ids from the seed to `variant` ("best" or an id prefix), first parent first."""
        vid = self.best_id() if variant == "best" else self.resolve(variant)
        if vid is None:
            return []
        parents = dict(zip(self["variant_id"].tolist(), self["parent_ids"].tolist()))
        store = Store(self.run_dir)
        chain = [vid]
        while True:
            # the table has every finished variant; only unfinished ones need their manifest
            ps = parents[chain[-1]] if chain[-1] in parents else store.get_variant(chain[-1]).parents
            if len(ps) == 0:
                return chain[::-1]
            chain.append(ps[0])

    def resolve(self, prefix: str) -> str:
        """Returns the one variant id starting with `prefix`: finished ones from the table, others from the store."""
        ids = self["variant_id"]
        hits = [prefix] if (ids == prefix).any() else ids[ids.str.startswith(prefix)].unique()
        if len(hits) == 1:
            return hits[0]
        return resolve(self.run_dir, prefix)  # unfinished (or ambiguous): the store says which, or why not

    def depth(self) -> int:
        """Returns the longest chain of first parents from the seed, in generations."""
        return int(lineage.generations(self).max()) if len(self) else 0

    def best_id(self) -> str | None:
        done = self[(self["status"] == "completed") & self["fitness"].notna()]
        if done.empty:
            return None
        row = done["fitness"].idxmin() if self.mode == "min" else done["fitness"].idxmax()
        return done.loc[row, "variant_id"]

    def seed_id(self) -> str | None:
        seeds = self[self["operator"] == "seed"]
        return None if seeds.empty else seeds.iloc[0]["variant_id"]

    # -- the questions of evolve.read.lineage, asked of this population -------------------------
    def ancestors(self, variant: str) -> set[str]:
        return lineage.ancestors(self, self.resolve(variant))

    def descendants(self, variant: str) -> set[str]:
        return lineage.descendants(self, self.resolve(variant))

    def path(self, variant: str = "best") -> list[dict]:
        """The steps from the seed to `variant`: id, operator, rationale, fitness and diff of each."""
        return lineage.path_to(self, variant, lambda v: diff_against_parent(self.run_dir, v))

    def operator_stats(self) -> pd.DataFrame:
        return lineage.operator_stats(self, self.mode)

    def code_variants(self) -> pd.DataFrame:
        """Hybrid: per code variant, its trials, its fitness as written and its tuned best (empty for other runs)."""
        return lineage.code_variants(self, self.mode)

    def generation_stats(self) -> pd.DataFrame:
        return lineage.generation_stats(self, self.mode)

    def pareto_front(self, cost: str = "compute_seconds") -> pd.DataFrame:
        """Fitness against `cost` ("compute_seconds": trial seconds times workers, or "llm_tokens")."""
        return lineage.pareto_front(self, cost, self.mode, workers_per_trial(self.run_dir))

    def curve(self, variant: str) -> list:
        """The learning curve of one variant: [[tokens, train_loss, dev_loss, step, lr], ...] (older rows: 3 columns)."""
        vid = self.resolve(variant)
        text = self.loc[self["variant_id"] == vid, "curve"]
        return json.loads(text.iloc[0]) if len(text) and isinstance(text.iloc[0], str) else []

    def curves(self, ids=None) -> pd.DataFrame:
        return lineage.curves(self, ids)

    def to_arrow(self):
        """The population as an Arrow table (record, metrics and curve as JSON text)."""
        return load_arrow(self.run_dir)


def tokens_to_reach(curve, loss: float) -> float | None:
    """Returns the tokens at the first curve point whose dev loss is at most `loss`, or None."""
    return next((float(p[0]) for p in curve if p[2] <= loss), None)


def efficiency_ratio(curve, seed_curve) -> float | None:
    """Tokens `curve` needs to reach the seed's final dev loss, over the tokens the seed trained.

    Both are read at the curves' own evaluation points (no interpolation),
    so the ratio is never flattered by the spacing of the points. None when
    the curve never reaches the seed's loss.
    """
    if len(seed_curve) == 0 or len(curve) == 0:
        return None
    reached = tokens_to_reach(curve, seed_curve[-1][2])
    return None if reached is None else reached / float(seed_curve[-1][0])


def _mode(run_dir: Path) -> str:
    return run_settings(run_dir).objective.mode


def _json_column(texts) -> list:
    """Parses a column of JSON texts in one call (a third of the time of one call a row)."""
    return json.loads("[" + ",".join(t if isinstance(t, str) else "null" for t in texts) + "]")


def load_population(run_dir: str | Path) -> Population:
    """Returns every finished variant of the run as a DataFrame, one row each.

    `record` and `metrics` are parsed into dicts and `parent_ids` into
    lists. Each learning curve stays JSON text in `curve` (a long search
    has millions of points): `Population.curve(id)` parses one, and
    `Population.curves(ids)` returns chosen ones as one long table.
    """
    run_dir = _local(run_dir)
    if not (run_dir / "population").is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no population/ folder)")
    store = Store(run_dir)
    table = _last_of_each(store.read_results())
    df = table.drop(["record", "metrics", "parent_ids"]).to_pandas()
    df["parent_ids"] = table.column("parent_ids").to_pylist()
    for col in ("record", "metrics"):
        df[col] = _json_column(table.column(col).to_pylist())
    out = Population(df[list(table.column_names)])  # the table's column order
    # hybrid: each trial's code variant (a code variant names itself); None in other runs and older ones
    out["code_variant"] = [r.get("code_variant") if isinstance(r, dict) else None for r in out["record"]]
    out.run_dir = run_dir
    out.mode = _mode(run_dir)
    out.attrs["unreadable"] = store.unreadable
    return out


def _last_of_each(table):
    """The table's last row of each variant, in the order those rows were written."""
    import pyarrow as pa

    ids = table.column("variant_id").to_pylist()
    last = {v: i for i, v in enumerate(ids)}
    return table if len(last) == len(ids) else table.take(pa.array(sorted(last.values())))


def load_arrow(run_dir: str | Path):
    """Returns the population as an Arrow table, one row a variant (the last result of each)."""
    return _last_of_each(Store(_local(run_dir)).read_results())


def _local(run_dir: str | Path) -> Path:
    """The run folder to read: a cloud URI (s3://, gs://) is fetched into its local copy first."""
    return mirror.open_run(run_dir)[0] if mirror.is_uri(run_dir) else Path(run_dir)


def workers_per_trial(run_dir: Path) -> int:
    return run_settings(run_dir).trial.workers


def resolve(run_dir: str | Path, prefix: str) -> str:
    return Store(run_dir).resolve(prefix)


def diff_against_parent(run_dir: str | Path, vid: str) -> str:
    """Returns the unified diff of the variant's files against its first parent."""
    store = Store(run_dir)
    v = store.get_variant(vid)
    child = store.read_files(v)
    parent = store.read_files(store.get_variant(v.parents[0])) if v.parents else {}
    out = []
    for path in sorted(set(child) | set(parent)):
        a = parent.get(path, b"").decode("utf-8", "replace").splitlines(keepends=True)
        b = child.get(path, b"").decode("utf-8", "replace").splitlines(keepends=True)
        out.extend(difflib.unified_diff(a, b, f"a/{path}", f"b/{path}"))
    return "".join(out)


def fmt(x, digits: int = 4) -> str:
    """One value as text, by its type: integers whole ("1,400"), floats with `digits` decimals, missing as "-".

    Counts, tokens, steps and parameters are integers and print without a
    decimal point; numpy's and pandas' integer scalars count as integers,
    bools print as yes/no, and anything else (text) as itself.
    """
    if x is None or x is pd.NA or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}f}"
    return str(x)


def fmt_count(x) -> str:
    """A count that may arrive as a float (a pandas column with a gap upcasts its integers): whole, or "-"."""
    if x is None or x is pd.NA or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "-"
    return fmt(int(round(float(x))))


# columns that hold counts (of variants, trials, tokens, steps, parameters): whole numbers even when a
# gap in the column made pandas store them as floats
COUNT_COLUMNS = frozenset({"generation", "children", "completed", "improved", "trials", "pulls", "pending",
                           "llm_tokens", "tokens", "tokens_trained", "tokens_inherited", "prompt_tokens",
                           "completion_tokens", "step", "steps", "params", "parameters", "island", "workers"})


def fmt_column(col: pd.Series, digits: int = 4) -> list[str]:
    """Each value of a table column as text, by the column's type (not the row's: a row mixes types).

    Integer and bool columns print whole; a float column named in
    COUNT_COLUMNS whose values are all whole prints whole too; other floats
    get `digits` decimals; lists and dicts print as compact JSON; a missing
    value prints "-".
    """
    values = col.tolist()
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_integer_dtype(col.dtype):
        return [fmt(v) for v in values]
    if pd.api.types.is_float_dtype(col.dtype):
        whole = col.name in COUNT_COLUMNS and all(not math.isfinite(v) or float(v).is_integer()
                                                  for v in col.dropna().astype(float))
        return [fmt_count(v) if whole else fmt(v, digits) for v in values]
    return [json.dumps(v, sort_keys=True, separators=(",", ":"), default=str) if isinstance(v, (dict, list))
            else fmt(v, digits) for v in values]


def load_audit(run_dir: str | Path) -> pd.DataFrame:
    """Returns the agent's audit table (one row per LLM call), messages parsed."""
    df = audit.read(run_dir).to_pandas()
    df["messages"] = df["messages"].map(lambda m: json.loads(m) if isinstance(m, str) else [])
    return df


def agent_lines(run_dir: str | Path) -> list[str]:
    """Returns what the agent cost and how its proposals fared; empty if it never ran."""
    df = load_audit(run_dir)
    if df.empty:
        return []
    children = df[df["purpose"] == "child"]
    per = children.groupby("proposal_id").agg(outcome=("outcome", "last"), stage=("stage", "last"))
    rejected = per[per["outcome"] == "rejected"]["stage"].value_counts()
    rej = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"
    price = df["price"].fillna(0).sum()
    return [f"agent: {len(per)} proposals, {(per['outcome'] == 'accepted').sum()} accepted; "
            f"rejected by stage: {rej}",
            f"agent cost: {len(df)} calls, {int(df['prompt_tokens'].sum()):,} prompt + "
            f"{int(df['completion_tokens'].sum()):,} completion tokens"
            + (f", price {price:.4f}" if price else "")
            + f", {df['latency_s'].sum():.0f} s waiting on the model"]


BANDIT_COLUMNS = ["arm", "pulls", "pending", "mean_reward", "estimate"]


def read_bandit(run_dir: str | Path) -> tuple[dict | None, str | None]:
    """Returns (the run's bandit.json as written by the searcher, None) or (None, one line saying why not)."""
    from evolve.search.bandit import Bandit, BanditError

    path = Path(run_dir) / "bandit.json"
    try:
        data = json.loads(path.read_text())
        Bandit.from_dict(data)  # checks every arm's numbers
    except FileNotFoundError:
        return None, f"{path.name} not found (no child has been drawn by the bandit yet)"
    except (OSError, ValueError, BanditError) as e:
        return None, f"{path.name} is unreadable ({' '.join(str(e).split())[:200]}); bandit state not shown"
    return data, None


def load_bandit(run_dir: str | Path) -> pd.DataFrame:
    """The operator bandit's arms, one row each: pulls, children still training, mean reward, current estimate.

    Rewards are each child's gain over its parent per million tokens it
    trained. Empty, with one warning line on stderr, when the run has no
    readable bandit.json (a search with `operator.bandit: off` writes none).
    """
    data, problem = read_bandit(_local(run_dir))
    if problem:
        print(f"evolve: warning: {problem}", file=sys.stderr)
        out = pd.DataFrame(columns=BANDIT_COLUMNS)
        out.attrs["unreadable"] = [problem]
        return out
    rows = [{"arm": name, "pulls": a["pulls"], "pending": a["pending"],
             "mean_reward": a["sum"] / a["pulls"] if a["pulls"] else None, "estimate": a.get("estimate")}
            for name, a in data["arms"].items()]
    out = pd.DataFrame(rows, columns=BANDIT_COLUMNS)
    out.attrs["policy"] = data["policy"]
    return out


def bandit_lines(run_dir: str | Path, expected: bool) -> list[str]:
    """`evolve status`'s lines for the bandit: one per arm; one warning when `expected` and it cannot be read."""
    data, problem = read_bandit(run_dir)
    if problem:
        return [f"bandit: warning: {problem}"] if expected or "not found" not in problem else []
    lines = [f"bandit ({data['policy']}): reward = gain over the parent per million tokens trained"]
    for name, a in data["arms"].items():
        mean = fmt(a["sum"] / a["pulls"]) if a["pulls"] else "-"
        est = a.get("estimate")
        pending = f" (+{a['pending']} training)" if a["pending"] else ""
        lines.append(f"  {name:<24} pulls {a['pulls']:>4}{pending}  mean reward {mean:>8}  "
                     f"estimate {fmt(est) if est is not None else 'untried'}")
    return lines
