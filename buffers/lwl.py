"""LWL's frame memory: feature maps and masks of past frames with geometrically growing weights.

Bhat, Lawin, Danelljan, Robinson, Felsberg, Van Gool & Timofte, "Learning What to
Learn for Video Object Segmentation", ECCV 2020, learn a small target model online
from a memory of past frames. Each entry is a frame's feature map, its mask and
a weight:

- frame 0 carries the ground-truth mask and is never evicted;
- every later frame carries the learner's own predicted mask, and its weight
  grows geometrically with the learning rate ``eta`` (0.1 in the paper):
  ``w_new = w_last / (1 - eta)`` where ``w_last`` is the newest entry's weight,
  after which all weights are normalised to sum to 1;
- frame 0's weight is floored: when it falls below ``init_floor`` it is raised
  to ``init_floor`` and the other weights are scaled to share ``1 - init_floor``.
  memkit's default floor is 0.25, so the ground truth keeps a quarter of the
  loss however long the video (the paper's tracker keeps a minimum weight for
  its initial samples; the value here is memkit's choice);
- when the memory is full the lowest-weight non-initial entry leaves. Weights
  grow with recency, so in practice this is first-in-first-out.

The memory is a ``SampleMemory``: an item is a feature map ``x`` ``(C, h, w)``
and a mask label ``y`` ``(h, w)`` (uint8, the target's share of each feature
cell times 255); the codec (``float16`` by default) decides the bytes of a
feature map, so the feature resolution and dtype decide how many frames a byte
budget holds. Weights are kept in log space while they grow, so a memory sized
for thousands of frames (``LWLMemory.unbounded``, the ceiling that holds every
frame of a video) never overflows; ties in weight go to the lower slot.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.codecs import get_codec
from memkit.registry import register
from memkit.store import SampleMemory, normalize_spec


def frame_spec(channels: int, height: int, width: int) -> dict:
    """The item spec of a frame memory: a float32 feature map and a uint8 mask label."""
    return {"x": ((channels, height, width), torch.float32), "y": ((height, width), torch.uint8)}


def check_frame_spec(spec: Spec, where: str) -> dict:
    """Normalise ``spec`` and raise unless it is a frame spec (see ``frame_spec``)."""
    spec = normalize_spec(spec)
    x, y = spec.get("x"), spec.get("y")
    if x is None or y is None or len(x[0]) != 3 or not x[1].is_floating_point \
            or y != (x[0][1:], torch.uint8):
        raise ValueError(f"{where}: expected a frame spec {{'x': ((C, h, w), float), "
                         f"'y': ((h, w), uint8)}}, got {spec}")
    return spec


def frames_nbytes(spec: Spec, n_frames: int, codec: str = "float16",
                  aux: Spec | None = None) -> int:
    """Bytes a frame memory of ``n_frames`` entries holds under ``codec`` (with hidden ``aux``)."""
    spec = normalize_spec(spec)
    store = get_codec(codec)
    fields = {**spec, **(normalize_spec(aux) if aux else {})}
    fields["x"] = (spec["x"][0], store.dtype or spec["x"][1])
    entry = sum(math.prod(shape) * dtype.itemsize for shape, dtype in fields.values())
    fixed = sum(t.numel() * t.element_size() for t in store.state(spec["x"][0]).values())
    return n_frames * entry + fixed


def entry_nbytes(spec: Spec, codec: str = "float16", aux: Spec | None = None) -> int:
    """Bytes one entry of a frame memory costs under ``codec`` (with hidden ``aux``)."""
    return frames_nbytes(spec, 1, codec, aux) - frames_nbytes(spec, 0, codec, aux)


def floor_initial(weights: torch.Tensor, floor: float) -> torch.Tensor:
    """Normalise ``weights`` to sum 1, then raise entry 0 to at least ``floor`` (others scaled)."""
    w = weights.double() / weights.double().sum().clamp(min=1e-300)
    if len(w) == 1:
        return torch.ones(1, dtype=weights.dtype)
    if w[0] < floor:
        others = w[1:].sum()
        w[1:] *= (1 - floor) / others if others > 0 else 0.0
        w[0] = floor if others > 0 else 1.0
    return w.to(weights.dtype)


def positive(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The slots with a positive weight and their weights (float32)."""
    slots = torch.nonzero(weights > 0).squeeze(1)
    return slots, weights[slots].float()


def check_slots(slots: torch.Tensor, size: int, where: str) -> torch.Tensor:
    """Raise unless ``slots`` is an int64 vector of held slots (``0..size - 1``)."""
    if not isinstance(slots, torch.Tensor) or slots.dtype != torch.int64 or slots.dim() != 1 \
            or (len(slots) and not (int(slots.min()) >= 0 and int(slots.max()) < size)):
        raise ValueError(f"{where}.entries: expected int64 slots in 0..{size - 1}, "
                         f"got {slots!r}")
    return slots


def check_fraction(value: float, name: str, where: str, *, open_low: bool = False) -> float:
    """Raise unless ``value`` is a number in [0, 1] (in (0, 1) with ``open_low``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
    if not ok or (open_low and not 0 < value < 1):
        interval = "(0, 1)" if open_low else "[0, 1]"
        raise ValueError(f"{where}: expected {name} in {interval}, got {value!r}")
    return float(value)


@register("store", "lwl")
class LWLMemory(SampleMemory):
    """Frame 0 plus the newest frames, weighted by ``eta``'s geometric growth.

    ``training_set(query)`` returns every held entry and its weight (the query
    is not used). ``add`` takes frames in order; the first item a fresh memory
    receives is frame 0.
    """

    registry_name = "lwl"
    AUX: ClassVar[dict] = {"weight": ((), torch.float32)}

    def __init__(self, spec: Spec, budget: Budget | int | str, *, owner: str = "lwl",
                 nbytes: int | str | None = None, codec: str = "float16", eta: float = 0.1,
                 init_floor: float = 0.25):
        spec = check_frame_spec(spec, "LWLMemory")
        self.eta = check_fraction(eta, "eta", "LWLMemory", open_low=True)
        self.init_floor = check_fraction(init_floor, "init_floor", "LWLMemory")
        super().__init__(spec, budget, owner=owner, nbytes=nbytes, codec=codec, aux=self.AUX)

    @classmethod
    def entry_nbytes(cls, spec: Spec, codec: str = "float16") -> int:
        """Bytes one entry costs (the feature map under ``codec``, the mask and the weight)."""
        return entry_nbytes(spec, codec, cls.AUX)

    @classmethod
    def unbounded(cls, spec: Spec, n_frames: int, *, owner: str = "lwl",
                  codec: str = "float16", **kwargs) -> LWLMemory:
        """The ceiling: a memory with room for all ``n_frames`` frames of a video, on its own
        budget of exactly that many bytes (nothing is ever evicted)."""
        if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
            raise ValueError(f"LWLMemory.unbounded: expected n_frames >= 1, got {n_frames!r}")
        nbytes = frames_nbytes(check_frame_spec(spec, "LWLMemory"), n_frames, codec, cls.AUX)
        return cls(spec, Budget(nbytes), owner=owner, nbytes=nbytes, codec=codec, **kwargs)

    def config(self) -> dict:
        return {**super().config(), "eta": self.eta, "init_floor": self.init_floor}

    @property
    def weights(self) -> torch.Tensor:
        """The held entries' weights (float32, sum 1), by slot; slot 0 is frame 0."""
        return self._slots["weight"][: self._size].clone()

    def training_set(self, query: Batch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots and weights of the entries to train on: every held entry (``query`` unused)."""
        if self._size == 0:
            raise ValueError("LWLMemory.training_set: the memory is empty; add frame 0 first")
        return positive(self.weights)

    def entries(self, slots: torch.Tensor) -> Batch:
        """The held entries in ``slots`` (as ``training_set`` names them), decoded."""
        return self._read(check_slots(slots, self._size, "LWLMemory"))

    def add(self, batch: Batch) -> Batch:
        """Add frames in order; return the held entries evicted, lowest weight first."""
        self._check(batch)
        if len(batch) == 0:
            return self._read(torch.zeros(0, dtype=torch.int64))
        if self._size == 0:
            self._write(torch.tensor([0]), batch[:1], weight=torch.ones(1))
            self._size, batch = 1, batch[1:]
        evicted = self._insert(batch) if len(batch) else self._read(torch.zeros(0).long())
        self._updates += 1
        return evicted

    def _insert(self, batch: Batch) -> Batch:
        held = self._slots["weight"][: self._size].double().log()
        last = held[1:].max() if self._size > 1 else held[0]
        grown = last - math.log1p(-self.eta) * torch.arange(1, len(batch) + 1,
                                                              dtype=torch.float64)
        candidates = torch.cat([held[1:], grown])  # the non-initial entries, then the new rows
        n_out = max(len(candidates) - (self.capacity - 1), 0)
        order = torch.sort(candidates, stable=True).indices
        out, stay = order[:n_out], torch.ones(len(candidates), dtype=torch.bool)
        stay[out] = False
        held_out = out[out < self._size - 1] + 1  # slots of evicted held entries
        evicted = self._read(held_out)
        new_rows = torch.nonzero(stay[self._size - 1:]).squeeze(1)
        size = self._size + len(new_rows) - len(held_out)
        slots = torch.cat([held_out.sort().values, torch.arange(self._size, size)])
        log_w = torch.cat([held, torch.empty(size - self._size, dtype=torch.float64)])
        log_w[slots] = grown[new_rows]
        self._write(slots, batch[new_rows])
        self._size = size
        self._set_weights((log_w - log_w.max()).exp())
        return evicted

    def _set_weights(self, weights: torch.Tensor) -> None:
        self._slots["weight"][: self._size] = floor_initial(weights, self.init_floor).float()

    def _keep(self, capacity: int) -> torch.Tensor:
        """Frame 0 and the ``capacity - 1`` heaviest other entries, in slot order."""
        rest = torch.sort(self._slots["weight"][1: self._size], descending=True,
                          stable=True).indices[: capacity - 1] + 1
        return torch.cat([torch.zeros(1, dtype=torch.int64), rest.sort().values])

    def _reallocate(self, capacity: int, keep: torch.Tensor) -> None:
        super()._reallocate(capacity, keep)
        if self._size:
            self._set_weights(self._slots["weight"][: self._size])
