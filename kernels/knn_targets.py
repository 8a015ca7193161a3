"""MLP Memory's training targets: each datastore entry's kNN-LM distribution, and the loss on it.

"MLP Memory: Language Modeling with Retriever-pretrained External Memory"
(2025) trains a token-wise MLP to imitate a kNN-LM (Khandelwal et al., ICLR
2020). For every datastore entry (a key ``x`` and its next token ``y``) the
target is the kNN-LM distribution of the entry's own key over the datastore,

    p_kNN(v | x) = sum_{i: v_i = v} exp(-d_i / T) / sum_i exp(-d_i / T)

over the ``k`` nearest *other* entries (the entry itself is dropped: retrieve
``k + 1``, remove the hit with the entry's own id, or the last hit when the
entry is not among them), and the MLP's distribution ``q`` is fitted with

    loss = alpha * KL(p_kNN || q) + (1 - alpha) * CE(q, y).

``knn_targets`` keeps ``p_kNN`` sparse, the ``k`` neighbours' tokens and
weights per entry, found with the chunked ``topk_search`` a block of queries at
a time; ``knn_targets_reference`` sorts each entry's float64 distances to every
other entry. ``mlp_memory_loss`` takes the KL term as the sparse soft
cross-entropy ``-sum_i w_i log q(v_i)`` plus the constant ``sum_v p(v) log p(v)``
(neighbours sharing a token merged first), so it *is* the KL;
``mlp_memory_loss_reference`` scatters ``p_kNN`` into the vocabulary in float64
and calls ``torch.nn.functional.kl_div``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from memkit.kernels.topk import METRICS, topk_search

QUERY_BLOCK = 1024
"""Entries whose neighbours are searched at a time."""


def _check_targets(keys: torch.Tensor, ids: torch.Tensor, datastore_keys: torch.Tensor,
                   datastore_values: torch.Tensor, datastore_ids: torch.Tensor | None, k: int,
                   temperature: float, metric: str) -> torch.Tensor:
    """Validate the inputs; return the datastore ids (positions when ``datastore_ids`` is None)."""
    n = len(datastore_keys)
    if keys.dim() != 2 or datastore_keys.dim() != 2 or keys.shape[1] != datastore_keys.shape[1]:
        raise ValueError(f"knn_targets: expected keys (q, d) and datastore_keys (n, d), got "
                         f"{tuple(keys.shape)} and {tuple(datastore_keys.shape)}")
    if datastore_ids is None:
        datastore_ids = torch.arange(n)
    for name, t, length in (("ids", ids, len(keys)), ("datastore_values", datastore_values, n),
                            ("datastore_ids", datastore_ids, n)):
        if t.shape != (length,) or t.is_floating_point():
            raise ValueError(f"knn_targets: expected integer {name} of shape ({length},), got "
                             f"{t.dtype} {tuple(t.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"knn_targets: expected k in [1, {n - 1}] (the datastore holds {n} "
                         f"entries, one of them the query's own), got {k!r}")
    if not temperature > 0 or metric not in METRICS:
        raise ValueError(f"knn_targets: expected temperature > 0 and metric in {METRICS}, got "
                         f"{temperature} and {metric!r}")
    return datastore_ids


def _weights(distances: torch.Tensor, temperature: float, metric: str) -> torch.Tensor:
    logits = (-distances if metric == "l2" else distances) / temperature
    return torch.softmax(logits, dim=1)


def knn_targets(keys: torch.Tensor, ids: torch.Tensor, datastore_keys: torch.Tensor,
                datastore_values: torch.Tensor, datastore_ids: torch.Tensor | None = None, *,
                k: int, temperature: float = 16.0, metric: str = "l2"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse p_kNN of each entry (keys (q, d), ids (q,)): token values and weights, (q, k).

    ``datastore_ids`` name the datastore's entries (default: their positions); a
    query's own entry is the one whose id equals the query's id. Neighbours come
    best first; ties rank the lower datastore row first.
    """
    datastore_ids = _check_targets(keys, ids, datastore_keys, datastore_values, datastore_ids,
                                   k, temperature, metric)
    values, weights = [], []
    for start in range(0, len(keys), QUERY_BLOCK):
        block = slice(start, start + QUERY_BLOCK)
        distances, rows = topk_search(keys[block], datastore_keys, k + 1, metric=metric)
        dropped = datastore_ids[rows] == ids[block, None]
        dropped[:, -1] |= ~dropped.any(1)  # the own entry was not retrieved: drop the last
        kept = torch.sort(dropped.to(torch.uint8), dim=1, stable=True).indices[:, :k]
        values.append(datastore_values[rows.gather(1, kept)].long())
        weights.append(_weights(distances.gather(1, kept), temperature, metric))
    return torch.cat(values), torch.cat(weights)


def knn_targets_reference(keys: torch.Tensor, ids: torch.Tensor, datastore_keys: torch.Tensor,
                          datastore_values: torch.Tensor,
                          datastore_ids: torch.Tensor | None = None, *, k: int,
                          temperature: float = 16.0, metric: str = "l2"
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``knn_targets`` one entry at a time: float64 distances to every other entry, sorted."""
    datastore_ids = _check_targets(keys, ids, datastore_keys, datastore_values, datastore_ids,
                                   k, temperature, metric)
    x = datastore_keys.double()
    values, weights = [], []
    for query, own in zip(keys.double(), ids, strict=True):
        cost = (x - query).pow(2).sum(1) if metric == "l2" else -(x @ query)
        others = torch.nonzero(datastore_ids != own).squeeze(1)
        order = others[torch.sort(cost[others], stable=True).indices[:k]]
        values.append(datastore_values[order].long())
        weights.append(torch.softmax(-cost[order] / temperature, dim=0).float())
    return torch.stack(values), torch.stack(weights)


def _check_loss(logits: torch.Tensor, target_values: torch.Tensor,
                target_weights: torch.Tensor, targets: torch.Tensor, alpha: float) -> None:
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"mlp_memory_loss: expected logits (n, V) and targets (n,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if target_values.shape != target_weights.shape or target_values.shape[:1] != targets.shape:
        raise ValueError(f"mlp_memory_loss: expected target values and weights of one shape "
                         f"({len(targets)}, k), got {tuple(target_values.shape)} and "
                         f"{tuple(target_weights.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha}")


def _merged_weights(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """For every neighbour, the total weight of its token in its row: p_kNN(v_i)."""
    values, order = torch.sort(values, dim=1, stable=True)
    weights = weights.gather(1, order)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    run = starts.cumsum(1) - 1
    totals = torch.zeros_like(weights).scatter_add_(1, run, weights).gather(1, run)
    return torch.empty_like(totals).scatter_(1, order, totals)


def mlp_memory_loss(logits: torch.Tensor, target_values: torch.Tensor,
                    target_weights: torch.Tensor, targets: torch.Tensor,
                    alpha: float = 0.5) -> torch.Tensor:
    """Mean over rows of ``alpha * KL(p_kNN || softmax(logits)) + (1 - alpha) * CE``.

    ``p_kNN`` is sparse: neighbour tokens ``target_values`` (n, k) with
    ``target_weights`` summing to 1 per row (tokens may repeat).
    """
    _check_loss(logits, target_values, target_weights, targets, alpha)
    log_q = torch.log_softmax(logits.float(), dim=1)
    ce = F.nll_loss(log_q, targets)
    if alpha == 0.0:
        return ce
    weights = target_weights.float()
    entropy = torch.xlogy(weights, _merged_weights(target_values, weights)).sum(1)
    soft = (weights * log_q.gather(1, target_values.long())).sum(1)
    return alpha * (entropy - soft).mean() + (1 - alpha) * ce


def mlp_memory_loss_reference(logits: torch.Tensor, target_values: torch.Tensor,
                              target_weights: torch.Tensor, targets: torch.Tensor,
                              alpha: float = 0.5) -> torch.Tensor:
    """``mlp_memory_loss`` from the dense float64 p_kNN and ``torch.nn.functional.kl_div``."""
    _check_loss(logits, target_values, target_weights, targets, alpha)
    log_q = torch.log_softmax(logits.double(), dim=1)
    p = torch.zeros_like(log_q).scatter_add_(1, target_values.long(),
                                             target_weights.double())
    kl = F.kl_div(log_q, p, reduction="batchmean")
    ce = F.cross_entropy(logits.double(), targets)
    return (alpha * kl + (1 - alpha) * ce).float()
