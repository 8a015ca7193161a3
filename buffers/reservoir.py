"""Reservoir sampling buffer (Vitter 1985, Algorithm R), as used for experience replay.

Chaudhry et al. ("On Tiny Episodic Memories in Continual Learning", 2019) and
Buzzega et al. (DER, 2020) replay from a reservoir: after ``t`` items of the
stream every one of them is held with probability ``capacity / t``, whatever
the task boundaries. Slots are preallocated from the byte budget; an ``add``
touches only the rows it writes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.kernels.reservoir import reservoir_slots
from memkit.registry import register
from memkit.store import SampleMemory


@register("store", "reservoir")
class Reservoir(SampleMemory):
    """Uniform sample of the stream seen so far, in a byte-sized buffer.

    ``add`` returns the stored items it replaced. The random draws of the
    ``k``-th ``add`` come from ``derive_generator(seed, "add", k)``, so a reloaded
    buffer continues exactly as the original would have.
    """

    registry_name = "reservoir"

    def __init__(self, spec: Spec, budget: Budget | int | str, *, owner: str = "reservoir",
                 nbytes: int | str | None = None, codec: str = "raw", seed: int = 0):
        super().__init__(spec, budget, owner=owner, nbytes=nbytes, codec=codec, seed=seed)
        self.seen = 0

    def add(self, batch: Batch) -> Batch:
        self._check(batch)
        rows, slots = reservoir_slots(self.seen, len(batch), self.capacity,
                                      self._generator("add"))
        evicted = self._read(slots[slots < self._size])
        self._write(slots, batch[rows])
        self.seen += len(batch)
        self._updates += 1
        self._size = min(self.seen, self.capacity)
        return evicted

    def _keep(self, capacity: int) -> torch.Tensor:
        """A uniform random subset: a uniform sample of a uniform sample stays uniform."""
        generator = self._generator("shrink")
        return torch.randperm(self._size, generator=generator)[:capacity].sort().values

    def config(self) -> dict:
        return {**super().config(), "seed": self.seed}

    def extra_state(self) -> dict:
        return {**super().extra_state(), "seen": self.seen}

    def load_extra_state(self, extra: Mapping) -> None:
        seen = int(extra["seen"])
        super().load_extra_state(extra)
        self.seen = seen
