"""The seed recipe for gpt2_small: GPT-2 small (124M) trained the way the nanoGPT speedruns do.

What the speedrun records changed, and what a variant may change here: the
optimizer (Muon for the hidden matrices, written below, with AdamW for the
embeddings, head, biases and norms), the schedule (warm-up, a flat stretch,
a linear cool-down), batch size and sequence length, initialisation,
normalisation and activation within GPT-2's class, precision and kernels.
The harness builds the model from `model_config`, stops at the token
budget and evaluates the saved weights on held-out tokens this file never sees.
"""

import torch


def model_config(cfg):
    """Returns GPT2Config keyword arguments (vocabulary and context are the harness's)."""
    return {"n_layer": cfg["n_layer"], "n_head": cfg["n_head"], "n_embd": cfg["n_embd"],
            "activation_function": cfg["activation"], "layer_norm_epsilon": cfg["norm_eps"],
            "initializer_range": cfg["init_std"], "scale_attn_by_inverse_layer_idx": cfg["scale_attn_by_layer"],
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def performance(cfg):
    """Returns the precision and kernels this recipe asks for (the harness degrades what the device lacks)."""
    return {k: cfg[k] for k in ("precision", "attention", "compile", "tf32", "pin_memory")}


def _orthogonalize(g, steps):
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon, modded-nanogpt)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return (x.T if tall else x).to(g.dtype)


class MuonWithAdam(torch.optim.Optimizer):
    """Muon on 2-D hidden matrices (group flag "muon"), AdamW on everything else."""

    def __init__(self, groups):
        super().__init__(groups, {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if group["muon"]:
                    buf = state.setdefault("momentum", torch.zeros_like(p.grad))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    update = _orthogonalize(p.grad.add(buf, alpha=group["momentum"]), group["ns_steps"])
                    p.add_(update, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)
                    continue
                if not state:
                    state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["step"] += 1
                b1, b2 = group["betas"]
                state["m"].lerp_(p.grad, 1 - b1)
                state["v"].lerp_(p.grad.square(), 1 - b2)
                m_hat = state["m"] / (1 - b1 ** state["step"])
                v_hat = state["v"] / (1 - b2 ** state["step"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.addcdiv_(m_hat, v_hat.sqrt().add_(group["eps"]), value=-group["lr"])


def optimizer(model, cfg):
    """Returns the optimizer: Muon for the blocks' matrices, AdamW for embeddings, head and 1-D parameters."""
    hidden = [p for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and ".h." in n)]
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg["adam_lr"], betas=(0.9, 0.95),
                                 weight_decay=cfg["weight_decay"])
    return MuonWithAdam([
        {"params": hidden, "muon": True, "lr": cfg["muon_lr"], "momentum": cfg["muon_momentum"],
         "ns_steps": cfg["muon_ns_steps"]},
        {"params": other, "muon": False, "lr": cfg["adam_lr"], "betas": (0.9, 0.95), "eps": 1e-8,
         "weight_decay": cfg["weight_decay"]},
    ])


def lr_multiplier(cfg, total_steps):
    """Returns step -> factor on the peak lr: warm-up, flat, then a linear cool-down to zero."""
    warmup = int(cfg["warmup_frac"] * total_steps)
    cooldown = int(cfg["cooldown_frac"] * total_steps)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if step >= total_steps - cooldown:
            return max(0.0, (total_steps - step) / max(1, cooldown))
        return 1.0

    return factor


def deepspeed_config(cfg):
    """Returns the DeepSpeed knobs this recipe chooses."""
    ds = cfg["deepspeed"]
    return {"zero_stage": ds["zero_stage"], "gradient_accumulation_steps": ds["gradient_accumulation_steps"],
            "gradient_clipping": ds["gradient_clipping"]}


def batches(data, cfg, generator):
    """Yields (inputs, targets) int64 tensors of shape (batch_size, seq_len) forever.

    `data` is this worker's shard of the training tokens (a 1-D uint16 tensor,
    memory-mapped); windows start at uniformly random offsets.
    """
    seq, bs = cfg["seq_len"], cfg["batch_size"]
    while True:
        starts = torch.randint(0, len(data) - seq - 1, (bs,), generator=generator).tolist()
        window = torch.stack([data[s: s + seq + 1].to(torch.int64) for s in starts])
        yield window[:, :-1], window[:, 1:]


def loss(logits, targets, cfg):
    """Returns the training loss: cross-entropy in float32."""
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
