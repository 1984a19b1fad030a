"""gpt2_small at a toy size on the CPU, and the precision, kernel and MFU choices behind it."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from evolve.rank import mfu, performance
from evolve.warm import zygote
from evolve.spec import load_spec
from evolve.trial.evaluation import seal_model
from evolve.record.seals import hash_files
from evolve.driver import prepare_data
from tests.conftest import ROOT

GPT2_SMALL = ROOT / "experiments" / "gpt2_small"
ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
TOY = {"n_layer": 2, "n_head": 2, "n_embd": 64, "seq_len": 64, "batch_size": 8,
       "deepspeed": {"zero_stage": 0, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0}}
TOY_TASK = ["task.eval_seq_len=64", "task.eval_tokens=4096", "task.dev_tokens=1024", "task.param_cap=500000",
            "task.split=[0.8,0.1,0.1]"]


@pytest.mark.unit
def test_the_seed_is_gpt2_small():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = yaml.safe_load((GPT2_SMALL / "scaffold" / "config.yaml").read_text())
    spec = load_spec(GPT2_SMALL, ["task.corpus=x.txt"])
    with __import__("torch").device("meta"):
        model = GPT2LMHeadModel(GPT2Config(vocab_size=spec.task["vocab_size"], n_positions=cfg["seq_len"],
                                           n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"]))
    n = sum(p.numel() for p in model.parameters())
    assert (cfg["n_layer"], cfg["n_embd"]) == (12, 768) and 123e6 < n < spec.task["param_cap"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(topics[k] for k in sorted(topics)))
    return path


@pytest.mark.unit
def test_data_from_a_text_file_and_from_a_token_file(tmp_path, corpus):
    spec = load_spec(GPT2_SMALL, [f"task.corpus={corpus}", *TOY_TASK])
    meta = prepare_data(spec, tmp_path / "text")
    assert meta["vocab_size"] == 256 and meta["dtype"] == "uint16"
    train = np.fromfile(tmp_path / "text" / "data" / "train.bin", dtype=np.uint16)
    assert len(train) == meta["train_tokens"] and train.max() < 256
    tokens = tmp_path / "owt.bin"
    np.random.default_rng(0).integers(0, 50257, 200_000, dtype=np.uint16).tofile(tokens)
    meta = prepare_data(load_spec(GPT2_SMALL, [f"task.corpus={tokens}", *TOY_TASK]), tmp_path / "tok")
    assert meta["vocab_size"] == 50304 and meta["train_tokens"] + meta["dev_tokens"] + meta["heldout_tokens"] == 200_000
    with pytest.raises(ValueError, match="token id 50256 is not below task.vocab_size 1000"):
        prepare_data(load_spec(GPT2_SMALL, [f"task.corpus={tokens}", "task.vocab_size=1000", *TOY_TASK]),
                     tmp_path / "bad")


@pytest.fixture(scope="module")
def toy(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("gpt2")
    spec = load_spec(GPT2_SMALL, [f"task.corpus={corpus}", *TOY_TASK])
    prepare_data(spec, root)
    variant = root / "variant"
    shutil.copytree(GPT2_SMALL / "scaffold", variant)
    cfg = yaml.safe_load((variant / "config.yaml").read_text())
    cfg.update(TOY)
    (variant / "config.yaml").write_text(yaml.safe_dump(cfg))
    zygote.ensure()
    return root, spec, variant


@pytest.mark.warm
def test_a_toy_trial_trains_with_muon_and_bf16_autocast_and_is_evaluated(toy):
    root, spec, variant = toy
    config = {"seed": 0, "task": spec.task, "data_dir": str(root / "data"), "variant_dir": str(variant),
              "out_dir": str(root / "out"), "train_tokens": 60 * 8 * 64, "report_every": 10, "checkpoint_tokens": 0}
    points = []
    summary = zygote.call("evolve.rank.entry:solo_rank", {"config": config}, env=ENV, on_report=points.append)
    assert summary["performance"]["autocast"] == "bf16" and summary["performance"]["precision"] == "fp32"
    assert "precision: bf16 on the CPU runs as torch.autocast (the weights stay fp32)" in summary["notes"]
    assert any(n.startswith("tf32:") for n in summary["notes"]) and any(n.startswith("pin_memory:") for n in summary["notes"])
    assert points[-1]["dev_loss"] < points[0]["dev_loss"] - 0.3  # it learns
    assert all("lr" in p and p["tokens_per_s"] > 0 and p["mfu"] is None for p in points)  # no peak on a CPU
    assert summary["tokens_per_s"] > 0 and summary["flops_per_token"] > 6 * 100_000
    sealed = hash_files([root / "data" / "heldout.bin", GPT2_SMALL / "harness" / "evaluate.py"])
    model = seal_model(root / "out" / "model", root / "sealed", 10 << 20)
    metrics = zygote.call("evolve.trial.evaluation:evaluate_saved", {
        "model_dir": str(model), "experiment_root": str(GPT2_SMALL), "heldout": str(root / "data" / "heldout.bin"),
        "task": spec.task, "sealed": sealed})
    assert math.isfinite(metrics["heldout_loss"]) and metrics["heldout_loss"] < math.log(256)
    assert metrics["heldout_ppl"] == pytest.approx(math.exp(metrics["heldout_loss"]))


@pytest.mark.warm
def test_a_bad_performance_choice_fails_in_one_line(toy):
    root, spec, variant = toy
    bad = root / "bad"
    shutil.copytree(variant, bad)
    cfg = yaml.safe_load((bad / "config.yaml").read_text())
    cfg["precision"] = "fp8"
    (bad / "config.yaml").write_text(yaml.safe_dump(cfg))
    config = {"seed": 0, "task": spec.task, "data_dir": str(root / "data"), "variant_dir": str(bad),
              "out_dir": str(root / "bad-out"), "train_tokens": 8 * 64 * 4, "report_every": 10, "checkpoint_tokens": 0}
    with pytest.raises(zygote.ChildFailed, match=r"^performance: precision must be one of fp32, bf16, fp16, got 'fp8'$"):
        zygote.call("evolve.rank.entry:solo_rank", {"config": config}, env=ENV)


@pytest.mark.unit
@pytest.mark.parametrize("choices, gpu, sandboxed, plan, notes", [
    ({}, False, True, {"precision": "fp32", "autocast": None, "compile": False}, []),
    ({"precision": "bf16"}, True, True, {"precision": "bf16", "autocast": None}, []),
    ({"precision": "fp16"}, False, False, {"precision": "fp32"}, ["precision: fp16 needs a GPU; using fp32"]),
    ({"compile": True}, True, True, {"compile": False}, ["compile: torch.compile's Triton starts ptxas"]),
    ({"compile": True}, True, False, {"compile": True}, []),
    ({"attention": "flash_attention_2"}, True, False, {"attention": "sdpa"}, ["attention: flash_attention_2 needs"]),
    ({"tf32": True, "pin_memory": True}, True, True, {"tf32": True, "pin_memory": True}, []),
])
def test_performance_choices_resolve_for_the_device(choices, gpu, sandboxed, plan, notes):
    got, said = performance.plan(choices, gpu=gpu, sandboxed=sandboxed)
    assert {k: got[k] for k in plan} == plan
    assert len(said) == len(notes) and all(s.startswith(n) for s, n in zip(said, notes))


@pytest.mark.unit
@pytest.mark.parametrize("choices, error", [
    ([], "performance: expected a dict, got list"),
    ({"fp8": True}, "performance: fp8 not known"),
    ({"compile": "yes"}, "performance: compile must be one of False, True, got 'yes'"),
    ({"tf32": 1}, "performance: tf32 must be one of False, True, got 1"),
])
def test_bad_performance_choices(choices, error):
    with pytest.raises(performance.PerformanceError, match=f"^{error}"):
        performance.plan(choices, gpu=False, sandboxed=False)


@pytest.mark.unit
def test_deepspeed_gets_bf16_or_fp16_with_a_dynamic_loss_scale():
    assert performance.deepspeed_precision({"precision": "bf16"}) == {"bf16": {"enabled": True}}
    fp16 = performance.deepspeed_precision({"precision": "fp16"})["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0
    assert performance.deepspeed_precision({"precision": "fp32"}) == {}


@pytest.mark.unit
def test_mfu_of_gpt2_small_on_an_h200():
    per_token = mfu.flops_per_token(124_475_904, 1024 * 768, 12, 768, 1024)
    assert per_token == pytest.approx(6 * (124_475_904 - 786_432) + 12 * 12 * 768 * 1024)
    assert mfu.peak_tflops("NVIDIA H200") == 989.0 and mfu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert mfu.peak_tflops("cpu") is None and mfu.peak_tflops(None, 100.0) == 100.0
    # nanoGPT's figure: ~400k tokens/s on an H200 is about 40% of its bf16 peak
    assert mfu.mfu(465_000, per_token, 989.0) == pytest.approx(0.40, abs=0.01)
    assert mfu.mfu(1000.0, per_token, None) is None
    assert mfu.gpu_hours(1800, 2, 0.5) == 0.5
