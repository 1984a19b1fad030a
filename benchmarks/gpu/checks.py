#!/usr/bin/env python3
"""One step of the evolve GPU check per call: python .device/checks.py STEP RESULT.json

Steps: env, fork, seed_plain, seed_sandbox (seed_sandbox_retry), throughput, rl,
population (of run.sh's `evolve run`); run.sh calls them in that order, each in
a process of its own. Each writes its result (a dict) to RESULT.json, also
when it fails (then with "error" and the traceback's last lines). The project
is the folder above this one (GPUCHECK_PROJECT overrides it). With
CPU_DRYRUN=1 the training steps run on the CPU with tiny budgets (plumbing
only); without it and without a CUDA GPU they are skipped with a clear message.

Where the project's code no longer has what a step calls (a function moved or
renamed), the step fails with "project_changed" and a message naming it; the
other steps still run. Update your copy (.device/checks.py; prepare.sh keeps an edited copy) then.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = Path(os.environ.get("GPUCHECK_PROJECT") or HERE.parent).resolve()
sys.path.insert(0, str(PROJECT))
DRY = os.environ.get("CPU_DRYRUN") == "1"
WORK = Path(os.environ.get("GPUCHECK_WORK", "/tmp/evolve-gpucheck"))
PEAK_BF16 = 989e12  # H200 dense bf16 FLOP/s (NVIDIA's spec sheet, without sparsity)
# as this process started: DeepSpeed's import sets it to 1 (setdefault) when it is unset
NVML_CHECK_AT_START = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")


def env_int(name: str, gpu: int, dry: int) -> int:
    return int(os.environ.get(name, dry if DRY else gpu))


# budgets: GPU value, CPU dry-run value (each can be overridden from the environment)
SEED_TOKENS = env_int("SEED_TOKENS", 3_145_728, 40_960)  # seed recipe: 1,024 tokens a step
SANDBOX_TOKENS = env_int("SANDBOX_TOKENS", 1_048_576, 20_480)
RL_TOKENS = env_int("RL_TOKENS", 600_000, 12_000)
TP_STEPS = env_int("TP_STEPS", 100, 6)  # timed optimizer steps, after TP_WARMUP
TP_WARMUP = env_int("TP_WARMUP", 10, 2)
TP_BATCH = env_int("TP_BATCH", 8, 2)
TP_MODEL = ({"n_layer": 2, "n_head": 4, "n_embd": 64, "seq_len": 128} if DRY else
            {"n_layer": 12, "n_head": 12, "n_embd": 768, "seq_len": 1024})  # GPT-2 small, 124M parameters
# the zygote's time-out on one rank: ends before run.sh's time-out on the step, so its log is read
STEP_TIMEOUT_S = env_int("RANK_TIMEOUT_S", max(30, int(os.environ.get("GPUCHECK_DUMP_S") or 115) - 15), 600)


class ProjectChanged(RuntimeError):
    """The project's code no longer has what this check calls: the check needs updating."""


def api(path: str):
    """Returns the project's object at "module:name" (or "module"); ProjectChanged if it moved."""
    mod, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and (mod == e.name or mod.startswith(e.name + ".")):
            raise ProjectChanged(f"the project has no module {mod} (moved or renamed?); "
                                 f"this step calls {path}") from None
        raise  # a dependency that is missing: a finding about the machine
    for part in filter(None, attr.split(".")):
        if not hasattr(obj, part):
            raise ProjectChanged(f"{mod} has no {attr} (moved or renamed?); this step calls {path}")
        obj = getattr(obj, part)
    return obj


def experiment(name: str) -> Path:
    path = PROJECT / "experiments" / name
    if not (path / "experiment.yaml").is_file():
        raise ProjectChanged(f"the project has no experiments/{name}/experiment.yaml; this step trains its seed")
    return path


def gpus() -> int:
    return 0 if DRY else 1


def need_device() -> str | None:
    """Returns why a training step cannot run here, or None."""
    if DRY:
        return None
    import torch

    if not torch.cuda.is_available():
        return "skipped: no CUDA GPU visible (torch.cuda.is_available() is False); CPU_DRYRUN=1 runs it on the CPU"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env() -> dict:
    """The environment of rank 0 of a world of one, as a slot's relay gives it."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    for k in ("CUDA_VISIBLE_DEVICES", "DS_ACCELERATOR", "OMP_NUM_THREADS"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def one_line(e: BaseException, n: int = 300) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:n]}"


# -- 1. environment ------------------------------------------------------------------
def step_env(res: dict) -> None:
    import importlib.metadata as md
    import pkgutil
    import platform

    res["python"] = sys.version.split()[0]
    res["executable"] = sys.executable
    res["platform"] = platform.platform()
    res["project"] = str(PROJECT)
    versions = {}
    for name in ("torch", "transformers", "deepspeed", "ray", "numpy", "pandas", "pyarrow", "pydantic",
                 "pydantic_core", "hjson", "safetensors", "tokenizers", "huggingface_hub", "typing_extensions",
                 "packaging", "protobuf", "msgpack", "py-cpuinfo", "nvidia-ml-py", "triton", "psutil",
                 "jsonschema", "tensorboardX", "aiohttp", "grpcio", "openai"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    res["versions"] = versions
    t0 = time.time()
    import torch

    res["torch_import_s"] = round(time.time() - t0, 2)
    res["torch"] = torch.__version__
    res["torch_cuda"] = torch.version.cuda
    res["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        try:
            p = torch.cuda.get_device_properties(0)
            res["device"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                             "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                             "bf16": torch.cuda.is_bf16_supported()}
            res["nccl"] = str(torch.cuda.nccl.version())
        except Exception as e:  # noqa: BLE001 - a finding, recorded
            res["device_error"] = one_line(e)
    # every evolve module: the trial path's must import; Ray's need ray
    mods, errors = [], {}
    evolve = api("evolve")
    res["evolve_file"] = getattr(evolve, "__file__", None)
    if not res["evolve_file"] or PROJECT not in Path(res["evolve_file"]).resolve().parents:
        errors["evolve"] = f"imported from {res['evolve_file']}, not from the project at {PROJECT}"
    for m in sorted(pkgutil.walk_packages(evolve.__path__, "evolve."), key=lambda m: m.name):
        t = time.time()
        try:
            importlib.import_module(m.name)
            mods.append(f"{m.name} ({time.time() - t:.1f}s)")
        except BaseException as e:  # noqa: BLE001 - a finding, not a crash
            errors[m.name] = one_line(e)
    res["evolve_imported"] = mods
    for name in ("transformers", "transformers.models.gpt2.modeling_gpt2", "deepspeed", "ray", "ray.tune",
                 "ray.train"):
        try:
            importlib.import_module(name)
        except BaseException as e:  # noqa: BLE001
            errors[name] = one_line(e)
    try:
        from deepspeed.accelerator import get_accelerator

        res["deepspeed_accelerator"] = get_accelerator().device_name()
    except BaseException as e:  # noqa: BLE001
        errors["deepspeed.accelerator"] = one_line(e)
    # the harness's model path: GPT2Config/GPT2LMHeadModel as build_model uses them, a forward, save/load
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        dev = "cuda" if torch.cuda.is_available() and not DRY else "cpu"
        cfg = GPT2Config(vocab_size=256, n_positions=128, bos_token_id=None, eos_token_id=None,
                         n_layer=2, n_head=4, n_embd=64)
        model = GPT2LMHeadModel(cfg).to(dev)
        logits = model(input_ids=torch.randint(0, 256, (2, 16), device=dev)).logits
        res["gpt2_forward"] = {"device": dev, "logits": list(logits.shape), "dtype": str(logits.dtype),
                               "attn_implementation": getattr(model.config, "_attn_implementation", None)}
        d = WORK / "env_model"
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d, safe_serialization=True)
        GPT2LMHeadModel.from_pretrained(d)
        res["gpt2_save_load"] = sorted(p.name for p in d.iterdir())
    except BaseException as e:  # noqa: BLE001
        errors["gpt2 build/forward/save"] = one_line(e)
    try:
        keys = api("evolve.rank.lm:ALLOWED_DS_KEYS")
        res["harness_allowed_ds_keys"] = list(keys)
        res["harness_allows_bf16_or_fp16"] = any(k in keys for k in ("bf16", "fp16", "amp"))
    except ProjectChanged as e:
        res["harness_allowed_ds_keys"] = f"unknown: {e}"
    if errors:
        res["error"] = f"{len(errors)} import/API error(s): " + "; ".join(f"{k}: {v}" for k, v in errors.items())


# -- 2b. CUDA in a child forked after the zygote's imports ---------------------------------
FORK_PROBE = r"""
import importlib, json, os, sys
try:
    from evolve.warm.zygote import PRELOAD
except ImportError:  # the project moved it: what the zygote imported when this check was written
    PRELOAD = ("numpy", "yaml", "torch", "torch.distributed", "transformers",
               "transformers.models.gpt2.modeling_gpt2", "deepspeed")
for name in PRELOAD:  # what the zygote imports before it forks a child per rank
    importlib.import_module(name)
import evolve.rank.entry
import torch
out = {"preload": list(PRELOAD), "parent_torch_cuda_initialized": torch.cuda.is_initialized()}
try:
    from deepspeed.accelerator import get_accelerator
    out["parent_ds_accelerator"] = get_accelerator().device_name()
except BaseException as e:
    out["parent_ds_accelerator"] = repr(e)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        torch.cuda.set_device(0)
        x = torch.ones(1024, device="cuda")
        torch.cuda.synchronize()
        msg = "ok: " + str(float(x.sum()))
    except BaseException as e:
        msg = type(e).__name__ + ": " + " ".join(str(e).split())[:600]
    os.write(w, msg.encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
out["child_cuda"] = os.read(r, 4000).decode()
print(json.dumps(out))
"""


def step_fork(res: dict) -> None:
    """Does CUDA work in a child forked after the zygote's PRELOAD, with torch's default and NVML checks?"""
    import subprocess

    if DRY or need_device():
        res["skipped"] = "needs a CUDA GPU"
        return
    for nvml in ("0", "1"):
        env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
        if nvml == "1":
            env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
        key = f"PYTORCH_NVML_BASED_CUDA_CHECK={nvml}"
        try:
            p = subprocess.run([sys.executable, "-c", FORK_PROBE], env=env, capture_output=True, text=True,
                               timeout=90, cwd=str(PROJECT))
            lines = p.stdout.strip().splitlines()
            res[key] = json.loads(lines[-1]) if p.returncode == 0 and lines else \
                {"rc": p.returncode, "stderr_tail": p.stderr.strip().splitlines()[-6:]}
        except Exception as e:  # noqa: BLE001 - recorded per probe
            res[key] = {"error": one_line(e)}
        print(f"fork probe {key}: {res[key]}", flush=True)
    default_ok = str(res.get("PYTORCH_NVML_BASED_CUDA_CHECK=0", {}).get("child_cuda", "")).startswith("ok")
    nvml_ok = str(res.get("PYTORCH_NVML_BASED_CUDA_CHECK=1", {}).get("child_cuda", "")).startswith("ok")
    res["child_cuda_ok"] = default_ok
    res["child_cuda_ok_with_nvml_check"] = nvml_ok
    if not default_ok:
        res["error"] = ("CUDA fails in a child forked after the zygote's imports" +
                        ("; PYTORCH_NVML_BASED_CUDA_CHECK=1 fixes it" if nvml_ok else "; NVML check does not fix it"))


# -- 3./4. the seed trials ------------------------------------------------------------
def prepare(name: str, overrides: list[str], folder: str):
    """Returns (spec, data meta, config) of the experiment's seed, built the way the searcher builds a trial's."""
    load_spec = api("evolve.spec:load_spec")
    prepare_run = api("evolve.driver:prepare_run")
    scaffold_files = api("evolve.driver:scaffold_files")
    Store = api("evolve.record.store:Store")
    Variant = api("evolve.variant:Variant")

    spec = load_spec(experiment(name), overrides)
    run_dir = (WORK / folder).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    meta, context = prepare_run(spec, run_dir)  # data split, sealed hashes, sandbox policy (probe)
    store = Store(run_dir)
    seed = Variant(files=store.put_files(scaffold_files(spec)), operator="seed")
    store.put_variant(seed)
    variant_dir = store.materialize(seed, run_dir / "work" / seed.id)
    config = {**context, "variant_id": seed.id, "trial_id": f"gpucheck-{folder}",
              "variant_dir": str(variant_dir), "out_dir": str(run_dir / "trials" / seed.id)}
    return spec, meta, config


def summarize(res: dict, out_dir: Path, points: list, t_train: float) -> dict:
    """Adds rank 0's summary.json to `res`; a field the harness no longer writes is named, not fatal."""
    summary = json.loads((out_dir / "summary.json").read_text())
    res["train_wall_s"] = round(t_train, 1)
    want = ("tokens_trained", "optimizer_steps", "n_params", "train_seconds", "setup_seconds", "curve")
    res["summary_missing"] = [k for k in want if k not in summary] or None
    for k in ("tokens_trained", "optimizer_steps", "n_params"):
        res[k] = summary.get(k)
    for k in ("train_seconds", "setup_seconds"):
        res[k] = round(summary[k], 2) if isinstance(summary.get(k), (int, float)) else None
    tokens, secs, steps = summary.get("tokens_trained"), summary.get("train_seconds"), summary.get("optimizer_steps")
    if tokens and secs:
        res["tokens_per_s"] = round(tokens / secs)
        res["step_ms"] = round(1000 * secs / max(1, steps or 1), 2)
    curve = summary.get("curve") or []
    try:
        res["first_last_dev_loss"] = [round(curve[0][2], 4), round(curve[-1][2], 4)] if curve else None
    except (TypeError, IndexError):
        res["first_last_dev_loss"] = f"curve not as expected: {str(curve[:1])[:100]}"
    res["curve_points_reported"] = len(points)
    model = out_dir / "model"
    res["model_files"] = sorted(p.name for p in model.iterdir()) if model.is_dir() else None
    return summary


def tail(path: Path, n: int = 25) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError as e:
        return [f"(no log: {e})"]


def step_seed(res: dict, sandboxed: bool) -> None:
    why = need_device()
    if why:
        res["skipped"] = why
        return
    run_rank = api("evolve.rank.entry:run_rank")
    evaluate_saved = api("evolve.trial.evaluation:evaluate_saved")
    tokens = SANDBOX_TOKENS if sandboxed else SEED_TOKENS
    t_all = time.time()
    spec, meta, config = prepare("tiny_lm", [f"budget.train_tokens={tokens}", f"trial.gpus_per_worker={gpus()}",
                                             f"trial.sandbox={'true' if sandboxed else 'false'}"],
                                 "seed_sandbox" if sandboxed else "seed_plain")
    res["train_tokens_budget"] = tokens
    res["PYTORCH_NVML_BASED_CUDA_CHECK"] = NVML_CHECK_AT_START
    res["config_keys"] = sorted(config)
    res["resources"] = config.get("resources")
    cap = os.environ.get("SANDBOX_MEMORY_BYTES")  # a retry's change: the rank's memory cap (RLIMIT_DATA)
    if cap is not None and config.get("sandbox"):
        config["sandbox"] = {**config["sandbox"], "memory_bytes": int(cap)}
        res["sandbox_memory_bytes_override"] = int(cap)
    res["sandbox_policy"] = config.get("sandbox")
    if sandboxed and not config.get("sandbox"):
        raise RuntimeError("trial.sandbox=true gave no sandbox policy (prepare_run's 'sandbox' is empty)")
    res["prepare_s"] = round(time.time() - t_all, 1)
    out_dir = Path(config["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    points = []
    eval_kwargs = {"model_dir": str(out_dir / "model"), "experiment_root": config["experiment_root"],
                   "heldout": str(Path(config["data_dir"]) / "heldout.bin"), "task": config["task"],
                   "sealed": config["sealed"]}
    if not sandboxed:  # the harness's entry, in this fresh process, no sandbox
        os.environ.update(rank_env())
        t0 = time.time()
        run_rank(points.append, config, 0, 1)
        t_train = time.time() - t0
        summarize(res, out_dir, points, t_train)
        t0 = time.time()
        metrics = evaluate_saved(None, **eval_kwargs)
    else:  # as a slot's relay runs it: a fresh zygote child in the sandbox, then the evaluation in another
        zygote = api("evolve.warm.zygote")
        ensure, ping, call, shutdown = (api(f"evolve.warm.zygote:{n}") for n in ("ensure", "ping", "call", "shutdown"))
        policy_for = api("evolve.rank.sandbox:policy_for")

        t0 = time.time()
        ping(ensure())
        res["zygote_start_s"] = round(time.time() - t0, 1)
        try:
            t0 = time.time()
            try:
                call("evolve.rank.entry:run_rank", {"config": config, "rank": 0, "world": 1},
                     env=rank_env(), log=str(out_dir / "rank0.log"),
                     recipe=str(Path(config["variant_dir"]) / "recipe.py"), on_report=points.append,
                     timeout_s=STEP_TIMEOUT_S,
                     sandbox=policy_for(api("evolve.messages:TrialConfig").from_dict(config), str(out_dir)))
            except Exception:
                res["rank0_log_tail"] = tail(out_dir / "rank0.log")
                res["zygote_log_tail"] = tail(zygote.socket_path().with_suffix(".log"), 10) \
                    if hasattr(zygote, "socket_path") else None
                raise
            t_train = time.time() - t0
            summarize(res, out_dir, points, t_train)
            t0 = time.time()
            try:
                metrics = call("evolve.trial.evaluation:evaluate_saved", eval_kwargs,
                               log=str(out_dir / "evaluate.log"), timeout_s=STEP_TIMEOUT_S)
            except Exception:
                res["evaluate_log_tail"] = tail(out_dir / "evaluate.log")
                raise
            res["rank0_log_tail"] = tail(out_dir / "rank0.log", 6)
        finally:
            shutdown()
    res["eval_s"] = round(time.time() - t0, 2)
    res["metrics"] = metrics
    res["heldout_loss"] = round(metrics["heldout_loss"], 4) if "heldout_loss" in metrics else None
    res["wall_s"] = round(time.time() - t_all, 1)


# -- 5. throughput and MFU ------------------------------------------------------------
def step_throughput(res: dict) -> None:
    """gpt2_small's seed (bf16, Muon) through the harness's DeepSpeed loop against a plain PyTorch bf16 loop."""
    why = need_device()
    if why:
        res["skipped"] = why
        return
    import deepspeed
    import numpy as np
    import torch
    import torch.distributed as dist
    import yaml

    trainer = api("evolve.rank.entry:trainer")
    load_recipe, load_settings = api("evolve.rank.lm:load_recipe"), api("evolve.rank.lm:load_settings")
    load_tokens = api("evolve.rank.lm:load_tokens")
    mfu = api("evolve.rank.mfu")

    corpus = WORK / "tokens.bin"
    WORK.mkdir(parents=True, exist_ok=True)
    np.random.default_rng(0).integers(0, 50257, 2_000_000 if DRY else 20_000_000, dtype=np.uint16).tofile(corpus)
    spec, meta, config = prepare("gpt2_small", [f"trial.gpus_per_worker={gpus()}", "trial.sandbox=false",
                                                f"task.corpus={corpus}", "budget.train_tokens=1000000000",
                                                *(["task.eval_seq_len=128"] if DRY else [])], "throughput")
    vdir = Path(config["variant_dir"])
    settings = yaml.safe_load((vdir / "config.yaml").read_text())
    if DRY:
        settings.update(TP_MODEL, batch_size=TP_BATCH)
    settings["deepspeed"]["gradient_accumulation_steps"] = 1
    (vdir / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    res["settings"] = {k: settings.get(k) for k in ("n_layer", "n_head", "n_embd", "seq_len", "batch_size",
                                                    "optimizer", "precision", "attention", "tf32", "deepspeed")}
    Path(config["out_dir"]).mkdir(parents=True, exist_ok=True)
    backend = "nccl" if gpus() else "gloo"
    os.environ.update(rank_env())
    if gpus():
        torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method="env://", rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend)  # as the harness's run_rank does before training
    seq, bs = int(settings["seq_len"]), int(settings["batch_size"])
    res["tokens_per_step"] = seq * bs
    loops = {}
    try:
        # steady state = (long run - short run): drops set-up and the first steps' warm-up
        runs = []
        for steps in (TP_WARMUP, TP_WARMUP + TP_STEPS):
            typed = api("evolve.messages:TrialConfig").from_dict({**config, "smoke": True, "max_steps": steps})
            s = trainer(typed)(typed, 0, 1, Path(config["out_dir"]), lambda p: None)
            runs.append(s)
        n_params = runs[-1]["n_params"]
        res.update(n_params=n_params, performance=runs[-1].get("performance"), notes=runs[-1].get("notes"),
                   device=runs[-1].get("device"), flops_per_token=runs[-1].get("flops_per_token"))
        per_token = runs[-1]["flops_per_token"]
        d_tok = runs[1]["tokens_trained"] - runs[0]["tokens_trained"]
        d_sec = runs[1]["train_seconds"] - runs[0]["train_seconds"]
        loops["harness_bf16"] = rate(d_tok, d_sec, TP_STEPS, n_params)
        loops["harness_bf16"]["mfu"] = mfu.mfu(d_tok / d_sec, per_token, PEAK_BF16 / 1e12)
        print(f"throughput: harness (DeepSpeed, {res['performance']}): {loops['harness_bf16']}", flush=True)
        recipe, st = load_recipe(vdir), load_settings(vdir)
        train = load_tokens(Path(config["data_dir"]) / "train.bin", meta.get("dtype", "uint16"))
        if gpus():
            torch.backends.cuda.matmul.allow_tf32 = bool(st.get("tf32"))
            torch.backends.cudnn.allow_tf32 = bool(st.get("tf32"))
        loops["plain_bf16"] = plain_loop(recipe, st, config, train, torch.bfloat16 if gpus() else None, n_params)
        loops["plain_bf16"]["mfu"] = mfu.mfu(loops["plain_bf16"]["tokens_per_s"], per_token, PEAK_BF16 / 1e12)
        print(f"throughput: plain PyTorch bf16 autocast: {loops['plain_bf16']}", flush=True)
        if gpus():
            res["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    finally:
        res["loops"] = loops
        dist.destroy_process_group()
    if "plain_bf16" in loops and "harness_bf16" in loops:
        res["harness_over_plain"] = round(loops["harness_bf16"]["tokens_per_s"] /
                                          loops["plain_bf16"]["tokens_per_s"], 3)
        res["targets"] = {"mfu >= 0.40": (loops["harness_bf16"]["mfu"] or 0) >= 0.40,
                          "harness/plain >= 0.95": res["harness_over_plain"] >= 0.95}


def rate(tokens: float, seconds: float, steps: int, n_params: int) -> dict:
    tps = tokens / seconds
    return {"tokens_per_s": round(tps), "step_ms": round(1000 * seconds / steps, 2),
            "mfu_vs_bf16_peak": round(6 * n_params * tps / PEAK_BF16, 4), "steps_timed": steps}


def plain_loop(recipe, settings, config, train, dtype, n_params) -> dict:
    """benchmarks/throughput.py's plain loop on the device: the recipe's model, optimizer, batches and loss."""
    import contextlib
    import math

    import torch

    build_model = api("evolve.rank.lm:build_model")
    dev = torch.device("cuda", 0) if gpus() else torch.device("cpu")
    torch.manual_seed(config["seed"] * 1000)
    seq, bs = int(settings["seq_len"]), int(settings["batch_size"])
    task = config["task"]
    vocab = int(json.loads((Path(config["data_dir"]) / "meta.json").read_text()).get("vocab_size", 256))
    model, _ = build_model(recipe, settings, vocab, max(seq, int(task.get("eval_seq_len", 128))),
                           int(task["param_cap"]), "sdpa")
    model = model.to(dev)
    clip = float(recipe.deepspeed_config(settings).get("gradient_clipping", 0.0))
    steps = TP_WARMUP + TP_STEPS
    optimizer = recipe.optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_multiplier(settings, steps))
    batches = recipe.batches(train, settings, torch.Generator().manual_seed(config["seed"] * 1000))
    model.train()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        ctx = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            loss = recipe.loss(model(input_ids=x).logits, y, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        value = loss.item()  # a host sync, as in the harness
        times.append(time.perf_counter() - t0)
        if not math.isfinite(value):
            raise RuntimeError(f"plain loop: loss became {value}")
    timed = times[TP_WARMUP:]
    out = rate(bs * seq * len(timed), sum(timed), len(timed), n_params)
    out["last_loss"] = round(value, 4)
    del model, optimizer
    if gpus():
        torch.cuda.empty_cache()
    return out


# -- 6. rl_arith -------------------------------------------------------------------------
def step_rl(res: dict) -> None:
    why = need_device()
    if why:
        res["skipped"] = why
        return
    run_rank = api("evolve.rank.entry:run_rank")
    evaluate_saved = api("evolve.trial.evaluation:evaluate_saved")

    t_all = time.time()
    spec, meta, config = prepare("rl_arith", [f"budget.train_tokens={RL_TOKENS}", f"trial.gpus_per_worker={gpus()}",
                                              "trial.sandbox=false"], "rl")
    res["train_tokens_budget"] = RL_TOKENS
    res["trainer"] = config.get("trainer")
    out_dir = Path(config["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    points = []
    os.environ.update(rank_env())
    t0 = time.time()
    run_rank(points.append, config, 0, 1)
    t_train = time.time() - t0
    summary = summarize(res, out_dir, points, t_train)
    res["sft_steps"], res["rl_steps"] = summary.get("sft_steps"), summary.get("rl_steps")
    last = points[-1] if points else {}
    res["last_point"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in last.items()}
    t0 = time.time()
    metrics = evaluate_saved(None, model_dir=str(out_dir / "model"), experiment_root=config["experiment_root"],
                             heldout=str(Path(config["data_dir"]) / "heldout.bin"), task=config["task"],
                             sealed=config["sealed"])
    res["eval_s"] = round(time.time() - t0, 2)
    res["metrics"] = metrics
    res["heldout_accuracy"] = metrics.get("heldout_accuracy")
    res["wall_s"] = round(time.time() - t_all, 1)


# -- 7. the population of the CLI's run -----------------------------------------------------
def step_population(res: dict) -> None:
    load_population = api("evolve.read.population:load_population")
    run = Path(os.environ.get("RUN_DIR", "/tmp/evolve-gpucheck-run"))
    pop = load_population(run)
    cols = [c for c in ("variant_id", "status", "fitness", "operator", "failure_reason", "trial_seconds")
            if c in pop.columns]
    res["rows"] = json.loads(pop[cols].to_json(orient="records"))
    res["n"] = len(pop)
    res["PYTORCH_NVML_BASED_CUDA_CHECK"] = NVML_CHECK_AT_START
    res["completed"] = int((pop["status"] == "completed").sum()) if "status" in pop.columns else None
    if res["n"] == 0:
        res["error"] = "the run recorded no variant"
    logs = sorted(run.glob("trials/*/rank0.log"))
    if logs:
        res["a_rank0_log_tail"] = tail(logs[-1], 8)


STEPS = {"env": step_env, "fork": step_fork, "seed_plain": lambda r: step_seed(r, False),
         "seed_sandbox": lambda r: step_seed(r, True), "seed_sandbox_retry": lambda r: step_seed(r, True),
         "throughput": step_throughput, "rl": step_rl, "population": step_population}


def changed_under_us(exc: BaseException) -> bool:
    """True when the failing call is this file's own call into the project: an attribute, a name or
    the arguments the project's code no longer has (its code changed), not a failure inside it."""
    if isinstance(exc, ProjectChanged):
        return True
    if isinstance(exc, ImportError):  # of the project's own modules; another one missing is the machine's
        name = exc.name or ""
        return name == "evolve" or name.startswith("evolve.")
    if not isinstance(exc, (AttributeError, TypeError, KeyError)):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve() == Path(__file__).resolve()


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in STEPS:
        print(f"usage: {sys.argv[0]} {{{','.join(STEPS)}}} RESULT.json", file=sys.stderr)
        return 2
    name, out = sys.argv[1], Path(sys.argv[2])
    res = {"step": name, "cpu_dryrun": DRY}
    t0 = time.time()

    def write():
        res["step_wall_s"] = round(time.time() - t0, 1)
        out.write_text(json.dumps(res, indent=1, default=str))

    WORK.mkdir(parents=True, exist_ok=True)
    dump_s = int(os.environ.get("GPUCHECK_DUMP_S", "0"))
    if dump_s > 0:  # a step that hangs shows where, before run.sh's time-out kills it
        import faulthandler

        faulthandler.dump_traceback_later(dump_s, repeat=False, exit=False)
    try:
        STEPS[name](res)
    except BaseException as e:  # noqa: BLE001 - recorded, the next step runs anyway
        res["error"] = one_line(e, 600)
        res["traceback_tail"] = traceback.format_exc().splitlines()[-12:]
        if changed_under_us(e):
            res["project_changed"] = ("the project's code no longer matches this check (see the error); "
                                      "update .device/checks.py (prepare.sh keeps an edited copy)")
        write()
        print(f"[{name}] FAILED: {res['error']}", flush=True)
        if res.get("project_changed"):
            print(f"[{name}] {res['project_changed']}", flush=True)
        print("\n".join(res["traceback_tail"]), flush=True)
        return 1
    write()
    brief = {k: v for k, v in res.items() if k not in ("config_keys", "evolve_imported", "versions", "rows",
                                                        "rank0_log_tail", "sandbox_policy")}
    print(f"[{name}] {json.dumps(brief, default=str)[:3000]}", flush=True)
    return 1 if res.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
