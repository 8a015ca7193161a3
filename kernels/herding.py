"""Herding selection of exemplars (iCaRL's ``construct exemplar set``).

Rebuffi et al., "iCaRL: Incremental Classifier and Representation Learning",
CVPR 2017, Algorithm 4: with ``mu`` the mean of a class's L2-normalised
features, step ``k = 1..m`` picks the sample ``p_k`` that brings the mean of
the chosen set closest to ``mu``::

    p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||

A sample is chosen once (PyCIL removes it from the candidates, as here); ties go
to the lowest index. The
greedy order is prefix-stable: the first ``m'`` of a selection of ``m`` are the
selection of ``m'``, which is how iCaRL's ``reduce exemplar set`` keeps the
first exemplars. ``herding_select`` scores every candidate with one matrix-vector
product per step; ``herding_select_reference`` is the same greedy loop
written candidate by candidate.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-12
"""Norms below this count as this, so a zero feature vector stays zero (as ``F.normalize``)."""

TIE = 1e-12
"""Distances within this of the best are a tie, won by the lowest index.

Ties are structural, not rare: with two samples both are at the same distance
from their mean. Rounding decides exact-arithmetic ties arbitrarily, and
differently in two implementations, so both resolve them explicitly.
"""


def herding_select(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of ``m`` rows of ``features`` (n, d) in herding order, without repeats."""
    _check(features, m)
    f = torch.nn.functional.normalize(features.detach().to(torch.float64), dim=1, eps=EPS)
    mu, sq_norms = f.mean(dim=0), f.pow(2).sum(dim=1)
    chosen = torch.empty(m, dtype=torch.int64)
    taken = torch.zeros(len(f), dtype=torch.bool)
    total = torch.zeros_like(mu)
    for k in range(1, m + 1):
        # ||mu - (S + f)/k||^2 = ||mu - S/k||^2 - 2/k <mu - S/k, f> + ||f||^2 / k^2;
        # the first term is the same for every candidate, so one matrix-vector product.
        distance = sq_norms / k**2 - torch.mv(f, mu - total / k) * (2 / k)
        distance.masked_fill_(taken, float("inf"))
        i = int(torch.nonzero(distance <= distance.min() + TIE)[0])
        chosen[k - 1], taken[i] = i, True
        total += f[i]
    return chosen


def herding_select_reference(features: torch.Tensor, m: int) -> torch.Tensor:
    """The same selection, one candidate at a time in numpy."""
    _check(features, m)
    f = features.detach().to(torch.float64).numpy()
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), EPS)
    mu = f.mean(axis=0)
    chosen: list[int] = []
    total = np.zeros_like(mu)
    for k in range(1, m + 1):
        distance = {i: np.sum((mu - (total + f[i]) / k) ** 2)
                    for i in range(len(f)) if i not in chosen}
        least = min(distance.values())
        best = next(i for i, value in distance.items() if value <= least + TIE)
        chosen.append(best)
        total += f[best]
    return torch.tensor(chosen, dtype=torch.int64)


def _check(features: torch.Tensor, m: int) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or len(features) == 0:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise ValueError(f"herding: expected features of shape (n >= 1, d), got {shape}")
    if not torch.isfinite(features).all():
        raise ValueError("herding: features must be finite, got NaN or inf")
    if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= len(features):
        raise ValueError(f"herding: expected m in 0..{len(features)} (the number of samples), "
                         f"got {m!r}")
