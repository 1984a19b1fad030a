"""Sealed: the fitness of a trained model, its mean loss on held-out tokens.

Runs after training has finished, in a fresh process that never imported a
variant, on weights the trial saved (float32, whatever precision the
variant trained in). At most task.eval_tokens tokens are scored, in
non-overlapping windows of task.eval_seq_len + 1.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def evaluate(model, heldout_path, task):
    """Returns {"heldout_loss": nats per token, "heldout_ppl": perplexity}."""
    seq = int(task.get("eval_seq_len", 1024))
    meta = json.loads((Path(heldout_path).parent / "meta.json").read_text())
    data = np.memmap(heldout_path, dtype=np.dtype(meta.get("dtype", "uint8")), mode="r")
    limit = int(task.get("eval_tokens", 1 << 20))
    data = torch.from_numpy(np.asarray(data[: limit + 1], dtype=np.int64))
    n = (len(data) - 1) // seq
    x, y = data[: n * seq].view(n, seq), data[1: n * seq + 1].view(n, seq)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    total, count = 0.0, 0
    for i in range(0, n, 8):
        logits = model(input_ids=x[i:i + 8].to(device)).logits.float()
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                   y[i:i + 8].to(device).reshape(-1), reduction="sum").item()
        count += y[i:i + 8].numel()
    mean = total / count
    return {"heldout_loss": mean, "heldout_ppl": math.exp(min(mean, 50.0))}
