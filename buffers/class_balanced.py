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
leaves its spare slots empty. The helpers at the end (label checks, evicting
slots while the held ones stay a prefix) are shared with ``herding`` and
``gdumb``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.kernels.reservoir import reservoir_slots
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
        seen = dict(zip(self.classes, self.seen, strict=True))
        self.classes += [c for c in arrivals if c not in seen]
        quota = self.quotas()
        generator = self._generator("add")
        evicted = self._remove(self._over_quota(quota, generator))
        rows, slots = self._reservoirs(labels, arrivals, quota, seen, generator)
        replaced = slots[slots < self._size]
        evicted = Batch.cat([evicted, self._read(replaced)])
        aux = {"time": position + rows} if self.evict == "oldest" else {}
        if self.evict == "rank":
            aux["rank"] = rank[rows]
        self._write(slots, batch[rows], **aux)
        self._size += len(slots) - len(replaced)
        self.seen = [seen.get(c, 0) + int((labels == c).sum()) for c in self.classes]
        self._updates += 1
        return evicted

    def _reservoirs(self, labels: torch.Tensor, arrivals: list[int], quota: Mapping[int, int],
                    seen: Mapping[int, int], generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the batch that enter and their slots: Algorithm R within each class.

        Reservoir slot ``j`` of a class is its ``j``-th held item in slot order;
        a ``j`` past the items it holds is a free slot, taken in turn after the
        held ones.
        """
        held_labels = self._slots["y"][: self._size]
        empty = torch.empty(0, dtype=torch.int64)
        rows, slots, free = [empty], [empty], 0
        for c in arrivals:
            members = torch.nonzero(labels == c).squeeze(1)
            held = torch.nonzero(held_labels == c).squeeze(1)
            picked, virtual = reservoir_slots(seen.get(c, 0), len(members), quota[c], generator)
            fresh = virtual >= len(held)  # a suffix: ``virtual`` is sorted
            new = self._size + free + torch.arange(int(fresh.sum()))
            rows.append(members[picked])
            slots.append(torch.cat([held[virtual[~fresh]], new]))
            free += len(new)
        return torch.cat(rows), torch.cat(slots)

    def _over_quota(self, quota: Mapping[int, int], generator: torch.Generator) -> torch.Tensor:
        """Slots the rule evicts so that no class holds more than its quota."""
        labels = self._slots["y"][: self._size]
        victims = [torch.empty(0, dtype=torch.int64)]
        for c in self.classes:
            members = torch.nonzero(labels == c).squeeze(1)
            excess = len(members) - quota[c]
            if excess > 0:
                victims.append(members[self._eviction_order(members, generator)[:excess]])
        return torch.cat(victims)

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
        labels = self._slots["y"][: self._size]
        keep = [torch.empty(0, dtype=torch.int64)]
        for c, quota in self.quotas(capacity).items():
            members = torch.nonzero(labels == c).squeeze(1)
            order = self._eviction_order(members, generator)
            keep.append(members[order[max(len(members) - quota, 0):]])
        return torch.cat(keep).sort().values

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
