"""A key/value datastore: exact or faiss-indexed nearest-neighbour search under a byte budget.

kNN-LM (Khandelwal et al., "Generalization through Memorization: Nearest
Neighbor Language Models", ICLR 2020) keeps one entry per token, a hidden
state as key and the next token id as value, and at every step retrieves the
k entries nearest to the current hidden state; LongMem (Wang et al.,
"Augmenting Language Models with Long-Term Memory", NeurIPS 2023) keeps cached
attention keys in a bank searched by inner product, first-in-first-out when
full. ``Datastore`` is that bank: ``write(keys, values, meta)`` stores entries
(a key, an integer value, optional int64 fields such as a document id or a
time), ``search(queries, k)`` returns the k nearest by squared L2 distance or
inner product, each with its value and a stable entry id.

- **Backends** are named by faiss index strings: ``"Flat"`` (exact, the
  chunked kernel of ``kernels/topk.py`` over the stored keys),
  ``"IVF{nlist},Flat"``, ``"IVF{nlist},SQ8"``, ``"IVF{nlist},PQ{m}"`` and
  ``"HNSW{M}"``. An index only proposes ``rerank * k`` candidates; their exact
  distances to the stored keys decide the k returned (``rerank`` is 4 for the
  lossy SQ8 and PQ codes, and 1 otherwise: kNN-LM loses about 1.3 perplexity
  points to PQ distances without exact re-ranking), so every distance
  returned is exact.
- **Training.** IVF indexes train (k-means seeded by ``seed``) on the first
  ``train_size`` keys held, as soon as that many are held (or the store is
  full); until then ``search`` is exact. HNSW needs no training.
- **Bytes.** Capacity in entries is the most whose bytes fit the allotment:
  per entry the key (by its dtype), the value, the id, the meta fields and,
  for least-used eviction, a usage counter; for an index also its own bytes
  (codes, ids, graph links, centroids, codebooks, PQ's precomputed tables,
  list headers, a 512-byte allowance for faiss's headers: ``index_nbytes``,
  checked against ``faiss.serialize_index`` in the tests) and our position
  maps. The whole capacity is charged when the store is made.
- **Eviction.** ``"fifo"``: the oldest entries leave (a ring: entry id ``i``
  lives in slot ``i % capacity``). ``"least_used"``: the entries returned
  least often by ``search`` leave, the oldest first among equals; new entries
  start at zero.
- **Removal from an index** is by tombstone: an evicted entry's index position
  is masked out of searches (a faiss ``IDSelectorBitmap``), and when the index
  has no free position left (it holds up to ``capacity + capacity // 4``
  vectors) it is rebuilt from the entries held. A rebuild adds ``capacity``
  vectors once every ``capacity // 4`` evictions or more: O(batch) amortised.
- **HNSW levels** are assigned by position, not drawn: the vector at position
  ``p`` gets the highest level ``l`` with ``M**l`` dividing ``p + 1`` (capped at
  faiss's top level), the frequencies faiss's random levels have on average,
  so the graph's bytes are a formula of its size and the budget holds exactly.
- **Persistence**: keys, values, ids, meta, usage and position maps in
  safetensors, plus the index as the ``uint8`` bytes of ``faiss.serialize_index``;
  ``load`` deserialises and checks it against the saved state. Nothing is pickled.

Searches are deterministic for a given seed when faiss runs on one thread
(``faiss.omp_set_num_threads(1)``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from memkit.budget import Budget, BudgetExceeded, parse_size
from memkit.kernels.topk import METRICS, topk_rerank, topk_search
from memkit.registry import register
from memkit.store import Store

EVICTIONS = ("fifo", "least_used")
KEY_DTYPES = (torch.float16, torch.float32)
VALUE_DTYPES = (torch.int32, torch.int64)
INDEX_HEADER = 512
"""Bytes allowed for faiss's own headers (index type, sizes, vector lengths) per index."""
LIST_HEADER = 48
"""Bytes of one IVF inverted list's two (codes, ids) vector headers."""
PQ_CENTROIDS = 256
TRAIN_PER_CENTROID = 39
"""faiss's k-means asks for at least this many training keys per centroid."""
ADD_BLOCK = 1 << 16
"""Keys converted to float32 and added to an index at a time."""
_INDEX = re.compile(r"^(?:(Flat)|IVF(\d+),(Flat|SQ8|PQ(\d+))|HNSW(\d+))$")


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index string: ``kind`` is Flat, IVF or HNSW."""

    kind: str
    codec: str = "Flat"
    nlist: int = 0
    m: int = 0
    """PQ's sub-quantizers (IVF) or the graph's neighbours per level (HNSW)."""

    @property
    def approximate(self) -> bool:
        return self.kind != "Flat"

    @property
    def lossy(self) -> bool:
        return self.codec in ("SQ8", "PQ")

    @property
    def min_train(self) -> int:
        """Fewest keys faiss can train this index on."""
        return max(self.nlist, PQ_CENTROIDS if self.codec == "PQ" else 1) if self.kind == "IVF" \
            else 0


def parse_index(index: str, dim: int) -> IndexSpec:
    """Parse a faiss index string among the supported ones; raise ValueError otherwise."""
    match = _INDEX.match(index) if isinstance(index, str) else None
    if match is None:
        raise ValueError(f"index: expected one of 'Flat', 'IVF{{nlist}},Flat', "
                         f"'IVF{{nlist}},SQ8', 'IVF{{nlist}},PQ{{m}}', 'HNSW{{M}}', got {index!r}")
    flat, nlist, codec, m, hnsw = match.groups()
    if flat:
        return IndexSpec("Flat")
    if hnsw:
        if int(hnsw) < 2:
            raise ValueError(f"index {index!r}: HNSW needs M >= 2 neighbours per level")
        return IndexSpec("HNSW", m=int(hnsw))
    if int(nlist) < 1:
        raise ValueError(f"index {index!r}: IVF needs at least 1 list")
    if m is not None and (int(m) < 1 or dim % int(m)):
        raise ValueError(f"index {index!r}: PQ{m} needs m >= 1 dividing the dimension {dim}")
    return IndexSpec("IVF", "PQ" if m else codec, int(nlist), int(m or 0))


def positions_for(capacity: int) -> int:
    """Vectors an index may hold for ``capacity`` entries: evicted ones wait for a rebuild."""
    return capacity + max(capacity // 4, 1)


@functools.cache
def _hnsw_top_level(m: int) -> int:
    """faiss's highest HNSW level for ``m`` (its level probabilities stop below 1e-9)."""
    return faiss.IndexHNSWFlat(1, m).hnsw.assign_probas.size() - 1


def index_nbytes(spec: IndexSpec, dim: int, metric: str, positions: int) -> int:
    """Bytes of a faiss index holding ``positions`` vectors (0 for Flat: the keys are the index).

    IVF: centroids, list headers, the codec's trained state (SQ8's ranges, PQ's
    codebooks and, for L2, faiss's precomputed residual tables) and per vector
    its code and its int64 id. HNSW: float32 storage, level, offset and links
    per vector (2M at level 0, M more per level above), the level tables.
    """
    if spec.kind == "Flat":
        return 0
    if spec.kind == "HNSW":
        top, m = _hnsw_top_level(spec.m), spec.m
        upper = sum(positions // m**level for level in range(1, top + 1))
        tables = 8 * (top + 1) + 4 * (top + 2) + 8
        return (INDEX_HEADER + tables + positions * (4 * dim + 4 + 8 + 4 * 2 * m)
                + 4 * m * upper)
    code = {"Flat": 4 * dim, "SQ8": dim, "PQ": spec.m}[spec.codec]
    trained = {"Flat": 0, "SQ8": 2 * 4 * dim, "PQ": PQ_CENTROIDS * 4 * dim}[spec.codec]
    table = spec.nlist * spec.m * PQ_CENTROIDS * 4
    if spec.codec == "PQ" and metric == "l2" and table <= faiss.cvar.precomputed_table_max_bytes:
        trained += table
    return (INDEX_HEADER + spec.nlist * (4 * dim + LIST_HEADER) + trained
            + positions * (code + 8))


def datastore_nbytes(dim: int, capacity: int, *, index: str = "Flat", metric: str = "l2",
                     key_dtype: torch.dtype | str = torch.float16,
                     value_dtype: torch.dtype | str = torch.int32, eviction: str = "fifo",
                     meta_fields: Sequence[str] = ()) -> int:
    """Bytes a ``Datastore`` of ``capacity`` entries holds and charges."""
    spec = parse_index(index, dim)
    key_dtype, value_dtype = _dtype(key_dtype, KEY_DTYPES), _dtype(value_dtype, VALUE_DTYPES)
    entry = (dim * key_dtype.itemsize + value_dtype.itemsize + 8 + 8 * len(meta_fields)
             + 8 * (eviction == "least_used"))
    if not spec.approximate:
        return capacity * entry
    positions = positions_for(capacity)
    maps = 8 * capacity + 8 * positions + math.ceil(positions / 8)  # slot<->position, live bits
    return capacity * entry + maps + index_nbytes(spec, dim, metric, positions)


@dataclass(frozen=True)
class Hits:
    """Search results, best first: (queries, k) tensors; ``ids == -1`` where no entry was found.

    ``distances`` are squared L2 distances (ascending, ``inf`` where none) or inner
    products (descending, ``-inf`` where none); ``values`` and ``meta`` are ``-1``
    where none.
    """

    distances: torch.Tensor
    values: torch.Tensor
    ids: torch.Tensor
    meta: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        """True where a hit is an entry."""
        return self.ids >= 0


@dataclass(frozen=True)
class Entries:
    """Stored entries (e.g. the ones a write evicted): ids, keys, values and meta fields."""

    ids: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    meta: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@register("store", "datastore")
class Datastore(Store):
    """Keys (dim) with integer values and int64 meta fields, searched by exact or faiss index."""

    registry_name = "datastore"

    def __init__(self, dim: int, budget: Budget | int | str, *, index: str = "Flat",
                 metric: str = "l2", key_dtype: torch.dtype | str = torch.float16,
                 value_dtype: torch.dtype | str = torch.int32, eviction: str = "fifo",
                 nbytes: int | str | None = None, seed: int = 0, train_size: int | None = None,
                 meta_fields: Sequence[str] = (), nprobe: int = 16, ef_search: int = 64,
                 rerank: int | None = None, owner: str = "datastore"):
        _positive("dim", dim)
        self.spec = parse_index(index, dim)
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction: expected one of {EVICTIONS}, got {eviction!r}")
        meta_fields = tuple(meta_fields)
        if len(set(meta_fields)) != len(meta_fields) or not all(
                isinstance(f, str) and f for f in meta_fields):
            raise ValueError(f"meta_fields: expected distinct non-empty names, got {meta_fields}")
        rerank = rerank if rerank is not None else (4 if self.spec.lossy else 1)
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search), ("rerank", rerank)):
            _positive(name, value)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
        super().__init__(budget, owner)
        self.dim, self.index_string, self.metric, self.eviction = dim, index, metric, eviction
        self.key_dtype = _dtype(key_dtype, KEY_DTYPES)
        self.value_dtype = _dtype(value_dtype, VALUE_DTYPES)
        self.meta_fields, self.seed = meta_fields, seed
        self.nprobe, self.ef_search, self.rerank = nprobe, ef_search, rerank
        allotment = self.budget.free if nbytes is None else parse_size(nbytes)
        self.capacity = self._capacity_for(allotment)
        self.train_size = self._check_train_size(train_size)
        self._nbytes = self.nbytes_for(self.capacity)
        self.budget.charge(owner, self._nbytes)
        self._allocate()

    # -- sizes ---------------------------------------------------------------------------------

    def nbytes_for(self, capacity: int) -> int:
        """Bytes this store's configuration holds for ``capacity`` entries."""
        return datastore_nbytes(self.dim, capacity, index=self.index_string, metric=self.metric,
                                key_dtype=self.key_dtype, value_dtype=self.value_dtype,
                                eviction=self.eviction, meta_fields=self.meta_fields)

    def _capacity_for(self, allotment: int) -> int:
        low, high = 0, allotment // max(self.nbytes_for(1) - self.nbytes_for(0), 1) + 1
        while low < high:  # the most entries whose bytes fit: nbytes_for grows with capacity
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.nbytes_for(mid) <= allotment else (low, mid - 1)
        if low < 1:
            raise BudgetExceeded(self.owner, self.nbytes_for(1), allotment, self.budget.capacity)
        return low

    def _check_train_size(self, train_size: int | None) -> int:
        if self.spec.kind != "IVF":
            if train_size is not None:
                raise ValueError(f"train_size: only IVF indexes train, not {self.index_string!r}")
            return 0
        if train_size is None:
            train_size = TRAIN_PER_CENTROID * max(self.spec.nlist, PQ_CENTROIDS
                                                  if self.spec.codec == "PQ" else 0)
        _positive("train_size", train_size)
        if min(train_size, self.capacity) < self.spec.min_train:
            raise ValueError(f"index {self.index_string!r} trains on at least "
                             f"{self.spec.min_train} keys, but train_size is {train_size} and "
                             f"the budget holds {self.capacity} entries")
        return train_size

    def _allocate(self) -> None:
        cap = self.capacity
        self.keys = torch.zeros((cap, self.dim), dtype=self.key_dtype)
        self.values = torch.zeros(cap, dtype=self.value_dtype)
        self.ids = torch.full((cap,), -1, dtype=torch.int64)
        self.meta = {f: torch.zeros(cap, dtype=torch.int64) for f in self.meta_fields}
        self.usage = torch.zeros(cap if self.eviction == "least_used" else 0, dtype=torch.int64)
        self._size = self._next_id = 0
        if self.spec.approximate:
            self.slot_pos = torch.full((cap,), -1, dtype=torch.int64)
            self.pos_slot = torch.full((positions_for(cap),), -1, dtype=torch.int64)
            self.index = self._new_index()
            self._positions, self._trained = 0, self.spec.kind == "HNSW"
            self._live_bits: np.ndarray | None = None

    def _new_index(self) -> faiss.Index:
        metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        return self._configure(faiss.index_factory(self.dim, self.index_string, metric))

    def _configure(self, index: faiss.Index) -> faiss.Index:
        """Set the training options faiss does not serialise (a loaded index may still train)."""
        if self.spec.kind == "IVF":
            index.cp.seed = self.seed
            if self.spec.codec == "PQ":
                index.pq.cp.seed = self.seed
                index.do_polysemous_training = False  # Hamming-filtered search is not used
        return index

    # -- Store ---------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes held and charged: the entries' tensors and the index (see ``datastore_nbytes``)."""
        return self._nbytes

    @property
    def filled_nbytes(self) -> int:
        return self._nbytes * self._size // self.capacity

    def __len__(self) -> int:
        return self._size

    @property
    def trained(self) -> bool:
        """Whether searches go through the index (always False for Flat: exact search)."""
        return self.spec.approximate and self._trained

    def tensors(self) -> dict[str, torch.Tensor]:
        out = self._plain_tensors()
        if self.spec.approximate:
            out["faiss_index"] = torch.from_numpy(faiss.serialize_index(self.index))
        return out

    def _plain_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor but the serialised index."""
        out = {"keys": self.keys, "values": self.values, "ids": self.ids,
               **{f"meta.{f}": t for f, t in self.meta.items()}}
        if self.eviction == "least_used":
            out["usage"] = self.usage
        if self.spec.approximate:
            out.update(slot_pos=self.slot_pos, pos_slot=self.pos_slot)
        return out

    def config(self) -> dict:
        return {"dim": self.dim, "index": self.index_string, "metric": self.metric,
                "key_dtype": _name(self.key_dtype), "value_dtype": _name(self.value_dtype),
                "eviction": self.eviction, "nbytes": self._nbytes, "seed": self.seed,
                "train_size": self.train_size if self.spec.kind == "IVF" else None,
                "meta_fields": list(self.meta_fields), "nprobe": self.nprobe,
                "ef_search": self.ef_search, "rerank": self.rerank, "owner": self.owner}

    def extra_state(self) -> dict:
        extra = {"size": self._size, "next_id": self._next_id}
        if self.spec.approximate:
            extra.update(positions=self._positions, trained=self._trained)
        return extra

    def _expected_shape(self, name, mine, theirs):
        return theirs.shape if name == "faiss_index" else mine.shape

    def _check_adoptable(self, tensors, extra):
        size, next_id = int(extra.get("size", -1)), int(extra.get("next_id", -1))
        if not 0 <= size <= self.capacity or next_id < size:
            raise ValueError(f"Datastore.load_state_dict: saved size {extra.get('size')!r} and "
                             f"next id {extra.get('next_id')!r} do not fit {self.capacity} slots")
        ids = tensors["ids"]
        held = ids[:size]
        if (held < 0).any() or (held >= next_id).any() or (ids[size:] != -1).any():
            raise ValueError("Datastore.load_state_dict: saved entry ids do not match the "
                             "saved size (held slots need ids in 0..next_id-1, empty ones -1)")
        if self.spec.approximate:
            self._pending_index = self._check_index(tensors, extra, size)

    def _check_index(self, tensors, extra, size: int) -> faiss.Index:
        positions, trained = int(extra.get("positions", -1)), bool(extra.get("trained"))
        try:
            index = faiss.deserialize_index(tensors["faiss_index"].numpy())
        except RuntimeError as exc:
            raise ValueError(f"Datastore.load_state_dict: the saved faiss index does not "
                             f"deserialise ({exc})") from None
        fresh = self._new_index()
        found = (type(index).__name__, index.d, index.metric_type, index.is_trained)
        expected = (type(fresh).__name__, self.dim, fresh.metric_type, trained or fresh.is_trained)
        if found != expected or not 0 <= positions <= len(self.pos_slot) \
                or index.ntotal != positions:
            raise ValueError(f"Datastore.load_state_dict: the saved index (type, dim, metric, "
                             f"trained) = {found} holding {index.ntotal} vectors does not match "
                             f"{expected} holding {positions}")
        slot_pos, pos_slot = tensors["slot_pos"], tensors["pos_slot"]
        held = slot_pos[:size]
        live = pos_slot >= 0
        consistent = (int(live.sum()) == (size if trained else 0)
                      and (not trained or bool(((held >= 0) & (held < positions)).all()
                                               and (pos_slot[held] == torch.arange(size)).all())))
        if not consistent:
            raise ValueError("Datastore.load_state_dict: the saved slot/position maps do not "
                             "match the saved entries")
        return self._configure(index)

    def load_extra_state(self, extra: Mapping) -> None:
        self._size, self._next_id = int(extra["size"]), int(extra["next_id"])
        if self.spec.approximate:
            self._positions, self._trained = int(extra["positions"]), bool(extra["trained"])

    def _adopt(self, tensors):
        for name, t in self._plain_tensors().items():
            t.copy_(tensors[name])
        if self.spec.approximate:
            self.index, self._live_bits = self._pending_index, None
            del self._pending_index

    def clear(self) -> None:
        """Forget every entry and the index's training; ids restart at 0; the bytes stay charged."""
        self._allocate()

    # -- write ---------------------------------------------------------------------------------

    def write(self, keys: torch.Tensor, values: torch.Tensor,
              meta: Mapping[str, torch.Tensor] | None = None) -> Entries:
        """Store one entry per row; return the entries evicted to make room, in eviction order.

        When more rows come than the store holds, only the last ``capacity`` are
        kept (the earlier ones are never stored and not returned).
        """
        keys, values, meta = self._check_write(keys, values, meta)
        rows = torch.arange(max(len(keys) - self.capacity, 0), len(keys))
        ids = self._next_id + rows
        slots, victims = self._place(ids)
        evicted = self._read(victims)
        if self.trained and len(victims):
            self.pos_slot[self.slot_pos[victims]] = -1
            self._live_bits = None
        self.keys[slots] = keys[rows].to(self.key_dtype)
        self.values[slots] = values[rows].to(self.value_dtype)
        self.ids[slots] = ids
        for name, t in meta.items():
            self.meta[name][slots] = t[rows]
        if self.eviction == "least_used":
            self.usage[slots] = 0
        self._size += len(slots) - len(victims)
        self._next_id += len(keys)
        if self.spec.approximate:
            self._index_new(slots)
        return evicted

    def _place(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots for the new entries, held slots they evict)."""
        if self.eviction == "fifo":
            slots = ids % self.capacity
            victims = slots[slots < self._size]
            return slots, victims[torch.argsort(self.ids[victims])]  # oldest first
        free = self.capacity - self._size
        if len(ids) <= free:
            none = torch.empty(0, dtype=torch.int64)
            return torch.arange(self._size, self._size + len(ids)), none
        victims = self._least_used(len(ids) - free)
        return torch.cat([torch.arange(self._size, self.capacity), victims]), victims

    def _least_used(self, n: int) -> torch.Tensor:
        """The ``n`` held slots with the least usage, the oldest (lowest id) first among equals."""
        usage = self.usage[:self._size]
        kth = usage.kthvalue(n).values
        below = torch.nonzero(usage < kth).squeeze(1)
        tied = torch.nonzero(usage == kth).squeeze(1)
        tied = tied[self.ids[tied].topk(n - len(below), largest=False).indices]
        chosen = torch.cat([below, tied])
        chosen = chosen[torch.argsort(self.ids[chosen])]
        return chosen[torch.argsort(self.usage[chosen], stable=True)]

    def _read(self, slots: torch.Tensor) -> Entries:
        return Entries(self.ids[slots].clone(), self.keys[slots].clone(),
                       self.values[slots].clone(),
                       {name: t[slots].clone() for name, t in self.meta.items()})

    def _index_new(self, slots: torch.Tensor) -> None:
        """Bring the index up to date after ``slots`` were written."""
        if not self._trained:
            if self._size >= min(self.train_size, self.capacity):
                train = self.keys[:min(self.train_size, self._size)].float().numpy()
                self.index.train(train)
                self._trained = True
                self._rebuild()
        elif self._positions + len(slots) > len(self.pos_slot):
            self._rebuild()
        else:
            self._append(slots)

    def _rebuild(self) -> None:
        """Empty the index (keeping its training) and add every held entry again."""
        self.index.reset()
        self.pos_slot.fill_(-1)
        self.slot_pos.fill_(-1)
        self._positions = 0
        self._append(torch.arange(self._size))

    def _append(self, slots: torch.Tensor) -> None:
        for start in range(0, len(slots), ADD_BLOCK):
            part = slots[start:start + ADD_BLOCK]
            positions = self._positions + torch.arange(len(part))
            if self.spec.kind == "HNSW":
                self._preset_levels(positions)
            self.index.add(self.keys[part].float().numpy())
            self.pos_slot[positions] = part
            self.slot_pos[part] = positions
            self._positions += len(part)
        self._live_bits = None

    def _preset_levels(self, positions: torch.Tensor) -> None:
        """Give the next HNSW vectors their levels by position (see the module docstring)."""
        m, level = self.spec.m, torch.zeros_like(positions)
        for top in range(1, _hnsw_top_level(m) + 1):
            level += (positions + 1) % m**top == 0
        table = self.index.hnsw.levels
        start = table.size()
        table.resize(start + len(positions))
        faiss.rev_swig_ptr(table.data(), table.size())[start:] = (level + 1).numpy()

    # -- search --------------------------------------------------------------------------------

    def search(self, queries: torch.Tensor, k: int, *, count: bool = True) -> Hits:
        """The ``k`` entries nearest each query (q, dim), best first; padded when fewer are held.

        With least-used eviction each returned entry's usage grows by one, unless
        ``count`` is False.
        """
        queries = self._check_queries(queries)
        _positive("k", k)
        found = min(k, self._size)
        if found == 0:
            slots = torch.full((len(queries), 0), -1, dtype=torch.int64)
            distances = torch.empty((len(queries), 0))
        elif self.trained:
            distances, slots = topk_rerank(queries, self.keys, self._candidates(queries, found),
                                           found, metric=self.metric)
        else:
            distances, slots = topk_search(queries, self.keys[:self._size], found,
                                           metric=self.metric)
        none = float("inf") if self.metric == "l2" else float("-inf")
        distances = torch.nn.functional.pad(distances, (0, k - found), value=none)
        slots = torch.nn.functional.pad(slots, (0, k - found), value=-1)
        if count and self.eviction == "least_used":
            hit = slots[slots >= 0]
            self.usage.index_put_((hit,), torch.ones_like(hit), accumulate=True)
        return self._hits(distances, slots)

    def _candidates(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Slots the index proposes, ``rerank * k`` per query (-1 where it has fewer)."""
        bits = None
        if self._positions > self._size:  # tombstones: search only live positions
            if self._live_bits is None:
                live = (self.pos_slot[:self._positions] >= 0).numpy()
                self._live_bits = np.packbits(live, bitorder="little")
            bits = self._live_bits
        selector = None if bits is None else faiss.IDSelectorBitmap(len(bits),
                                                                    faiss.swig_ptr(bits))
        if self.spec.kind == "HNSW":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.ef_search)
        else:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
        _, positions = self.index.search(queries.float().numpy(), self.rerank * k,
                                         params=params)
        positions = torch.from_numpy(positions)
        return torch.where(positions >= 0, self.pos_slot[positions.clamp_min(0)], -1)

    def _hits(self, distances: torch.Tensor, slots: torch.Tensor) -> Hits:
        none = slots < 0
        at = slots.clamp_min(0)
        return Hits(distances, self.values[at].masked_fill(none, -1),
                    self.ids[at].masked_fill(none, -1),
                    {name: t[at].masked_fill(none, -1) for name, t in self.meta.items()})

    # -- validation ----------------------------------------------------------------------------

    def _check_queries(self, queries: torch.Tensor) -> torch.Tensor:
        if (not isinstance(queries, torch.Tensor) or not queries.is_floating_point()
                or queries.dim() != 2 or queries.shape[1] != self.dim):
            raise ValueError(f"Datastore.search: expected float queries of shape (q, {self.dim})"
                             f", got {_describe(queries)}")
        if not torch.isfinite(queries).all():
            raise ValueError("Datastore.search: queries hold NaN or inf")
        return queries.detach().float().contiguous()

    def _check_write(self, keys, values, meta):
        if (not isinstance(keys, torch.Tensor) or not keys.is_floating_point()
                or keys.dim() != 2 or keys.shape[1] != self.dim):
            raise ValueError(f"Datastore.write: expected float keys of shape (n, {self.dim}), "
                             f"got {_describe(keys)}")
        n = len(keys)
        keys = keys.detach()
        if not torch.isfinite(keys).all():
            raise ValueError("Datastore.write: keys hold NaN or inf")
        limit = torch.finfo(self.key_dtype).max
        if n and keys.abs().max() > limit:
            raise ValueError(f"Datastore.write: a key component exceeds {limit:g}, the largest "
                             f"{_name(self.key_dtype)} value; use key_dtype=torch.float32")
        values = _check_ints("values", values, n)
        info = torch.iinfo(self.value_dtype)
        if n and (values.min() < info.min or values.max() > info.max):
            raise ValueError(f"Datastore.write: values span {int(values.min())}.."
                             f"{int(values.max())}, which overflows {_name(self.value_dtype)} "
                             f"({info.min}..{info.max}); use value_dtype=torch.int64")
        meta = dict(meta or {})
        if set(meta) != set(self.meta_fields):
            raise ValueError(f"Datastore.write: expected meta fields {sorted(self.meta_fields)}, "
                             f"got {sorted(meta)}")
        meta = {name: _check_ints(f"meta[{name!r}]", t, n).to(torch.int64)
                for name, t in meta.items()}
        return keys, values, meta


def _check_ints(name: str, t, n: int) -> torch.Tensor:
    if (not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex()
            or t.dtype == torch.bool or t.shape != (n,)):
        raise ValueError(f"Datastore.write: expected {name} as an integer tensor of shape "
                         f"({n},), got {_describe(t)}")
    return t.detach()


def _dtype(dtype: torch.dtype | str, allowed: tuple[torch.dtype, ...]) -> torch.dtype:
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if resolved not in allowed:
        raise ValueError(f"dtype: expected one of {[_name(d) for d in allowed]}, got {dtype!r}")
    return resolved


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"shape {tuple(t.shape)} {t.dtype}"
    return type(t).__name__
