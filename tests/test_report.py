"""Figures and the HTML report of a run: made from a run folder, with nothing outside the page."""

import base64
import re

import pytest

from evolve import cli
from evolve.read import plots
from evolve.read.population import load_population
from evolve.read.report import render

pytestmark = pytest.mark.unit


def _png_ok(fig):
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue().startswith(b"\x89PNG")


def test_best_so_far_is_a_running_minimum_against_each_cost(small_run):
    root, ids = small_run
    pop = load_population(root)
    table = plots.best_so_far_table(pop, workers=2)
    assert table["best"].tolist() == [3.0, 2.8, 2.8, 2.6, 2.6, 2.6]
    assert table["trials"].tolist() == [1, 2, 3, 4, 5, 6]
    assert table["llm_tokens"].tolist() == [0, 0, 0, 900, 1400, 1400]
    assert table["worker_hours"].iloc[-1] == pytest.approx(2 * 72.0 / 3600)
    fig = plots.best_so_far(pop)
    assert len(fig.axes) == 3 and [a.get_xlabel() for a in fig.axes][2] == "LLM tokens"
    assert _png_ok(fig)
    with pytest.raises(ValueError, match="x must be among"):
        plots.best_so_far(pop, x="minutes")


def test_lineage_tree_places_each_generation_and_marks_the_champion(small_run):
    root, ids = small_run
    pop = load_population(root)
    lay = plots.tree_layout(pop).set_index("variant_id")
    assert lay.loc[ids["seed"], "generation"] == 0 and lay.loc[ids["c"], "generation"] == 2
    assert sorted(lay[lay["generation"] == 2]["y"]) == [0, 1, 2]  # c, d, e share generation 2
    fig = plots.lineage_tree(pop)
    ax = fig.axes[0]
    assert ax.get_legend().get_texts()[0].get_text() == "seed to champion"
    champion_line = [ln for ln in ax.lines if ln.get_color() == "tab:red"][0]
    assert list(champion_line.get_xdata()) == [0, 1, 2]  # seed, a, c
    assert len(fig.axes) == 2 and _png_ok(fig)  # the tree and its colour bar


def test_learning_curves_and_operator_rates(small_run):
    root, ids = small_run
    pop = load_population(root)
    fig = plots.learning_curves(pop)  # default: the seed to the champion
    assert [ln.get_label() for ln in fig.axes[0].lines] == [ids[k][:8] for k in ("seed", "a", "c")]
    assert list(fig.axes[0].lines[2].get_ydata()) == [3.9, 2.6]
    fig = plots.operator_rates(pop)
    heights = {t.get_text(): p.get_height() for t, p in zip(fig.axes[0].get_xticklabels(), fig.axes[0].patches)}
    assert heights == {"crossover": 1.0, "llm": 0.5, "perturb": 0.5}


def test_report_is_one_page_with_figures_tables_and_the_lineage(small_run, tmp_path, capsys):
    root, ids = small_run
    page = render(root)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    # nothing fetched from elsewhere: no links, scripts or stylesheets outside the page
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page
    assert "make c &lt;fast&gt; &amp; safe" in page and "<fast>" not in page
    assert '<span class="add">+name: c</span>' in page and '<span class="del">-name: a</span>' in page
    assert page.index(ids["seed"]) < page.index(ids["a"]) and "Pareto front" in page
    out = tmp_path / "r.html"
    assert cli.main(["report", str(root), "-o", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and str(out) in capsys.readouterr().out
    assert cli.main(["report", str(root)]) == 0 and (root / "report.html").is_file()
    with pytest.raises(SystemExit) as bad:  # argparse's one line, as for every command on a run
        cli.main(["report", str(tmp_path / "nowhere")])
    assert bad.value.code == 2 and "is not a run directory" in capsys.readouterr().err
