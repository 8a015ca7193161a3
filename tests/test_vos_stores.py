import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from memkit import Batch, Budget, BudgetExceeded
from memkit.buffers.grcl import GatedRegularizer, mas_importance, pack_gate, unpack_gate
from memkit.buffers.lwl import LWLMemory, frame_spec
from memkit.buffers.rmscl import RMSCLMemory, descriptors
from memkit.buffers.usage import UsageMemory
from memkit.testing import check_store

C, H, W = 4, 2, 2
SPEC = frame_spec(C, H, W)
LWL_ENTRY = C * H * W * 2 + H * W + 4  # float16 features, uint8 mask, float32 weight
RMSCL_ENTRY = C * H * W * 2 + H * W + 2 * C * 4  # ... and a float32 descriptor of 2C
USAGE_ENTRY = RMSCL_ENTRY + 4 + 4  # ... and float32 usage, int32 life
FRAME_MEMORIES = (LWLMemory, RMSCLMemory, UsageMemory)


def frames(ids):
    """Frames whose feature maps are their id everywhere (exact in float16), all target."""
    ids = torch.as_tensor(ids, dtype=torch.float32)
    return Batch(x=ids[:, None, None, None].expand(-1, C, H, W).clone(),
                 y=torch.full((len(ids), H, W), 255, dtype=torch.uint8))


def along(*vectors):
    """Frames whose feature maps are ``vectors`` (C,) everywhere, all target: descriptor
    ``[v / |v|, 0] / sqrt(2)``."""
    x = torch.tensor(vectors, dtype=torch.float32)
    return Batch(x=x[:, :, None, None].expand(-1, C, H, W).clone(),
                 y=torch.full((len(vectors), H, W), 255, dtype=torch.uint8))


def held_ids(store):
    return store.contents().x[:, 0, 0, 0].int().tolist()


E1, E2, E3, E4 = torch.eye(C).tolist()


def test_entry_bytes_are_exact_and_decide_the_capacity():
    assert LWLMemory.entry_nbytes(SPEC) == LWL_ENTRY == 40
    assert RMSCLMemory.entry_nbytes(SPEC) == RMSCL_ENTRY
    assert UsageMemory.entry_nbytes(SPEC) == USAGE_ENTRY
    assert LWLMemory.entry_nbytes(SPEC, "float32") == LWL_ENTRY + C * H * W * 2
    for cls, entry in zip(FRAME_MEMORIES, (LWL_ENTRY, RMSCL_ENTRY, USAGE_ENTRY), strict=True):
        budget = Budget(7 * entry + entry - 1)
        store = cls(SPEC, budget)
        assert store.capacity == 7 and store.nbytes == 7 * entry == budget.used


@pytest.mark.parametrize("cls", FRAME_MEMORIES)
def test_frame_memories_pass_the_conformance_check(cls):
    for entries in (1, 3, 20):
        check_store(cls(SPEC, entries * cls.entry_nbytes(SPEC)))
    check_store(cls(SPEC, 10 * cls.entry_nbytes(SPEC, "int8") + 2 * 4 * C * H * W,
                    codec="int8"))


# ---------------------------------------------------------------- LWL


def lwl_weights_by_hand(n, eta, floor):
    """Closed form: w_k proportional to (1 / (1 - eta))^k, then frame 0 raised to the floor."""
    w = [(1 / (1 - eta)) ** k for k in range(n)]
    w = [v / sum(w) for v in w]
    if n > 1 and w[0] < floor:
        rest = sum(w[1:])
        w = [floor] + [v * (1 - floor) / rest for v in w[1:]]
    return w


@pytest.mark.parametrize(("eta", "floor"), [(0.1, 0.25), (0.1, 0.0), (0.3, 0.5)])
def test_lwl_weights_grow_geometrically_and_frame_0_is_floored(eta, floor):
    memory = LWLMemory(SPEC, 20 * LWL_ENTRY, eta=eta, init_floor=floor)
    for n in range(1, 12):
        memory.add(frames([n - 1]))
        np.testing.assert_allclose(memory.weights.numpy(), lwl_weights_by_hand(n, eta, floor),
                                   rtol=1e-5)
    w = memory.weights
    torch.testing.assert_close(w[2:] / w[1:-1], torch.full((9,), 1 / (1 - eta)))


def test_lwl_first_weights_by_hand():
    memory = LWLMemory(SPEC, 10 * LWL_ENTRY)
    memory.add(frames([0, 1]))
    torch.testing.assert_close(memory.weights, torch.tensor([0.9 / 1.9, 1 / 1.9]))
    memory.add(frames([2, 3]))  # 1/(1 + r + r^2 + r^3) = 0.212 < 0.25: floored
    assert float(memory.weights[0]) == 0.25
    slots, weights = memory.training_set()
    assert slots.tolist() == [0, 1, 2, 3] and torch.equal(weights, memory.weights)


def test_lwl_evicts_the_lowest_weight_non_initial_entry_first_in_first_out():
    memory = LWLMemory(SPEC, 4 * LWL_ENTRY)
    for i in range(10):
        evicted = memory.add(frames([i]))
        assert sorted(held_ids(memory)) == [0, *range(max(1, i - 2), i + 1)]
        assert held_ids(memory)[0] == 0, "frame 0 stays in slot 0"
        assert evicted.x[:, 0, 0, 0].int().tolist() == ([i - 3] if i >= 4 else [])
    assert float(memory.weights.sum()) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=8), capacity=st.integers(1, 9))
def test_lwl_batch_adds_equal_frame_by_frame_adds(sizes, capacity):
    batched, single = (LWLMemory(SPEC, capacity * LWL_ENTRY) for _ in range(2))
    start = 0
    for size in sizes:
        ids = list(range(start, start + size))
        gone = batched.add(frames(ids)).x[:, 0, 0, 0].int().tolist()
        gone_single = [i for j in ids for i in single.add(frames([j])).x[:, 0, 0, 0].int().tolist()]
        assert sorted(gone) == sorted(i for i in gone_single if i < start), "held entries out"
        start += size
    assert sorted(held_ids(batched)) == sorted(held_ids(single))
    order = lambda m: dict(zip(held_ids(m), m.weights.tolist(), strict=True))  # noqa: E731
    assert order(batched) == pytest.approx(order(single), rel=1e-5)


def test_lwl_unbounded_holds_every_frame_on_a_budget_of_exactly_that_size():
    memory = LWLMemory.unbounded(SPEC, 300)
    assert memory.capacity == 300 and memory.budget.capacity == 300 * LWL_ENTRY
    for start in range(0, 300, 50):
        assert len(memory.add(frames(range(start, start + 50)))) == 0
    assert held_ids(memory) == list(range(300))
    w = memory.weights
    assert float(w[0]) == 0.25 and float(w.sum()) == pytest.approx(1.0)
    assert bool((w[2:] >= w[1:-1]).all()), "weights grow with recency (old ones underflow to 0)"
    with pytest.raises(ValueError, match="n_frames >= 1"):
        LWLMemory.unbounded(SPEC, 0)


def test_lwl_shrink_keeps_frame_0_and_the_newest_and_renormalises():
    memory = LWLMemory(SPEC, 6 * LWL_ENTRY)
    memory.add(frames(range(6)))
    evicted = memory.resize(3 * LWL_ENTRY)
    assert sorted(evicted.x[:, 0, 0, 0].int().tolist()) == [1, 2, 3]
    assert held_ids(memory) == [0, 4, 5]
    assert float(memory.weights.sum()) == pytest.approx(1.0) and float(memory.weights[0]) >= 0.25


# ---------------------------------------------------------------- RMSCL


def test_rmscl_descriptors_pool_foreground_and_background():
    x = torch.zeros(1, C, H, W)
    x[0, 0, 0, :] = 3.0  # top row: feature 0
    x[0, 1, 1, :] = 2.0  # bottom row: feature 1
    y = torch.zeros(1, H, W, dtype=torch.uint8)
    y[0, 0, :] = 255  # the target is the top row
    expected = torch.tensor([[1, 0, 0, 0, 0, 1, 0, 0]]) / math.sqrt(2)
    torch.testing.assert_close(descriptors(x, y), expected)
    torch.testing.assert_close(descriptors(x, torch.zeros_like(y))[0, :C], torch.zeros(C))


def test_rmscl_evicts_the_entry_best_rebuilt_by_the_others():
    memory = RMSCLMemory(SPEC, 3 * RMSCL_ENTRY, lam=0.0)
    memory.add(along(E1, [1, 1, 0, 0], E2))  # slot 1 = e1 + e2 is a mix of slots 0 and 2
    evicted = memory.add(along(E3))
    torch.testing.assert_close(evicted.x[0, :, 0, 0], torch.tensor([1.0, 1.0, 0, 0]))
    assert memory.contents().x[:, :, 0, 0].tolist() == [E1, E3, E2] and memory.newest == 1


def test_rmscl_does_not_store_a_newcomer_the_memory_already_rebuilds():
    memory = RMSCLMemory(SPEC, 3 * RMSCL_ENTRY, lam=0.0)
    memory.add(along(E1, E2, E3))
    assert len(memory.add(along([0, 2, 1, 0]))) == 0  # 2 e2 + e3: nothing new
    assert memory.contents().x[:, :, 0, 0].tolist() == [E1, E2, E3] and memory.newest == -1


def test_rmscl_keeps_frame_0_even_when_it_is_redundant():
    memory = RMSCLMemory(SPEC, 3 * RMSCL_ENTRY, lam=0.0)
    memory.add(along(E1, E1, E2))  # frame 0 and slot 1 rebuild each other exactly
    memory.add(along(E3))
    assert memory.contents().x[:, :, 0, 0].tolist() == [E1, E3, E2]


def test_rmscl_trains_on_the_code_of_the_current_frame():
    memory = RMSCLMemory(SPEC, 4 * RMSCL_ENTRY, lam=0.0, ridge=0.0)
    memory.add(along(E1, E2, E3))  # newest: slot 2 (e3) leaves the dictionary
    query = along([1, 2, 0, 0])
    code = memory.code(query)
    torch.testing.assert_close(code, torch.tensor([1, 2, 0], dtype=torch.float64) / 5**0.5)
    slots, weights = memory.training_set(query)
    # raw weights [1/sqrt5, 2/sqrt5, 1]: frame 0's share 0.191 is floored to 0.25
    raw = torch.tensor([2 / 5**0.5, 1.0])
    assert slots.tolist() == [0, 1, 2]
    torch.testing.assert_close(weights, torch.cat([torch.tensor([0.25]),
                                                   0.75 * raw / raw.sum()]))
    slots, weights = memory.training_set(along(E4))  # nothing in memory looks like e4
    assert slots.tolist() == [0, 2] and weights.tolist() == [0.25, 0.75]


def test_rmscl_shrink_drops_the_least_informative_entries():
    memory = RMSCLMemory(SPEC, 4 * RMSCL_ENTRY, lam=0.0)
    memory.add(along(E1, E2, [1, 1, 0, 0], E3))
    evicted = memory.resize(3 * RMSCL_ENTRY)
    torch.testing.assert_close(evicted.x[0, :, 0, 0], torch.tensor([1.0, 1.0, 0, 0]))
    assert memory.contents().x[:, :, 0, 0].tolist() == [E1, E2, E3] and memory.newest == 2


# ---------------------------------------------------------------- usage


def test_usage_accumulates_attention_and_evicts_the_least_used_per_read():
    memory = UsageMemory(SPEC, 3 * USAGE_ENTRY, temperature=0.5)
    memory.add(along(E1, E2))
    slots, weights = memory.training_set(along(E2))
    # similarities: e1.e2 / 2 = 0 and e2.e2 / 2 = 0.5 (descriptors are scaled by 1/sqrt2)
    a = torch.softmax(torch.tensor([0.0, 0.5]) / 0.5, dim=0)
    torch.testing.assert_close(memory.rates().float(), a)
    assert slots.tolist() == [0, 1] and float(weights[0]) == pytest.approx(max(0.25, a[0]))
    memory.add(along(E3))
    memory.training_set(along(E2))  # slot 2 (e3) is read once, with little attention
    evicted = memory.add(along(E4))
    assert evicted.x[0, :, 0, 0].tolist() == E3
    assert memory.contents().x[:, :, 0, 0].tolist() == [E1, E2, E4]


def test_usage_keeps_entries_never_read_and_frame_0():
    memory = UsageMemory(SPEC, 3 * USAGE_ENTRY)
    memory.add(along(E1, E2))
    for _ in range(3):
        memory.training_set(along(E2))  # slot 1 is used a lot, frame 0 hardly
    memory.add(along(E3))  # never read: kept over slot 1 when the next frame comes
    assert memory.add(along(E4)).x[0, :, 0, 0].tolist() == E2
    assert memory.contents().x[:, :, 0, 0].tolist() == [E1, E4, E3]
    assert math.isinf(float(memory.rates()[1]))


# ---------------------------------------------------------------- GRCL


@settings(max_examples=100, deadline=None)
@given(bits=st.lists(st.booleans(), min_size=1, max_size=70))
def test_gates_pack_like_numpy_packbits_into_ceil_n_over_8_bytes(bits):
    gate = torch.tensor(bits)
    packed = pack_gate(gate)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(len(bits) / 8),)
    np.testing.assert_array_equal(packed.numpy(), np.packbits(np.array(bits)))
    assert torch.equal(unpack_gate(packed, len(bits)), gate)


def linear_model(weights=(0.5, -1.0), bias=0.25):
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weights]))
        model.bias.fill_(bias)
    return model


def grcl_value(grcl, model):
    return grcl.penalty(model).detach()


def test_mas_importance_is_the_mean_absolute_gradient_of_the_squared_output_norm():
    model, x = linear_model(), torch.tensor([[1.0, 2.0], [-3.0, 1.0]])
    # f = w.x + b = -1.25 and -2.25; d f^2 / dw = 2 f x, d f^2 / db = 2 f
    f = torch.tensor([-1.25, -2.25])
    expected = torch.cat([(2 * f[:, None] * x).abs().mean(0), (2 * f).abs().mean(0, True)])
    torch.testing.assert_close(mas_importance(model, x), expected)  # [7.375, 4.75, 3.5]


def test_grcl_gate_bytes_and_penalty_by_hand():
    model = linear_model()
    budget = Budget(1000)
    grcl = GatedRegularizer(model, budget, nbytes=2 * (3 * 4 + 1 + 8), fraction=0.5, lam=2.0)
    assert GatedRegularizer.pair_nbytes(model) == 3 * 4 + math.ceil(3 / 8) + 8 == 21
    assert grcl.capacity == 2 and grcl.nbytes == 42 == budget.used
    assert grcl.gates.shape == (2, 1) and grcl.gates.dtype == torch.uint8
    assert float(grcl_value(grcl, model)) == 0.0
    x = torch.tensor([[1.0, 2.0], [-3.0, 1.0]])
    grcl.consolidate(model, x)  # importance [7.375, 4.75, 3.5]: the top 2 of 3 are the weights
    assert grcl.gate(0).tolist() == [True, True, False]
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.5, 0.0]]))
        model.bias.fill_(5.0)
    # lam * ((1.5 - 0.5)^2 + (0 + 1)^2); the bias is not gated
    assert float(grcl_value(grcl, model)) == pytest.approx(2.0 * (1.0 + 1.0))
    grcl.consolidate(model, torch.tensor([[0.0, 0.0], [0.0, 0.0]]))  # only the bias matters
    assert grcl.gate(1).tolist() == [True, False, True]  # ties go to the lower index
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, 1.0]]))
        model.bias.fill_(4.0)
    # pair 0: (0.5-0.5)^2 + (1+1)^2; pair 1: (0.5-1.5)^2 + (4-5)^2
    assert float(grcl_value(grcl, model)) == pytest.approx(2.0 * (4.0 + 2.0))
    grcl.penalty(model).backward()
    torch.testing.assert_close(model.weight.grad, 2.0 * torch.tensor([[2 * (0.5 - 1.5),
                                                                       2 * (1 + 1)]]))


@pytest.mark.parametrize(("rule", "stamps"), [("oldest", [3, 4, 2]), ("keep_first", [0, 3, 4]),
                                               (lambda s: int(torch.argmax(s)), [0, 1, 4])])
def test_grcl_drop_rule_is_pluggable(rule, stamps):
    model = linear_model()
    grcl = GatedRegularizer(model, 3 * 21, rule=rule)
    for _ in range(5):
        grcl.consolidate(model, torch.ones(2, 2))
    assert grcl.stamps.tolist() == stamps and grcl.size == 3 and grcl.consolidations == 5


def test_grcl_checks_and_persistence(tmp_path):
    model = linear_model()
    grcl = GatedRegularizer(model, 5 * 21, fraction=0.4)
    check_store(grcl)
    grcl.consolidate(model, torch.randn(4, 2))
    check_store(grcl)
    grcl.save(tmp_path / "g.safetensors")
    other = GatedRegularizer(linear_model(), 5 * 21, fraction=0.4)
    other.load(tmp_path / "g.safetensors")
    assert other.size == 1 and torch.equal(other.snapshots, grcl.snapshots)
    assert float(grcl_value(other, linear_model((0.0, 0.0)))) == \
        pytest.approx(float(grcl_value(grcl, linear_model((0.0, 0.0)))))
    with pytest.raises(ValueError, match="different configuration"):
        GatedRegularizer(model, 5 * 21, fraction=0.5).load(tmp_path / "g.safetensors")
    bad = grcl.state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        other.load_state_dict({**bad, "extra": {"size": 9, "consolidations": 9}})
    with pytest.raises(ValueError, match="drop rule returned"):
        full = GatedRegularizer(model, 21, rule=lambda s: 7)
        full.consolidate(model, torch.ones(1, 2))
        full.consolidate(model, torch.ones(1, 2))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"fraction": 0.0}, ValueError, r"fraction in \(0, 1\]"),
    ({"lam": -1.0}, ValueError, "lam >= 0"),
    ({"rule": "newest"}, ValueError, "rule among"),
    ({"nbytes": 20}, BudgetExceeded, "asked for 21 bytes"),
])
def test_grcl_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GatedRegularizer(linear_model(), 1000, **kwargs)


def test_grcl_rejects_another_model_and_empty_features():
    grcl = GatedRegularizer(linear_model(), 100)
    with pytest.raises(ValueError, match="trainable parameters"):
        grcl.penalty(nn.Linear(3, 1))
    with pytest.raises(ValueError, match="non-empty batch"):
        grcl.consolidate(linear_model(), torch.zeros(0, 2))


# ---------------------------------------------------------------- all stores


@pytest.mark.parametrize(("cls", "kwargs", "match"), [
    (LWLMemory, {"spec": {"x": ((4,), torch.float32), "y": ((), torch.int64)}}, "frame spec"),
    (LWLMemory, {"eta": 1.0}, r"eta in \(0, 1\)"),
    (LWLMemory, {"init_floor": 1.5}, r"init_floor in \[0, 1\]"),
    (RMSCLMemory, {"lam": -0.1}, "lam >= 0"),
    (UsageMemory, {"temperature": 0.0}, "temperature > 0"),
])
def test_frame_memories_reject_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**{"spec": SPEC, "budget": 1000, **kwargs})


@pytest.mark.parametrize("cls", FRAME_MEMORIES)
def test_frame_memories_reject_bad_queries_and_slots(cls):
    memory = cls(SPEC, 5 * cls.entry_nbytes(SPEC))
    with pytest.raises(ValueError, match="empty"):
        memory.training_set(frames([0]))
    memory.add(frames([0, 1]))
    with pytest.raises(ValueError, match=r"int64 slots in 0\.\.1"):
        memory.entries(torch.tensor([2]))
    if cls is not LWLMemory:
        with pytest.raises(TypeError, match="Batch of one frame"):
            memory.training_set(frames([0, 1]))
        with pytest.raises(ValueError, match="expected items of shape"):
            memory.training_set(Batch(x=torch.zeros(1, C, H, H + 1),
                                      y=torch.zeros(1, H, H + 1, dtype=torch.uint8)))


@settings(max_examples=40, deadline=None)
@given(cls=st.sampled_from(FRAME_MEMORIES), entries=st.integers(1, 12),
       slack=st.integers(0, 200), ops=st.lists(st.tuples(
           st.sampled_from(["add", "read", "resize", "reload"]), st.integers(0, 5)),
           max_size=12), seed=st.integers(0, 1000))
def test_frame_memories_never_exceed_their_budget(cls, entries, slack, ops, seed, tmp_path_factory):
    entry = cls.entry_nbytes(SPEC)
    budget = Budget(entries * entry + slack)
    memory = cls(SPEC, budget)
    g = torch.Generator().manual_seed(seed)
    next_id = 0
    for op, arg in ops:
        if op == "add":
            batch = frames(range(next_id, next_id + arg))
            batch = batch.replace(x=batch.x + 0.001 * torch.randn(batch.x.shape, generator=g),
                                  y=torch.randint(0, 256, (arg, H, W), generator=g,
                                                  dtype=torch.uint8))
            memory.add(batch)
            next_id += arg
        elif op == "read" and len(memory):
            slots, weights = memory.training_set(frames([next_id]))
            assert float(weights.sum()) == pytest.approx(1.0, abs=1e-5)
            assert bool((weights > 0).all()) and 0 in slots.tolist()
        elif op == "resize":
            target = max(arg, 1) * entry
            if target - memory.nbytes > budget.free:  # a growth that does not fit
                held = len(memory)
                with pytest.raises(BudgetExceeded, match="asked for"):
                    memory.resize(target)
                assert len(memory) == held
            else:
                memory.resize(target)
        elif op == "reload":
            path = tmp_path_factory.mktemp("frames") / "m.safetensors"
            memory.save(path)
            memory.release()
            memory = cls(SPEC, budget, nbytes=entry)
            memory.load(path)
        assert budget.used <= budget.capacity
        assert memory.nbytes == budget.charged(memory.owner) == memory.capacity * entry
        assert len(memory) <= memory.capacity
        if next_id:
            assert held_ids(memory)[0] == 0, "frame 0 is kept in slot 0"


@pytest.mark.parametrize("cls", FRAME_MEMORIES)
def test_frame_memories_round_trip_and_continue_identically(cls, tmp_path):
    g = torch.Generator().manual_seed(0)
    memory = cls(SPEC, 4 * cls.entry_nbytes(SPEC))
    for i in range(6):
        memory.add(along(torch.rand(C, generator=g).tolist()))
        if i % 2:
            memory.training_set(along(torch.rand(C, generator=g).tolist()))
    memory.save(tmp_path / "m.safetensors")
    copy = cls(SPEC, 4 * cls.entry_nbytes(SPEC))
    copy.load(tmp_path / "m.safetensors")
    for name, tensor in memory.tensors().items():
        assert torch.equal(copy.tensors()[name], tensor), name
    assert copy.extra_state() == memory.extra_state()
    nxt, query = along([0.3, 0.1, 0.9, 0.2]), along([0.5, 0.5, 0.1, 0.0])
    assert torch.equal(copy.add(nxt).x, memory.add(nxt).x)
    for a, b in zip(copy.training_set(query), memory.training_set(query), strict=True):
        assert torch.equal(a, b)


@settings(max_examples=30, deadline=None)
@given(pairs=st.integers(1, 6), slack=st.integers(0, 20), consolidations=st.integers(0, 9),
       fraction=st.floats(0.05, 1.0))
def test_grcl_never_exceeds_its_budget(pairs, slack, consolidations, fraction):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 1, 1))
    pair = GatedRegularizer.pair_nbytes(model)
    budget = Budget(pairs * pair + slack)
    grcl = GatedRegularizer(model, budget, fraction=fraction)
    assert grcl.capacity == pairs and grcl.nbytes == budget.used == pairs * pair
    for i in range(consolidations):
        grcl.consolidate(model, torch.randn(3, 3, 2, 2, generator=torch.Generator()
                                            .manual_seed(i)))
        assert int(unpack_gate(grcl.gates[grcl.size - 1], grcl.n_params).sum()) == \
            math.ceil(fraction * grcl.n_params)
    assert grcl.size == min(consolidations, pairs) and budget.used <= budget.capacity
