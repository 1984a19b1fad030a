import random

import pytest
import yaml

from evolve.spec import Heuristic
from evolve.search.heuristic import crossover, mutable_keys, perturb, perturb_value
from evolve.search.yamledit import format_scalar, set_value

pytestmark = pytest.mark.unit

TEXT = """# settings
lr: 1.0e-3            # peak learning rate
optimizer: adamw      # adamw | sgd
batch_size: 16
use_ema: false
deepspeed:
  zero_stage: 0       # 0, 1 or 2
  gradient_clipping: 1.0
n_head: 4
"""
POLICY = Heuristic(file="config.yaml", choices={"optimizer": ["adamw", "sgd"], "deepspeed.zero_stage": [0, 1, 2]},
                   bounds={"lr": [1e-5, 0.1], "batch_size": [4, 64]}, log_scale=["lr", "batch_size"],
                   frozen=["n_head"], mutations=2)


def test_set_value_keeps_comments_and_other_lines():
    out = set_value(TEXT, "deepspeed.zero_stage", 2)
    assert "  zero_stage: 2       # 0, 1 or 2\n" in out
    assert [a for a, b in zip(TEXT.splitlines(), out.splitlines()) if a != b] == ["  zero_stage: 0       # 0, 1 or 2"]
    out = set_value(TEXT, "lr", 0.002)
    assert "lr: 0.002            # peak learning rate" in out
    with pytest.raises(KeyError, match="deepspeed: no such scalar key"):
        set_value(TEXT, "deepspeed", 3)


@pytest.mark.parametrize("value", [1e-5, 3e-4, 0.1, 2.0, 123456.0, 1e10, 7, True, "cosine", "yes", None])
def test_format_scalar_round_trips(value):
    assert yaml.safe_load(f"k: {format_scalar(value)}")["k"] == value


def test_mutable_keys_respect_frozen_and_types():
    assert mutable_keys(yaml.safe_load(TEXT), POLICY) == [
        "batch_size", "deepspeed.gradient_clipping", "deepspeed.zero_stage", "lr", "optimizer", "use_ema"]


def test_perturb_value_rules():
    rng = random.Random(0)
    assert perturb_value(rng, "optimizer", "adamw", POLICY) == "sgd"
    assert perturb_value(rng, "use_ema", False, POLICY) is True
    for _ in range(50):
        lr = perturb_value(rng, "lr", 1e-3, POLICY)
        assert lr != 1e-3 and 1e-5 <= lr <= 0.1
        assert any(lr == pytest.approx(1e-3 * f) for f in (0.5, 0.7, 1.4, 2.0))
        bs = perturb_value(rng, "batch_size", 16, POLICY)
        assert isinstance(bs, int) and 4 <= bs <= 64 and bs != 16
    assert perturb_value(rng, "batch_size", 64, POLICY) < 64  # clipped at the bound, still moves


def test_perturb_is_seeded_and_recorded():
    a = perturb(random.Random(7), TEXT, POLICY)
    b = perturb(random.Random(7), TEXT, POLICY)
    assert a == b
    text, record = a
    assert record["kind"] == "perturb" and 1 <= len(record["changes"]) <= 2
    flat_new = yaml.safe_load(text)
    for c in record["changes"]:
        node = flat_new
        for part in c["key"].split("."):
            node = node[part]
        assert node == c["to"] and c["from"] != c["to"]
    assert record["rationale"].startswith("perturbed ")


def test_crossover_takes_only_values_of_the_other_parent():
    other = set_value(set_value(TEXT, "lr", 0.01), "optimizer", "sgd")
    seen = set()
    for seed in range(20):
        child, record = crossover(random.Random(seed), TEXT, other, POLICY)
        cfg = yaml.safe_load(child)
        assert cfg["lr"] in (1e-3, 0.01) and cfg["optimizer"] in ("adamw", "sgd")
        assert cfg["batch_size"] == 16
        seen.add((cfg["lr"], cfg["optimizer"]))
        assert {c["key"] for c in record["changes"]} <= {"lr", "optimizer"}
    assert len(seen) == 4
