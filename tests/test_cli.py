"""The command line's parsing (any order, an example under every --help) and `evolve init`."""

import io
import re
import sys
from pathlib import Path

import pytest
import yaml

from evolve import cli, cliargs
from evolve.create import (CreateError, ask_and_write, min_text_bytes, write_empty_experiment,
                           write_text_experiment)
from evolve.spec import load_spec

pytestmark = pytest.mark.unit
TINY_LM = Path(__file__).resolve().parent.parent / "experiments" / "tiny_lm"


def _parse(argv):
    return cliargs.parse(cli.parser(), argv)


@pytest.mark.parametrize("argv", [
    ["run", "exp", "--run-dir", "runs/x", "budget.trials=4", "trial.workers=2"],
    ["run", "exp", "budget.trials=4", "--run-dir", "runs/x", "trial.workers=2"],
    ["run", "--run-dir", "runs/x", "exp", "budget.trials=4", "trial.workers=2"],
    ["run", "exp", "budget.trials=4", "trial.workers=2", "--run-dir=runs/x"],
])
def test_run_takes_its_options_and_overrides_in_any_order(argv):
    args = _parse(argv)
    assert (args.command, args.experiment, args.run_dir) == ("run", "exp", "runs/x")
    assert args.overrides == ["budget.trials=4", "trial.workers=2"] and args.func is cli.cmd_run


def test_other_commands_take_options_anywhere():
    args = _parse(["init", "--empty", "new"])
    assert (args.dir, args.empty, args.text) == ("new", True, None)
    args = _parse(["init", "new", "--text", "t.txt"])
    assert (args.dir, args.text) == ("new", "t.txt")
    args = _parse(["check", "exp", "budget.trials=4", "task.param_cap=10"])
    assert (args.experiment, args.overrides, args.func) == ("exp", ["budget.trials=4", "task.param_cap=10"], cli.cmd_check)


def test_show_takes_its_flags_before_and_after_the_positionals(tmp_path):
    (tmp_path / "population").mkdir()
    for argv in (["show", "--prompt", str(tmp_path), "abc"], ["show", str(tmp_path), "--prompt", "abc"],
                 ["show", str(tmp_path), "abc", "--prompt"]):
        args = _parse(argv)
        assert (args.run_dir, args.variant, args.prompt) == (str(tmp_path), "abc", True)


def test_an_override_after_the_run_dir_reaches_the_spec(experiment, tmp_path, capsys):
    """Before, `budget.concurrent=zero` after --run-dir was an 'unrecognized arguments' error; now the spec checks it."""
    for argv in (["run", str(experiment), "--run-dir", str(tmp_path / "r"), "budget.concurrent=zero"],
                 ["run", "--run-dir", str(tmp_path / "r"), str(experiment), "budget.concurrent=zero"]):
        assert cli.main(argv) == 2
        assert capsys.readouterr().err.strip() == "evolve: error: budget.concurrent: expected an integer, got 'zero'"
    assert not (tmp_path / "r").exists()


def test_bad_arguments_still_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "exp", "--no-such-flag"])
    assert e.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_every_command_has_an_example_under_its_help(capsys):
    names = cliargs.commands(cli.parser())
    assert {"run", "init", "check", "status"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "example" in out and f"evolve {name} " in out.split("example", 1)[1], name


# -- evolve init ---------------------------------------------------------------------------------------
@pytest.fixture
def text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("It was the best of times, it was the worst of times. " * 200)
    return path


def test_init_text_writes_tiny_lm_on_the_users_file(tmp_path, text, capsys):
    target = tmp_path / "mine"
    assert cli.main(["init", str(target), "--text", str(text)]) == 0
    assert "next: evolve check" in capsys.readouterr().out
    spec = load_spec(target)
    assert spec.task["corpus"] == str(text.resolve()) and spec.task["corpus_name"] == "corpus.txt"
    assert spec.name == "mine" and spec.sealed == ["harness/data.py", "harness/evaluate.py"]
    tiny = load_spec(TINY_LM)
    assert spec.budget == tiny.budget and spec.operator == tiny.operator
    for rel in ("harness/data.py", "harness/evaluate.py", "scaffold/recipe.py", "scaffold/config.yaml"):
        assert (target / rel).read_bytes() == (tiny.root / rel).read_bytes()
    assert not list(tmp_path.glob(".*init-tmp"))


def test_init_refuses_a_folder_that_is_not_empty_and_keeps_it(tmp_path, text, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert cli.main(["init", str(target), "--empty"]) == 2
    assert capsys.readouterr().err.strip() == f"evolve: error: init: {str(target)!r} exists and is not an empty folder"
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (target / "notes.txt").unlink()
    assert cli.main(["init", str(target), "--empty"]) == 0  # an empty folder is fine


def test_init_refuses_a_missing_small_or_binary_text_in_one_line(tmp_path, capsys):
    need = min_text_bytes({"split": [0.8, 0.1, 0.1], "eval_seq_len": 128})
    small = tmp_path / "small.txt"
    small.write_text("x" * (need - 1))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe" * need)
    for path, why in ((tmp_path / "nope.txt", "is not a file"), (small, f"holds {need - 1:,} bytes"),
                      (binary, "is not UTF-8 text")):
        assert cli.main(["init", str(tmp_path / "new"), "--text", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"evolve: error: --text: {str(path)!r} ") and why in err and "\n" not in err
        assert not (tmp_path / "new").exists()


def test_init_refuses_both_flags_and_no_flag_without_a_terminal(tmp_path, text, capsys, monkeypatch):
    assert cli.main(["init", str(tmp_path / "x"), "--empty", "--text", str(text)]) == 2
    assert "exclude each other" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main(["init", str(tmp_path / "x")]) == 2
    assert "no terminal to ask on" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_init_asks_on_a_terminal(tmp_path, text):
    answers = iter(["1", str(text)])
    assert "experiment.yaml" in ask_and_write(tmp_path / "a", ask=lambda _: next(answers), say=lambda _: None)
    assert load_spec(tmp_path / "a").task["corpus"] == str(text.resolve())
    answers = iter(["2"])
    ask_and_write(tmp_path / "b", ask=lambda _: next(answers), say=lambda _: None)
    assert (tmp_path / "b" / "scaffold" / "recipe.py").is_file()
    with pytest.raises(CreateError, match="no choice '3'"):
        ask_and_write(tmp_path / "c", ask=lambda _: "3", say=lambda _: None)


def test_init_empty_documents_every_hook_and_loads_as_a_spec(tmp_path):
    write_empty_experiment(tmp_path / "e")
    spec = load_spec(tmp_path / "e")
    assert spec.trainer == "lm" and spec.objective.metric == "heldout_loss"
    recipe = (tmp_path / "e" / "scaffold" / "recipe.py").read_text()
    for hook in ("model_config", "optimizer", "lr_multiplier", "deepspeed_config", "batches", "loss"):
        assert f"def {hook}(" in recipe and re.search(rf'NotImplementedError\("{hook}: (return|yield) ', recipe)
    assert "def prepare(out_dir, task)" in (tmp_path / "e" / "harness" / "data.py").read_text()
    assert "def evaluate(model, heldout_path, task)" in (tmp_path / "e" / "harness" / "evaluate.py").read_text()
    settings = yaml.safe_load((tmp_path / "e" / "scaffold" / "config.yaml").read_text())
    assert {"seq_len", "batch_size", "lr"} <= set(settings)


def test_init_text_refuses_an_incomplete_template(tmp_path, text):
    with pytest.raises(CreateError, match="the tiny_lm template is incomplete"):
        write_text_experiment(tmp_path / "x", text, template=tmp_path / "no_template")
