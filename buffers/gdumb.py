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
between largest classes go to the lowest label); the evicted items are read
and the new ones written in one step at the end. The victim is uniform over
the items its class holds at that moment, including ones this batch added: the
first of a stream of uniform random slots that holds that class (rejection
sampling: on average at most as many draws as classes held, since the class is
a largest one). The class counts are kept across adds and recounted from the
labels after a resize or a load, so an ``add`` costs O(batch + classes) plus
those draws per eviction, whatever the capacity; no per-class slot list is
kept, whose order a reloaded memory could not reproduce.
"""

from __future__ import annotations

import contextlib
import heapq

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.labels import check_label_spec, check_labels
from memkit.registry import register
from memkit.store import SampleMemory, normalize_spec

_DRAWS, _HITS = 512, 4
"""A block of random slots has at least ``_DRAWS`` slots and on average ``_HITS`` victims."""


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
        self._held: dict[int, int] | None = None
        """Class -> items held, or None when it must be counted from the labels."""

    def class_counts(self) -> dict[int, int]:
        """Class -> items held, in label order."""
        return {c: n for c, n in sorted(self._counts().items()) if n}

    def add(self, batch: Batch) -> Batch:
        self._check(batch)
        check_labels(batch.y, "GDumb.add")
        labels = batch.y.to(torch.int64)
        size, fill = self._size, min(len(batch), self.capacity - self._size)
        counts = self._counts()
        self._held = None  # recounted from the labels should this add fail half-way
        classes, arrived = torch.unique(labels[:fill], return_counts=True)
        for c, n in zip(classes.tolist(), arrived.tolist(), strict=True):
            counts[c] = counts.get(c, 0) + n
        placed = self._decide(labels, fill, counts)
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
        self._held = counts
        return evicted

    def _decide(self, labels: torch.Tensor, fill: int, counts: dict[int, int]) -> dict[int, int]:
        """Slot -> row for the rows offered once the free slots are filled (see ``_Greedy``)."""
        if fill == len(labels):
            return {}
        greedy = _Greedy(counts, self._labels(), labels[:fill], self._generator("add"))
        return greedy.offer(labels[fill:].tolist(), first_row=fill)

    def _counts(self) -> dict[int, int]:
        """Class -> items held, kept by ``add``; rebuilt from the labels after a resize or load."""
        if self._held is None:
            classes, counts = torch.unique(self._labels(), return_counts=True)
            self._held = dict(zip(classes.tolist(), counts.tolist(), strict=True))
        return self._held

    def _labels(self) -> torch.Tensor:
        return self._slots["y"][: self._size]

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

    def _layout_changed(self) -> None:
        self._held = None  # recounted from the labels when next needed

    def config(self) -> dict:
        return {**super().config(), "seed": self.seed}


class _Greedy:
    """GDumb's decisions for the items that arrive once the memory is full, item by item.

    ``counts`` (class -> items held, updated in place) covers the ``held``
    labels of the occupied slots and the ``filling`` labels of the rows that
    take the free slots after them; a heap of the counts gives the largest
    class. The victim is found by rejection: it is the next slot of a stream
    of uniform random slots (``torch.randint``, drawn in blocks) that holds
    the largest class now. That is a uniform item of the class, needs no
    per-class slot list, and takes ``slots / items of the class`` draws on
    average: at most the number of classes held, since the class is a largest
    one. A block holds about ``_HITS`` such items and is searched at C speed.
    """

    def __init__(self, counts: dict[int, int], held: torch.Tensor, filling: torch.Tensor,
                 generator: torch.Generator):
        self.counts, self.held, self.filling, self.generator = counts, held, filling, generator
        self.heap = [(-n, c) for c, n in counts.items()]
        heapq.heapify(self.heap)
        self.relabelled: dict[int, int] = {}
        """Slot -> class of the row this add put there."""
        self.slots: list[int] = []
        """The current block of the random stream, from ``cursor`` on: slots ..."""
        self.labels: list[int] = []
        """... and the class each holds now."""
        self.cursor = 0

    def offer(self, labels: list[int], first_row: int) -> dict[int, int]:
        """Slot -> the last row written there (in the order the slots were first taken)."""
        placed: dict[int, int] = {}
        for row, c in enumerate(labels, start=first_row):
            most, largest = self._largest()
            if self.counts.get(c, 0) >= most:
                continue  # its class is a largest one: dropped
            slot = self._victim(largest, most)
            self._relabel(slot, c)
            placed[slot] = row
            self._count(largest, -1)
            self._count(c, +1)
        return placed

    def _victim(self, c: int, held: int) -> int:
        """The next slot of the random stream that holds class ``c`` (which holds ``held``)."""
        while True:
            try:
                at = self.labels.index(c, self.cursor)
            except ValueError:
                slots = len(self.held) + len(self.filling)
                self._draw(max(_DRAWS, _HITS * -(-slots // held)))
                continue
            self.cursor = at + 1
            return self.slots[at]

    def _relabel(self, slot: int, c: int) -> None:
        """Record that ``slot`` now holds class ``c``, also where it comes later in the block."""
        self.relabelled[slot] = c
        at = self.cursor
        with contextlib.suppress(ValueError):
            while True:
                at = self.slots.index(slot, at)
                self.labels[at] = c
                at += 1

    def _draw(self, n: int) -> None:
        """The next ``n`` slots of the random stream, with the class each holds now."""
        size = len(self.held)
        slots = torch.randint(size + len(self.filling), (n,), generator=self.generator)
        inside = slots < size
        labels = torch.empty_like(slots)
        labels[inside] = self.held[slots[inside]].to(torch.int64)
        labels[~inside] = self.filling[slots[~inside] - size]
        if self.relabelled:
            moved, order = torch.sort(torch.tensor(list(self.relabelled), dtype=torch.int64))
            now = torch.tensor(list(self.relabelled.values()), dtype=torch.int64)[order]
            at = torch.searchsorted(moved, slots).clamp(max=len(moved) - 1)
            hit = moved[at] == slots
            labels[hit] = now[at[hit]]
        self.slots, self.labels, self.cursor = slots.tolist(), labels.tolist(), 0

    def _largest(self) -> tuple[int, int]:
        while -self.heap[0][0] != self.counts[self.heap[0][1]]:
            heapq.heappop(self.heap)  # a stale count
        return -self.heap[0][0], self.heap[0][1]

    def _count(self, c: int, change: int) -> None:
        self.counts[c] = self.counts.get(c, 0) + change
        heapq.heappush(self.heap, (-self.counts[c], c))


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
