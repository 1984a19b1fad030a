"""Sealed: the fitness of a trained model, its mean loss on held-out bytes.

Runs after training has finished, in the trial's own process, on weights the
trial saved: the variant's code is never imported here.
"""

import math

import numpy as np
import torch


@torch.no_grad()
def evaluate(model, heldout_path, task):
    """Returns {"heldout_loss": nats per byte, "heldout_bpb": bits per byte}.

    Non-overlapping windows of task.eval_seq_len + 1 bytes cover the whole
    held-out split; every byte after the first of a window is predicted once.
    """
    seq = int(task.get("eval_seq_len", 128))
    data = torch.from_numpy(np.fromfile(heldout_path, dtype=np.uint8).astype(np.int64))
    n = (len(data) - 1) // seq
    x = data[: n * seq].view(n, seq)
    y = data[1 : n * seq + 1].view(n, seq)
    model.eval()
    total, count = 0.0, 0
    for i in range(0, n, 64):
        logits = model(input_ids=x[i:i + 64]).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y[i:i + 64].reshape(-1), reduction="sum")
        total += loss.item()
        count += y[i:i + 64].numel()
    mean = total / count
    return {"heldout_loss": mean, "heldout_bpb": mean / math.log(2)}
