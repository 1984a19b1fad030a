"""The sealed evaluation: loads trained weights and the experiment's own
`harness/evaluate.py`, checks the sealed hashes first, returns the metrics.

It runs in the trial's process, which never imports the variant's code.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from evolve.governance import check_sealed


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate_saved(model_dir: Path, experiment_root: Path, heldout: Path, task: dict,
                   sealed: dict[str, str]) -> dict:
    """Returns the sealed evaluation's metrics of the model saved in `model_dir`."""
    import torch
    from transformers import GPT2LMHeadModel

    check_sealed(sealed)
    evaluate = load_module(experiment_root / "harness" / "evaluate.py", "evolve_sealed_evaluate")
    torch.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(model_dir)
    metrics = evaluate.evaluate(model, heldout, task)
    bad = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isfinite(v))}
    if bad:
        raise ValueError(f"sealed evaluation returned non-finite metrics: {bad}")
    return metrics
