"""LongMem's cached memory bank: attention keys and values in chunks, searched per head.

LongMem (Wang, Dong, Cheng, Liu, Yan, Gao & Wei, "Augmenting Language Models
with Long-Term Memory", NeurIPS 2023) caches, after each segment, one frozen
backbone layer's attention keys and values. Consecutive tokens are grouped in
chunks of ``chunk`` (4) tokens; a chunk is indexed by its mean key, and a
query retrieves, head by head, the chunks whose mean key has the largest inner
product with it, then attends over all their tokens. When the bank is full the
oldest chunks leave first (FIFO).

``LongMemBank`` preallocates everything from its byte allotment: keys and
values (chunks, chunk, heads, head_dim) and chunk mean keys (chunks, heads,
head_dim) in ``key_dtype`` (float16 by default), plus a pending buffer of
``chunk - 1`` tokens where the tail of a write that does not fill a chunk waits
for the next write. Chunks form a ring: chunk ``i`` (counted from the first
write) lives in slot ``i % capacity``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from memkit.budget import Budget, BudgetExceeded, parse_size
from memkit.kernels.topk import topk_search
from memkit.registry import register
from memkit.store import Store

KEY_DTYPES = (torch.float16, torch.float32)


def longmem_bank_nbytes(heads: int, head_dim: int, chunks: int, *, chunk: int = 4,
                        key_dtype: torch.dtype = torch.float16) -> int:
    """Bytes of a bank of ``chunks`` chunks: keys, values, mean keys and the pending buffer."""
    row = heads * head_dim * key_dtype.itemsize
    return chunks * (2 * chunk + 1) * row + 2 * (chunk - 1) * row


@register("store", "longmem_bank")
class LongMemBank(Store):
    """Per-head chunked key/value memory with exact mean-key retrieval and FIFO eviction."""

    registry_name = "longmem_bank"

    def __init__(self, heads: int, head_dim: int, budget: Budget | int | str, *,
                 nbytes: int | str | None = None, chunk: int = 4,
                 key_dtype: torch.dtype | str = torch.float16, owner: str = "longmem.bank"):
        for name, value in (("heads", heads), ("head_dim", head_dim), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LongMemBank: expected {name} as an int >= 1, got {value!r}")
        resolved = getattr(torch, key_dtype, None) if isinstance(key_dtype, str) else key_dtype
        if resolved not in KEY_DTYPES:
            raise ValueError(f"LongMemBank: expected key_dtype float16 or float32, "
                             f"got {key_dtype!r}")
        super().__init__(budget, owner)
        self.heads, self.head_dim, self.chunk, self.key_dtype = heads, head_dim, chunk, resolved
        allotment = self.budget.free if nbytes is None else parse_size(nbytes)
        self.capacity = self._capacity_for(allotment)
        self.budget.charge(owner, self.nbytes_for(self.capacity))
        shape = (heads, head_dim)
        self.keys = torch.zeros((self.capacity, chunk, *shape), dtype=resolved)
        self.values = torch.zeros_like(self.keys)
        self.mean_keys = torch.zeros((self.capacity, *shape), dtype=resolved)
        self.pending_keys = torch.zeros((chunk - 1, *shape), dtype=resolved)
        self.pending_values = torch.zeros_like(self.pending_keys)
        self._size = self._next_chunk = self._pending = 0

    def nbytes_for(self, chunks: int) -> int:
        return longmem_bank_nbytes(self.heads, self.head_dim, chunks, chunk=self.chunk,
                                   key_dtype=self.key_dtype)

    def _capacity_for(self, allotment: int) -> int:
        per_chunk = self.nbytes_for(1) - self.nbytes_for(0)
        chunks = (allotment - self.nbytes_for(0)) // per_chunk
        if chunks < 1:
            raise BudgetExceeded(self.owner, self.nbytes_for(1), allotment, self.budget.capacity)
        return chunks

    # -- Store ---------------------------------------------------------------------------------

    @property
    def capacity_tokens(self) -> int:
        """Tokens the bank holds in chunks when full."""
        return self.capacity * self.chunk

    @property
    def pending(self) -> int:
        """Tokens waiting for their chunk to fill."""
        return self._pending

    def __len__(self) -> int:
        """Chunks held."""
        return self._size

    @property
    def filled_nbytes(self) -> int:
        return self.nbytes_for(self._size)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "values": self.values, "mean_keys": self.mean_keys,
                "pending_keys": self.pending_keys, "pending_values": self.pending_values}

    def config(self) -> dict:
        return {"heads": self.heads, "head_dim": self.head_dim, "chunk": self.chunk,
                "key_dtype": str(self.key_dtype).removeprefix("torch."),
                "nbytes": self.nbytes, "owner": self.owner}

    def extra_state(self) -> dict:
        return {"size": self._size, "next_chunk": self._next_chunk, "pending": self._pending}

    def _check_adoptable(self, tensors: Mapping, extra: Mapping) -> None:
        size, next_chunk = int(extra.get("size", -1)), int(extra.get("next_chunk", -1))
        pending = int(extra.get("pending", -1))
        if size != min(next_chunk, self.capacity) or not 0 <= pending < self.chunk:
            raise ValueError(f"LongMemBank.load_state_dict: saved size {extra.get('size')!r}, "
                             f"next chunk {extra.get('next_chunk')!r} and pending "
                             f"{extra.get('pending')!r} do not fit {self.capacity} chunks of "
                             f"{self.chunk} tokens")

    def load_extra_state(self, extra: Mapping) -> None:
        self._size, self._next_chunk = int(extra["size"]), int(extra["next_chunk"])
        self._pending = int(extra["pending"])

    def clear(self) -> None:
        """Forget every chunk and pending token (the bytes stay allocated and charged)."""
        self._size = self._next_chunk = self._pending = 0

    def chunk_ids(self) -> torch.Tensor:
        """The write-order number of the chunk in each held slot (slot order)."""
        slots = torch.arange(self._size)
        newest = self._next_chunk - 1
        return newest - (newest - slots) % self.capacity

    # -- write ---------------------------------------------------------------------------------

    def write(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Append tokens' keys and values (T, heads, head_dim); return the evicted chunk ids.

        Tokens fill chunks in order after the pending ones; the tail that does not
        fill a chunk waits in the pending buffer.
        """
        keys, values = self._check_write(keys, values)
        keys = torch.cat([self.pending_keys[:self._pending].float(), keys])
        values = torch.cat([self.pending_values[:self._pending].float(), values])
        full = len(keys) // self.chunk
        tail = len(keys) - full * self.chunk
        self.pending_keys[:tail] = keys[full * self.chunk:]
        self.pending_values[:tail] = values[full * self.chunk:]
        self._pending = tail
        kept = min(full, self.capacity)
        ids = self._next_chunk + torch.arange(full - kept, full)
        oldest = self._next_chunk - self._size
        evicted = torch.arange(oldest, max(oldest, min(self._next_chunk,
                                                       self._next_chunk + full - self.capacity)))
        rows = slice((full - kept) * self.chunk, full * self.chunk)
        chunked_keys = keys[rows].reshape(kept, self.chunk, self.heads, self.head_dim)
        slots = ids % self.capacity
        self.keys[slots] = chunked_keys.to(self.key_dtype)
        self.values[slots] = values[rows].reshape_as(chunked_keys).to(self.key_dtype)
        self.mean_keys[slots] = chunked_keys.mean(dim=1).to(self.key_dtype)
        self._next_chunk += full
        self._size = min(self._next_chunk, self.capacity)
        return evicted

    def _check_write(self, keys, values) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.heads, self.head_dim)
        for name, t in (("keys", keys), ("values", values)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 3 \
                    or tuple(t.shape[1:]) != shape:
                raise ValueError(f"LongMemBank.write: expected float {name} of shape "
                                 f"(T, {self.heads}, {self.head_dim}), got {_describe(t)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"LongMemBank.write: {name} hold NaN or inf")
        if keys.shape != values.shape:
            raise ValueError(f"LongMemBank.write: keys {tuple(keys.shape)} and values "
                             f"{tuple(values.shape)} differ in shape")
        return keys.detach().float(), values.detach().float()

    # -- retrieve ------------------------------------------------------------------------------

    def retrieve(self, queries: torch.Tensor, k_chunks: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each head's ``k_chunks`` chunks with the largest inner product <query, mean key>.

        ``queries`` (n, heads, head_dim). Returns float32 keys and values
        (n, heads, k_chunks * chunk, head_dim), best chunk first, its tokens in
        order, and a bool mask (n, heads, k_chunks * chunk), False where the bank
        held fewer than ``k_chunks`` chunks.
        """
        if not isinstance(queries, torch.Tensor) or not queries.is_floating_point() \
                or queries.dim() != 3 or tuple(queries.shape[1:]) != (self.heads, self.head_dim):
            raise ValueError(f"LongMemBank.retrieve: expected float queries of shape "
                             f"(n, {self.heads}, {self.head_dim}), got {_describe(queries)}")
        if isinstance(k_chunks, bool) or not isinstance(k_chunks, int) or k_chunks < 1:
            raise ValueError(f"LongMemBank.retrieve: expected k_chunks as an int >= 1, "
                             f"got {k_chunks!r}")
        n, found = len(queries), min(k_chunks, self._size)
        slots = torch.zeros((n, self.heads, k_chunks), dtype=torch.int64)
        if found and n:
            for head in range(self.heads):
                _, best = topk_search(queries[:, head], self.mean_keys[:self._size, head], found,
                                      metric="ip")
                slots[:, head, :found] = best
        heads = torch.arange(self.heads)[None, :, None]
        shape = (n, self.heads, k_chunks * self.chunk, self.head_dim)
        keys = self.keys[slots, :, heads].reshape(shape).float()
        values = self.values[slots, :, heads].reshape(shape).float()
        mask = (torch.arange(k_chunks) < found).repeat_interleave(self.chunk)
        return keys, values, mask.expand(n, self.heads, -1).clone()


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"shape {tuple(t.shape)} {t.dtype}"
    return type(t).__name__
