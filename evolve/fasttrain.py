"""A `TorchTrainer` whose start-up does only what a relay needs.

A slot's Ray Train workers only relay (see `evolve.slots.relay_loop`): the
training runs in children forked from the node's warm zygote, which set up
their own torch process group. So the workers need nothing torch-related
at all, and neither does the controller.

1. `RendezvousConfig` replaces Ray's `TorchConfig`: its backend puts rank
   0's address and a free port into every worker's MASTER_ADDR/MASTER_PORT
   and stops there. Ray's `TorchConfig` lives in a module that imports torch
   at the top, so unpickling it cost every trial's controller about 3 s, and
   its backend imported torch again in every worker to build a process group
   the relay never uses.
2. `make_trainer` drops two default controller callbacks: the datasets
   callback, which starts a DatasetManager actor even when there are no
   datasets, and the placement-group cleaner, a detached actor per trial
   that only matters when a controller dies without cleaning up. Slots
   live as long as the search, and the driver ends them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ray.train.backend import Backend, BackendConfig


def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


class _RendezvousBackend(Backend):
    share_cuda_visible_devices = True  # every local rank sees all the node's GPUs

    def on_start(self, worker_group, backend_config) -> None:
        from ray.train._internal.utils import get_address_and_port

        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_master, addr=addr, port=port)


@dataclass
class RendezvousConfig(BackendConfig):
    """Backend config that only publishes the rendezvous address to the workers."""

    backend: str = "relay"  # TorchTrainer reads it; the children pick gloo or nccl

    @property
    def backend_cls(self):
        return _RendezvousBackend


def make_trainer(**kwargs):
    """Returns a TorchTrainer (Train V2) without the callbacks a trial does not need."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class _Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            keep = []
            for cb in super()._create_default_callbacks():
                if isinstance(cb, DatasetsCallback) and not self.datasets:
                    continue
                if isinstance(cb, PlacementGroupCleanerCallback):
                    continue
                keep.append(cb)
            return keep

    return _Trainer(**kwargs)
