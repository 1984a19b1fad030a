"""The spec's documentation is made from its schema: the README's table and docs/SPEC.md never drift."""

import shutil

import pytest

from evolve import specdoc
from evolve.spec import SpecError, run_settings
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_the_readme_table_and_the_spec_page_match_the_schema():
    assert specdoc.stale() == [], "run: python -m evolve.specdoc --write"


def test_a_hand_edit_of_the_table_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "SPEC.md", tmp_path / "docs" / "SPEC.md")
    readme = (ROOT / "README.md").read_text().replace("`trials` (`16`)", "`trials` (`12`)")
    (tmp_path / "README.md").write_text(readme)
    assert specdoc.stale(tmp_path) == [str(tmp_path / "README.md")]


def test_every_field_says_what_it_means():
    for name, cls in specdoc.groups():
        for f in specdoc.fields(cls):
            assert f.metadata.get("doc"), f"{name}.{f.name} has no doc in the schema"


def test_readers_take_a_run_s_saved_sections_with_the_schema_s_defaults(tmp_path):
    (tmp_path / "spec.yaml").write_text("objective: {metric: acc, mode: max}\ntrial: {workers: 2}\n")
    s = run_settings(tmp_path)
    assert (s.objective.mode, s.trial.workers, s.confirm.alpha, s.trial.sandbox) == ("max", 2, 0.05, "auto")
    assert run_settings(tmp_path / "nothing").objective.mode == "min"
    (tmp_path / "spec.yaml").write_text("objective: [")
    with pytest.raises(SpecError, match="is corrupt"):
        run_settings(tmp_path)
