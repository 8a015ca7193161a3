"""Exact k-nearest-neighbour search of queries against keys: squared L2 or inner product.

kNN-LM (Khandelwal et al., "Generalization through Memorization: Nearest
Neighbor Language Models", ICLR 2020) retrieves, for every query, the k keys
of its datastore closest to it; LongMem (Wang et al., "Augmenting Language
Models with Long-Term Memory", NeurIPS 2023) the k cached chunks with the
largest inner product. Both are one operation: for queries ``Q`` (q, d) and
keys ``K`` (n, d), the k rows of ``K`` with the smallest squared L2 distance
``||q - k||^2`` (``metric="l2"``) or the largest inner product ``<q, k>``
(``metric="ip"``).

``topk_search`` walks the keys in chunks: one matrix product per chunk
(``||q||^2 - 2 <q, k> + ||k||^2`` for L2, computed in float32 whatever the
keys' dtype), the chunk's best k, and a running merge with the best k so far,
so memory stays O(q x chunk) however many keys there are. ``topk_rerank`` is
the exact step after an approximate index: the best k among given candidate
rows per query. ``topk_search_reference`` and ``topk_rerank_reference`` compute
the same in float64 from the full distance matrix (direct differences) and a
stable sort, or candidate by candidate.

Ties are broken by the lower key index, in every function: among equal
distances the key stored first (lowest row) ranks first. Distances come back
best first: L2 ascending, inner products descending.
"""

from __future__ import annotations

import torch

METRICS = ("l2", "ip")
CHUNK_ELEMENTS = 1 << 22
"""Default block of the distance matrix (queries x keys per chunk): 16 MiB of float32."""


def topk_search(queries: torch.Tensor, keys: torch.Tensor, k: int, *, metric: str = "l2",
                chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best keys for each query: (distances (q, k) float32, indices (q, k) int64).

    ``keys`` may be float16 or float32 (computed in float32). ``chunk`` is the number
    of keys per matrix product (default: about 4M distances per block).
    """
    _check(queries, keys, k, metric)
    if chunk is None:
        chunk = max(CHUNK_ELEMENTS // max(len(queries), 1), 1024)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"topk_search: expected a positive int chunk, got {chunk!r}")
    q = queries.detach().float()
    q_sq = (q * q).sum(dim=1, keepdim=True)
    if not torch.isfinite(q_sq).all():
        raise ValueError("topk_search: queries hold NaN/inf, or their squared norms overflow "
                         "float32")
    best_cost = q.new_empty((len(q), 0))
    best_index = torch.empty((len(q), 0), dtype=torch.int64)
    for start in range(0, len(keys), chunk):
        block = keys[start:start + chunk].detach().float()
        cost, index = _smallest(_cost(q, q_sq, block, metric), k)
        best_cost = torch.cat([best_cost, cost], dim=1)
        best_index = torch.cat([best_index, index + start], dim=1)
        if start > 0:  # earlier chunks hold lower indices: a stable sort keeps their ties first
            best_cost, order = best_cost.sort(dim=1, stable=True)
            best_cost, best_index = best_cost[:, :k], best_index.gather(1, order[:, :k])
    return _distances(best_cost, metric), best_index


def topk_rerank(queries: torch.Tensor, keys: torch.Tensor, candidates: torch.Tensor, k: int,
                *, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of each query's candidate rows of ``keys``, by exact distance.

    ``candidates`` (q, c) holds distinct row indices per query, ``-1`` for none.
    Where fewer than ``k`` candidates are valid the result is padded with index
    ``-1`` and distance ``inf`` (L2) or ``-inf`` (inner product).
    """
    _check_metric(metric)
    _check_pair(queries, keys)
    _check_k(k)
    if (not isinstance(candidates, torch.Tensor) or candidates.dtype != torch.int64
            or candidates.shape[:1] != queries.shape[:1] or candidates.dim() != 2):
        got = (tuple(candidates.shape), candidates.dtype) if isinstance(
            candidates, torch.Tensor) else type(candidates).__name__
        raise ValueError(f"topk_rerank: expected int64 candidates of shape ({len(queries)}, c), "
                         f"got {got}")
    if len(candidates) and (candidates.min() < -1 or candidates.max() >= len(keys)):
        raise ValueError(f"topk_rerank: candidates must be -1 or rows in 0..{len(keys) - 1}")
    rows_per_block = max(CHUNK_ELEMENTS // max(candidates.shape[1] * keys.shape[1], 1), 1)
    parts = [_rerank_block(queries[i:i + rows_per_block], keys,
                           candidates[i:i + rows_per_block], k, metric)
             for i in range(0, len(queries), rows_per_block)]
    if not parts:
        return _distances(torch.full((0, k), float("inf")), metric), candidates.new_empty((0, k))
    return torch.cat([d for d, _ in parts]), torch.cat([i for _, i in parts])


def _rerank_block(queries: torch.Tensor, keys: torch.Tensor, candidates: torch.Tensor, k: int,
                  metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    candidates, _ = candidates.sort(dim=1)  # index order, so the stable sort below breaks ties
    valid = candidates >= 0
    rows = keys[candidates.clamp_min(0)].detach().float()
    q = queries.detach().float()
    if metric == "l2":
        cost = (rows - q.unsqueeze(1)).pow(2).sum(dim=2)
    else:
        cost = torch.bmm(rows, q.neg().unsqueeze(2)).squeeze(2)
    if not torch.isfinite(cost[valid]).all():
        raise ValueError("topk_rerank: a distance is not finite: queries or keys hold NaN/inf")
    cost = cost.masked_fill(~valid, float("inf"))
    cost, order = cost.sort(dim=1, stable=True)
    index = candidates.gather(1, order).masked_fill(cost == float("inf"), -1)
    pad = max(k - cost.shape[1], 0)
    cost = torch.nn.functional.pad(cost[:, :k], (0, pad), value=float("inf"))
    index = torch.nn.functional.pad(index[:, :k], (0, pad), value=-1)
    return _distances(cost, metric), index


def topk_search_reference(queries: torch.Tensor, keys: torch.Tensor, k: int, *,
                          metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_search`` from the full float64 distance matrix and a stable sort."""
    _check(queries, keys, k, metric)
    q, x = queries.detach().double(), keys.detach().double()
    l2 = metric == "l2"
    cost = (q.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(dim=2) if l2 else -(q @ x.T)
    if not torch.isfinite(cost).all():
        raise ValueError("topk_search_reference: a distance is not finite")
    cost, index = cost.sort(dim=1, stable=True)
    return _distances(cost[:, :k].float(), metric), index[:, :k]


def topk_rerank_reference(queries: torch.Tensor, keys: torch.Tensor, candidates: torch.Tensor,
                          k: int, *, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_rerank`` one query and one candidate at a time, in float64."""
    _check_metric(metric)
    sign = 1.0 if metric == "l2" else -1.0
    distances = torch.full((len(queries), k), sign * float("inf"))
    indices = torch.full((len(queries), k), -1, dtype=torch.int64)
    for i, query in enumerate(queries.double()):
        scored = []
        for row in sorted(int(c) for c in candidates[i] if c >= 0):
            key = keys[row].double()
            distance = float((query - key).pow(2).sum()) if metric == "l2" else float(query @ key)
            scored.append((sign * distance, row))
        for j, (cost, row) in enumerate(sorted(scored)[:k]):
            distances[i, j], indices[i, j] = sign * cost, row
    return distances, indices


def _cost(q: torch.Tensor, q_sq: torch.Tensor, block: torch.Tensor, metric: str
          ) -> torch.Tensor:
    """Smaller is better: squared L2 distance, or the negated inner product."""
    k_sq = (block * block).sum(dim=1)
    if not torch.isfinite(k_sq).all():
        raise ValueError("topk_search: keys hold NaN/inf, or their squared norms overflow float32")
    if metric == "ip":
        return torch.mm(q, block.T).neg_()
    return torch.addmm(k_sq.unsqueeze(0), q, block.T, alpha=-2.0).add_(q_sq).clamp_min_(0.0)


def _smallest(cost: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``min(k, columns)`` smallest entries per row, sorted by (value, column).

    ``torch.topk`` does not say which of several equal values it keeps, so when
    more than k entries of a row are at most its k-th value, the entries equal
    to the k-th value are taken from the lowest columns.
    """
    k = min(k, cost.shape[1])
    value, column = cost.topk(k, dim=1, largest=False, sorted=False)
    kth = value.amax(dim=1, keepdim=True)
    if ((cost <= kth).sum(dim=1) != k).any():
        better = cost < kth
        tied = cost == kth
        need = k - better.sum(dim=1, keepdim=True)
        take = better | (tied & (tied.cumsum(dim=1) <= need))
        column = take.nonzero()[:, 1].view(-1, k)  # row-major: columns ascending in each row
    else:
        column, _ = column.sort(dim=1)
    value, order = cost.gather(1, column).sort(dim=1, stable=True)
    return value, column.gather(1, order)


def _distances(cost: torch.Tensor, metric: str) -> torch.Tensor:
    return cost if metric == "l2" else -cost


def _check(queries: torch.Tensor, keys: torch.Tensor, k: int, metric: str) -> None:
    _check_metric(metric)
    _check_pair(queries, keys)
    _check_k(k)
    if k > len(keys):
        raise ValueError(f"topk_search: k={k} is more than the {len(keys)} keys searched")


def _check_pair(queries: torch.Tensor, keys: torch.Tensor) -> None:
    for name, t in (("queries", queries), ("keys", keys)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"topk: expected {name} as a 2-D float tensor, got {got}")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"topk: queries have dimension {queries.shape[1]}, "
                         f"keys {keys.shape[1]}")


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"topk: expected k as an int >= 1, got {k!r}")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"topk: expected metric in {METRICS}, got {metric!r}")
