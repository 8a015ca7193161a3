"""Deterministic randomness: every random choice in memkit comes from a seed and a position.

A generator derived from ``(seed, purpose, *keys)`` (for example the seed,
"shuffle", the experience index and the epoch) needs no state to be
checkpointed: a resumed run derives the same generator again and draws the
same numbers. The purpose keeps the draws of different uses of one seed (a
learner's shuffles, a memory's evictions) independent of each other.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``seed``, ``purpose`` and ``keys`` via SeedSequence."""
    if not isinstance(purpose, str) or not purpose:
        raise TypeError(f"derive_generator: expected a purpose string, got {purpose!r}")
    entropy = [int(seed), zlib.crc32(purpose.encode()), *(int(k) for k in keys)]
    if any(k < 0 for k in entropy):
        raise ValueError(f"derive_generator: expected non-negative seed and keys, got {entropy}")
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
