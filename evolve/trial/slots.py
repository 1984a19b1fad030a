"""Warm training slots: long-lived Ray Train worker groups that run trial after trial.

A `TorchTrainer` per trial cost each trial about 20 s on 2 cores: a Train
controller, its workers and their helper actors are fresh Python processes
that import Ray, start, rendezvous and tear down. Here the search starts
`budget.concurrent` worker groups once (`SlotPool`, one `TorchTrainer` per
slot, run from a driver thread) and keeps them for the whole search. Their
workers are relays that never import torch or a variant: for each trial,
each rank asks its node's zygote to fork a fresh child that trains (see
`evolve.rank.entry.run_rank`). So isolation is what it was with a trainer per
trial: a variant's code only ever runs in its own children, which exit
after the trial; the relays and the zygote never load it, and the sealed
evaluation runs in yet another fresh child.

The search's `SlotBoard` (`evolve.trial.board`) is where trials (Tune
trainables holding no CPU) and relays meet. A rank that
fails gets the others' children cancelled, so a data-parallel trial never
hangs in a collective. A worker group that dies fails its job with a
reason and is started again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import ray

from evolve.errors import one_line
from evolve.messages import TrialConfig
from evolve.rank.sandbox import policy_for
from evolve.trial.board import LOST, SlotBoard
from evolve.trial.relay import RendezvousConfig, make_trainer
from evolve.warm import zygote

# Ray Train is imported inside the functions that start worker groups.

TAKE_POLL_S = 5.0  # relays' long-poll for a job


# -- the relay: Ray Train's train_loop_per_worker ---------------------------------
def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def relay_loop(config: dict) -> None:
    """Runs on every worker of a slot: takes jobs and has the zygote train each rank."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    board = ray.get_actor(config["board"])
    slot, last = config["slot"], None
    while True:
        job = ray.get(board.take_job.remote(slot, rank, last, TAKE_POLL_S))
        if job == "shutdown":
            return
        if job is None:
            continue
        last = job["id"]
        error = _run_rank(board, slot, job, rank, world, ctx.get_local_rank(), ctx.get_local_world_size())
        ray.get(board.finish.remote(slot, job["id"], rank, error))


def _run_rank(board, slot: int, job: dict, rank: int, world: int, local_rank: int,
              local_world: int) -> str | None:
    """Trains one rank of one job in a fresh zygote child; returns None or the one-line reason."""
    try:
        config = TrialConfig.from_dict(job["config"])  # checked: the trial process posted it
        out_dir = Path(config.out_dir)
        if rank == 0:
            addr = ray.util.get_node_ip_address()
            ray.get(board.set_rendezvous.remote(slot, job["id"], addr, _free_port(addr)))
        got = ray.get(board.get_rendezvous.remote(slot, job["id"], 120.0))
        if got is None:
            return "rank 0 never published the rendezvous address"
        addr, port = got
        env = {k: v for k, v in os.environ.items()
               if k in ("CUDA_VISIBLE_DEVICES", "DS_ACCELERATOR", "OMP_NUM_THREADS",
                        "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")}
        env.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE=str(local_world))
        out_dir.mkdir(parents=True, exist_ok=True)
        # where this rank ran, for the record; the trial folder is the variant's: never through a link
        fd = os.open(out_dir / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "a") as log:
            log.write(f"evolve: rank {rank} of {world} on node {ray.get_runtime_context().get_node_id()} "
                      f"({ray.util.get_node_ip_address()}), rendezvous {addr}:{port}\n")
        cancel = threading.Event()
        watcher = threading.Thread(target=_watch_cancel, args=(board, slot, job["id"], cancel), daemon=True)
        watcher.start()
        report = (lambda point: board.report.remote(slot, job["id"], point)) if rank == 0 else None
        try:
            zygote.call("evolve.rank.entry:run_rank", {"config": config.to_dict(), "rank": rank, "world": world},
                        env=env, log=str(out_dir / f"rank{rank}.log"),
                        recipe=str(Path(config.variant_dir) / "recipe.py"), on_report=report,
                        cancel=cancel, timeout_s=config.timeout_s or None,
                        sandbox=policy_for(config, str(out_dir)), search=config.search)
        finally:
            cancel.set()  # ends the watcher
        return None
    except zygote.ChildLost as e:
        return LOST + str(e)
    except zygote.ChildFailed as e:
        return str(e)
    except Exception as e:
        return one_line(e)


def _watch_cancel(board, slot: int, job_id: str, cancel: threading.Event) -> None:
    while not cancel.is_set():
        try:
            if ray.get(board.cancelled.remote(slot, job_id, TAKE_POLL_S)):
                cancel.set()
        except Exception:  # the board is gone: the search is over
            cancel.set()


def _relay_entry(config: dict) -> None:
    from evolve.trial.slots import relay_loop  # by name in the worker: Ray ships this function, not the module

    relay_loop(config)


# -- the driver's side ------------------------------------------------------------
class SlotPool:
    """Starts `n` slots (one TorchTrainer each, on driver threads) and restarts dead ones."""

    def __init__(self, n: int, resources: dict, storage: str, name: str, log=print,
                 max_restarts: int = 3):
        self.n, self.resources, self.storage, self.log = n, resources, storage, log
        self.name = name
        self.max_restarts = max_restarts
        self.board = SlotBoard.options(name=name).remote(n)
        self.stopping = False
        self.threads = [threading.Thread(target=self._keep, args=(i,), name=f"evolve-slot-{i}", daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _trainer(self, slot: int, generation: int):
        from ray.train import RunConfig, ScalingConfig

        r = self.resources
        per_worker = {"CPU": r["cpus_per_worker"]}
        if r["gpus_per_worker"] > 0:
            per_worker["GPU"] = r["gpus_per_worker"]
        return make_trainer(
            train_loop_per_worker=_relay_entry,
            train_loop_config={"board": self.name, "slot": slot},
            scaling_config=ScalingConfig(num_workers=r["workers"], use_gpu=r["gpus_per_worker"] > 0,
                                         resources_per_worker=per_worker,
                                         placement_strategy=r.get("placement", "pack").upper()),
            torch_config=RendezvousConfig(),
            run_config=RunConfig(name=f"slot{slot}-{generation}", storage_path=self.storage))

    def _keep(self, slot: int) -> None:
        for generation in range(self.max_restarts + 1):
            trainer = self._trainer(slot, generation)
            ray.get(self.board.slot_up.remote(slot))
            try:
                trainer.fit()
                reason = "it exited"
            except Exception as e:
                reason = one_line(e)
            if self.stopping:
                return
            ray.get(self.board.slot_down.remote(slot, reason))
            self.log(f"evolve: training slot {slot} stopped ({reason}); starting it again")
        self.log(f"evolve: training slot {slot} stopped {self.max_restarts + 1} times; it stays down")

    def close(self, timeout_s: float = 30.0) -> None:
        """Tells the relays to return and waits for the worker groups to end."""
        self.stopping = True
        try:
            ray.get(self.board.shutdown.remote())
        except Exception:
            pass
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        ray.kill(self.board)
