"""The CMT memory bank: each document compressed into T vectors, matched by a key, top-k retrieved.

CMT (Li, Sun, Hu, Hu & Zhang, "CMT: A Memory Compression Method for Continual
Knowledge Learning of Large Language Models", AAAI 2025), built on MAC (Tack et
al., "Online Adaptation of Language Models with a Memory of Amortized
Contexts", NeurIPS 2024), keeps a frozen LM and stores every new document as
``T`` memory vectors in the LM's embedding space (MAC's bank is (documents, T,
d_LM)). CMT adds a matching key per entry: a question's key retrieves the
entries with the largest inner product (self-matching), and only those ``k``
are aggregated (top-aggregation).

``CMTBank`` preallocates, from its byte allotment, per entry: the memories
(T, d) and the key (d_key) in ``dtype`` (float16 or float32), the document id,
the caller's time step and a write-order entry id (int64), and for
``"least_used"`` eviction a use count (int64; a ``search`` that returns an
entry counts one use). The whole capacity is charged when the bank is made.

- ``"fifo"``: the oldest written entries leave (a ring: entry id ``i`` lives in
  slot ``i % capacity``).
- ``"least_used"``: the held entries returned least often by ``search`` leave,
  the oldest first among equals; a write's new entries start at zero uses.

A write of more entries than the bank holds keeps only its last ``capacity``.
Search is exact (``memkit.kernels.topk.topk_search``, inner product).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from memkit.budget import Budget, BudgetExceeded, parse_size
from memkit.kernels.topk import topk_search
from memkit.registry import register
from memkit.store import Store

EVICTIONS = ("fifo", "least_used")
DTYPES = (torch.float16, torch.float32)


def cmt_bank_nbytes(tokens: int, dim: int, key_dim: int, capacity: int, *,
                    dtype: torch.dtype | str = torch.float16, eviction: str = "fifo") -> int:
    """Bytes of a bank of ``capacity`` entries: memories, keys, ids, times (and use counts)."""
    size = _dtype(dtype).itemsize
    entry = (tokens * dim + key_dim) * size + 3 * 8 + 8 * (_eviction(eviction) == "least_used")
    return capacity * entry


@dataclass(frozen=True)
class CMTEntries:
    """Held entries in slot order: document ids, times, entry ids, keys and memories (float32)."""

    doc_ids: torch.Tensor
    times: torch.Tensor
    ids: torch.Tensor
    keys: torch.Tensor
    memories: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)


@register("store", "cmt_bank")
class CMTBank(Store):
    """Compressed document memories (T, d) with a matching key each, searched by inner product."""

    registry_name = "cmt_bank"

    def __init__(self, tokens: int, dim: int, key_dim: int, budget: Budget | int | str, *,
                 nbytes: int | str | None = None, dtype: torch.dtype | str = torch.float16,
                 eviction: str = "fifo", owner: str = "cmt.bank"):
        for name, value in (("tokens", tokens), ("dim", dim), ("key_dim", key_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CMTBank: expected {name} as an int >= 1, got {value!r}")
        self.dtype, self.eviction = _dtype(dtype), _eviction(eviction)
        super().__init__(budget, owner)
        self.tokens, self.dim, self.key_dim = tokens, dim, key_dim
        allotment = self.budget.free if nbytes is None else parse_size(nbytes)
        self.capacity = allotment // max(self.nbytes_for(1), 1)
        if self.capacity < 1:
            raise BudgetExceeded(owner, self.nbytes_for(1), allotment, self.budget.capacity)
        self.budget.charge(owner, self.nbytes_for(self.capacity))
        self._allocate()

    def nbytes_for(self, capacity: int) -> int:
        return cmt_bank_nbytes(self.tokens, self.dim, self.key_dim, capacity, dtype=self.dtype,
                               eviction=self.eviction)

    def _allocate(self) -> None:
        cap = self.capacity
        self.memories = torch.zeros((cap, self.tokens, self.dim), dtype=self.dtype)
        self.keys = torch.zeros((cap, self.key_dim), dtype=self.dtype)
        self.doc_ids = torch.full((cap,), -1, dtype=torch.int64)
        self.times = torch.zeros(cap, dtype=torch.int64)
        self.ids = torch.full((cap,), -1, dtype=torch.int64)
        self.usage = torch.zeros(cap if self.eviction == "least_used" else 0, dtype=torch.int64)
        self._size = self._next_id = 0

    # -- Store ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    @property
    def filled_nbytes(self) -> int:
        return self.nbytes_for(self._size)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"memories": self.memories, "keys": self.keys, "doc_ids": self.doc_ids,
               "times": self.times, "ids": self.ids}
        if self.eviction == "least_used":
            out["usage"] = self.usage
        return out

    def config(self) -> dict:
        return {"tokens": self.tokens, "dim": self.dim, "key_dim": self.key_dim,
                "nbytes": self.nbytes, "dtype": _name(self.dtype), "eviction": self.eviction,
                "owner": self.owner}

    def extra_state(self) -> dict:
        return {"size": self._size, "next_id": self._next_id}

    def _check_adoptable(self, tensors: Mapping, extra: Mapping) -> None:
        size, next_id = int(extra.get("size", -1)), int(extra.get("next_id", -1))
        ids = tensors["ids"]
        held = ids[:max(size, 0)]
        if (not 0 <= size <= self.capacity or next_id < size or (held < 0).any()
                or (held >= next_id).any() or (ids[max(size, 0):] != -1).any()):
            raise ValueError(f"CMTBank.load_state_dict: saved size {extra.get('size')!r}, next "
                             f"id {extra.get('next_id')!r} and entry ids do not fit "
                             f"{self.capacity} slots")

    def load_extra_state(self, extra: Mapping) -> None:
        self._size, self._next_id = int(extra["size"]), int(extra["next_id"])

    def clear(self) -> None:
        """Forget every entry; entry ids restart at 0; the bytes stay charged."""
        self._allocate()

    def entries(self) -> CMTEntries:
        """Every held entry, in slot order."""
        return self._read(torch.arange(self._size))

    # -- write ---------------------------------------------------------------------------------

    def write(self, doc_ids: torch.Tensor, memories: torch.Tensor, keys: torch.Tensor,
              times: torch.Tensor | int) -> torch.Tensor:
        """Store one entry per document; return the document ids evicted, in eviction order.

        ``memories`` (n, T, d), ``keys`` (n, d_key), ``doc_ids`` (n,) and ``times``
        (n,) or one int for all. Only the last ``capacity`` rows of a larger write are
        kept (the earlier ones are never stored and not returned).
        """
        doc_ids, memories, keys, times = self._check_write(doc_ids, memories, keys, times)
        rows = torch.arange(max(len(doc_ids) - self.capacity, 0), len(doc_ids))
        ids = self._next_id + rows
        slots, victims = self._place(ids)
        evicted = self.doc_ids[victims].clone()
        self.memories[slots] = memories[rows].to(self.dtype)
        self.keys[slots] = keys[rows].to(self.dtype)
        self.doc_ids[slots], self.times[slots], self.ids[slots] = doc_ids[rows], times[rows], ids
        if self.eviction == "least_used":
            self.usage[slots] = 0
        self._size += len(slots) - len(victims)
        self._next_id += len(doc_ids)
        return evicted

    def _place(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots for the new entries, held slots they evict, in eviction order)."""
        if self.eviction == "fifo":
            slots = ids % self.capacity
            victims = slots[slots < self._size]
            return slots, victims[torch.argsort(self.ids[victims])]
        free = self.capacity - self._size
        victims = self._least_used(max(len(ids) - free, 0))
        fresh = torch.arange(self._size, self._size + min(free, len(ids)))
        return torch.cat([fresh, victims]), victims

    def _least_used(self, n: int) -> torch.Tensor:
        """The ``n`` held slots with the fewest uses, the oldest first among equals, in order."""
        held = torch.arange(self._size)
        order = torch.argsort(self.ids[held])
        order = order[torch.argsort(self.usage[held][order], stable=True)]
        return held[order[:n]]

    def _check_write(self, doc_ids, memories, keys, times):
        shapes = (("memories", memories, (self.tokens, self.dim)),
                  ("keys", keys, (self.key_dim,)))
        for name, t, tail in shapes:
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() \
                    or tuple(t.shape[1:]) != tail or t.dim() != len(tail) + 1:
                raise ValueError(f"CMTBank.write: expected float {name} of shape "
                                 f"(n, {', '.join(map(str, tail))}), got {_describe(t)}")
            limit = torch.finfo(self.dtype).max
            if not torch.isfinite(t).all() or (t.numel() and t.abs().max() > limit):
                raise ValueError(f"CMTBank.write: {name} hold NaN, inf or values beyond "
                                 f"{limit:g}, the largest {_name(self.dtype)}")
        n = len(memories)
        if len(keys) != n:
            raise ValueError(f"CMTBank.write: expected one key per memory ({n}), got {len(keys)}")
        if isinstance(times, int) and not isinstance(times, bool):
            times = torch.full((n,), times, dtype=torch.int64)
        return (_ints("doc_ids", doc_ids, n), memories.detach(), keys.detach(),
                _ints("times", times, n))

    # -- search --------------------------------------------------------------------------------

    def search(self, query_keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` entries whose key has the largest inner product with each query key.

        Returns (scores (q, k) float32, descending; slots (q, k) int64). Exact; ties go to
        the lower slot. With ``"least_used"`` eviction every returned entry counts one use.
        """
        if not isinstance(query_keys, torch.Tensor) or not query_keys.is_floating_point() \
                or query_keys.dim() != 2 or query_keys.shape[1] != self.key_dim:
            raise ValueError(f"CMTBank.search: expected float query keys of shape "
                             f"(q, {self.key_dim}), got {_describe(query_keys)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self._size:
            raise ValueError(f"CMTBank.search: expected k as an int in [1, {self._size}] (the "
                             f"entries held), got {k!r}")
        scores, slots = topk_search(query_keys, self.keys[:self._size], k, metric="ip")
        if self.eviction == "least_used":
            self.usage += torch.bincount(slots.reshape(-1), minlength=self.capacity)
        return scores, slots

    def gather(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memories (q, k, T, d) float32 of ``slots`` (q, k) and a mask, False where a slot is -1.

        Missing entries come back as zeros.
        """
        if not isinstance(slots, torch.Tensor) or slots.dtype != torch.int64 or slots.dim() != 2:
            raise ValueError(f"CMTBank.gather: expected int64 slots of shape (q, k), "
                             f"got {_describe(slots)}")
        if slots.numel() and (slots.min() < -1 or slots.max() >= self._size):
            raise ValueError(f"CMTBank.gather: expected slots in [-1, {self._size - 1}], got "
                             f"values in [{int(slots.min())}, {int(slots.max())}]")
        mask = slots >= 0
        memories = self.memories[slots.clamp_min(0)].float()
        return memories * mask[..., None, None], mask

    def _read(self, slots: torch.Tensor) -> CMTEntries:
        return CMTEntries(self.doc_ids[slots].clone(), self.times[slots].clone(),
                          self.ids[slots].clone(), self.keys[slots].float(),
                          self.memories[slots].float())


def _ints(name: str, t, n: int) -> torch.Tensor:
    if (not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex()
            or t.dtype == torch.bool or t.shape != (n,)):
        raise ValueError(f"CMTBank.write: expected {name} as an integer tensor of shape ({n},), "
                         f"got {_describe(t)}")
    return t.detach().to(torch.int64)


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if resolved not in DTYPES:
        raise ValueError(f"CMTBank: expected dtype float16 or float32, got {dtype!r}")
    return resolved


def _eviction(eviction: str) -> str:
    if eviction not in EVICTIONS:
        raise ValueError(f"CMTBank: expected eviction in {EVICTIONS}, got {eviction!r}")
    return eviction


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"shape {tuple(t.shape)} {t.dtype}"
    return type(t).__name__
