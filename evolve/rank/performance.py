"""How a rank runs its model's math: precision and kernels, as the recipe asks and the device allows.

A recipe may define `performance(settings) -> dict` with any of:

| key | values | on a GPU | on the CPU |
|---|---|---|---|
| precision | fp32 (default), bf16, fp16 | DeepSpeed's bf16, or fp16 with its dynamic loss scaler | bf16: torch.autocast; fp16: fp32, with a note |
| attention | eager, sdpa, flash_attention_2 | transformers' implementation (flash only where installed) | eager or sdpa |
| compile | false (default), true | torch.compile through DeepSpeed (not inside the sandbox: Triton starts ptxas, a process) | off, with a note |
| tf32 | false (default), true | TF32 matmuls and convolutions | no effect, with a note |
| pin_memory | false (default), true | batches pinned, copied without blocking | no effect, with a note |

`plan` (pure) checks the choices, one line naming a bad one, and resolves
them for the device: what cannot run degrades with a one-line note instead
of failing. The sealed evaluation is the same for every variant whatever it
chose: float32, from the saved weights.
"""

from __future__ import annotations

CHOICES = {"precision": ("fp32", "bf16", "fp16"), "attention": ("eager", "sdpa", "flash_attention_2"),
           "compile": (False, True), "tf32": (False, True), "pin_memory": (False, True)}
DEFAULTS = {"precision": "fp32", "attention": None, "compile": False, "tf32": False, "pin_memory": False}
FP16_SCALER = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
               "hysteresis": 2, "min_loss_scale": 1}  # 0: DeepSpeed's dynamic loss scaling


class PerformanceError(ValueError):
    """A recipe's performance choice is not one the harness knows; the message is one line."""


def plan(choices, *, gpu: bool, sandboxed: bool, flash_installed: bool = False,
         cpu_bf16: bool = True) -> tuple[dict, list[str]]:
    """Returns (the resolved plan, one-line notes on what was changed for this device).

    The plan: precision ("fp32", "bf16", "fp16": DeepSpeed's engine), autocast
    (None or "bf16": torch.autocast on the CPU), attention (None: the model's
    default), compile, tf32, pin_memory.
    """
    if not isinstance(choices, dict):
        raise PerformanceError(f"performance: expected a dict, got {type(choices).__name__}")
    unknown = sorted(set(choices) - set(CHOICES))
    if unknown:
        raise PerformanceError(f"performance: {', '.join(map(str, unknown))} not known "
                               f"(known: {', '.join(CHOICES)})")
    for key, value in choices.items():
        if value not in CHOICES[key] or (isinstance(value, int) and not isinstance(value, bool)
                                         and CHOICES[key][0] is False):
            raise PerformanceError(f"performance: {key} must be one of "
                                   f"{', '.join(map(str, CHOICES[key]))}, got {value!r}")
    p = {**DEFAULTS, **choices, "autocast": None}
    notes = []
    if p["attention"] == "flash_attention_2" and not (gpu and flash_installed):
        notes.append("attention: flash_attention_2 needs a GPU and the flash-attn package; using sdpa")
        p["attention"] = "sdpa"
    if gpu:
        if p["compile"] and sandboxed:
            notes.append("compile: torch.compile's Triton starts ptxas, a process the sandbox refuses; not compiled")
            p["compile"] = False
        return p, notes
    if p["precision"] == "bf16":
        if cpu_bf16:
            notes.append("precision: bf16 on the CPU runs as torch.autocast (the weights stay fp32)")
            p["autocast"] = "bf16"
        else:
            notes.append("precision: this CPU has no bf16 autocast; using fp32")
        p["precision"] = "fp32"
    elif p["precision"] == "fp16":
        notes.append("precision: fp16 needs a GPU; using fp32")
        p["precision"] = "fp32"
    for key, why in (("compile", "compile: not on the CPU (inductor needs a compiler process); not compiled"),
                     ("tf32", "tf32: a GPU's matmul mode; no effect on the CPU"),
                     ("pin_memory", "pin_memory: pins host memory for a GPU copy; no effect on the CPU")):
        if p[key]:
            notes.append(why)
            p[key] = False
    return p, notes


def deepspeed_precision(p: dict) -> dict:
    """Returns the DeepSpeed config entries of the plan's precision."""
    if p["precision"] == "bf16":
        return {"bf16": {"enabled": True}}
    if p["precision"] == "fp16":
        return {"fp16": dict(FP16_SCALER)}
    return {}
