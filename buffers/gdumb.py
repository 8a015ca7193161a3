"""GDumb's greedy class-balancing sampler.

Prabhu, Torr & Dokania, "GDumb: A simple approach that questions our progress
in continual learning", ECCV 2020, Section 3: each item of the stream is
stored if the memory is not full; otherwise, if its class holds fewer items
than the largest class, a random item of the largest class is evicted to make
room; otherwise it is dropped. The classes held stay balanced without knowing
how many will come.

The rule is sequential (each decision depends on the counts the previous ones
left), so ``add`` offers the batch's items in order: the rows that fit the free
slots are written in one step, and only the decisions for the rest walk the
rows, doing O(log classes) integer work each (class counts in a heap; ties
between largest classes go to the lowest label) and touching no tensor; the
evicted items are read and the new ones written in one step at the end. The
victim is uniform over the items its class holds at that moment, including
ones this batch added.
"""

from __future__ import annotations

import heapq

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.labels import check_label_spec, check_labels
from memkit.registry import register
from memkit.store import SampleMemory, normalize_spec


@register("store", "gdumb")
class GDumb(SampleMemory):
    """Greedy class-balanced sampler; ``add`` returns the stored items it evicted, in order.

    The random draws of the ``k``-th ``add`` come from ``derive_generator(seed, "add", k)``.
    """

    registry_name = "gdumb"

    def __init__(self, spec: Spec, budget: Budget | int | str, *, owner: str = "gdumb",
                 nbytes: int | str | None = None, codec: str = "raw", seed: int = 0):
        check_label_spec(normalize_spec(spec), "GDumb")
        super().__init__(spec, budget, owner=owner, nbytes=nbytes, codec=codec, seed=seed)

    def class_counts(self) -> dict[int, int]:
        """Class -> items held."""
        classes, counts = torch.unique(self._labels(), return_counts=True)
        return dict(zip(classes.tolist(), counts.tolist(), strict=True))

    def add(self, batch: Batch) -> Batch:
        self._check(batch)
        check_labels(batch.y, "GDumb.add")
        labels = batch.y.to(torch.int64)
        size, fill = self._size, min(len(batch), self.capacity - self._size)
        placed = self._decide(labels, fill)
        slots = torch.tensor(list(placed), dtype=torch.int64)
        later = torch.tensor(list(placed.values()), dtype=torch.int64)
        rows = torch.arange(fill)  # row i fills slot size + i ...
        into_fill = slots >= size
        rows[slots[into_fill] - size] = later[into_fill]  # ... unless a later row took it over
        taken = slots[~into_fill]  # slots whose stored items were evicted
        evicted = self._read(taken)
        self._write(torch.cat([size + torch.arange(fill), taken]),
                    batch[torch.cat([rows, later[~into_fill]])])
        self._size += fill
        self._updates += 1
        return evicted

    def _decide(self, labels: torch.Tensor, fill: int) -> dict[int, int]:
        """Slot -> row for the rows offered once the free slots are filled (see ``_Greedy``)."""
        if fill == len(labels):
            return {}
        draws = torch.rand(len(labels) - fill, dtype=torch.float64,
                           generator=self._generator("add"))
        greedy = _Greedy(self._labels(), labels[:fill], self._size)
        return greedy.offer(labels[fill:].tolist(), draws.tolist(), first_row=fill)

    def _labels(self) -> torch.Tensor:
        return self._slots["y"][: self._size].to(torch.int64)

    def _keep(self, capacity: int) -> torch.Tensor:
        """The greedy rule applied to a shrink: evict random items of the largest classes."""
        generator = self._generator("shrink")
        labels = self._labels()
        classes, counts = torch.unique(labels, return_counts=True)
        keep = [torch.empty(0, dtype=torch.int64)]
        targets = balanced_counts(counts, capacity).tolist()
        for c, target in zip(classes, targets, strict=True):
            members = torch.nonzero(labels == c).squeeze(1)
            keep.append(members[torch.randperm(len(members), generator=generator)[:target]])
        return torch.cat(keep).sort().values

    def config(self) -> dict:
        return {**super().config(), "seed": self.seed}



class _Greedy:
    """GDumb's decisions for the items that arrive once the memory is full, item by item.

    ``held`` are the labels in the occupied slots, ``filling`` those of the
    rows that take the free slots from ``size`` on. Slot lists of a class are
    built from the labels the first time its count changes.
    """

    def __init__(self, held: torch.Tensor, filling: torch.Tensor, size: int):
        self.held, self.filling, self.size = held, filling, size
        classes, counts = torch.unique(torch.cat([held, filling]), return_counts=True)
        self.counts = dict(zip(classes.tolist(), counts.tolist(), strict=True))
        self.heap = [(-n, c) for c, n in self.counts.items()]
        heapq.heapify(self.heap)
        self.members: dict[int, list[int]] = {}

    def offer(self, labels: list[int], draws: list[float], first_row: int) -> dict[int, int]:
        """Slot -> the last row written there (in the order the slots were first taken)."""
        placed: dict[int, int] = {}
        for row, (c, u) in enumerate(zip(labels, draws, strict=True), start=first_row):
            most, largest = self._largest()
            if self.counts.get(c, 0) >= most:
                continue  # its class is a largest one: dropped
            victims = self._slots_of(largest)
            j = min(int(u * len(victims)), len(victims) - 1)
            slot = victims[j]
            victims[j] = victims[-1]
            victims.pop()
            self._slots_of(c).append(slot)
            placed[slot] = row
            self._count(largest, -1)
            self._count(c, +1)
        return placed

    def _largest(self) -> tuple[int, int]:
        while -self.heap[0][0] != self.counts[self.heap[0][1]]:
            heapq.heappop(self.heap)  # a stale count
        return -self.heap[0][0], self.heap[0][1]

    def _count(self, c: int, change: int) -> None:
        self.counts[c] = self.counts.get(c, 0) + change
        heapq.heappush(self.heap, (-self.counts[c], c))

    def _slots_of(self, c: int) -> list[int]:
        if c not in self.members:
            old = torch.nonzero(self.held == c).squeeze(1)
            new = self.size + torch.nonzero(self.filling == c).squeeze(1)
            self.members[c] = torch.cat([old, new]).tolist()
        return self.members[c]


def balanced_counts(counts: torch.Tensor, capacity: int) -> torch.Tensor:
    """Counts left after evicting from a largest class (lowest label first) down to ``capacity``.

    ``counts`` are per class in ascending label order. Every class ends at
    ``min(count, level)`` or ``level + 1``: the level is the highest with
    ``sum(min(counts, level)) <= capacity``, and the slots left over go to the
    highest labels among the classes above it (the lowest are drained first).
    """
    low, high = 0, int(counts.max())
    while low < high:  # the highest level that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if int(counts.clamp(max=mid).sum()) <= capacity else (low, mid - 1)
    kept = counts.clamp(max=low)
    above = torch.nonzero(counts > low).squeeze(1)
    extra = capacity - int(kept.sum())
    if extra > 0:
        kept[above[len(above) - extra:]] += 1
    return kept
