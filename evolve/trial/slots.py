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

`SlotBoard`, one async actor per search, is where trials and relays meet:
a trial (a Tune trainable holding no CPU) acquires a free slot, posts its
job and reads its learning-curve points; the slot's relays long-poll for
the job, rank 0 publishes a fresh rendezvous port for the children's
process group, and each rank reports when its child ends. A rank that
fails gets the others' children cancelled, so a data-parallel trial never
hangs in a collective. A worker group that dies fails its job with a
reason and is started again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import ray

from evolve.errors import one_line
from evolve.messages import TrialConfig
from evolve.rank.sandbox import policy_for
from evolve.trial.relay import RendezvousConfig, make_trainer
from evolve.warm import zygote

# Ray Train is imported inside the functions that start worker groups.

TAKE_POLL_S = 5.0  # relays' long-poll for a job
# A rank's reason starts with this when its process or worker was lost rather than the variant
# failing: the trial is retried from its checkpoint (Tune's failure_config), not recorded as failed.
LOST = "lost: "
LEASE_S = 60.0  # a busy slot whose trial has not polled for this long is taken back


@ray.remote(num_cpus=0, max_concurrency=1000)
class SlotBoard:
    """The slots' state; every method is cheap, waits are long-polls."""

    def __init__(self, n: int, lease_s: float = LEASE_S):
        self.lease_s = lease_s
        self.slots = {i: {"alive": False, "busy": False, "job": None, "reports": [], "finished": {},
                          "cancelled": False, "rendezvous": None, "reason": None, "seen": 0.0}
                      for i in range(n)}
        self.stopping = False
        self.changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _wait_for(self, predicate, timeout: float) -> bool:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(predicate), timeout)
                return True
            except asyncio.TimeoutError:
                return predicate()

    # -- the pool ------------------------------------------------------------
    async def slot_up(self, slot: int) -> None:
        self.slots[slot].update(alive=True, reason=None)
        await self._notify()

    async def slot_down(self, slot: int, reason: str) -> None:
        """The slot's worker group ended: its running job fails on every rank not yet done."""
        s = self.slots[slot]
        s.update(alive=False, reason=reason)
        if s["job"] is not None:
            for rank in range(s["job"]["world"]):
                s["finished"].setdefault(rank, f"{LOST}the training worker group stopped: {reason}")
        await self._notify()

    async def shutdown(self) -> None:
        self.stopping = True
        await self._notify()

    # -- trials --------------------------------------------------------------
    def _free(self, s: dict) -> bool:
        """A live slot nobody holds, or one whose trial stopped polling (its process died)."""
        return s["alive"] and (not s["busy"] or time.monotonic() - s["seen"] > self.lease_s)

    async def acquire(self, timeout: float) -> int | None:
        """Returns a free, live slot (marked busy), or None after `timeout`."""
        if not await self._wait_for(lambda: any(self._free(s) for s in self.slots.values()), timeout):
            return None
        slot = next(i for i, s in self.slots.items() if self._free(s))
        # a job left by a dead trial is dropped: its relays see it go and kill their children
        self.slots[slot].update(busy=True, seen=time.monotonic(), job=None, reports=[], finished={},
                                cancelled=False, rendezvous=None)
        await self._notify()
        return slot

    async def release(self, slot: int) -> None:
        self.slots[slot].update(busy=False, job=None, reports=[], finished={}, cancelled=False,
                                rendezvous=None)
        await self._notify()

    async def put_job(self, slot: int, job: dict) -> None:
        self.slots[slot].update(job=job, reports=[], finished={}, cancelled=False, rendezvous=None,
                                seen=time.monotonic())
        await self._notify()

    async def wait(self, slot: int, job_id: str, cursor: int, timeout: float) -> dict:
        """Returns the job's reports after `cursor`, its per-rank outcomes and whether all ranks ended."""
        s = self.slots[slot]
        s["seen"] = time.monotonic()

        def news():
            return len(s["reports"]) > cursor or self._done(s)

        await self._wait_for(news, timeout)
        return {"reports": s["reports"][cursor:], "cursor": len(s["reports"]), "done": self._done(s),
                "errors": {r: e for r, e in s["finished"].items() if e}}

    @staticmethod
    def _done(s: dict) -> bool:
        return s["job"] is not None and len(s["finished"]) >= s["job"]["world"]

    async def cancel(self, slot: int, job_id: str) -> None:
        s = self.slots[slot]
        if s["job"] is not None and s["job"]["id"] == job_id:
            s["cancelled"] = True
            await self._notify()

    # -- relays --------------------------------------------------------------
    async def take_job(self, slot: int, rank: int, last_id: str | None, timeout: float):
        """Returns a job this rank has not run yet, "shutdown", or None after `timeout`."""
        s = self.slots[slot]

        def ready():
            return self.stopping or (s["job"] is not None and s["job"]["id"] != last_id
                                     and rank not in s["finished"])

        await self._wait_for(ready, timeout)
        if self.stopping:
            return "shutdown"
        return s["job"] if ready() else None

    async def set_rendezvous(self, slot: int, job_id: str, addr: str, port: int) -> None:
        self.slots[slot]["rendezvous"] = (job_id, addr, port)
        await self._notify()

    async def get_rendezvous(self, slot: int, job_id: str, timeout: float):
        s = self.slots[slot]
        ok = await self._wait_for(lambda: (s["rendezvous"] or ("",))[0] == job_id, timeout)
        return s["rendezvous"][1:] if ok else None

    async def report(self, slot: int, job_id: str, point: dict) -> None:
        s = self.slots[slot]
        if s["job"] is not None and s["job"]["id"] == job_id:
            s["reports"].append(point)
            await self._notify()

    async def finish(self, slot: int, job_id: str, rank: int, error: str | None) -> None:
        s = self.slots[slot]
        if s["job"] is not None and s["job"]["id"] == job_id:
            s["finished"].setdefault(rank, error)
            await self._notify()

    async def cancelled(self, slot: int, job_id: str, timeout: float) -> bool:
        s = self.slots[slot]

        def stop():
            return self.stopping or s["cancelled"] or s["job"] is None or s["job"]["id"] != job_id

        return await self._wait_for(stop, timeout)


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
