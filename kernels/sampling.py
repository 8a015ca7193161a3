"""Uniform sampling of ``n`` distinct slots out of ``size`` in O(n) work when ``n`` << ``size``.

``randperm(size)[:n]`` costs O(size) per call, which dominates reading a
minibatch from a large memory. Instead draw ``2n`` slots with replacement,
keep the distinct ones and choose ``n`` of them uniformly. The set of distinct
draws is exchangeable in the slots, so the chosen ``n``-subset is uniform over
all ``n``-subsets (the same law as the reference); when too few are distinct,
draw again.
"""

from __future__ import annotations

import torch


def sample_distinct(size: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``min(n, size)`` distinct indices in ``[0, size)``, each ``n``-subset equally likely."""
    n = min(n, size)
    if 4 * n >= size:
        return sample_distinct_reference(size, n, generator)
    while True:
        distinct = torch.unique(torch.randint(size, (2 * n,), generator=generator))
        if len(distinct) >= n:
            return distinct[torch.randperm(len(distinct), generator=generator)[:n]]


def sample_distinct_reference(size: int, n: int,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """The plain way: the first ``n`` of a random permutation."""
    return torch.randperm(size, generator=generator)[: min(n, size)]
