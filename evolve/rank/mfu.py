"""Model FLOPs utilisation: the share of a device's peak that a training loop turns into model math.

Pure functions. A decoder-only transformer costs about 6 FLOPs per
parameter per token for the forward and backward pass, plus the attention
scores: 12 * layers * width * context per token (PaLM's appendix B; the
estimate nanoGPT prints). Position embeddings are not matmuls and are left
out of the parameter count. The peak is the device's dense bf16/fp16
tensor-core rate from its vendor's data sheet, looked up by the name CUDA
reports; `--peak-tflops` (or `trial.peak_tflops`) overrides it, and with
neither (a CPU, an unknown device) MFU is not reported.
"""

from __future__ import annotations

# dense (no sparsity) bf16 tensor-core TFLOPs, by a substring of torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = (
    ("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("A6000", 155.0), ("RTX 4090", 165.0),
    ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
)


def peak_tflops(device_name: str | None, override: float | None = None) -> float | None:
    """Returns the device's dense bf16 peak in TFLOPs, the override if given, or None if unknown."""
    if override:
        return float(override)
    if not device_name:
        return None
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def flops_per_token(n_params: int, n_position_params: int, n_layer: int, n_embd: int, context: int) -> float:
    """Returns the model FLOPs of one trained token (forward and backward)."""
    return 6.0 * (n_params - n_position_params) + 12.0 * n_layer * n_embd * context


def mfu(tokens_per_s: float, flops_per_tok: float, peak: float | None) -> float | None:
    """Returns the model FLOPs utilisation (0..1), or None without a known peak."""
    if not peak or tokens_per_s <= 0:
        return None
    return tokens_per_s * flops_per_tok / (peak * 1e12)


def gpu_hours(trial_seconds: float | None, workers: int, gpus_per_worker: float) -> float:
    """Returns the GPU-hours a trial held: its wall time times the GPUs of its ranks."""
    return (trial_seconds or 0.0) * workers * gpus_per_worker / 3600.0
