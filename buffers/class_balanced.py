"""Class-balanced buffer: an equal share of the memory for every class seen.

Equal per-class quotas as iCaRL's ``m = K / t`` exemplars per class (Rebuffi
et al., "iCaRL: Incremental Classifier and Representation Learning", CVPR
2017) and the per-class buffers of Chaudhry et al. ("On Tiny Episodic Memories
in Continual Learning", 2019); within a class, the per-class reservoir
sampling of Chrysakis & Moens's class-balancing reservoir ("Online Continual
Learning from Imbalanced Data", ICML 2020):

- quota: ``capacity // classes seen`` per class; the ``capacity % classes``
  remaining slots go to the classes seen first, one each;
- within a class, new items compete by reservoir sampling over that class's
  own stream (Vitter's Algorithm R per class), so a class holds a uniform
  sample of its items;
- when a new class arrives the quotas shrink and the classes over their new
  quota give items back by a pluggable rule: ``random``, ``oldest`` (earliest
  in the stream, kept as a hidden per-item ``time``) or ``rank`` (a hidden
  per-item float given with ``add(batch, rank=...)``; lower is better, the
  highest rank goes first).

A class never holds more than its quota: after an experience it holds
``min(items seen, quota)``, and a class with fewer items than its quota
leaves its spare slots empty.

Cost: the slots each class holds are indexed in slot order (derived state,
rebuilt from the labels held when a new class changes the quotas, after a
resize and after a load), and the per-class reservoirs of a whole batch are
drawn in one vectorised pass (``class_reservoirs``), so an ``add`` of known
classes does O(batch + classes) work whatever the capacity.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.labels import check_classes, check_label_spec, check_labels, classes_in_order
from memkit.registry import register
from memkit.store import SampleMemory, normalize_spec

EVICT = {"random": None, "oldest": {"time": ((), torch.int64)},
         "rank": {"rank": ((), torch.float32)}}
"""Eviction rules and the hidden per-item field each keeps (charged like the items)."""


@register("store", "class_balanced")
class ClassBalanced(SampleMemory):
    """Equal quota per class seen; per-class reservoir sampling; pluggable eviction on new classes.

    ``add`` returns the stored items it evicted (quota shrinks first, then
    reservoir replacements). The random draws of the ``k``-th ``add`` come
    from ``derive_generator(seed, "add", k)``.
    """

    registry_name = "class_balanced"

    def __init__(self, spec: Spec, budget: Budget | int | str, *, owner: str = "class_balanced",
                 nbytes: int | str | None = None, codec: str = "raw", evict: str = "random",
                 seed: int = 0):
        check_label_spec(normalize_spec(spec), "ClassBalanced")
        if evict not in EVICT:
            raise ValueError(f"ClassBalanced: evict expected one of {list(EVICT)}, got {evict!r}")
        super().__init__(spec, budget, owner=owner, nbytes=nbytes, codec=codec, aux=EVICT[evict],
                         seed=seed)
        self.evict = evict
        self.classes: list[int] = []
        """Classes in the order they arrived (the first ones get the remainder slots)."""
        self.seen: list[int] = []
        """Items of each class offered so far (its reservoir's stream position)."""
        self._held: _HeldByClass | None = None
        """The held slots of each class, or None when they must be rebuilt from the labels."""

    def quotas(self, capacity: int | None = None) -> dict[int, int]:
        """Class -> quota for ``capacity`` slots (this buffer's by default)."""
        capacity = self.capacity if capacity is None else capacity
        return dict(zip(self.classes, equal_quotas(capacity, len(self.classes)), strict=True))

    def add(self, batch: Batch, rank: torch.Tensor | None = None) -> Batch:
        self._check(batch)
        check_labels(batch.y, "ClassBalanced.add")
        rank = self._check_rank(batch, rank)
        labels = batch.y.to(torch.int64)
        arrivals = classes_in_order(labels)
        position = sum(self.seen)  # the stream position of the batch's first row
        known = set(self.classes)
        new = [c for c in arrivals if c not in known]
        if new:
            self.classes, self.seen = self.classes + new, self.seen + [0] * len(new)
            self._held = None  # the quotas changed
        generator = self._generator("add")
        evicted = self._remove(self._over_quota(generator))
        rows, slots = self._reservoirs(labels, arrivals, generator)
        replaced = slots[slots < self._size]
        evicted = Batch.cat([evicted, self._read(replaced)])
        aux = {"time": position + rows} if self.evict == "oldest" else {}
        if self.evict == "rank":
            aux["rank"] = rank[rows]
        self._write(slots, batch[rows], **aux)
        self._size += len(slots) - len(replaced)
        self._updates += 1
        return evicted

    def _reservoirs(self, labels: torch.Tensor, arrivals: list[int], generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the batch that enter and their slots: Algorithm R within each class.

        Reservoir slot ``j`` of a class is its ``j``-th held item in slot order;
        a ``j`` past the items it holds is a free slot, taken in turn after the
        held ones. Also counts the batch in ``seen`` and the free slots taken in
        the index of held slots. O(batch + classes).
        """
        held = self._index()
        arrival = position_in(labels, arrivals)  # each row's class, by arrival in the batch
        index = torch.tensor([held.position[c] for c in arrivals], dtype=torch.int64)
        seen = torch.tensor(self.seen, dtype=torch.int64)
        rows, group, virtual = class_reservoirs(arrival, seen[index], held.quota[index], generator)
        group = index[group]
        fresh = virtual >= held.count[group]
        slots = torch.empty_like(rows)
        slots[~fresh] = held.table[held.start[group[~fresh]] + virtual[~fresh]]
        slots[fresh] = self._size + torch.arange(int(fresh.sum()))
        held.append(group[fresh], slots[fresh])
        self.seen = (seen + torch.bincount(index[arrival], minlength=len(seen))).tolist()
        return rows, slots

    def _over_quota(self, generator: torch.Generator) -> torch.Tensor:
        """Slots the rule evicts so that no class holds more than its quota: O(classes) to check."""
        held = self._index()
        victims = [torch.empty(0, dtype=torch.int64)]
        for i in torch.nonzero(held.count > held.quota).squeeze(1).tolist():
            members = held.members(i)
            excess = len(members) - int(held.quota[i])
            victims.append(members[self._eviction_order(members, generator)[:excess]])
        return torch.cat(victims)

    def _index(self) -> _HeldByClass:
        """The held slots of each class; rebuilt from the labels held when it is out of date."""
        if self._held is None:
            self._held = _HeldByClass(self._slots["y"][: self._size].to(torch.int64),
                                      self.classes, list(self.quotas().values()))
        return self._held

    def _eviction_order(self, members: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A permutation of ``members`` (slots of one class): the first is evicted first."""
        if self.evict == "oldest":
            return torch.argsort(self._slots["time"][members], stable=True)
        if self.evict == "rank":
            return torch.argsort(self._slots["rank"][members], descending=True, stable=True)
        return torch.randperm(len(members), generator=generator)

    def _keep(self, capacity: int) -> torch.Tensor:
        """Each class keeps its new quota of items, chosen by the eviction rule."""
        generator = self._generator("shrink")
        held = self._index()
        keep = [torch.empty(0, dtype=torch.int64)]
        for i, quota in enumerate(equal_quotas(capacity, len(self.classes))):
            members = held.members(i)
            order = self._eviction_order(members, generator)
            keep.append(members[order[max(len(members) - quota, 0):]])
        return torch.cat(keep).sort().values

    def _layout_changed(self) -> None:
        self._held = None  # rebuilt from the labels when next needed

    def _check_adoptable(self, tensors: Mapping[str, torch.Tensor], extra: Mapping) -> None:
        super()._check_adoptable(tensors, extra)
        held = torch.unique(tensors["y"][: int(extra["size"])]).tolist()
        unknown = sorted(set(held) - set(check_classes(extra, "ClassBalanced")))
        if unknown:
            raise ValueError(f"ClassBalanced.load_state_dict: held labels {unknown} are not "
                             f"among the saved classes {extra['classes']}")

    def _check_rank(self, batch: Batch, rank) -> torch.Tensor | None:
        if self.evict != "rank":
            if rank is not None:
                raise ValueError(f"ClassBalanced.add: rank= is only used with evict='rank'; "
                                 f"this buffer evicts {self.evict!r}")
            return None
        if not isinstance(rank, torch.Tensor) or tuple(rank.shape) != (len(batch),):
            got = tuple(rank.shape) if isinstance(rank, torch.Tensor) else rank
            raise ValueError(f"ClassBalanced(evict='rank').add: expected rank= a tensor of "
                             f"shape ({len(batch)},), got {got!r}")
        if not rank.is_floating_point() or not torch.isfinite(rank).all():
            raise ValueError(f"ClassBalanced.add: expected finite floating ranks, got {rank}")
        return rank.to(torch.float32)

    def config(self) -> dict:
        return {**super().config(), "evict": self.evict, "seed": self.seed}

    def extra_state(self) -> dict:
        return {**super().extra_state(), "classes": list(self.classes), "seen": list(self.seen)}

    def load_extra_state(self, extra: Mapping) -> None:
        classes, seen = check_classes(extra, "ClassBalanced"), [int(n) for n in extra["seen"]]
        if len(seen) != len(classes) or min(seen, default=0) < 0:
            raise ValueError(f"ClassBalanced: saved seen {extra['seen']} does not fit the saved "
                             f"classes {classes}")
        super().load_extra_state(extra)
        self.classes, self.seen = classes, seen


def equal_quotas(capacity: int, n_classes: int) -> list[int]:
    """``capacity // n_classes`` each; the first ``capacity % n_classes`` classes get one more."""
    base, extra = divmod(capacity, max(n_classes, 1))
    return [base + (i < extra) for i in range(n_classes)]


def class_reservoirs(group: torch.Tensor, seen: torch.Tensor, quota: torch.Tensor,
                     generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm R on each class's own stream, for a whole batch in one pass.

    Row ``i`` is of class ``group[i]``; class ``g`` has seen ``seen[g]`` items
    before the batch and has a reservoir of ``quota[g]`` slots. Returns the
    rows that enter, their class and their reservoir slot, sorted by class then
    slot: the same as ``reservoir_slots(seen[g], rows of g, quota[g], generator)``
    called for ``g = 0, 1, ...`` in turn (the draws are taken in that order).
    O(batch log batch), whatever the quotas.
    """
    order = torch.argsort(group, stable=True)
    group = group[order]
    counts = torch.bincount(group, minlength=len(seen))
    t = seen[group] + torch.arange(len(group)) - (torch.cumsum(counts, 0) - counts)[group]
    u = torch.rand(len(group), dtype=torch.float64, generator=generator)
    draw = torch.floor(u * (t + 1).to(torch.float64)).to(torch.int64)
    virtual = torch.where(t < quota[group], t, draw)
    enter = torch.nonzero(virtual < quota[group]).squeeze(1)
    by = enter[torch.argsort(virtual[enter], stable=True)]
    by = by[torch.argsort(group[by], stable=True)]  # by class, then slot, then row
    group, virtual = group[by], virtual[by]
    last = torch.ones_like(by, dtype=torch.bool)  # when rows draw one slot, the later stays
    last[:-1] = (group[1:] != group[:-1]) | (virtual[1:] != virtual[:-1])
    return order[by[last]], group[last], virtual[last]


def position_in(values: torch.Tensor, keys: list[int]) -> torch.Tensor:
    """The position in ``keys`` (distinct) of each of ``values`` (each one of the keys)."""
    ordered, perm = torch.sort(torch.tensor(keys, dtype=torch.int64))
    return perm[torch.searchsorted(ordered, values)]


class _HeldByClass:
    """The slots each class holds, in slot order, as segments of one tensor.

    Class ``classes[i]`` holds ``count[i]`` slots, ``table[start[i]:][:count[i]]``;
    its segment has room for ``max(count, quota)`` so the free slots it takes
    are appended in place. Built from the held labels in O(size log size); it
    is derived state, rebuilt whenever the quotas change or slots are compacted.
    """

    def __init__(self, labels: torch.Tensor, classes: list[int], quota: list[int]):
        self.position = {c: i for i, c in enumerate(classes)}
        self.quota = torch.tensor(quota, dtype=torch.int64)
        index = position_in(labels, classes)
        room = torch.maximum(torch.bincount(index, minlength=len(classes)), self.quota)
        self.start = torch.cumsum(room, 0) - room
        self.table = torch.empty(int(room.sum()), dtype=torch.int64)
        self.count = torch.zeros(len(classes), dtype=torch.int64)
        self.append(index, torch.arange(len(labels)))

    def members(self, i: int) -> torch.Tensor:
        """The slots class ``classes[i]`` holds, ascending."""
        start = int(self.start[i])
        return self.table[start : start + int(self.count[i])]

    def append(self, index: torch.Tensor, slots: torch.Tensor) -> None:
        """Give ``slots`` (above every held slot, ascending within a class) to classes ``index``."""
        added = torch.bincount(index, minlength=len(self.count))
        order = torch.argsort(index, stable=True)
        index = index[order]
        rank = torch.arange(len(index)) - (torch.cumsum(added, 0) - added)[index]
        self.table[self.start[index] + self.count[index] + rank] = slots[order]
        self.count += added
