"""RMSCL: a frame memory that keeps what the others cannot rebuild and trains on a sparse code.

Nazemi, Shafiee, Gharaee & Fieguth, "Memory-Efficient Continual Learning Object
Segmentation for Long Video", IEEE Access 2024 (arXiv 2309.15274), propose
Reconstruction-based Memory Selection Continual Learning for online video
object segmentation with a small memory:

- every entry (feature map, mask) also keeps a descriptor ``d``: the mean
  feature over the mask's foreground and the mean over its background (each
  weighted by the mask label's share of the cell), each L2-normalised,
  concatenated and scaled by ``1/sqrt(2)`` so that ``||d|| = 1`` (a part is zero
  when its region is empty);
- the current frame's descriptor ``q`` is written as a sparse non-negative code
  over the held descriptors, ``min 0.5 ||q - D a||^2 + lam * sum(a) + 0.5 * ridge * ||a||^2,
  a >= 0`` (``memkit.kernels.sparse``); the target model trains on the entries
  the code selects, weighted by their coefficients. The entry just added (the
  current frame, when it was kept) is left out of the dictionary and trained on
  with weight 1 (a frame reconstructs itself with coefficient 1); frame 0 is
  always trained on, its weight floored at ``init_floor`` after the weights are
  normalised (as in ``LWLMemory``);
- on insertion into a full memory, every non-initial entry and the newcomer are
  scored by their leave-one-out residual ``||d_j - D a_j||`` (the code of ``d_j``
  over all the others), and the one best rebuilt by the others (smallest
  residual; ties to the lower slot, the newcomer last) leaves: the least
  informative frame. When that is the newcomer it is not stored.

Insertion is sequential by nature (each eviction changes the dictionary of the
next), so ``add`` handles the rows of a batch one after the other.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

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
from memkit.kernels.sparse import leave_one_out_residuals, nonneg_lasso
from memkit.registry import register
from memkit.store import SampleMemory


def descriptors(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unit descriptors ``(b, 2C)`` of feature maps ``x`` ``(b, C, h, w)`` and labels ``y``.

    ``y`` ``(b, h, w)`` is the target's share of each cell times 255 (uint8).
    """
    fg = y.to(torch.float32) / 255
    parts = []
    for share in (fg, 1 - fg):
        total = (x.float() * share[:, None]).sum(dim=(2, 3))
        parts.append(F.normalize(total / share.sum(dim=(1, 2)).clamp(min=1e-6)[:, None], dim=1))
    return torch.cat(parts, dim=1) / math.sqrt(2)


def descriptor_aux(spec: Spec) -> dict:
    """The hidden per-entry descriptor field of a frame spec: float32 ``(2C,)``."""
    return {"descriptor": ((2 * spec["x"][0][0],), torch.float32)}


@register("store", "rmscl")
class RMSCLMemory(SampleMemory):
    """Frame 0 and the frames least well rebuilt from the others; trains on a sparse code."""

    registry_name = "rmscl"

    def __init__(self, spec: Spec, budget: Budget | int | str, *, owner: str = "rmscl",
                 nbytes: int | str | None = None, codec: str = "float16", lam: float = 0.05,
                 ridge: float = 1e-6, init_floor: float = 0.25):
        spec = check_frame_spec(spec, "RMSCLMemory")
        for name, value in (("lam", lam), ("ridge", ridge)):
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"RMSCLMemory: expected {name} >= 0, got {value!r}")
        self.lam, self.ridge = float(lam), float(ridge)
        self.init_floor = check_fraction(init_floor, "init_floor", "RMSCLMemory")
        super().__init__(spec, budget, owner=owner, nbytes=nbytes, codec=codec,
                         aux=descriptor_aux(spec))
        self.newest = -1

    @classmethod
    def entry_nbytes(cls, spec: Spec, codec: str = "float16") -> int:
        """Bytes one entry costs: feature map under ``codec``, mask and descriptor."""
        spec = check_frame_spec(spec, "RMSCLMemory")
        return entry_nbytes(spec, codec, descriptor_aux(spec))

    def config(self) -> dict:
        return {**super().config(), "lam": self.lam, "ridge": self.ridge,
                "init_floor": self.init_floor}

    def extra_state(self) -> dict:
        return {**super().extra_state(), "newest": self.newest}

    def _check_adoptable(self, tensors, extra):
        super()._check_adoptable(tensors, extra)
        if not -1 <= int(extra.get("newest", -2)) < int(extra["size"]):
            raise ValueError(f"RMSCLMemory.load_state_dict: saved newest slot "
                             f"{extra.get('newest')!r} is not -1 or a held slot")

    def load_extra_state(self, extra) -> None:
        newest = int(extra["newest"])
        super().load_extra_state(extra)
        self.newest = newest

    def add(self, batch: Batch) -> Batch:
        """Insert frames in order; return the held entries evicted."""
        self._check(batch)
        new = descriptors(batch.x, batch.y)
        evicted = [self._insert(batch[i: i + 1], new[i]) for i in range(len(batch))]
        self._updates += 1
        return Batch.cat(evicted) if evicted else self._read(torch.zeros(0, dtype=torch.int64))

    def _insert(self, row: Batch, descriptor: torch.Tensor) -> Batch:
        evicted = self._read(torch.zeros(0, dtype=torch.int64))
        if self._size < self.capacity:
            victim, self._size = self._size, self._size + 1
        else:
            held = self._slots["descriptor"][: self._size]
            victim = self._least_informative(torch.cat([held, descriptor[None]]))
            if victim == self._size:  # the newcomer is the best rebuilt: not stored
                self.newest = -1
                return evicted
            evicted = self._read(torch.tensor([victim]))
        self._write(torch.tensor([victim]), row, descriptor=descriptor[None])
        self.newest = victim
        return evicted

    def _least_informative(self, atoms: torch.Tensor) -> int:
        """The non-initial row of ``atoms`` best rebuilt by the other rows."""
        residuals = leave_one_out_residuals(atoms.T, self.lam, ridge=self.ridge)
        residuals[0] = torch.inf
        return int(torch.argmin(residuals))

    def code(self, query: Batch) -> torch.Tensor:
        """The sparse code of ``query``'s descriptor over the held entries (float64, by slot).

        The newest entry is left out of the dictionary (its coefficient is 0).
        """
        self._check_query(query)
        allowed = torch.ones(self._size, dtype=torch.bool)
        if self.newest >= 0:
            allowed[self.newest] = False
        atoms = self._slots["descriptor"][: self._size].T
        return nonneg_lasso(atoms, descriptors(query.x, query.y)[0], self.lam, ridge=self.ridge,
                            allowed=allowed)

    def training_set(self, query: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots and weights of the entries to train on: the code's coefficients, 1 for the
        newest entry, normalised with frame 0 floored at ``init_floor``; only positive ones."""
        weights = self.code(query)
        if self.newest >= 0:
            weights[self.newest] = 1.0
        return positive(floor_initial(weights, self.init_floor))

    def entries(self, slots: torch.Tensor) -> Batch:
        """The held entries in ``slots`` (as ``training_set`` names them), decoded."""
        return self._read(check_slots(slots, self._size, "RMSCLMemory"))

    def _check_query(self, query: Batch) -> None:
        if self._size == 0:
            raise ValueError("RMSCLMemory: the memory is empty; add frame 0 first")
        if not isinstance(query, Batch) or len(query) != 1:
            raise TypeError(f"RMSCLMemory: expected the query as a Batch of one frame, "
                            f"got {query!r}")
        query.check(self.spec, where="RMSCLMemory.code")

    def _keep(self, capacity: int) -> torch.Tensor:
        """Evict the least informative entry until ``capacity`` remain; survivors in slot order."""
        keep = torch.arange(self._size)
        while len(keep) > capacity:
            victim = self._least_informative(self._slots["descriptor"][keep])
            keep = torch.cat([keep[:victim], keep[victim + 1:]])
        return keep

    def _reallocate(self, capacity: int, keep: torch.Tensor) -> None:
        where = torch.nonzero(keep == self.newest).flatten()
        self.newest = int(where[0]) if len(where) else -1
        super()._reallocate(capacity, keep)
