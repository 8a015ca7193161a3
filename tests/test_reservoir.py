import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from memkit import Batch, Budget, BudgetExceeded
from memkit.buffers import Reservoir
from memkit.kernels import reservoir_slots, reservoir_slots_reference

SPEC = {"x": ((1,), torch.int64), "y": ((), torch.int64)}


def ids(start, n):
    x = torch.arange(start, start + n).unsqueeze(1)
    return Batch(x=x, y=torch.zeros(n, dtype=torch.int64))


@settings(max_examples=300, deadline=None)
@given(n_seen=st.integers(0, 300), batch=st.integers(0, 120), capacity=st.integers(1, 80),
       seed=st.integers(0, 2**31))
def test_vectorised_kernel_equals_item_by_item_algorithm_r(n_seen, batch, capacity, seed):
    fast = reservoir_slots(n_seen, batch, capacity, torch.Generator().manual_seed(seed))
    slow = reservoir_slots_reference(n_seen, batch, capacity, torch.Generator().manual_seed(seed))
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_inclusion_probabilities_are_uniform_over_the_stream():
    n_items, capacity, runs = 60, 12, 1500
    counts = np.zeros(n_items)
    for seed in range(runs):
        store = Reservoir(SPEC, Budget(capacity * 16), seed=seed)  # 16 bytes an item
        for start in range(0, n_items, 7):  # uneven batches, some spanning the fill point
            store.add(ids(start, min(7, n_items - start)))
        counts[store.tensors()["x"][: len(store), 0].numpy()] += 1
    assert counts.sum() == runs * capacity
    expected = np.full(n_items, runs * capacity / n_items)
    assert chisquare(counts, expected).pvalue > 1e-3
    first, last = counts[:30].sum(), counts[30:].sum()
    assert abs(first - last) / counts.sum() < 0.05


def test_add_returns_exactly_the_items_it_replaced():
    store = Reservoir(SPEC, Budget(10 * 16), seed=0)
    store.add(ids(0, 10))
    for start in range(10, 200, 13):
        before = set(store.tensors()["x"][:, 0].tolist())
        evicted = store.add(ids(start, 13))
        after = set(store.tensors()["x"][:, 0].tolist())
        assert set(evicted.x[:, 0].tolist()) == before - after
        assert len(evicted) == len(before - after)
        assert after <= before | set(range(start, start + 13))


def test_fill_phase_keeps_everything_in_order():
    store = Reservoir(SPEC, Budget(10 * 16))
    evicted = store.add(ids(0, 6))
    assert len(evicted) == 0 and len(store) == 6 and store.seen == 6
    assert store.tensors()["x"][:6, 0].tolist() == list(range(6))


def test_a_reloaded_reservoir_continues_bit_identically(tmp_path):
    a = Reservoir(SPEC, Budget(20 * 16), seed=5)
    for start in range(0, 100, 9):
        a.add(ids(start, 9))
    a.save(tmp_path / "a.safetensors")
    b = Reservoir(SPEC, Budget(20 * 16), seed=5)
    b.load(tmp_path / "a.safetensors")
    for start in range(100, 300, 11):
        ea, eb = a.add(ids(start, 11)), b.add(ids(start, 11))
        assert ea.equal(eb)
    assert torch.equal(a.tensors()["x"], b.tensors()["x"])
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert a.sample(7, gen_a).equal(b.sample(7, gen_b))


def test_sample_draws_stored_items_without_replacement():
    store = Reservoir(SPEC, Budget(50 * 16))
    store.add(ids(100, 30))
    drawn = store.sample(20, torch.Generator().manual_seed(0)).x[:, 0].tolist()
    assert len(set(drawn)) == 20 and set(drawn) <= set(range(100, 130))
    assert len(store.sample(99)) == 30
    assert [len(b) for b in store.batches(8)] == [8, 8, 8, 6]


def test_shrinking_keeps_a_uniform_subset_and_releases_bytes():
    counts = np.zeros(40)
    for seed in range(600):
        budget = Budget(40 * 16)
        store = Reservoir(SPEC, budget, seed=seed)
        store.add(ids(0, 40))
        evicted = store.resize(10 * 16)
        kept = store.tensors()["x"][: len(store), 0]
        assert len(store) == store.capacity == 10 and len(evicted) == 30
        assert set(kept.tolist()).isdisjoint(evicted.x[:, 0].tolist())
        assert budget.used == 160
        counts[kept.numpy()] += 1
    assert chisquare(counts).pvalue > 1e-3


def test_growing_charges_first_and_refuses_what_the_budget_lacks():
    budget = Budget(30 * 16)
    store = Reservoir(SPEC, budget, nbytes=10 * 16)
    store.add(ids(0, 10))
    store.resize(20 * 16)
    assert store.capacity == 20 and len(store) == 10 and budget.used == 320
    store.add(ids(10, 10))
    assert sorted(store.tensors()["x"][:, 0].tolist()) == list(range(20))
    with pytest.raises(BudgetExceeded, match="asked for 320 bytes"):
        store.resize(40 * 16)
    assert store.capacity == 20 and budget.used == 320
    with pytest.raises(BudgetExceeded):
        store.resize(8)
