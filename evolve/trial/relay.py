"""A `TorchTrainer` whose start-up does only what a relay needs.

A slot's Ray Train workers only relay (see `evolve.trial.slots.relay_loop`): the
training runs in children forked from the node's warm zygote, which set up
their own torch process group. So the workers need nothing torch-related
at all, and neither does the controller.

1. `RendezvousConfig` replaces Ray's `TorchConfig` with a backend that does
   nothing at start: the relays publish a fresh rendezvous port per trial
   through the slot board. Ray's `TorchConfig` lives in a module that
   imports torch at the top, so unpickling it cost a controller about 3 s,
   and its backend imported torch again in every worker to build a process
   group the relay never uses.
2. `make_trainer` drops two default controller callbacks: the datasets
   callback, which starts a DatasetManager actor even when there are no
   datasets, and the placement-group cleaner, a detached actor per trial
   that only matters when a controller dies without cleaning up. Slots
   live as long as the search, and the driver ends them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.train.backend import Backend, BackendConfig

# Ray Train is imported inside `make_trainer`: this module is imported where Ray Train is not yet
# needed.


class _RendezvousBackend(Backend):
    share_cuda_visible_devices = True  # every local rank sees all the node's GPUs


@dataclass
class RendezvousConfig(BackendConfig):
    """Backend config for relays: no process group, no torch import (see `evolve.trial.slots`)."""

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
