"""The seed training recipe for tiny_lm: the hooks the harness calls.

The harness builds the model from `model_config`, wraps it with DeepSpeed
using `deepspeed_config` and the optimizer and schedule below, feeds it the
batches `batches` yields, and stops when the token budget is spent. It then
evaluates the saved weights on held-out text this file never sees.
"""

import math

import torch


def model_config(cfg):
    """Returns GPT2Config keyword arguments (vocab and context are the harness's)."""
    return {
        "n_layer": cfg["n_layer"],
        "n_head": cfg["n_head"],
        "n_embd": cfg["n_embd"],
        "resid_pdrop": cfg["dropout"],
        "embd_pdrop": cfg["dropout"],
        "attn_pdrop": cfg["dropout"],
    }


def optimizer(model, cfg):
    """Returns the torch optimizer; no weight decay on biases and norms."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    name = cfg["optimizer"]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, cfg["beta2"]))
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg["lr"], betas=(0.9, cfg["beta2"]))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=0.9, nesterov=True)
    raise ValueError(f"config.yaml optimizer: unknown {name!r}")


def lr_multiplier(cfg, total_steps):
    """Returns step -> factor on the peak lr: linear warm-up, then the schedule."""
    warmup = int(cfg["warmup_frac"] * total_steps)
    floor = cfg["min_lr_frac"]

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg["schedule"] == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if cfg["schedule"] == "linear":
            return floor + (1 - floor) * max(0.0, 1 - progress)
        return 1.0

    return factor


def deepspeed_config(cfg):
    """Returns the DeepSpeed knobs this recipe chooses."""
    ds = cfg["deepspeed"]
    return {
        "zero_stage": ds["zero_stage"],
        "gradient_accumulation_steps": ds["gradient_accumulation_steps"],
        "gradient_clipping": ds["gradient_clipping"],
    }


def batches(data, cfg, generator):
    """Yields (inputs, targets) int64 tensors of shape (batch_size, seq_len) forever.

    `data` is this worker's shard of the training bytes (a 1-D uint8 tensor);
    windows start at uniformly random offsets.
    """
    seq, bs = cfg["seq_len"], cfg["batch_size"]
    while True:
        starts = torch.randint(0, len(data) - seq - 1, (bs,), generator=generator)
        window = torch.stack([data[s : s + seq + 1] for s in starts.tolist()]).long()
        yield window[:, :-1], window[:, 1:]


def loss(logits, targets, cfg):
    """Returns the training loss: cross-entropy with optional label smoothing."""
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
        label_smoothing=cfg["label_smoothing"])
