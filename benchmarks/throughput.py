"""Training throughput: a trial's DeepSpeed loop against a plain PyTorch loop, same everything else.

Both loops run in this process, one rank, on the seed recipe of
`experiments/tiny_lm`: the same model built by the harness, the same
optimizer, schedule, batches and loss from the recipe's hooks, the same
number of optimizer steps, and the same timing (each step from fetching the
batch to the loss on the host, dev-loss points excluded). The DeepSpeed
loop is the harness's own (`evolve.rank.lm.train`, as a smoke run that
keeps nothing). They alternate for `--rounds` rounds; the ratio printed is
DeepSpeed tokens/s over plain tokens/s, medians of the rounds.

    python benchmarks/throughput.py --steps 150 --rounds 3
"""

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from evolve.spec import load_spec, task_limit  # noqa: E402
from evolve.driver import prepare_run  # noqa: E402
from evolve.messages import TrialConfig  # noqa: E402


def plain(config: dict, steps: int) -> dict:
    """The same training as the harness, without DeepSpeed; returns tokens and step seconds."""
    import numpy as np
    import torch

    from evolve.rank.lm import build_model, load_recipe, load_settings

    torch.manual_seed(config["seed"] * 1000)
    meta = json.loads((Path(config["data_dir"]) / "meta.json").read_text())
    recipe, settings = load_recipe(config["variant_dir"]), load_settings(config["variant_dir"])
    seq, bs = int(settings["seq_len"]), int(settings["batch_size"])
    task = config["task"]
    model, _ = build_model(recipe, settings, meta["vocab_size"], max(seq, task_limit(task, "eval_seq_len")),
                           task_limit(task, "param_cap"))
    clip = float(recipe.deepspeed_config(settings).get("gradient_clipping", 0.0))
    optimizer = recipe.optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_multiplier(settings, steps))
    train = torch.from_numpy(np.fromfile(Path(config["data_dir"]) / "train.bin", dtype=np.uint8))
    batches = recipe.batches(train, settings, torch.Generator().manual_seed(config["seed"] * 1000))
    model.train()
    seconds = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = next(batches)
        loss = recipe.loss(model(input_ids=x).logits, y, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        value = loss.item()
        seconds += time.perf_counter() - t0
        assert math.isfinite(value)
    return {"tokens": steps * bs * seq, "seconds": seconds}


def deepspeed(config: dict, steps: int) -> dict:
    from evolve.rank.lm import train as _train

    trial = TrialConfig.from_dict({**config, "smoke": True, "max_steps": steps})
    summary = _train(trial, 0, 1, Path(trial.out_dir), lambda point: None)
    return {"tokens": summary["tokens_trained"], "seconds": summary["train_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # a trial's rank gets one CPU here
    work = Path(tempfile.mkdtemp(prefix="evolve-bench-"))
    try:
        spec = load_spec(ROOT / "experiments" / "tiny_lm")
        _, context = prepare_run(spec, work / "run")
        config = {**context, "variant_dir": str(ROOT / "experiments" / "tiny_lm" / "scaffold"),
                  "out_dir": str(work / "out"), "train_tokens": 10 ** 9}
        Path(config["out_dir"]).mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("gloo", rank=0, world_size=1)
        rates = {"plain": [], "deepspeed": []}
        for r in range(args.rounds):
            for name, fn in (("plain", plain), ("deepspeed", deepspeed)):
                out = fn(config, args.steps)
                rates[name].append(out["tokens"] / out["seconds"])
                print(f"round {r + 1}: {name:<9} {out['tokens']:,} tokens in {out['seconds']:.2f} s of steps "
                      f"= {rates[name][-1]:,.0f} tokens/s", flush=True)
        dist.destroy_process_group()
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the prepared run and the saved model
    p, d = statistics.median(rates["plain"]), statistics.median(rates["deepspeed"])
    print(f"median tokens/s: plain PyTorch {p:,.0f}, DeepSpeed (the harness) {d:,.0f}; "
          f"DeepSpeed / plain = {d / p:.3f}")


if __name__ == "__main__":
    main()
