"""Reservoir sampling (Vitter's Algorithm R) for a whole batch at once.

Item ``t`` of a stream (0-based) enters a reservoir of ``capacity`` slots
directly while ``t < capacity``; afterwards it draws ``j`` uniformly from
``0..t`` and replaces slot ``j`` when ``j < capacity``. Every item seen so far
is then held with the same probability ``capacity / (t + 1)``.
"""

from __future__ import annotations

import torch


def _draws(n_seen: int, batch_size: int, generator: torch.Generator | None):
    positions = torch.arange(n_seen, n_seen + batch_size, dtype=torch.int64)
    u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    return positions, torch.floor(u * (positions + 1).to(torch.float64)).to(torch.int64)


def reservoir_slots(n_seen: int, batch_size: int, capacity: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the batch that enter the reservoir and their slots, sorted by slot.

    Equal to running Algorithm R item by item: when two rows draw the same
    slot, the later row is the one that stays. O(batch log batch) work,
    independent of ``capacity``.
    """
    positions, draws = _draws(n_seen, batch_size, generator)
    slots = torch.where(positions < capacity, positions, draws)
    rows = torch.nonzero(slots < capacity).squeeze(1)
    slots, order = torch.sort(slots[rows], stable=True)
    last = torch.ones_like(slots, dtype=torch.bool)
    last[:-1] = slots[1:] != slots[:-1]
    return rows[order][last], slots[last]


def reservoir_slots_reference(n_seen: int, batch_size: int, capacity: int,
                              generator: torch.Generator | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same result, one item at a time, as Algorithm R is usually written."""
    positions, draws = _draws(n_seen, batch_size, generator)
    holder: dict[int, int] = {}
    for row in range(batch_size):
        t, j = int(positions[row]), int(draws[row])
        slot = t if t < capacity else j
        if slot < capacity:
            holder[slot] = row
    slots = sorted(holder)
    return (torch.tensor([holder[s] for s in slots], dtype=torch.int64),
            torch.tensor(slots, dtype=torch.int64))
