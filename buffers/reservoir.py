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
from memkit.seeding import derive_generator
from memkit.store import SampleMemory, spec_to_json


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
        super().__init__(spec, budget, owner=owner, nbytes=nbytes, codec=codec)
        self.seed = seed
        self.seen = 0
        self._adds = 0

    def add(self, batch: Batch) -> Batch:
        self._check(batch)
        rows, slots = reservoir_slots(self.seen, len(batch), self.capacity,
                                      derive_generator(self.seed, "add", self._adds))
        evicted = self._read(slots[slots < self._size])
        self._write(slots, batch[rows])
        self.seen += len(batch)
        self._adds += 1
        self._size = min(self.seen, self.capacity)
        return evicted

    def _keep(self, capacity: int) -> torch.Tensor:
        """A uniform random subset: a uniform sample of a uniform sample stays uniform."""
        generator = derive_generator(self.seed, "shrink", self._adds)
        return torch.randperm(self._size, generator=generator)[:capacity].sort().values

    def resize(self, nbytes: int | str) -> Batch:
        evicted = super().resize(nbytes)
        self._adds += 1  # the next draws must not repeat the ones the shrink used
        return evicted

    def config(self) -> dict:
        return {"spec": spec_to_json(self.spec), "owner": self.owner, "nbytes": self.nbytes,
                "codec": self.codec.name, "seed": self.seed}

    def extra_state(self) -> dict:
        return {**super().extra_state(), "seen": self.seen, "adds": self._adds}

    def load_extra_state(self, extra: Mapping) -> None:
        seen, adds = int(extra["seen"]), int(extra["adds"])
        super().load_extra_state(extra)
        self.seen, self._adds = seen, adds
