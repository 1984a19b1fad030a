"""DeepSpeed checkpoints in the harness: written at curve points, resumed exactly, or with new settings."""

import json
import shutil

import pytest
import yaml

from evolve.warm import zygote
from evolve.spec import load_spec
from evolve.driver import prepare_data
from tests.conftest import TINY_LM

pytestmark = pytest.mark.warm

STEP_TOKENS = 16 * 64  # the seed's batch_size x seq_len, one rank
ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    spec = load_spec(TINY_LM, [])
    prepare_data(spec, root)
    path = zygote.ensure()
    pid = zygote.ping(path)
    yield root, spec
    if zygote.ping(path) == pid:
        zygote.shutdown(path)


def variant(root, name, **changes):
    dest = root / name
    if not dest.exists():
        shutil.copytree(TINY_LM / "scaffold", dest)
        settings = yaml.safe_load((dest / "config.yaml").read_text())
        settings.update(changes)
        (dest / "config.yaml").write_text(yaml.safe_dump(settings))
    return dest


def train(root, spec, vdir, out, **extra):
    config = {"seed": 0, "task": spec.task, "data_dir": str(root / "data"), "variant_dir": str(vdir),
              "out_dir": str(root / out), "train_tokens": 40 * STEP_TOKENS, "report_every": 10,
              "checkpoint_tokens": 0, **extra}
    points = []
    summary = zygote.call("evolve.rank.entry:solo_rank", {"config": config}, env=ENV, on_report=points.append)
    return points, summary


def test_a_resumed_run_continues_the_same_run_exactly(setup):
    root, spec = setup
    seed = variant(root, "seed")
    points, summary = train(root, spec, seed, "full", checkpoint_tokens=20 * STEP_TOKENS)
    ckpts = [p["checkpoint"] for p in points if "checkpoint" in p]
    assert [p["step"] for p in points] == [10, 20, 30, 40]
    assert len(ckpts) == 1 and ckpts[0].endswith(f"tokens-{20 * STEP_TOKENS}")  # none at the last step
    state = json.loads((root / "full" / "checkpoints" / f"tokens-{20 * STEP_TOKENS}" /
                        "evolve_state.json").read_text())
    assert (state["step"], state["micro"], state["optimizer"]) == (20, 20, "AdamW")

    resumed, rsummary = train(root, spec, seed, "resumed", resume_from=ckpts[0])
    assert [p["step"] for p in resumed] == [30, 40]
    assert [p["tokens"] for p in resumed] == [30 * STEP_TOKENS, 40 * STEP_TOKENS]
    for a, b in zip(points[2:], resumed):  # same weights, moments, schedule and data stream
        assert b["dev_loss"] == pytest.approx(a["dev_loss"], abs=1e-5)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    assert rsummary["tokens_trained"] == 20 * STEP_TOKENS and rsummary["resumed_at_tokens"] == 20 * STEP_TOKENS
    assert rsummary["optimizer_steps"] == summary["optimizer_steps"] == 40


def test_resume_with_other_settings_keeps_the_weights(setup):
    root, spec = setup
    seed = variant(root, "seed")
    points, _ = train(root, spec, seed, "base", checkpoint_tokens=20 * STEP_TOKENS)
    ckpt = next(p["checkpoint"] for p in points if "checkpoint" in p)
    # lr 0 after the resume: the weights must stay step 20's. For AdamW that also shows the new
    # lr replaced the saved one (the moments are kept); SGD starts its own state from the weights.
    for name, changes in (("frozen-adamw", {"lr": 0.0}), ("frozen-sgd", {"optimizer": "sgd", "lr": 0.0})):
        resumed, summary = train(root, spec, variant(root, name, **changes), name, resume_from=ckpt)
        assert [p["step"] for p in resumed] == [30, 40] and summary["resumed_at_tokens"] == 20 * STEP_TOKENS
        assert resumed[0]["dev_loss"] == pytest.approx(points[1]["dev_loss"], abs=1e-6)
        assert resumed[1]["dev_loss"] == pytest.approx(points[1]["dev_loss"], abs=1e-6)


def test_an_unfinished_or_corrupt_checkpoint_is_one_line(setup):
    root, spec = setup
    seed = variant(root, "seed")
    points, _ = train(root, spec, seed, "tobreak", checkpoint_tokens=20 * STEP_TOKENS)
    ckpt = next(p["checkpoint"] for p in points if "checkpoint" in p)
    state = root / "tobreak" / "checkpoints" / f"tokens-{20 * STEP_TOKENS}" / "evolve_state.json"
    state.write_text('{"tokens": 20')
    with pytest.raises(zygote.ChildFailed, match=r"evolve_state.json is unreadable") as e:
        train(root, spec, seed, "bad", resume_from=ckpt)
    assert "\n" not in str(e.value)
    state.unlink()
    with pytest.raises(zygote.ChildFailed, match=r"no evolve_state.json \(an unfinished checkpoint\)"):
        train(root, spec, seed, "bad", resume_from=ckpt)
