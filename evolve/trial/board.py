"""The slot board: one async actor per search, where trials and the slots' relays meet.

A trial acquires a free slot, posts its job and reads its learning-curve
points; the slot's relays long-poll for the job, rank 0 publishes a fresh
rendezvous port for the children's process group, and each rank reports
when its child ends (see `evolve.trial.slots`).

This module imports nothing but Ray: Ray starts the board's process by
importing it, and a module that imported Ray Train (which imports Ray Data,
pyarrow and pandas) made that start cost about 3 s of CPU instead of 1.
"""

from __future__ import annotations

import asyncio
import time

import ray

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
