"""The sealed evaluation: loads trained weights and the experiment's own
`harness/evaluate.py`, checks the sealed hashes first, returns the metrics.

It runs in a fresh process forked from the zygote, which never imports a
variant's code; the trial's own process only waits for its answer.
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


def evaluate_saved(report, model_dir: str, experiment_root: str, heldout: str, task: dict,
                   sealed: dict[str, str]) -> dict:
    """Returns the sealed evaluation's metrics of the model saved in `model_dir`.

    Runs in a fresh child of the zygote (see `evolve.zygote.call`): a process
    that has never imported any variant's code and exits afterwards.
    """
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(1)  # the trial holds no CPU; do not crowd the trials that train
    check_sealed(sealed)
    evaluate = load_module(Path(experiment_root) / "harness" / "evaluate.py", "evolve_sealed_evaluate")
    torch.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(model_dir)
    metrics = evaluate.evaluate(model, heldout, task)
    bad = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isfinite(v))}
    if bad:
        raise ValueError(f"sealed evaluation returned non-finite metrics: {bad}")
    return metrics
