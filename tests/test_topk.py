import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memkit.kernels.topk import (
    topk_rerank,
    topk_rerank_reference,
    topk_search,
    topk_search_reference,
)

DTYPES = st.sampled_from([torch.float32, torch.float16])
METRICS = st.sampled_from(["l2", "ip"])


def small_ints(shape, generator, dtype=torch.float32, spread=3):
    """Integers in [-spread, spread]: every distance is exact in float32, ties are common."""
    return torch.randint(-spread, spread + 1, shape, generator=generator).to(dtype)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 60), q=st.integers(0, 6), d=st.integers(1, 6), data=st.data(),
       seed=st.integers(0, 2**31), dtype=DTYPES, metric=METRICS)
def test_chunked_search_equals_the_full_matrix_reference_ties_included(n, q, d, data, seed,
                                                                       dtype, metric):
    g = torch.Generator().manual_seed(seed)
    keys, queries = small_ints((n, d), g, dtype), small_ints((q, d), g)
    k = data.draw(st.integers(1, n))
    chunk = data.draw(st.integers(1, n + 3))
    fast = topk_search(queries, keys, k, metric=metric, chunk=chunk)
    slow = topk_search_reference(queries, keys, k, metric=metric)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    assert fast[1].dtype == torch.int64 and fast[0].dtype == torch.float32


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_real_valued_keys_match_the_reference_up_to_rounding(metric, dtype):
    g = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(3000, 32, generator=g).to(dtype), torch.randn(40, 32, generator=g)
    distances, index = topk_search(queries, keys, 16, metric=metric, chunk=256)
    ref_distances, ref_index = topk_search_reference(queries, keys, 16, metric=metric)
    assert torch.allclose(distances, ref_distances, rtol=1e-4, atol=1e-3)
    assert (index == ref_index).float().mean() > 0.99  # only near-ties may swap
    exact = topk_search_reference(queries, keys, 3000, metric=metric)  # every key, ranked
    rank = torch.empty_like(exact[1]).scatter_(1, exact[1], torch.arange(3000).expand(40, -1))
    assert rank.gather(1, index).max() < 18, "returned keys are among the true best"


def test_hand_computed_distances_and_ties_to_the_lower_index():
    keys = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    query = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    distances, index = topk_search(query, keys, 3, chunk=1)
    assert distances.tolist() == [[1.0, 4.0, 4.0], [1.0, 2.0, 2.0]]
    assert index.tolist() == [[1, 0, 2], [1, 0, 2]]
    distances, index = topk_search(query, keys, 2, metric="ip", chunk=2)
    assert distances.tolist() == [[0.0, 0.0], [7.0, 2.0]]
    assert index.tolist() == [[0, 1], [3, 0]]
    same = torch.ones(10, 3)
    assert topk_search(torch.ones(1, 3), same, 4, chunk=3)[1].tolist() == [[0, 1, 2, 3]]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 40), q=st.integers(0, 5), c=st.integers(1, 12), data=st.data(),
       seed=st.integers(0, 2**31), dtype=DTYPES, metric=METRICS)
def test_rerank_equals_the_candidate_by_candidate_reference(n, q, c, data, seed, dtype, metric):
    g = torch.Generator().manual_seed(seed)
    keys, queries = small_ints((n, 4), g, dtype), small_ints((q, 4), g)
    candidates = torch.stack([torch.randperm(n, generator=g)[:c] for _ in range(q)]) if q \
        else torch.empty((0, min(c, n)), dtype=torch.int64)
    candidates[torch.rand(candidates.shape, generator=g) < 0.3] = -1  # some slots hold nothing
    k = data.draw(st.integers(1, 15))
    fast = topk_rerank(queries, keys, candidates, k, metric=metric)
    slow = topk_rerank_reference(queries, keys, candidates, k, metric=metric)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_rerank_over_every_key_is_the_exact_search_and_pads_missing_hits():
    g = torch.Generator().manual_seed(1)
    keys, queries = small_ints((30, 5), g), small_ints((4, 5), g)
    everything = torch.arange(30).flip(0).expand(4, -1).contiguous()
    for metric in ("l2", "ip"):
        assert all(torch.equal(a, b) for a, b in zip(
            topk_rerank(queries, keys, everything, 7, metric=metric),
            topk_search(queries, keys, 7, metric=metric), strict=True))
    distances, index = topk_rerank(queries, keys, torch.tensor([[3, -1]] * 4), 3)
    assert index[:, 1:].eq(-1).all() and index[:, 0].eq(3).all()
    assert distances[:, 1:].eq(float("inf")).all()
    ip = topk_rerank(queries, keys, torch.full((4, 2), -1), 2, metric="ip")[0]
    assert ip.eq(float("-inf")).all()


@pytest.mark.parametrize(("queries", "keys", "k", "kwargs", "match"), [
    (torch.zeros(2, 3), torch.zeros(4, 3), 5, {}, "k=5 is more than the 4 keys"),
    (torch.zeros(2, 3), torch.zeros(0, 3), 1, {}, "more than the 0 keys"),
    (torch.zeros(2, 3), torch.zeros(4, 3), 0, {}, "k as an int >= 1"),
    (torch.zeros(2, 3), torch.zeros(4, 2), 1, {}, "queries have dimension 3, keys 2"),
    (torch.zeros(3), torch.zeros(4, 3), 1, {}, "queries as a 2-D float tensor"),
    (torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.int64), 1, {}, "keys as a 2-D float"),
    (torch.zeros(2, 3), torch.zeros(4, 3), 1, {"metric": "cosine"}, "metric in"),
    (torch.zeros(2, 3), torch.zeros(4, 3), 1, {"chunk": 0}, "positive int chunk"),
    (torch.zeros(2, 3), torch.tensor([[float("nan")] * 3] * 4), 1, {}, "keys hold NaN/inf"),
    (torch.full((2, 3), float("inf")), torch.zeros(4, 3), 1, {}, "queries hold NaN/inf"),
])
def test_bad_input_is_rejected_with_a_clear_error(queries, keys, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        topk_search(queries, keys, k, **kwargs)
    if "chunk" not in kwargs and "NaN" not in match:
        with pytest.raises(ValueError, match=match):
            topk_search_reference(queries, keys, k, **kwargs)


def test_rerank_rejects_candidates_outside_the_keys():
    with pytest.raises(ValueError, match=r"rows in 0..3"):
        topk_rerank(torch.zeros(1, 2), torch.zeros(4, 2), torch.tensor([[4]]), 1)
    with pytest.raises(ValueError, match=r"int64 candidates of shape \(1, c\)"):
        topk_rerank(torch.zeros(1, 2), torch.zeros(4, 2), torch.tensor([[1.0]]), 1)
