"""Continual-learning metrics over an accuracy matrix.

``matrix[i][j]`` is the score on experience ``j``'s test set after training
on experience ``i`` (NaN where ``j > i``: not yet seen). Average accuracy,
forgetting (Chaudhry et al., "Riemannian Walk", 2018) and backward transfer
(Lopez-Paz & Ranzato, "Gradient Episodic Memory", 2017) follow their papers.
"""

from __future__ import annotations

import numpy as np


def average_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Mean score over the experiences seen so far, after each experience."""
    matrix = np.asarray(matrix, dtype=float)
    return np.array([np.mean(matrix[i, : i + 1]) for i in range(len(matrix))])


def forgetting(matrix: np.ndarray) -> float:
    """Mean over old experiences of (best earlier score - final score); 0 for one experience."""
    matrix = np.asarray(matrix, dtype=float)
    last = len(matrix) - 1
    if last < 1:
        return 0.0
    drops = [np.max(matrix[j:last, j]) - matrix[last, j] for j in range(last)]
    return float(np.mean(drops))


def backward_transfer(matrix: np.ndarray) -> float:
    """Mean over old experiences of (final score - score right after learning it)."""
    matrix = np.asarray(matrix, dtype=float)
    last = len(matrix) - 1
    if last < 1:
        return 0.0
    return float(np.mean([matrix[last, j] - matrix[j, j] for j in range(last)]))
