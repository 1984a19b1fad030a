"""A rank's entry points: what a zygote child runs for a trial, a smoke run or a test.

`run_rank` is what a slot's relay (`evolve.trial.slots`) has the node's zygote
fork a child to run, once per rank of each trial: it joins the process
group, sets up DeepSpeed's communication, and runs the experiment's
training loop (`evolve.rank.lm.train` or `evolve.rank.rl.train`), which raises
the sandbox's last walls before it imports the recipe.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from pathlib import Path

from evolve.messages import Resources, TrialConfig
from evolve.rank import lm, rl

# torch and DeepSpeed are imported inside the entry points: the zygote imports this module before it
# forks, and the children that run them pay nothing more.


def run_rank(report, config: dict, rank: int, world: int) -> None:
    """Trains one rank of one variant in this (fresh) process; `report` takes curve points."""
    import torch
    import torch.distributed as dist

    config = TrialConfig.from_dict(config)  # checked: it crossed the zygote's socket
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    backend = "nccl" if config.resources.gpus_per_worker > 0 else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # every NCCL connection at the communicator's start, before the sandbox's filter (see below)
        os.environ.setdefault("NCCL_RUNTIME_CONNECT", "0")
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    _init_deepspeed_comm(backend)
    try:
        trainer(config)(config, rank, world, Path(config.out_dir), report)
    finally:
        dist.destroy_process_group()


def trainer(config: TrialConfig):
    """Returns the training loop the experiment's `trainer` names: next-token ("lm") or RL ("rl")."""
    return rl.train if config.trainer == "rl" else lm.train


def _init_deepspeed_comm(backend: str) -> None:
    """Sets up DeepSpeed's communication (and loads its CPU op) now, before any variant code runs.

    `deepspeed.initialize` would otherwise do it, and loading the op checks
    the compiler with subprocesses, which the sandbox refuses. The process
    group DeepSpeed clones for data parallelism is made now too, and one
    collective runs on each group: once the sandbox's filter is up, the
    rank can open no connection, so every connection it will use (gloo's
    pairs, NCCL's communicators) must exist before.
    """
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.utils import groups

    if backend == "gloo":  # DeepSpeed's shared-memory all-reduce serves inference only: no /dev/shm needed
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # (`deepspeed.comm.torch`
        # as an attribute is the torch package itself)
    deepspeed.init_distributed(dist_backend=backend)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    for group in (None, groups._clone_world_group()):
        dist.all_reduce(torch.zeros(1, device=device), group=group)


def smoke_rank(report, config: dict) -> dict:
    """Runs a variant for the config's `max_steps` optimizer steps as one CPU rank; nothing is kept.

    Reports {"imported": True} once the recipe has imported, so a caller
    can tell an import failure from a failure in training.
    """
    t0 = time.time()
    solo_rank(report, TrialConfig.from_dict(config).replace(smoke=True))
    return {"seconds": time.time() - t0}


def solo_rank(report, config: dict | TrialConfig) -> dict:
    """Trains a variant as a world of one CPU rank in this process; returns the rank's summary."""

    import torch.distributed as dist

    with socket.socket() as s:  # a free loopback port for a world of one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    if not isinstance(config, TrialConfig):
        config = TrialConfig.from_dict(config)  # checked: it crossed the zygote's socket
    config = config.replace(resources=Resources(workers=1, cpus_per_worker=1, gpus_per_worker=0))
    dist.init_process_group(backend="gloo", init_method="env://", rank=0, world_size=1)
    _init_deepspeed_comm("gloo")
    try:
        return trainer(config)(config, 0, 1, Path(config.out_dir), report)
    finally:
        dist.destroy_process_group()
