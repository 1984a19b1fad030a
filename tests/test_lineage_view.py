"""What the report prints and draws at scale: integers whole, and a lineage figure that stays readable."""

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection

from evolve.read import lineage, lineage_view, plots
from evolve.read.population import fmt, fmt_column, fmt_count
from evolve.read.report import render
from tests.populations import frame

pytestmark = pytest.mark.unit


def test_fmt_prints_integers_whole_and_floats_with_digits():
    assert fmt(1) == "1" and fmt(np.int64(1400)) == "1,400" and fmt(pd.array([3], dtype="Int64")[0]) == "3"
    assert fmt(1.0) == "1.0000" and fmt(np.float32(2.5), 1) == "2.5" and fmt(2.71828, 2) == "2.72"
    assert fmt(None) == "-" and fmt(math.nan) == "-" and fmt(np.float64("nan")) == "-" and fmt(pd.NA) == "-"
    assert fmt(True) == "yes" and fmt(np.bool_(False)) == "no" and fmt("llm") == "llm"
    assert fmt_count(8192.0) == "8,192" and fmt_count(np.int64(7)) == "7" and fmt_count(math.nan) == "-"
    assert fmt_count(None) == "-"


def test_table_columns_are_formatted_by_their_type_not_the_row():
    df = pd.DataFrame({"generation": [1, 2], "improve_rate": [0.5, 1.0], "completed": [3.0, math.nan],
                       "fitness": [3.0, 2.5], "best_values": [{"lr": 0.1}, None], "flag": [True, False]})
    assert fmt_column(df["generation"]) == ["1", "2"]
    assert fmt_column(df["improve_rate"]) == ["0.5000", "1.0000"]
    assert fmt_column(df["completed"]) == ["3", "-"]  # a count upcast to float by its gap
    assert fmt_column(df["fitness"], 2) == ["3.00", "2.50"]  # whole-valued, but not a count
    assert fmt_column(df["best_values"]) == ['{"lr":0.1}', "-"]
    assert fmt_column(df["flag"]) == ["yes", "no"]
    assert fmt_column(pd.Series([2.5, 3.0], name="pulls")) == ["2.5000", "3.0000"]  # not all whole: floats


def test_report_tables_print_counts_as_integers_and_text_left(small_run):
    root, ids = small_run
    page = render(root)
    gens = page[page.index("<h2>Generations"):page.index("<h2>Pareto")]
    assert ('<tr><td class="">1</td><td class="">2</td><td class="">2</td><td class="">1</td>'
            '<td class="">0.5000</td><td class="">0.0500</td><td class="">2.8000</td></tr>') in gens
    ops = page[page.index("<h2>Operators"):page.index("<h2>Generations")]
    assert ('<td class="l">llm</td><td class="">2</td><td class="">1</td><td class="">1</td>'
            '<td class="">0.5000</td>') in ops
    assert "1.0000</td><td class=\"\">0.1000" in ops  # crossover's rate is a float: 1 of 1
    pareto = page[page.index("<h3>against LLM tokens"):]
    assert '<td class="">900</td>' in pareto and '900.0000' not in page
    failed = page[page.index("<h2>Not completed"):page.index("<h2>The champion")]
    assert '<td class="l">-</td>' in failed and "None" not in failed  # no failure reason recorded


@pytest.mark.parametrize("n", [10, 100])
def test_a_population_that_fits_is_drawn_whole(n):
    pop = frame(n)
    view = lineage_view.choose(pop)
    assert view.shown == pop["variant_id"].tolist() and view.hidden == 0 and view.left_out() == ""
    assert view.title() == f"lineage of {n} variants"
    fit = pop["fitness"].astype(float)
    assert view.champion_path[-1] == pop.loc[fit.idxmin(), "variant_id"] and view.champion_path[0] == "v0000"
    fig = plots.lineage_tree(pop)
    ax = fig.axes[0]
    assert _dots(ax) == n  # failed crosses and fitness dots
    assert [t.get_text() for t in ax.get_legend().get_texts()][:1] == ["seed to champion"]


def _dots(ax) -> int:
    """The variants drawn: the fitness dots and the failed crosses (not the champion's star or the rings)."""
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)
               and (c.get_label() == "failed" or c.get_label().startswith("_")))


def _closed(pop, shown):
    """Every shown variant's first parent is shown too, or it has none."""
    first = {v: (p[0] if len(p) else None) for v, p in zip(pop["variant_id"], pop["parent_ids"])}
    return all(first[v] is None or first[v] in shown for v in shown)


def _path(pop, vid):
    first = {v: (p[0] if len(p) else None) for v, p in zip(pop["variant_id"], pop["parent_ids"])}
    out = [vid]
    while first[out[-1]] is not None:
        out.append(first[out[-1]])
    return out[::-1]


def test_at_500_variants_the_champion_path_the_top_paths_and_a_sample_are_drawn():
    pop = frame(500)
    view = lineage_view.choose(pop, max_shown=120, top_k=10)
    shown = set(view.shown)
    assert len(view.shown) == 120 and view.hidden == 380 and view.total == 500
    done = pop[pop["status"] == "completed"].sort_values("fitness", kind="stable")
    champion = done["variant_id"].iloc[0]
    assert view.champion_path == _path(pop, champion) and set(view.champion_path) <= shown
    assert view.top == done["variant_id"].iloc[:10].tolist()  # they all fit here
    for v in view.top:
        assert set(_path(pop, v)) <= shown
    assert _closed(pop, shown)
    # the sample reaches beyond the paths, across generations
    paths = set().union(*(_path(pop, v) for v in view.top))
    assert len(shown - paths) > 30
    gens = lineage.generations(pop)
    assert len({g for v, g in zip(pop["variant_id"], gens) if v in shown - paths}) > 10
    failed = set(pop.loc[pop["status"] != "completed", "variant_id"])
    assert view.hidden_failed == len(failed - shown) > 0
    assert view.left_out() == f"not drawn: 380 of 500 variants ({view.hidden_failed} of them failed)"
    assert view.title().startswith("lineage of 500 variants: 120 drawn (the seed-to-champion path")
    # the same view each time; another seed samples other variants, never another path
    assert lineage_view.choose(pop).shown == view.shown
    other = lineage_view.choose(pop, seed=1)
    assert other.shown != view.shown and set(view.champion_path) <= set(other.shown)


def test_the_champion_path_is_kept_even_past_the_budget_and_mode_max_picks_the_highest():
    pop = frame(500)
    deep = lineage_view.choose(pop, max_shown=5)
    assert deep.shown == [v for v in pop["variant_id"] if v in set(deep.champion_path)]
    assert len(deep.champion_path) > 5 and deep.top == [deep.champion_path[-1]]
    high = lineage_view.choose(pop, mode="max", max_shown=50)
    best = pop.loc[pop["fitness"].astype(float).idxmax(), "variant_id"]
    assert high.champion_path[-1] == best and len(high.shown) == 50 and _closed(pop, set(high.shown))
    assert lineage_view.choose(pop, champion="v0042").champion_path == _path(pop, "v0042")
    with pytest.raises(ValueError, match="variant 'nope' is not in the population"):
        lineage_view.choose(pop, champion="nope")
    with pytest.raises(ValueError, match="max_shown must be at least 1"):
        lineage_view.choose(pop, max_shown=0)


def test_the_figure_at_500_variants_draws_the_view_and_says_what_it_left_out():
    pop = frame(500)
    view = lineage_view.choose(pop)
    fig = plots.lineage_tree(pop)
    ax = fig.axes[0]
    assert _dots(ax) == len(view.shown) == 120
    solid = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_linestyle()[0][1] is None]
    assert len(solid) == 1 and len(solid[0].get_segments()) == 119  # each drawn variant to its first parent
    red = [ln for ln in ax.lines if ln.get_color() == "tab:red"][0]
    assert list(red.get_xdata()) == list(range(len(view.champion_path)))  # one generation a step
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0] == "seed to champion" and "champion" in texts and "top 10 (their paths drawn)" in texts
    assert view.left_out() in texts and ax.get_title() == view.title()
    curves = plots.learning_curves(pop, ids=view.champion_path)
    named = [ln.get_label() for ln in curves.axes[0].lines if not ln.get_label().startswith("_")]
    assert named == [f"first: {view.champion_path[0][:8]}", f"last: {view.champion_path[-1][:8]}"]
    assert len(curves.axes) == 2  # the path's colour bar


def test_show_and_status_print_tokens_and_steps_whole(tmp_path, capsys):
    from evolve import cli
    from evolve.read.status import status_lines
    from tests.populations import write_run

    root, made = write_run(tmp_path, 10)
    assert cli.main(["show", str(root), made["v0005"]]) == 0
    out = capsys.readouterr().out
    assert "tokens 8,192" in out and "curve tokens     2,048  train" in out and "  step 4  lr 0.001" in out
    assert "curve tokens     8,192" in out and "2048.0" not in out and "step 4.0" not in out
    lines = status_lines(str(root))
    assert "81,920 tokens trained" in lines[2] and lines[1] == "by status: completed 10"
