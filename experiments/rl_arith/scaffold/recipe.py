"""The seed recipe for rl_arith: the hooks the RL harness calls.

The harness teaches the model the task in a supervised warm-up, then
improves it with policy gradient: for each of `prompts_per_step` training
problems it samples `group_size` answers, scores each with `reward` below,
turns the scores into advantages and minimises `rl_loss`. It counts the
tokens, owns the sampler and the reference model, and never shows this file
the held-out problems or the verifier that scores them.
"""

import math

import torch

END = ";"


def model_config(cfg):
    """Returns GPT2Config keyword arguments (vocab and context are the harness's)."""
    return {"n_layer": cfg["n_layer"], "n_head": cfg["n_head"], "n_embd": cfg["n_embd"],
            "resid_pdrop": cfg["dropout"], "embd_pdrop": cfg["dropout"], "attn_pdrop": cfg["dropout"]}


def optimizer(model, cfg):
    """Returns the torch optimizer, created at the warm-up's peak lr."""
    params = [p for p in model.parameters() if p.requires_grad]
    name = cfg["optimizer"]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, cfg["beta2"]), weight_decay=cfg["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], betas=(0.9, cfg["beta2"]), weight_decay=cfg["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, nesterov=True)
    raise ValueError(f"config.yaml optimizer: unknown {name!r}")


def lr_multiplier(cfg, sft_steps, rl_steps):
    """Returns step -> factor on the optimizer's lr: warm-up and cosine, then RL at rl_lr."""
    warmup = int(cfg["warmup_frac"] * sft_steps)
    floor, rl_factor = cfg["min_lr_frac"], cfg["rl_lr"] / cfg["lr"]

    def factor(step):
        if step >= sft_steps:
            return rl_factor
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, sft_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def deepspeed_config(cfg):
    """Returns the DeepSpeed knobs this recipe chooses."""
    ds = cfg["deepspeed"]
    return {"zero_stage": ds["zero_stage"], "gradient_accumulation_steps": ds["gradient_accumulation_steps"],
            "gradient_clipping": ds["gradient_clipping"]}


def plan(cfg):
    """Returns how the budget is spent and how rollouts are sampled."""
    return {key: cfg[key] for key in ("sft_frac", "sft_batch_size", "prompts_per_step", "group_size",
                                      "temperature", "top_p")}


def batches(problems, phase, size, cfg, generator):
    """Yields lists of `size` indices into `problems` ((prompt, answer) pairs) forever.

    `phase` is "sft" or "rl"; the seed draws uniformly in both.
    """
    while True:
        yield torch.randint(0, len(problems), (size,), generator=generator).tolist()


def sft_loss(logits, targets, mask, cfg):
    """Returns the warm-up loss: cross-entropy on the answer's bytes (mask 1), not the prompt's."""
    per_byte = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                 reduction="none").view_as(mask)
    return (per_byte * mask).sum() / mask.sum()


def reward(prompt, completion, answer, cfg):
    """Returns the shaped reward of one sampled completion (training only; never the fitness)."""
    text, end, _ = completion.partition(END)
    if end and text == answer:
        return 1.0
    well_formed = bool(end) and text.lstrip("-").isdigit()
    score = cfg["format_reward"] if well_formed else 0.0
    if well_formed:  # digits in the right place
        same = sum(a == b for a, b in zip(text, answer))
        score += cfg["partial_credit"] * same / max(len(text), len(answer))
    return score


def advantages(rewards, cfg):
    """Returns each rollout's advantage from a (problems, group) tensor of rewards: group-normalised."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.size(1) > 1 else torch.ones_like(mean)
    return (rewards - mean) / (std + 1e-4)


def rl_loss(logp, ref_logp, entropy, adv, mask, cfg):
    """Returns the policy-gradient loss over the sampled bytes (mask 1: up to and with the end mark).

    logp, ref_logp, entropy: (rollouts, bytes); adv: (rollouts,).
    """
    pg = -adv[:, None] * logp
    log_ratio = ref_logp - logp
    kl = torch.exp(log_ratio) - log_ratio - 1  # k3 estimate of KL(policy || reference)
    per_byte = pg + cfg["kl_coef"] * kl - cfg["entropy_coef"] * entropy
    return (per_byte * mask).sum() / mask.sum()
