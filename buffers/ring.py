"""Ring (FIFO) buffer: the newest items overwrite the oldest.

A first-in-first-out window over the stream: it always holds the last
``capacity`` items. Chaudhry et al. ("On Tiny Episodic Memories in Continual
Learning", 2019) keep one such ring buffer per class, and GEM (Lopez-Paz &
Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017) the
last examples of each task; this is the single window over the whole stream
(``ClassBalanced`` gives every class its own share). Slots form a circle;
``head`` is the slot the next item goes to, and once the ring is full it is
also the oldest item's slot, so an ``add`` of ``n`` items touches
``min(n, capacity)`` slots and no per-item bookkeeping is needed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.registry import register
from memkit.store import SampleMemory


@register("store", "ring")
class Ring(SampleMemory):
    """The last ``capacity`` items of the stream; ``add`` returns those it overwrote, oldest first.

    ``resize`` keeps the newest items and lays them out oldest first, so the
    ring continues in the same FIFO order after a shrink, a growth or a reload.
    """

    registry_name = "ring"

    def __init__(self, spec: Spec, budget: Budget | int | str, *, owner: str = "ring",
                 nbytes: int | str | None = None, codec: str = "raw"):
        super().__init__(spec, budget, owner=owner, nbytes=nbytes, codec=codec)
        self.head = 0

    def add(self, batch: Batch) -> Batch:
        self._check(batch)
        n = len(batch)
        rows = torch.arange(max(n - self.capacity, 0), n)  # earlier rows would be overwritten
        slots = (self.head + rows) % self.capacity
        evicted = self._read(self._oldest(int((slots < self._size).sum())))
        self._write(slots, batch[rows])
        self.head = (self.head + n) % self.capacity
        self._size = min(self._size + n, self.capacity)
        return evicted

    def _oldest(self, n: int) -> torch.Tensor:
        """The slots of the ``n`` oldest held items, oldest first: O(n), not O(capacity)."""
        oldest = (self.head - self._size) % self.capacity
        return (oldest + torch.arange(n)) % self.capacity

    def _keep(self, capacity: int) -> torch.Tensor:
        """The newest ``capacity`` items, oldest first."""
        return self._oldest(self._size)[self._size - capacity:]

    def _reallocate(self, capacity: int, keep: torch.Tensor) -> None:
        """Lay the survivors out oldest first: a growth, too, must unroll the circle."""
        age = (keep - (self.head - self._size)) % self.capacity  # 0 for the oldest held item
        super()._reallocate(capacity, keep[torch.argsort(age)])
        self.head = self._size % capacity

    def extra_state(self) -> dict:
        return {**super().extra_state(), "head": self.head}

    def _check_adoptable(self, tensors, extra):
        super()._check_adoptable(tensors, extra)
        capacity, size, head = len(tensors["x"]), int(extra["size"]), int(extra.get("head", -1))
        if not 0 <= head < capacity or (size < capacity and head != size):
            raise ValueError(f"Ring.load_state_dict: saved head {extra.get('head')!r} is not a "
                             f"slot of a ring of {capacity} slots holding {size} items")

    def load_extra_state(self, extra: Mapping) -> None:
        head = int(extra["head"])
        super().load_extra_state(extra)
        self.head = head
