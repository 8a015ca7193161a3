import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from memkit.kernels import sample_distinct


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 5000), n=st.integers(0, 300), seed=st.integers(0, 2**31))
def test_indices_are_distinct_in_range_and_as_many_as_asked(size, n, seed):
    index = sample_distinct(size, n, torch.Generator().manual_seed(seed))
    assert len(index) == min(n, size) == len(set(index.tolist()))
    assert index.dtype == torch.int64
    assert len(index) == 0 or 0 <= index.min() <= index.max() < size


def test_every_slot_and_every_position_is_equally_likely():
    size, n, runs = 200, 10, 6000
    gen = torch.Generator().manual_seed(0)
    counts, first = np.zeros(size), np.zeros(size)
    for _ in range(runs):
        index = sample_distinct(size, n, gen).numpy()
        counts[index] += 1
        first[index[0]] += 1
    assert chisquare(counts).pvalue > 1e-3
    assert chisquare(first).pvalue > 1e-3, "the order within a draw is random too"


def test_pairs_are_not_correlated():
    size, n, runs = 20, 2, 20000
    gen = torch.Generator().manual_seed(1)
    pairs = np.zeros((size, size))
    for _ in range(runs):
        a, b = sorted(sample_distinct(size, n, gen).tolist())
        pairs[a, b] += 1
    upper = pairs[np.triu_indices(size, 1)]
    assert chisquare(upper).pvalue > 1e-3
