import faiss
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memkit import Budget, BudgetExceeded, StoreFormatError
from memkit.buffers.datastore import (
    INDEX_HEADER,
    LIST_HEADER,
    Datastore,
    datastore_nbytes,
    index_nbytes,
    positions_for,
)
from memkit.kernels.topk import topk_search_reference
from memkit.registry import create
from memkit.testing import check_store

faiss.omp_set_num_threads(1)
D = 16


def clustered(n, seed, d=D, clusters=20):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, d, generator=torch.Generator().manual_seed(99)) * 3
    return centers[torch.randint(0, clusters, (n,), generator=g)] + torch.randn(n, d, generator=g)


def fill(store, n, seed=0, batch=250):
    """Write ``n`` clustered keys with values = their write order."""
    for start in range(0, n, batch):
        m = min(batch, n - start)
        store.write(clustered(m, seed + start), torch.arange(start, start + m),
                    {f: torch.full((m,), start) for f in store.meta_fields})


def exact_ids(store, queries, k):
    """Ids of the k nearest held entries by the plain reference (ties to the lower slot)."""
    _, slots = topk_search_reference(queries, store.keys[:len(store)], k, metric=store.metric)
    return store.ids[slots]


def slots_of(store, ids):
    """The slots holding the entries ``ids``."""
    slot = torch.full((store._next_id,), -1)
    slot[store.ids[:len(store)]] = torch.arange(len(store))
    return slot[ids]


def assert_nearest(store, queries, hits, k):
    """The hits are the k nearest held entries: their float64 distances equal the reference's.

    Keys closer to a tie than float32 resolves may come in either order.
    """
    expected, _ = topk_search_reference(queries, store.keys[:len(store)], k, metric=store.metric)
    keys, q = store.keys[slots_of(store, hits.ids[:, :k])].double(), queries.double().unsqueeze(1)
    found = (q - keys).pow(2).sum(-1) if store.metric == "l2" else (q * keys).sum(-1)
    assert torch.allclose(found, expected.double(), rtol=1e-5, atol=1e-5)


def recall(found, expected):
    return np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b)
                    for a, b in zip(found, expected, strict=True)])


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("key_dtype", [torch.float16, torch.float32])
def test_flat_search_equals_the_reference_after_evictions(metric, key_dtype):
    store = Datastore(D, Budget("60KB"), metric=metric, key_dtype=key_dtype)
    fill(store, 3 * store.capacity + 17)
    queries = clustered(30, seed=7)
    hits = store.search(queries, 10)
    distances, slots = topk_search_reference(queries, store.keys[:len(store)], 10, metric=metric)
    assert_nearest(store, queries, hits, 10)
    assert (hits.ids == store.ids[slots]).float().mean() > 0.99
    assert torch.equal(hits.values, store.values[slots_of(store, hits.ids)])
    assert torch.allclose(hits.distances, distances, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("index", "target"), [
    ("IVF16,Flat", 0.95), ("IVF16,SQ8", 0.95), ("IVF16,PQ8", 0.9), ("HNSW8", 0.95)])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_approximate_indexes_reach_their_recall_at_8_on_clustered_keys(index, target, metric):
    train = {"train_size": 1000} if index.startswith("IVF") else {}
    store = Datastore(D, Budget("2MB"), index=index, metric=metric, nprobe=4, **train)
    fill(store, 3000)
    assert store.trained and len(store) == 3000
    queries = clustered(200, seed=12345)
    hits = store.search(queries, 8)
    assert recall(hits.ids, exact_ids(store, queries, 8)) >= target
    exact = (queries.unsqueeze(1) - store.keys[hits.ids].float()).pow(2).sum(-1) \
        if metric == "l2" else (queries.unsqueeze(1) * store.keys[hits.ids].float()).sum(-1)
    assert torch.allclose(hits.distances, exact, rtol=1e-4, atol=1e-3), "distances are exact"


def test_re_ranking_pq_candidates_against_the_stored_keys_raises_recall():
    store = Datastore(D, Budget("2MB"), index="IVF16,PQ8", train_size=1000, nprobe=4)
    fill(store, 3000)
    queries = clustered(200, seed=4)
    exact = exact_ids(store, queries, 8)
    reranked = recall(store.search(queries, 8).ids, exact)
    store.rerank = 1  # the index's own top 8, exact distances only re-sort them
    assert reranked >= 0.95 and recall(store.search(queries, 8).ids, exact) < reranked - 0.1


def test_an_ivf_index_searches_exactly_until_it_has_trained():
    store = Datastore(D, Budget("1MB"), index="IVF8,Flat", train_size=600)
    fill(store, 500)
    assert not store.trained and store.index.ntotal == 0
    queries = clustered(20, seed=3)
    assert torch.equal(store.search(queries, 5).ids, exact_ids(store, queries, 5))
    fill(store, 200, seed=500)
    assert store.trained and store.index.ntotal == 700


def test_clear_forgets_entries_and_training_and_keeps_the_charge():
    budget = Budget("1MB")
    store = Datastore(D, budget, index="IVF8,Flat", train_size=600)
    fill(store, 700)
    used = budget.used
    store.clear()
    assert len(store) == 0 and not store.trained and store.index.ntotal == 0
    assert budget.used == used and store.search(clustered(2, seed=1), 3).ids.eq(-1).all()
    fill(store, 50, seed=7)
    assert store.ids[:50].tolist() == list(range(50))


@settings(max_examples=40, deadline=None)
@given(index=st.sampled_from(["Flat", "IVF4,Flat", "HNSW4"]),
       eviction=st.sampled_from(["fifo", "least_used"]), budget=st.integers(4_000, 30_000),
       ops=st.lists(st.tuples(st.integers(0, 90), st.integers(1, 12)), min_size=1, max_size=12))
def test_budget_holds_and_ivf_scanning_all_lists_stays_exact_under_random_writes(
        index, eviction, budget, ops):
    ledger = Budget(budget + 500)
    ledger.charge("model", 500)
    train = {"train_size": 8} if index.startswith("IVF") else {}
    store = Datastore(8, ledger, index=index, eviction=eviction, nprobe=4, **train)
    nbytes, written = store.nbytes, 0
    assert nbytes == store.nbytes_for(store.capacity) <= budget < store.nbytes_for(
        store.capacity + 1)
    for i, (n, k) in enumerate(ops):
        evicted = store.write(clustered(n, seed=i, d=8), torch.arange(written, written + n))
        written += n
        assert len(store) == min(written, store.capacity)
        assert len(evicted) == max(0, min(written - n, store.capacity) + min(n, store.capacity)
                                   - store.capacity)
        assert store.nbytes == nbytes == ledger.charged("datastore")
        assert ledger.used <= ledger.capacity
        queries = clustered(5, seed=1000 + i, d=8)
        hits = store.search(queries, k)
        assert torch.equal(hits.mask.sum(1), torch.full((5,), min(k, len(store))))
        held = set(store.ids[:len(store)].tolist())
        assert set(hits.ids[hits.mask].tolist()) <= held, "an evicted entry was returned"
        if index != "HNSW4" and len(store):  # Flat, and IVF probing every list, are exact
            assert_nearest(store, queries, hits, min(k, len(store)))
        if store.spec.approximate:
            assert store.index.ntotal <= positions_for(store.capacity)
            serialised = len(faiss.serialize_index(store.index))
            assert serialised <= index_nbytes(store.spec, 8, "l2", positions_for(store.capacity))


def test_fifo_evicts_the_oldest_entries_and_returns_them():
    store = Datastore(2, Budget(datastore_nbytes(2, 4, meta_fields=("doc",))),
                      meta_fields=("doc",))
    assert store.capacity == 4
    keys = torch.arange(12, dtype=torch.float32).view(6, 2)
    assert len(store.write(keys[:3], torch.tensor([10, 11, 12]), {"doc": torch.zeros(3)
                                                                  .long()})) == 0
    evicted = store.write(keys[3:], torch.tensor([13, 14, 15]), {"doc": torch.ones(3).long()})
    assert evicted.ids.tolist() == [0, 1] and evicted.values.tolist() == [10, 11]
    assert torch.equal(evicted.keys, keys[:2].half()) and evicted.meta["doc"].tolist() == [0, 0]
    assert sorted(store.ids.tolist()) == [2, 3, 4, 5]
    hits = store.search(torch.tensor([[4.0, 5.0]]), 2)
    assert hits.ids.tolist() == [[2, 3]] and hits.meta["doc"].tolist() == [[0, 1]]
    assert store.write(keys, torch.arange(6), {"doc": torch.zeros(6).long()}).ids.tolist() == \
        [2, 3, 4, 5], "a write larger than the store keeps its last rows"
    assert sorted(store.ids.tolist()) == [8, 9, 10, 11]


def test_least_used_evicts_the_entries_search_returned_least_oldest_first():
    store = Datastore(1, Budget(datastore_nbytes(1, 4, eviction="least_used")),
                      eviction="least_used")
    store.write(torch.tensor([[0.0], [10.0], [20.0], [30.0]]), torch.arange(4))
    store.search(torch.tensor([[0.0], [1.0], [19.0]]), 1)  # id 0 twice, id 2 once
    store.search(torch.tensor([[100.0]]), 1, count=False)  # not counted
    assert store.usage.tolist() == [2, 0, 1, 0]
    assert store.write(torch.tensor([[40.0], [50.0]]), torch.arange(2)).ids.tolist() == [1, 3]
    assert store.write(torch.tensor([[60.0]]), torch.arange(1)).ids.tolist() == [4]
    assert sorted(store.ids.tolist()) == [0, 2, 5, 6]
    assert store.write(torch.tensor([[70.0]] * 3), torch.arange(3)).ids.tolist() == [5, 6, 2]


def test_least_used_eviction_matches_a_plain_model_under_random_use():
    store = Datastore(4, Budget(datastore_nbytes(4, 16, eviction="least_used")),
                      eviction="least_used")
    g = torch.Generator().manual_seed(0)
    usage: dict[int, int] = {}
    next_id = 0
    for step in range(40):
        n = int(torch.randint(1, 9, (1,), generator=g))
        excess = len(usage) + n - 16
        victims = sorted(usage, key=lambda i: (usage[i], i))[:max(excess, 0)]
        assert store.write(torch.randn(n, 4, generator=g), torch.arange(n)).ids.tolist() \
            == victims, f"step {step}"
        for i in victims:
            del usage[i]
        usage.update({next_id + j: 0 for j in range(n)})
        next_id += n
        for i in store.search(torch.randn(3, 4, generator=g), 2).ids.flatten().tolist():
            usage[i] += 1


def test_values_that_overflow_the_value_dtype_are_refused():
    store = Datastore(2, Budget("10KB"))
    with pytest.raises(ValueError, match=r"values span 0..2147483648, which overflows int32"):
        store.write(torch.zeros(2, 2), torch.tensor([0, 2**31]))
    assert len(store) == 0
    wide = Datastore(2, Budget("10KB"), value_dtype="int64")
    wide.write(torch.zeros(2, 2), torch.tensor([0, 2**40]))
    assert wide.search(torch.zeros(1, 2), 2).values.tolist() == [[0, 2**40]]


@pytest.mark.parametrize("index", ["Flat", "IVF8,Flat", "IVF8,PQ4", "HNSW8"])
def test_save_load_round_trip_searches_identically_and_continues_identically(index, tmp_path):
    def make():
        train = {"train_size": 300} if index.startswith("IVF") else {}
        return Datastore(D, Budget("200KB"), index=index, eviction="least_used",
                         meta_fields=("doc", "time"), **train)

    store = make()
    fill(store, store.capacity + 400, batch=170)
    queries = clustered(30, seed=5)
    store.search(queries, 4)
    assert store.trained == (index != "Flat")
    store.save(tmp_path / "store.safetensors")
    copy = make()
    copy.load(tmp_path / "store.safetensors")
    for s in (store, copy):
        s.write(clustered(120, seed=77), torch.arange(120),
                {"doc": torch.arange(120), "time": torch.zeros(120).long()})
    a, b = store.search(queries, 6), copy.search(queries, 6)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.distances, b.distances)
    assert torch.equal(a.meta["doc"], b.meta["doc"]) and torch.equal(store.usage, copy.usage)


def test_a_store_saved_before_training_trains_the_same_after_loading(tmp_path):
    def make():
        return Datastore(D, Budget("200KB"), index="IVF8,PQ4", train_size=300, seed=3)

    store, copy = make(), make()
    fill(store, 200)
    store.save(tmp_path / "untrained.safetensors")
    copy.load(tmp_path / "untrained.safetensors")
    for s in (store, copy):
        assert not s.trained
        fill(s, 200, seed=200)
        assert s.trained
    queries = clustered(30, seed=5)
    assert torch.equal(store.search(queries, 5).ids, copy.search(queries, 5).ids)
    assert torch.equal(store.tensors()["faiss_index"], copy.tensors()["faiss_index"])


def test_flat_datastore_passes_the_store_conformance_check():
    store = Datastore(D, Budget("50KB"), eviction="least_used", meta_fields=("doc",))
    fill(store, 100)
    check_store(store)


def test_corrupt_files_and_inconsistent_states_are_rejected_without_change(tmp_path):
    store = Datastore(D, Budget("200KB"), index="IVF8,Flat", train_size=300)
    fill(store, 500)
    path = tmp_path / "store.safetensors"
    store.save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    other = Datastore(D, Budget("200KB"), index="IVF8,Flat", train_size=300)
    with pytest.raises(StoreFormatError, match="checksum mismatch"):
        other.load(tmp_path / "bad.safetensors")
    assert len(other) == 0 and other.index.ntotal == 0
    state = store.state_dict()
    broken = {"tensors": state["tensors"], "extra": {**state["extra"], "positions": 499}}
    with pytest.raises(ValueError, match="holding 500 vectors does not match"):
        other.load_state_dict(broken)
    index = state["tensors"]["faiss_index"].clone()
    index[:8] = 0
    with pytest.raises(ValueError, match="does not deserialise"):
        other.load_state_dict({"tensors": {**state["tensors"], "faiss_index": index},
                               "extra": state["extra"]})
    with pytest.raises(ValueError, match="different configuration"):
        Datastore(D, Budget("200KB"), index="IVF8,SQ8", train_size=300).load(path)
    assert len(other) == 0


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"index": "IVF8,PQ3"}, ValueError, "PQ3 needs m >= 1 dividing the dimension 16"),
    ({"index": "LSH"}, ValueError, "expected one of 'Flat'"),
    ({"index": "IVF8,Flat", "train_size": 4}, ValueError, "trains on at least 8 keys"),
    ({"index": "HNSW8", "train_size": 100}, ValueError, "only IVF indexes train"),
    ({"metric": "cosine"}, ValueError, "metric: expected one of"),
    ({"eviction": "lru"}, ValueError, "eviction: expected one of"),
    ({"key_dtype": torch.int8}, ValueError, "dtype: expected one of"),
    ({"nbytes": 40}, BudgetExceeded, "asked for 44 bytes"),
    ({"rerank": 0}, ValueError, "rerank: expected an int >= 1"),
    ({"seed": -1}, ValueError, "seed: expected an int >= 0"),
])
def test_bad_configurations_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Datastore(D, Budget("1MB"), **kwargs)


def test_bad_writes_and_searches_raise_clear_errors_and_change_nothing():
    store = Datastore(4, Budget("10KB"), meta_fields=("doc",))
    good = {"doc": torch.zeros(2, dtype=torch.int64)}
    cases = [((torch.zeros(2, 3), torch.zeros(2).long(), good), r"keys of shape \(n, 4\)"),
             ((torch.zeros(2, 4), torch.zeros(3).long(), good), r"values as an integer tensor"),
             ((torch.zeros(2, 4), torch.zeros(2), good), r"values as an integer tensor"),
             ((torch.zeros(2, 4), torch.zeros(2).long(), None), r"meta fields \['doc'\]"),
             ((torch.full((2, 4), float("nan")), torch.zeros(2).long(), good), "NaN or inf"),
             ((torch.full((2, 4), 1e5), torch.zeros(2).long(), good), "exceeds 65504")]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            store.write(*args)
    assert len(store) == 0
    with pytest.raises(ValueError, match=r"queries of shape \(q, 4\)"):
        store.search(torch.zeros(1, 5), 1)
    with pytest.raises(ValueError, match="k: expected an int >= 1"):
        store.search(torch.zeros(1, 4), 0)


def test_searching_fewer_entries_than_k_pads_the_hits():
    store = Datastore(2, Budget("10KB"), metric="ip")
    empty = store.search(torch.ones(3, 2), 4)
    assert empty.ids.eq(-1).all() and empty.distances.eq(float("-inf")).all()
    store.write(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([7, 8]))
    hits = store.search(torch.ones(1, 2), 3)
    assert hits.values.tolist() == [[8, 7, -1]] and hits.mask.tolist() == [[True, True, False]]
    assert hits.distances.tolist() == [[2.0, 1.0, float("-inf")]]


@pytest.mark.parametrize("index", ["IVF16,Flat", "IVF16,SQ8", "IVF16,PQ8", "HNSW4", "HNSW16"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_index_bytes_formula_matches_faiss_serialised_size(index, metric):
    store = Datastore(32, Budget("4MB"), index=index, metric=metric,
                      **({"train_size": 1000} if index.startswith("IVF") else {}))
    gaps = set()
    for n in (1000, 2500, 4000):
        store.write(torch.randn(n - len(store), 32), torch.zeros(n - len(store)).long())
        unserialised = 0
        if store.spec.kind == "IVF":  # list headers beyond faiss's 8-byte sizes, PQ tables
            unserialised = store.spec.nlist * (LIST_HEADER - 8)
            unserialised += 4 * store.index.precomputed_table.size() \
                if store.spec.codec == "PQ" else 0
        serialised = len(faiss.serialize_index(store.index))
        gaps.add(index_nbytes(store.spec, 32, metric, n) - serialised - unserialised)
    assert len(gaps) == 1 and 0 <= gaps.pop() <= INDEX_HEADER, "exact per vector"
    if store.spec.kind == "HNSW":
        levels = faiss.vector_to_array(store.index.hnsw.levels) - 1
        p, m = np.arange(len(levels)) + 1, store.spec.m
        assert np.array_equal(levels, (p % m == 0).astype(int) + (p % m**2 == 0)
                              + (p % m**3 == 0) + (p % m**4 == 0) + (p % m**5 == 0))


def test_the_registry_builds_a_datastore_by_name():
    store = create("store", "datastore", dim=4, budget=Budget("10KB"), index="HNSW4",
                   key_dtype="float32", value_dtype="int64")
    assert isinstance(store, Datastore) and store.config()["key_dtype"] == "float32"
