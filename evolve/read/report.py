"""`evolve report RUN`: one self-contained HTML page about a run.

The page holds the run's status, its figures (PNG inlined as data URIs),
the per-operator, per-generation and Pareto tables, the best variants and
the champion's lineage with each step's rationale and diff. It links to
nothing outside itself, so it opens in a browser from disk, with no server,
and can be mailed or attached to a ticket as one file.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import pandas as pd

from evolve.read import plots
from evolve.read.population import fmt, fmt_column, load_population
from evolve.read.status import status_lines
from evolve.record.store import atomic_write

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
pre { background: #f8f8f8; padding: .6em; overflow-x: auto; font-size: 12px; }
pre.diff .add { color: #116611; background: #eaffea; display: block; }
pre.diff .del { color: #991111; background: #ffecec; display: block; }
pre.diff .hunk { color: #555; display: block; }
img { max-width: 100%; } .step { margin: 1.2em 0; } .muted { color: #777; }
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(df: pd.DataFrame, digits: int = 4) -> str:
    if df.empty:
        return '<p class="muted">none</p>'
    left = {c: not pd.api.types.is_numeric_dtype(df[c].dtype) for c in df.columns}  # text (object or str)
    head = "".join(f'<th class="{"l" if left[c] else ""}">{html.escape(str(c))}</th>' for c in df.columns)
    texts = {c: fmt_column(df[c], digits) for c in df.columns}  # by column: iterrows would upcast ints to floats
    rows = ["<tr>" + "".join(f'<td class="{"l" if left[c] else ""}">{html.escape(texts[c][i])}</td>'
                             for c in df.columns) + "</tr>" for i in range(len(df))]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _diff(text: str) -> str:
    if not text:
        return '<p class="muted">(no diff: the seed)</p>'
    out = []
    for line in text.splitlines():
        cls = ("hunk" if line.startswith(("@@", "---", "+++")) else "add" if line.startswith("+")
               else "del" if line.startswith("-") else "")
        out.append(f'<span class="{cls}">{html.escape(line)}</span>' if cls else html.escape(line))
    return '<pre class="diff">' + "\n".join(out) + "</pre>"


def render(run_dir: str | Path) -> str:
    """Returns the report of the run in `run_dir` as one HTML document."""
    run_dir = Path(run_dir)
    pop = load_population(run_dir)
    esc = html.escape
    parts = [f"<h1>evolve run <code>{esc(run_dir.name)}</code></h1>",
             f'<p class="muted">{esc(str(run_dir.resolve()))}; written {time.strftime("%Y-%m-%d %H:%M:%S")}</p>',
             "<h2>Status</h2><pre>" + esc("\n".join(status_lines(str(run_dir), pop)[1:])) + "</pre>"]
    if pop.empty:
        return _page(run_dir, parts + ["<p>No variant has finished yet.</p>"])

    parts.append("<h2>Best so far</h2>" + _png(plots.best_so_far(pop)))
    parts.append("<h2>Lineage</h2>" + _png(plots.lineage_tree(pop)))
    parts.append("<h2>Learning curves: the seed to the champion</h2>" + _png(plots.learning_curves(pop)))
    parts.append("<h2>Operators</h2>" + _png(plots.operator_rates(pop)) + _table(pop.operator_stats()))
    parts.append("<h2>Generations</h2>" + _table(pop.generation_stats()))
    parts.append("<h2>Pareto front</h2><p>Completed variants no other beats on both fitness and cost.</p>"
                 "<h3>against compute seconds (trial seconds times workers)</h3>"
                 + _table(pop.pareto_front("compute_seconds"))
                 + "<h3>against LLM tokens</h3>" + _table(pop.pareto_front("llm_tokens")))
    done = pop[pop["status"] == "completed"].sort_values("fitness", ascending=pop.mode == "min")
    speed = [c for c in ("tokens_per_s", "mfu", "gpu_hours") if c in done and done[c].notna().any()]
    top = done.head(10)[["variant_id", "operator", "fitness", "final_dev_loss", "trial_seconds", *speed]]
    parts.append("<h2>Best variants</h2>" + _table(top))
    failed = pop[pop["status"] != "completed"][["variant_id", "operator", "status", "failure_reason"]]
    parts.append(f"<h2>Not completed ({len(failed)})</h2>" + _table(failed.head(50)))

    steps = pop.path("best")
    parts.append(f"<h2>The champion's lineage ({len(steps)} steps, seed first)</h2>")
    for s in steps:
        parts.append(f'<div class="step"><b><code>{esc(s["variant_id"])}</code></b> '
                     f'{esc(str(s["operator"] or "-"))}, fitness {esc(fmt(s["fitness"]))}'
                     + (f'<br>rationale: {esc(s["rationale"])}' if s["rationale"] else "")
                     + _diff(s["diff"]) + "</div>")
    return _page(run_dir, parts)


def _page(run_dir: Path, parts: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>evolve report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Writes the report (default `<run>/report.html`) atomically; returns its path."""
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic_write(path, render(run_dir).encode())
    return path
