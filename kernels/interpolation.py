"""The kNN-LM next-token distribution from retrieved neighbours, and its mixture with the LM's.

Khandelwal et al., "Generalization through Memorization: Nearest Neighbor
Language Models" (ICLR 2020): the k neighbours retrieved for a context, each a
distance ``d_i`` and a stored next token ``v_i``, give

    p_kNN(y) = sum_{i: v_i = y} exp(-d_i / T) / sum_i exp(-d_i / T)

(for inner-product scores ``s_i`` the logits are ``+s_i / T``), and the model
predicts ``p = lambda * p_kNN + (1 - lambda) * p_LM``, computed in log space
(``logaddexp`` of the two weighted log-probabilities, exact where either is 0).
MLP Memory ("MLP Memory: Language Modeling with Retriever-pretrained External
Memory", 2025) mixes its MLP's distribution the same way.

``knn_log_probs`` scatters the neighbours' softmax weights into the vocabulary
in one ``scatter_add``; ``knn_log_probs_reference`` sums them neighbour by
neighbour in float64. Missing neighbours (``values == -1``) carry no weight; a
row with none gets ``nan`` (no distribution), which callers replace by the LM's.
"""

from __future__ import annotations

import math

import torch


def _check(distances: torch.Tensor, values: torch.Tensor, vocab_size: int,
           temperature: float, metric: str) -> None:
    if distances.shape != values.shape or distances.dim() != 2:
        raise ValueError(f"expected distances and values of one shape (n, k), got "
                         f"{tuple(distances.shape)} and {tuple(values.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric: expected 'l2' or 'ip', got {metric!r}")
    if values.numel() and int(values.max()) >= vocab_size:
        raise ValueError(f"values: expected token ids below vocab_size={vocab_size}, "
                         f"got {int(values.max())}")


def knn_log_probs(distances: torch.Tensor, values: torch.Tensor, vocab_size: int, *,
                  temperature: float = 1.0, metric: str = "l2") -> torch.Tensor:
    """log p_kNN (n, vocab_size) from neighbours' distances and token values (n, k)."""
    _check(distances, values, vocab_size, temperature, metric)
    found = values >= 0
    logits = (-distances if metric == "l2" else distances).float() / temperature
    logits = logits.masked_fill(~found, float("-inf"))
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
    probs = torch.zeros(len(values), vocab_size).scatter_add_(1, values.clamp_min(0), weights)
    out = probs.log()
    return out.masked_fill(~found.any(1, keepdim=True), float("nan"))


def knn_log_probs_reference(distances: torch.Tensor, values: torch.Tensor, vocab_size: int, *,
                            temperature: float = 1.0, metric: str = "l2") -> torch.Tensor:
    """``knn_log_probs`` neighbour by neighbour in float64."""
    _check(distances, values, vocab_size, temperature, metric)
    out = torch.full((len(values), vocab_size), float("nan"), dtype=torch.float64)
    sign = -1.0 if metric == "l2" else 1.0
    for row in range(len(values)):
        hits = [(float(d), int(v)) for d, v in zip(distances[row], values[row], strict=True)
                if v >= 0]
        if not hits:
            continue
        top = max(sign * d / temperature for d, _ in hits)
        probs = torch.zeros(vocab_size, dtype=torch.float64)
        for d, v in hits:
            probs[v] += math.exp(sign * d / temperature - top)
        out[row] = (probs / probs.sum()).log()
    return out


def interpolate(log_p_lm: torch.Tensor, log_p_memory: torch.Tensor, lam: float) -> torch.Tensor:
    """log(lam * p_memory + (1 - lam) * p_lm); rows where ``log_p_memory`` is nan keep p_lm."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam: expected a weight in [0, 1], got {lam}")
    if log_p_lm.shape != log_p_memory.shape:
        raise ValueError(f"expected log-probabilities of one shape, got {tuple(log_p_lm.shape)} "
                         f"and {tuple(log_p_memory.shape)}")
    if lam == 0.0:
        return log_p_lm
    mixed = torch.logaddexp(log_p_lm + math.log1p(-lam) if lam < 1 else
                            torch.full_like(log_p_lm, float("-inf")),
                            log_p_memory + math.log(lam))
    missing = log_p_memory.isnan().any(-1, keepdim=True)
    return torch.where(missing, log_p_lm, mixed)
