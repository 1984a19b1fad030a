import subprocess
import sys

import pytest
import yaml

from evolve.spec import SpecError, apply_overrides, load_spec, parse_override


def write_spec(exp, **changes):
    raw = yaml.safe_load((exp / "experiment.yaml").read_text())
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for part in path:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    (exp / "experiment.yaml").write_text(yaml.safe_dump(raw))


DELETE = object()


@pytest.mark.unit
def test_tiny_lm_loads_with_documented_defaults(experiment):
    spec = load_spec(experiment)
    assert spec.name == "tiny_lm"
    assert spec.objective.metric == "heldout_loss" and spec.objective.mode == "min"
    assert spec.budget.train_tokens == 327_680
    assert spec.trial.workers == 1
    assert spec.selection.islands == 2


@pytest.mark.unit
def test_overrides_are_typed_and_applied(experiment):
    spec = load_spec(experiment, ["budget.trials=4", "budget.train_tokens=10_000", "trial.cpus_per_worker=2"])
    assert spec.budget.trials == 4
    assert spec.budget.train_tokens == 10_000
    assert spec.trial.cpus_per_worker == 2.0


@pytest.mark.unit
@pytest.mark.parametrize("override, message", [
    ("budget.trials=four", "budget.trials: expected an integer, got 'four'"),
    ("budget.trials=2.5", "budget.trials: expected an integer, got 2.5"),
    ("budget.trials=0", "budget.trials: must be at least 1, got 0"),
    ("budget.trails=3", "budget.trails: unknown field"),
    ("trial.gpus_per_worker=-1", "trial.gpus_per_worker: must be 0 or more, got -1.0"),
    ("objective.mode=down", "objective.mode: expected 'min' or 'max', got 'down'"),
    ("operator.kind=magic", "operator.kind: unknown operator 'magic'"),
    ("budget=3", "budget: expected a mapping, got 3"),
    ("nonsense", "override 'nonsense': expected key=value"),
    ("operator.models=[{model: m}]", "operator.models[0].base_url: empty"),
    ("operator.models=[{model: m, base_url: 'http://127.0.0.1:1/v1', weight: 0}]",
     "operator.models: every weight is 0"),
    ("operator.models=[{modle: m}]", "operator.models[0].modle: unknown field"),
    ("operator.base_url=http://127.0.0.1:1/v1", "operator.model: empty"),
    ("operator.backend=transformers", "operator.model: local model folder not found: ''"),
    ("operator.temperature=3", "operator.temperature: expected 0..2, got 3.0"),
    ("operator.parallel=0", "operator.parallel: must be at least 1, got 0"),
    ("budget.llm_tokens=-1", "budget.llm_tokens: must be 0 (no limit) or more, got -1"),
    ("operator.merge_rate=1.5", "operator.merge_rate: expected 0..1, got 1.5"),
    ("operator.merge_rate=often", "operator.merge_rate: expected a number, got 'often'"),
])
def test_bad_overrides_name_field_and_value(experiment, override, message):
    with pytest.raises(SpecError) as e:
        load_spec(experiment, [override])
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


@pytest.mark.unit
def test_sealed_file_that_is_also_mutable_is_rejected(experiment):
    write_spec(experiment, sealed=["harness/evaluate.py", "scaffold/recipe.py"])
    with pytest.raises(SpecError, match=r"^sealed: 'scaffold/recipe.py' is also mutable$"):
        load_spec(experiment)


@pytest.mark.unit
def test_missing_files_are_rejected(experiment):
    write_spec(experiment, mutable=["scaffold/recipe.py", "scaffold/missing.py"])
    with pytest.raises(SpecError, match=r"^mutable: file not found: 'scaffold/missing.py'$"):
        load_spec(experiment)
    write_spec(experiment, mutable=["scaffold/recipe.py", "scaffold/config.yaml"], sealed=["harness/nope.py"])
    with pytest.raises(SpecError, match=r"^sealed: no file matches 'harness/nope.py'$"):
        load_spec(experiment)


@pytest.mark.unit
def test_missing_required_field(experiment):
    write_spec(experiment, scaffold=DELETE)
    with pytest.raises(SpecError, match="^spec: missing required field scaffold$"):
        load_spec(experiment)


@pytest.mark.unit
def test_heuristic_file_must_be_mutable(experiment):
    write_spec(experiment, mutable=["scaffold/recipe.py"])
    with pytest.raises(SpecError, match="operator.heuristic.file: 'scaffold/config.yaml' is not in the mutable surface"):
        load_spec(experiment)


@pytest.mark.unit
def test_parse_override_values():
    assert parse_override("a.b=1_000") == (["a", "b"], 1000)
    assert parse_override("x=1.0e-3") == (["x"], 0.001)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    assert parse_override("x=null") == (["x"], None)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


@pytest.mark.warm
def test_cli_bad_spec_exits_2_with_one_line(experiment):
    cmd = [sys.executable, "-m", "evolve.cli", "run", str(experiment), "budget.concurrent=zero"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "evolve: error: budget.concurrent: expected an integer, got 'zero'"


@pytest.mark.warm
def test_cli_missing_experiment_exits_2(tmp_path):
    cmd = [sys.executable, "-m", "evolve.cli", "run", str(tmp_path / "nope")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "spec file not found" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.unit
def test_run_refuses_a_run_dir_that_holds_a_search(experiment, tmp_path, capsys):
    from evolve import cli

    run_dir = tmp_path / "run"
    (run_dir / "population").mkdir(parents=True)
    (run_dir / "population" / "0-abc.parquet").write_bytes(b"x")
    assert cli.main(["run", str(experiment), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"evolve: error: --run-dir: {str(run_dir.resolve())!r} already holds a search; choose another folder, or continue it with: evolve resume {run_dir.resolve()}"
    assert (run_dir / "population" / "0-abc.parquet").read_bytes() == b"x"  # nothing recorded is lost


@pytest.mark.unit
def test_experiment_without_its_sealed_evaluation_is_rejected(experiment):
    (experiment / "harness" / "evaluate.py").unlink()
    write_spec(experiment, sealed=["harness/data.py"])
    with pytest.raises(SpecError, match=r"^experiment: harness/evaluate.py not found in '.*tiny_lm'$"):
        load_spec(experiment)


@pytest.mark.unit
def test_llm_operator_fields_override_from_the_command_line(experiment):
    spec = load_spec(experiment, ["operator.kind=llm", "operator.base_url=http://127.0.0.1:8000/v1",
                                  "operator.model=coder", "operator.api_key_env=MY_KEY",
                                  "operator.models=[{model: a, weight: 2}, {model: b, base_url: 'http://127.0.0.1:9/v1'}]"])
    from evolve.spec import model_entries

    entries = model_entries(spec.operator)
    assert [(e["model"], e["weight"], e["base_url"], e["api_key_env"]) for e in entries] == [
        ("a", 2, "http://127.0.0.1:8000/v1", "MY_KEY"), ("b", 1.0, "http://127.0.0.1:9/v1", "MY_KEY")]


@pytest.mark.unit
def test_an_unset_key_variable_stops_the_run_with_one_line(experiment, tmp_path, capsys, monkeypatch):
    from evolve import cli

    monkeypatch.delenv("EVOLVE_NO_SUCH_KEY", raising=False)
    code = cli.main(["run", str(experiment), "operator.kind=llm", "operator.base_url=http://127.0.0.1:1/v1",
                     "operator.model=m", "operator.api_key_env=EVOLVE_NO_SUCH_KEY",
                     "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("evolve: error: operator.api_key_env: environment variable EVOLVE_NO_SUCH_KEY "
                                 "is not set (it should hold the key for http://127.0.0.1:1/v1)")
