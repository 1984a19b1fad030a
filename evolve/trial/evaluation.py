"""The sealed evaluation: checks the sealed hashes, loads the trained weights as data, runs the
experiment's own `harness/evaluate.py`, returns the metrics.

It runs in a fresh process forked from the zygote, which never imports a
variant's code; the trial's own process only waits for its answer. It
trusts nothing the variant wrote:

- the trial's process copies the two files it reads (`seal_model`) out of
  the trial folder once every rank has exited, into a folder no sandbox
  sees, refusing links, other files and oversized ones;
- the weights load through safetensors only, never pickle;
- the architecture is rebuilt from the harness's rules, not taken from
  `config.json`: only GPT-2's architecture fields are read from it, the
  vocabulary is the data's, and the parameter cap is checked again;
- every tensor must match the rebuilt model's names and shapes; all are
  evaluated in float32, the same for every variant.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import stat
from pathlib import Path

from evolve.record.seals import check_sealed
from evolve.spec import task_limit

# torch, safetensors and transformers are imported inside the evaluation: the trial process imports
# this module's checks without them.

MODEL_FILES = ("config.json", "model.safetensors")
# GPT2Config fields read from a saved config.json; everything else in it is ignored
ARCH_KEYS = ("n_embd", "n_layer", "n_head", "n_inner", "n_positions", "activation_function", "layer_norm_epsilon",
             "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "tie_word_embeddings")
MAX_CONFIG_BYTES = 1 << 16
TIED = ("lm_head.weight",)  # tied to the token embedding: save_pretrained leaves it out


class EvaluationError(ValueError):
    """The saved model is not one the harness would have built; the message is one line."""


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seal_model(model_dir: Path, dest: Path, max_bytes: int) -> Path:
    """Copies the saved model's two files from `model_dir` into `dest` (made here); returns `dest`.

    Call once every process of the variant has exited. Everything is opened
    by descriptor without following a link (the model folder in the trial
    folder, then each file in it), so a link left there cannot point the
    evaluation at another trial's weights. Refuses a link, a file that is
    not regular, a missing file, or weights over `max_bytes`.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    dest.mkdir(mode=0o700)
    parent = os.open(model_dir.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            folder = os.open(model_dir.name, flags | os.O_DIRECTORY, dir_fd=parent)
        except FileNotFoundError:
            raise EvaluationError(f"the trial saved no {model_dir.name}/ folder") from None
        except OSError as e:
            raise EvaluationError(f"{model_dir.name}/ cannot be opened as a plain folder ({os.strerror(e.errno)})") from None
        try:
            for name in MODEL_FILES:
                _copy_checked(folder, name, dest / name, MAX_CONFIG_BYTES if name == "config.json" else max_bytes)
        finally:
            os.close(folder)
    finally:
        os.close(parent)
    return dest


def _copy_checked(folder: int, name: str, target: Path, limit: int) -> None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        raise EvaluationError(f"the trial saved no model/{name}") from None
    except OSError as e:
        raise EvaluationError(f"model/{name} cannot be opened as a plain file ({os.strerror(e.errno)})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise EvaluationError(f"model/{name} is not a regular file")
        if st.st_size > limit:
            raise EvaluationError(f"model/{name} is {st.st_size:,} bytes, over the {limit:,} allowed")
        with open(target, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)


def max_weight_bytes(task: dict) -> int:
    """Returns the largest weights file a model under the parameter cap can need (fp32, plus a header)."""
    return 4 * task_limit(task, "param_cap") + (1 << 20)


def load_checked_model(model_dir: str | os.PathLike, task: dict, vocab_size: int):
    """Returns the GPT-2 the harness would build for the saved config, with the saved weights in float32."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir = Path(model_dir)
    try:
        raw = json.loads((model_dir / "config.json").read_bytes())
    except ValueError as e:
        raise EvaluationError(f"model/config.json is not JSON ({' '.join(str(e).split())[:80]})") from None
    if not isinstance(raw, dict):
        raise EvaluationError("model/config.json is not a mapping")
    arch = {k: raw[k] for k in ARCH_KEYS if k in raw}
    for k, v in arch.items():
        if k == "activation_function":
            from transformers.activations import ACT2FN

            if v not in ACT2FN:
                raise EvaluationError(f"model/config.json: unknown activation_function {str(v)[:40]!r}")
        elif k == "n_inner":
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 1 << 16):
                raise EvaluationError(f"model/config.json: bad n_inner {v!r}")
        elif k in ("n_embd", "n_layer", "n_head", "n_positions"):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 1 << 16:
                raise EvaluationError(f"model/config.json: bad {k} {v!r}")
        elif k == "layer_norm_epsilon":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise EvaluationError(f"model/config.json: bad layer_norm_epsilon {v!r}")
        elif not isinstance(v, bool):
            raise EvaluationError(f"model/config.json: {k} must be true or false, got {v!r}")
    eval_seq = int(task.get("eval_seq_len") or 0)
    if eval_seq and arch.get("n_positions", eval_seq) < eval_seq:
        raise EvaluationError(f"model/config.json: n_positions {arch['n_positions']} is shorter than the "
                              f"evaluation's context of {eval_seq}")
    try:
        config = GPT2Config(vocab_size=vocab_size, bos_token_id=None, eos_token_id=None, **arch)
        with torch.device("meta"):
            probe = GPT2LMHeadModel(config)
    except (ValueError, TypeError, AssertionError) as e:
        raise EvaluationError(f"model/config.json: not a GPT-2 the harness builds "
                              f"({' '.join(str(e).split())[:120]})") from None
    n_params = sum(p.numel() for p in probe.parameters())
    cap = task_limit(task, "param_cap")
    if n_params > cap:
        raise EvaluationError(f"model/config.json: {n_params:,} parameters exceed the cap of {cap:,}")
    try:
        state = load_safetensors((model_dir / "model.safetensors").read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise EvaluationError(f"model/model.safetensors cannot be read ({' '.join(str(e).split())[:120]})") from None
    expected = probe.state_dict()
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state) - set(TIED))
    if unknown or missing:
        raise EvaluationError(f"model/model.safetensors: tensors do not match the architecture "
                              f"(unexpected: {unknown[:3]}, missing: {missing[:3]})")
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape) or not t.dtype.is_floating_point:
            raise EvaluationError(f"model/model.safetensors: {name} has shape {tuple(t.shape)} and dtype "
                                  f"{t.dtype}; expected {tuple(expected[name].shape)}, floating point")
    model = GPT2LMHeadModel(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.tie_weights()
    return model.float().eval()  # as from_pretrained returns it


def evaluate_saved(report, model_dir: str, experiment_root: str, heldout: str, task: dict,
                   sealed: dict[str, str]) -> dict:
    """Returns the sealed evaluation's metrics of the model saved in `model_dir` (sealed: see `seal_model`).

    Runs in a fresh child of the zygote (see `evolve.warm.zygote.call`): a process
    that has never imported any variant's code and exits afterwards.
    """
    import torch

    torch.set_num_threads(1)  # the trial holds no CPU; do not crowd the trials that train
    check_sealed(sealed)
    evaluate = load_module(Path(experiment_root) / "harness" / "evaluate.py", "evolve_sealed_evaluate")
    vocab = int(json.loads((Path(heldout).parent / "meta.json").read_text())["vocab_size"])
    torch.manual_seed(0)
    model = load_checked_model(model_dir, task, vocab)
    metrics = evaluate.evaluate(model, heldout, task)
    bad = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isfinite(v))}
    if bad:
        raise ValueError(f"sealed evaluation returned non-finite metrics: {bad}")
    return metrics
