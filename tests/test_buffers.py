from collections import Counter, deque

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from torch.overrides import TorchFunctionMode

from memkit import Batch, Budget
from memkit.buffers.class_balanced import ClassBalanced, class_reservoirs, equal_quotas
from memkit.buffers.gdumb import GDumb, balanced_counts
from memkit.buffers.ring import Ring
from memkit.kernels.reservoir import reservoir_slots
from memkit.testing import check_store

SPEC = {"x": ((1,), torch.int64), "y": ((), torch.int64)}
ITEM = 16  # an int64 id and an int64 label
FLOAT_SPEC = {"x": ((3,), torch.float32), "y": ((), torch.int64)}
HIDDEN = {"random": 0, "oldest": 8, "rank": 4}
"""Bytes of the hidden per-item field of each eviction rule: none, int64 time, float32 rank."""


def items(ids, labels=0):
    ids = torch.as_tensor(ids, dtype=torch.int64)
    labels = torch.as_tensor(labels, dtype=torch.int64).expand(len(ids))
    return Batch(x=ids.unsqueeze(1), y=labels.clone())


def held(store):
    """Ids and labels held, by slot."""
    t = store.tensors()
    return t["x"][: len(store), 0].tolist(), t["y"][: len(store)].tolist()


def per_class(store):
    return Counter(held(store)[1])


# ---------------------------------------------------------------- Ring

def ring_order(store):
    """Ids held, oldest first."""
    ids = store.tensors()["x"][:, 0]
    oldest = (store.head - len(store)) % store.capacity
    return [int(ids[(oldest + i) % store.capacity]) for i in range(len(store))]


def test_ring_passes_the_conformance_check():
    for capacity in (1, 7, 50):
        check_store(Ring(FLOAT_SPEC, capacity * 20))
    check_store(Ring(FLOAT_SPEC, "1KB", codec="int8"))


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.one_of(st.tuples(st.just("add"), st.integers(0, 30)),
                              st.tuples(st.just("resize"), st.integers(1, 25)),
                              st.tuples(st.just("reload"), st.just(0))), max_size=12),
       capacity=st.integers(1, 20))
def test_ring_holds_the_newest_items_in_fifo_order_through_resizes_and_reloads(
        ops, capacity, tmp_path_factory):
    budget = Budget(30 * ITEM)
    store, model, next_id = Ring(SPEC, budget, nbytes=capacity * ITEM), deque(), 0
    for op, arg in ops:
        if op == "add":
            evicted = store.add(items(range(next_id, next_id + arg)))
            expect = [*model, *range(next_id, next_id + arg)]
            kept = expect[max(len(expect) - store.capacity, 0):]
            old = [i for i in model if i not in kept]
            assert evicted.x[:, 0].tolist() == old, "evicts the overwritten items, oldest first"
            model, next_id = deque(kept), next_id + arg
        elif op == "resize":
            evicted = store.resize(arg * ITEM)
            gone = len(model) - min(len(model), arg)
            assert sorted(evicted.x[:, 0].tolist()) == [model.popleft() for _ in range(gone)]
            assert budget.charged("ring") == arg * ITEM
        else:
            path = tmp_path_factory.mktemp("ring") / "r.safetensors"
            store.save(path)
            budget = Budget(30 * ITEM)
            store = Ring(SPEC, budget, nbytes=ITEM)
            store.load(path)
        assert ring_order(store) == list(model)


def test_ring_refuses_an_inconsistent_head():
    store = Ring(SPEC, 5 * ITEM)
    store.add(items(range(3)))
    state = store.state_dict()
    with pytest.raises(ValueError, match="saved head 1 is not a slot"):
        store.load_state_dict({**state, "extra": {**state["extra"], "head": 1}})
    assert ring_order(store) == [0, 1, 2]


# ---------------------------------------------------------------- ClassBalanced

class RankedById(ClassBalanced):
    """evict='rank' with the item id as its rank, so the conformance check can drive it."""

    def __init__(self, spec, budget, **kwargs):
        super().__init__(spec, budget, evict="rank", **kwargs)

    def add(self, batch):
        rank = batch.x[:, 0].float() if isinstance(batch, Batch) else None
        return super().add(batch, rank=rank)


def test_class_balanced_passes_the_conformance_check():
    for evict in ("random", "oldest"):
        item = 20 + HIDDEN[evict]
        check_store(ClassBalanced(FLOAT_SPEC, 40 * item, evict=evict, seed=1))
        check_store(ClassBalanced(FLOAT_SPEC, 7 * item, evict=evict))
    check_store(RankedById(FLOAT_SPEC, 30 * 24))
    assert ClassBalanced(FLOAT_SPEC, "1KB", evict="rank").item_nbytes == 24


def test_quotas_split_the_capacity_and_give_the_remainder_to_the_first_classes():
    assert equal_quotas(10, 3) == [4, 3, 3] and equal_quotas(2, 3) == [1, 1, 0]
    store = ClassBalanced(SPEC, 10 * ITEM)
    store.add(items(range(4), [7, 2, 7, 5]))  # arrival order 7, 2, 5
    assert store.classes == [7, 2, 5] and store.quotas() == {7: 4, 2: 3, 5: 3}


@pytest.mark.parametrize("evict", ["random", "oldest", "rank"])
def test_every_class_holds_its_quota_after_each_experience(evict):
    sizes = {0: 30, 1: 25, 2: 4, 3: 40, 4: 18, 5: 9, 6: 33}  # class 2 and 5 are short
    store = ClassBalanced(SPEC, Budget(29 * (ITEM + HIDDEN[evict])), evict=evict)
    g, next_id = torch.Generator().manual_seed(0), 0
    for group in ([0, 1], [2, 3], [4], [5, 6]):
        labels = torch.cat([torch.full((sizes[c],), c) for c in group])
        labels = labels[torch.randperm(len(labels), generator=g)]
        batch = items(range(next_id, next_id + len(labels)), labels)
        next_id += len(labels)
        for part in batch.split(11):
            store.add(part, **({"rank": torch.rand(len(part), generator=g)}
                               if evict == "rank" else {}))
        quota = store.quotas()
        assert dict(per_class(store)) == {c: min(sizes[c], quota[c]) for c in store.classes}
    assert list(store.quotas().values()) == [5, 4, 4, 4, 4, 4, 4]  # 29 slots, 7 classes


def test_each_class_keeps_a_uniform_sample_of_its_own_stream():
    counts = np.zeros(60)
    for seed in range(300):
        store = ClassBalanced(SPEC, 16 * ITEM, seed=seed)
        store.add(items(range(100, 130), 1))  # another class, quota 8
        for start in range(0, 60, 9):  # class 0: 60 items in uneven batches, quota 8
            ids = range(start, min(start + 9, 60))
            store.add(Batch.cat([items(ids, 0), items(range(200, 203), 1)]))
        ids, labels = held(store)
        assert Counter(labels) == {0: 8, 1: 8}
        counts[[i for i, c in zip(ids, labels, strict=True) if c == 0]] += 1
    assert chisquare(counts).pvalue > 1e-3
    assert abs(counts[:30].sum() - counts[30:].sum()) / counts.sum() < 0.06


def _shrink_on_new_class(evict, seed=0, rank=None):
    """20 items of class 0 fill the buffer; class 1 arrives and class 0 must give back 10."""
    store = ClassBalanced(SPEC, 20 * (ITEM + HIDDEN[evict]), evict=evict, seed=seed)
    kwargs = {"rank": rank} if evict == "rank" else {}
    store.add(items(range(20), 0), **kwargs)
    extra = {"rank": torch.zeros(5)} if evict == "rank" else {}
    evicted = store.add(items(range(100, 105), 1), **extra)
    return store, set(evicted.x[:, 0].tolist())


def test_oldest_eviction_gives_back_the_earliest_items():
    store, evicted = _shrink_on_new_class("oldest")
    assert evicted == set(range(10))
    ids, labels = held(store)
    assert sorted(i for i, c in zip(ids, labels, strict=True) if c == 0) == list(range(10, 20))


def test_rank_eviction_gives_back_the_highest_ranks():
    rank = torch.randperm(20, generator=torch.Generator().manual_seed(3)).float()
    _, evicted = _shrink_on_new_class("rank", rank=rank)
    assert evicted == set(torch.nonzero(rank >= 10).squeeze(1).tolist())


def test_random_eviction_is_uniform_and_seeded():
    counts = np.zeros(20)
    for seed in range(400):
        _, evicted = _shrink_on_new_class("random", seed=seed)
        assert len(evicted) == 10 and evicted <= set(range(20))
        counts[list(evicted)] += 1
    assert chisquare(counts).pvalue > 1e-3
    assert _shrink_on_new_class("random", 5)[1] == _shrink_on_new_class("random", 5)[1]


def test_shrinking_applies_the_new_quotas_by_the_eviction_rule():
    budget = Budget(40 * (ITEM + 8))
    store = ClassBalanced(SPEC, budget, evict="oldest")
    store.add(Batch.cat([items(range(0, 20), 0), items(range(20, 40), 1)]))
    evicted = store.resize(11 * (ITEM + 8))  # quotas 6 and 5: keep the newest
    assert sorted(held(store)[0]) == [*range(14, 20), *range(35, 40)]
    assert len(evicted) == 29 and budget.used == 11 * (ITEM + 8)


def test_class_balanced_refuses_bad_labels_and_ranks_before_changing():
    store = ClassBalanced(SPEC, 10 * ITEM)
    store.add(items(range(5), 0))
    before = store.state_dict()
    with pytest.raises(ValueError, match="labels y >= 0, got -1"):
        store.add(items(range(3), -1))
    with pytest.raises(ValueError, match="only used with evict='rank'"):
        store.add(items(range(3), 1), rank=torch.zeros(3))
    ranked = ClassBalanced(SPEC, 10 * (ITEM + 4), evict="rank")
    with pytest.raises(ValueError, match=r"rank= a tensor of shape \(3,\), got None"):
        ranked.add(items(range(3), 1))
    with pytest.raises(ValueError, match="finite floating ranks"):
        ranked.add(items(range(3), 1), rank=torch.tensor([0.0, float("inf"), 1.0]))
    assert store.state_dict()["extra"] == before["extra"] and len(ranked) == 0
    assert ranked.classes == [] and store.classes == [0] and store.seen == [5]
    with pytest.raises(ValueError, match="evict expected one of"):
        ClassBalanced(SPEC, "1KB", evict="lru")
    with pytest.raises(ValueError, match="integer class labels"):
        ClassBalanced({"x": ((1,), torch.int64), "y": ((), torch.float32)}, "1KB")


# ---------------------------------------------------------------- GDumb

def gdumb_reference(capacity, labels):
    """GDumb's rule item by item: class counts after offering ``labels`` in order."""
    counts = Counter()
    for c in labels:
        if sum(counts.values()) < capacity:
            counts[c] += 1
        elif counts[c] < max(counts.values()):
            largest = min(k for k, n in counts.items() if n == max(counts.values()))
            counts[largest] -= 1
            counts[c] += 1
    return {c: n for c, n in counts.items() if n}


def test_gdumb_passes_the_conformance_check():
    for capacity in (1, 7, 40):
        check_store(GDumb(FLOAT_SPEC, capacity * 20, seed=2))


@settings(max_examples=150, deadline=None)
@given(labels=st.lists(st.integers(0, 6), max_size=80), capacity=st.integers(1, 15),
       cut=st.integers(1, 20), seed=st.integers(0, 1000))
def test_gdumb_batches_make_the_same_decisions_as_item_by_item(labels, capacity, cut, seed):
    store = GDumb(SPEC, capacity * ITEM, seed=seed)
    for start in range(0, len(labels), cut):
        part = labels[start : start + cut]
        before = set(held(store)[0])
        evicted = store.add(items(range(start, start + len(part)), part))
        assert set(evicted.x[:, 0].tolist()) == before - set(held(store)[0])
    assert per_class(store) == gdumb_reference(capacity, labels)
    ids, stored = held(store)
    assert len(set(ids)) == len(ids), "an item is held once"
    assert all(labels[i] == c for i, c in zip(ids, stored, strict=True))


def test_gdumb_keeps_balanced_classes_on_a_class_incremental_stream():
    store = GDumb(SPEC, Budget(50 * ITEM))
    g, next_id = torch.Generator().manual_seed(0), 0
    for first in range(0, 12, 2):
        labels = torch.tensor([first, first + 1]).repeat(40)[torch.randperm(80, generator=g)]
        store.add(items(range(next_id, next_id + 80), labels))
        next_id += 80
        counts = per_class(store).values()
        assert len(store) == 50 and max(counts) - min(counts) <= 1
        assert set(per_class(store)) == set(range(first + 2))


def test_gdumb_evicts_a_random_item_of_the_largest_class_or_drops_the_new_one():
    counts = np.zeros(8)
    for seed in range(400):
        store = GDumb(SPEC, 10 * ITEM, seed=seed)
        store.add(items(range(10), [0] * 8 + [1] * 2))
        evicted = store.add(items([10], 1))
        assert per_class(store) == {0: 7, 1: 3} and evicted.y.tolist() == [0]
        counts[evicted.x[0, 0]] += 1
    assert chisquare(counts).pvalue > 1e-3
    assert len(store.add(items([11], 0))) == 0, "class 0 is the largest: its item is dropped"
    assert per_class(store) == {0: 7, 1: 3} and 11 not in held(store)[0]
    store.add(items(range(12, 16), 1))  # two replace class-0 items, then 1 is a largest class
    assert per_class(store) == {0: 5, 1: 5}
    evicted = store.add(items([20, 21, 22], 2))
    assert per_class(store) == {0: 3, 1: 4, 2: 3}
    assert evicted.y.tolist() == [0, 1, 0], "the largest class, the lowest label on ties"


def test_gdumb_shrink_evicts_from_the_largest_classes_first():
    assert balanced_counts(torch.tensor([5, 5, 3]), 10).tolist() == [3, 4, 3]
    assert balanced_counts(torch.tensor([9, 1, 4]), 7).tolist() == [3, 1, 3]
    budget = Budget(12 * ITEM)
    store = GDumb(SPEC, budget)
    store.add(items(range(12), [0] * 7 + [1] * 4 + [2]))
    evicted = store.resize(6 * ITEM)
    assert per_class(store) == {0: 2, 1: 3, 2: 1} and len(evicted) == 6
    assert set(held(store)[0]) | set(evicted.x[:, 0].tolist()) == set(range(12))
    assert budget.used == 6 * ITEM


def test_gdumb_refuses_negative_labels_before_changing():
    store = GDumb(SPEC, 4 * ITEM)
    store.add(items(range(4), [0, 1, 0, 1]))
    with pytest.raises(ValueError, match="labels y >= 0, got -3"):
        store.add(items([9, 10], [2, -3]))
    assert held(store) == ([0, 1, 2, 3], [0, 1, 0, 1])


def test_the_reference_itself_follows_the_rule():
    assert gdumb_reference(3, [0, 0, 0, 1, 1, 2]) == {0: 1, 1: 1, 2: 1}
    assert gdumb_reference(2, [0, 0, 0, 1]) == {0: 1, 1: 1}


@pytest.mark.parametrize("make", [lambda: Ring(SPEC, "1KB"), lambda: ClassBalanced(SPEC, "1KB"),
                                  lambda: GDumb(SPEC, "1KB")], ids=["ring", "class_balanced",
                                                                    "gdumb"])
def test_an_empty_batch_changes_nothing(make):
    store = make()
    store.add(items(range(5), [0, 1, 2, 0, 1]))
    before = store.state_dict()
    before = {k: v.clone() for k, v in before["tensors"].items()}, dict(before["extra"])
    assert len(store.add(items([], []))) == 0
    after = store.state_dict()
    assert all(torch.equal(v, after["tensors"][k]) for k, v in before[0].items())
    assert {k: v for k, v in after["extra"].items() if k != "updates"} == \
        {k: v for k, v in before[1].items() if k != "updates"}


@pytest.mark.parametrize("memory", [{"name": "ring"}, {"name": "gdumb"},
                                    {"name": "class_balanced", "evict": "oldest"}])
def test_the_buffers_are_named_in_configs_and_replay_from_them(memory):
    import memkit.agents.er  # noqa: F401 - registers "er"
    from memkit import run
    from memkit.config import build

    setup = build({"name": "cfg", "seed": 1, "budget": "6KB",
                   "stream": {"name": "blobs", "n_classes": 4, "n_experiences": 2,
                              "n_per_class": 30},
                   "model": {"name": "mlp", "hidden": [8]}, "memory": memory,
                   "learner": {"name": "er", "epochs": 1, "lr": 0.05}})
    result = run(setup.stream, setup.learner, progress=False)
    store = setup.learner.memory
    assert store.registry_name == memory["name"] and 0 < len(store) <= store.capacity
    assert result.memory[-1]["budget"]["used"] <= 6000
    assert setup.budget.charged(memory["name"]) == store.nbytes


# ---------------------------------------------------------------- cost of an add

class LargestTensorTouched(TorchFunctionMode):
    """The most elements of a tensor that a torch call made, or read to make a new one.

    Views and the reads of indexing (``t[slots]``, ``t[slots] = v``) do not count: they
    touch only the rows they name.
    """

    INDEXING = (torch.Tensor.__getitem__, torch.Tensor.__setitem__)

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        made = [t for t in (out if isinstance(out, tuple | list) else (out,))
                if isinstance(t, torch.Tensor) and t._base is None]
        read = [] if func in self.INDEXING or not made else [
            t for t in (*args, *(kwargs or {}).values()) if isinstance(t, torch.Tensor)]
        self.numel = max([self.numel, *(t.numel() for t in made + read)])
        return out


@pytest.mark.parametrize("make", [lambda: ClassBalanced(SPEC, 20_000 * ITEM, seed=3),
                                  lambda: GDumb(SPEC, 20_000 * ITEM, seed=3)],
                         ids=["class_balanced", "gdumb"])
def test_an_add_of_known_classes_touches_no_tensor_that_grows_with_the_capacity(make):
    store, g = make(), torch.Generator().manual_seed(0)
    store.add(items(range(20_000), torch.randint(0, 5, (20_000,), generator=g)))
    evicted = 0
    for step in range(20):
        batch = items(range(10**5 + 32 * step, 10**5 + 32 * step + 32),
                      torch.randint(0, 5, (32,), generator=g))
        with LargestTensorTouched() as largest:
            evicted += len(store.add(batch))
        assert largest.numel <= 1024, f"an add of 32 items touched {largest.numel} elements"
    assert evicted > 0, "the adds replaced stored items"
    store.resize(19_000 * ITEM)
    with LargestTensorTouched() as largest:
        store.add(items([7], 0))
    assert largest.numel >= 19_000, "the per-class state is rebuilt after a resize"


def twin(store):
    """A store built from ``store``'s config and loaded from its state (indexes rebuilt)."""
    other = type(store)(budget=Budget(10**6), **store.config())
    other.load_state_dict(store.state_dict())
    return other


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa["extra"] == sb["extra"] and all(
        torch.equal(t, sb["tensors"][k]) for k, t in sa["tensors"].items())


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.one_of(st.tuples(st.just("add"), st.lists(st.integers(0, 6),
                                                                  max_size=25)),
                              st.tuples(st.just("resize"), st.integers(1, 30))),
                    min_size=1, max_size=10),
       capacity=st.integers(1, 20), evict=st.sampled_from(["random", "oldest", "gdumb"]),
       seed=st.integers(0, 100))
def test_a_store_reloaded_at_any_step_continues_identically(ops, capacity, evict, seed):
    """The per-class state kept between adds equals what a reload rebuilds from the tensors."""
    budget = Budget(10**6)
    store = (GDumb(SPEC, budget, nbytes=capacity * ITEM, seed=seed) if evict == "gdumb" else
             ClassBalanced(SPEC, budget, nbytes=capacity * (ITEM + HIDDEN[evict]),
                           evict=evict, seed=seed))
    next_id = 0
    for op, arg in ops:
        copy = twin(store)
        if op == "add":
            batch = items(range(next_id, next_id + len(arg)), arg)
            next_id += len(arg)
            kept, redone = store.add(batch), copy.add(batch)
        else:
            nbytes = arg * store.item_nbytes
            kept, redone = store.resize(nbytes), copy.resize(nbytes)
        assert torch.equal(kept.x, redone.x) and same_state(store, copy)
        if isinstance(store, GDumb):
            assert store.class_counts() == dict(sorted(per_class(store).items()))


@settings(max_examples=150, deadline=None)
@given(groups=st.lists(st.integers(0, 4), max_size=40),
       seen=st.lists(st.integers(0, 30), min_size=5, max_size=5),
       quota=st.lists(st.integers(0, 12), min_size=5, max_size=5), seed=st.integers(0, 10**6))
def test_class_reservoirs_equal_algorithm_r_run_for_each_class_in_turn(groups, seen, quota,
                                                                       seed):
    group = torch.tensor(groups, dtype=torch.int64)
    rows, classes, slots = class_reservoirs(group, torch.tensor(seen), torch.tensor(quota),
                                            torch.Generator().manual_seed(seed))
    g, expected = torch.Generator().manual_seed(seed), []
    for c in sorted(set(groups)):
        members = torch.nonzero(group == c).squeeze(1)
        picked, virtual = reservoir_slots(seen[c], len(members), quota[c], g)
        expected += [(int(r), c, int(v)) for r, v in zip(members[picked], virtual, strict=True)]
    got = list(zip(rows.tolist(), classes.tolist(), slots.tolist(), strict=True))
    assert got == expected


def test_class_balanced_refuses_a_state_holding_labels_of_no_saved_class():
    state = ClassBalanced(SPEC, 10 * ITEM)
    state.add(items(range(4), [3, 1, 3, 1]))
    state = state.state_dict()
    bad = {**state, "extra": {**state["extra"], "classes": [3], "seen": [2]}}
    store = ClassBalanced(SPEC, 10 * ITEM)
    store.add(items([9], 0))
    with pytest.raises(ValueError, match=r"held labels \[1\] are not among the saved classes"):
        store.load_state_dict(bad)
    assert held(store) == ([9], [0]) and store.classes == [0] and store.seen == [1]
