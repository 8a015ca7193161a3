"""A usage-based frame memory in the manner of XMem: keep frame 0, evict the least used entry.

Cheng & Schwing, "XMem: Long-Term Video Object Segmentation with an
Atkinson-Shiffrin Memory Model", ECCV 2022, bound their long-term memory by
usage: every memory element accumulates the attention that readouts give it,
and consolidation keeps the most used elements, usage being normalised by how
long the element has been in memory (least-frequently-used eviction). This
store applies that rule to an online learner's frame memory:

- every entry (feature map, mask) keeps the descriptor of ``buffers/rmscl.py``
  (foreground and background mean features, unit norm), an accumulated
  ``usage`` and a ``life``, the number of reads since it was stored;
- a read (``training_set(query)``) attends from the query's descriptor to every
  held entry, ``a = softmax(D q / temperature)``; each entry's usage grows by
  its attention and its life by one, and the target model trains on all held
  entries weighted by ``a`` with frame 0's weight floored at ``init_floor``
  after normalisation (as in ``LWLMemory``);
- frame 0 is never evicted; when the memory is full the non-initial entry
  with the smallest usage per read (``usage / life``) leaves. An entry never
  read yet has no such rate and is kept first; among equals the lower slot, then
  the earlier newcomer, leaves first.
"""

from __future__ import annotations

import math

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.buffers.lwl import (
    check_fraction,
    check_frame_spec,
    check_slots,
    entry_nbytes,
    floor_initial,
    positive,
)
from memkit.buffers.rmscl import descriptor_aux, descriptors
from memkit.registry import register
from memkit.store import SampleMemory


def usage_aux(spec: Spec) -> dict:
    """Hidden per-entry fields: the descriptor, the accumulated usage and the reads since stored."""
    return {**descriptor_aux(spec), "usage": ((), torch.float32), "life": ((), torch.int32)}


@register("store", "usage")
class UsageMemory(SampleMemory):
    """Frame 0 and the entries that reads attend to most often."""

    registry_name = "usage"

    def __init__(self, spec: Spec, budget: Budget | int | str, *, owner: str = "usage",
                 nbytes: int | str | None = None, codec: str = "float16",
                 temperature: float = 0.05, init_floor: float = 0.25):
        spec = check_frame_spec(spec, "UsageMemory")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"UsageMemory: expected temperature > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.init_floor = check_fraction(init_floor, "init_floor", "UsageMemory")
        super().__init__(spec, budget, owner=owner, nbytes=nbytes, codec=codec,
                         aux=usage_aux(spec))

    @classmethod
    def entry_nbytes(cls, spec: Spec, codec: str = "float16") -> int:
        """Bytes one entry costs: feature map under ``codec``, mask, descriptor, usage, life."""
        spec = check_frame_spec(spec, "UsageMemory")
        return entry_nbytes(spec, codec, usage_aux(spec))

    def config(self) -> dict:
        return {**super().config(), "temperature": self.temperature,
                "init_floor": self.init_floor}

    def rates(self) -> torch.Tensor:
        """Usage per read of each held entry (float64, by slot); ``inf`` if never read."""
        usage = self._slots["usage"][: self._size].double()
        life = self._slots["life"][: self._size].double()
        return torch.where(life > 0, usage / life.clamp(min=1), torch.inf)

    def add(self, batch: Batch) -> Batch:
        """Store frames in order; when full the least used entries leave. Returns them."""
        self._check(batch)
        rows = batch
        if self._size == 0 and len(rows):
            self._store(torch.tensor([0]), rows[:1])
            self._size, rows = 1, rows[1:]
        rates = torch.cat([self.rates()[1:], torch.full((len(rows),), torch.inf,
                                                        dtype=torch.float64)])
        n_out = max(len(rates) - (self.capacity - 1), 0)
        out = torch.sort(rates, stable=True).indices[:n_out]
        stay = torch.ones(len(rates), dtype=torch.bool)
        stay[out] = False
        held_out = out[out < self._size - 1].sort().values + 1
        evicted = self._read(held_out)
        new_rows = torch.nonzero(stay[self._size - 1:]).squeeze(1)
        size = self._size + len(new_rows) - len(held_out)
        self._store(torch.cat([held_out, torch.arange(self._size, size)]), rows[new_rows])
        self._size = size
        self._updates += 1
        return evicted

    def _store(self, slots: torch.Tensor, rows: Batch) -> None:
        zeros = torch.zeros(len(rows))
        self._write(slots, rows, descriptor=descriptors(rows.x, rows.y), usage=zeros,
                    life=zeros.int())

    def training_set(self, query: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots and weights (the query's attention, frame 0 floored) of the entries to train
        on; records the read as usage."""
        if self._size == 0:
            raise ValueError("UsageMemory.training_set: the memory is empty; add frame 0 first")
        if not isinstance(query, Batch) or len(query) != 1:
            raise TypeError(f"UsageMemory.training_set: expected the query as a Batch of one "
                            f"frame, got {query!r}")
        query.check(self.spec, where="UsageMemory.training_set")
        similarity = self._slots["descriptor"][: self._size] @ descriptors(query.x, query.y)[0]
        attention = torch.softmax(similarity / self.temperature, dim=0)
        self._slots["usage"][: self._size] += attention
        self._slots["life"][: self._size] += 1
        return positive(floor_initial(attention, self.init_floor))

    def entries(self, slots: torch.Tensor) -> Batch:
        """The held entries in ``slots`` (as ``training_set`` names them), decoded."""
        return self._read(check_slots(slots, self._size, "UsageMemory"))

    def _keep(self, capacity: int) -> torch.Tensor:
        """Frame 0 and the ``capacity - 1`` most used others (as ``add`` evicts), in slot order."""
        order = torch.sort(self.rates()[1:], stable=True).indices
        survivors = order[len(order) - (capacity - 1):].sort().values + 1
        return torch.cat([torch.zeros(1, dtype=torch.int64), survivors])
