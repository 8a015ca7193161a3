"""Deterministic randomness: every random choice in memkit comes from a seed and a position.

A generator derived from ``(seed, *keys)`` (for example the seed, the
experience index and the epoch) needs no state to be checkpointed: a resumed
run derives the same generator again and draws the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``seed`` and ``keys`` through numpy's SeedSequence."""
    entropy = [int(seed), *(int(k) for k in keys)]
    if any(k < 0 for k in entropy):
        raise ValueError(f"derive_generator: expected non-negative seed and keys, got {entropy}")
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
