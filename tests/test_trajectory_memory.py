from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memkit import Batch, Budget, BudgetExceeded
from memkit.buffers.trajectory import (
    RETENTION,
    Trajectories,
    TrajectoryMemory,
    evict_prefix,
    retention,
)
from memkit.deployment import StepLabel
from memkit.io import StoreFormatError
from memkit.registry import get
from memkit.testing import check_store

DEMO, ROBOT, PRE, INTERVENTION = StepLabel
SPEC = {"obs": ((2,), torch.float32), "action": ((1,), torch.float32)}
ITEM = 2 * 4 + 4 + 1 + 8 + 8  # obs, action, int8 label, int64 traj and round
STRATEGIES = sorted(RETENTION)


def rollout(*trajectories) -> Batch:
    """Steps of ``(traj id, round, labels)`` trajectories: obs (id, step), action 10 id + step."""
    traj, rnd, label, step = [], [], [], []
    for tid, r, labels in trajectories:
        traj += [tid] * len(labels)
        rnd += [r] * len(labels)
        label += list(labels)
        step += range(len(labels))
    traj_t, step_t = torch.tensor(traj, dtype=torch.int64), torch.tensor(step, dtype=torch.float32)
    return Batch(obs=torch.stack([traj_t.float(), step_t], 1),
                 action=(10 * traj_t.float() + step_t).unsqueeze(1),
                 label=torch.tensor(label, dtype=torch.int8), traj=traj_t,
                 round=torch.tensor(rnd, dtype=torch.int64))


def held_ids(memory) -> list[int]:
    return memory.trajectories().traj.tolist()


def snapshot(memory) -> dict:
    return {"tensors": {k: v.clone() for k, v in memory.tensors().items()},
            "extra": memory.extra_state(), "capacity": memory.capacity,
            "charged": memory.budget.charged(memory.owner)}


def same(a: dict, b: dict) -> bool:
    return (a["extra"], a["capacity"], a["charged"]) == (b["extra"], b["capacity"], b["charged"]) \
        and all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])


# Five trajectories (ids 0-4) filling a memory of 20 transitions, then a round that needs 6.
# Intervention fractions: 0, 1/2, 1/4, 3/4, 1/4, and 1/3 for the newcomer (id 5). Counting
# pre-intervention steps would make them 0, 1/2, 1/2, 3/4, 3/4 and change every answer below.
FIVE = [(0, 0, [DEMO] * 4),
        (1, 1, [ROBOT, INTERVENTION, INTERVENTION, ROBOT]),
        (2, 1, [ROBOT, PRE, INTERVENTION, ROBOT]),
        (3, 2, [INTERVENTION, INTERVENTION, INTERVENTION, ROBOT]),
        (4, 2, [PRE, PRE, INTERVENTION, ROBOT])]
NEWCOMER = (5, 3, [ROBOT] * 4 + [INTERVENTION] * 2)
KEPT = {"keep_newest": [2, 3, 4, 5],            # 0 then 1 leave (oldest first)
        "keep_oldest": [0, 1, 2, 3, 4],         # 5 is refused (newest first)
        "keep_least_intervened": [0, 2, 4, 5],  # 3 (3/4) then 1 (1/2) leave
        "keep_most_intervened": [1, 3, 4, 5]}   # 0 (0) then 2 (1/4, older than 4) leave


@pytest.mark.parametrize("strategy", sorted(KEPT))
def test_each_strategy_evicts_whole_trajectories_in_its_documented_order(strategy):
    memory = TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM, strategy=strategy)
    for tid, r, labels in FIVE:
        assert len(memory.add(rollout((tid, r, labels)))) == 0
    assert memory.trajectories().intervention_fraction.tolist() == [0, 0.5, 0.25, 0.75, 0.25]
    gone = memory.add(rollout(NEWCOMER))
    assert held_ids(memory) == KEPT[strategy]
    offered = rollout(*FIVE, NEWCOMER)
    expected_gone = sorted(set(range(6)) - set(KEPT[strategy]))
    assert torch.unique(gone.traj).tolist() == expected_gone
    assert gone.equal(offered[torch.isin(offered.traj, torch.tensor(expected_gone))])
    assert memory.contents().equal(offered[torch.isin(offered.traj, torch.tensor(KEPT[strategy]))])


def test_the_shortest_prefix_of_the_order_leaves_even_when_a_later_one_would_do():
    memory = TrajectoryMemory(SPEC, Budget(10_000), nbytes=10 * ITEM, strategy="keep_newest")
    memory.add(rollout((0, 0, [DEMO] * 8), (1, 0, [DEMO] * 2)))
    memory.add(rollout((2, 1, [ROBOT])))
    assert held_ids(memory) == [1, 2]
    lengths = torch.tensor([5, 1, 4])  # 4 too many: row 0 alone would do, but row 1 comes first
    assert evict_prefix(torch.tensor([1, 0, 2]), lengths, 6).tolist() == [1, 0]
    assert evict_prefix(torch.tensor([2, 0, 1]), lengths, 6).tolist() == [2]
    assert evict_prefix(torch.tensor([2, 0, 1]), lengths, 10).tolist() == []


def test_uniform_is_seeded_and_every_trajectory_is_equally_likely_to_leave():
    counts = torch.zeros(6)
    results = []
    for seed in range(300):
        memory = TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM, strategy="uniform",
                                  seed=seed)
        memory.add(rollout(*[(t, 0, [ROBOT] * 4) for t in range(5)]))
        memory.add(rollout((5, 1, [ROBOT] * 4)))
        kept = held_ids(memory)
        assert len(kept) == 5 and len(memory) == 20
        counts[sorted(set(range(6)) - set(kept))] += 1
        results.append(kept)
    assert counts.sum() == 300
    assert counts.min() > 300 / 6 * 0.6 and counts.max() < 300 / 6 * 1.4
    again = TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM, strategy="uniform", seed=7)
    again.add(rollout(*[(t, 0, [ROBOT] * 4) for t in range(5)]))
    again.add(rollout((5, 1, [ROBOT] * 4)))
    assert held_ids(again) == results[7]
    assert len({tuple(r) for r in results}) == 6


@settings(max_examples=60, deadline=None)
@given(strategy=st.sampled_from(STRATEGIES), capacity=st.integers(6, 30),
       rounds=st.lists(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=9),
                                max_size=4), min_size=1, max_size=6),
       seed=st.integers(0, 3))
def test_random_adds_never_exceed_the_bytes_nor_split_a_trajectory(strategy, capacity, rounds,
                                                                    seed):
    budget = Budget(capacity * ITEM + 5)
    memory = TrajectoryMemory(SPEC, budget, nbytes=capacity * ITEM, strategy=strategy, seed=seed)
    model: list[tuple] = []  # (id, round, labels) held, oldest first
    next_id = 0
    for r, lengths in enumerate(rounds):
        offered = [(next_id + i, r, labels) for i, labels in enumerate(lengths)]
        before = snapshot(memory)
        if any(len(labels) > capacity for _, _, labels in offered):
            with pytest.raises(ValueError, match=rf"transitions .* more than the whole memory "
                                                 rf"of {capacity} transitions"):
                memory.add(rollout(*offered))
            assert same(before, snapshot(memory)), "a refused add changed the memory"
            continue
        gone = memory.add(rollout(*offered))
        next_id += len(offered)
        candidates = model + offered
        if strategy != "uniform":
            model = reference_keep(candidates, capacity, strategy)
            assert held_ids(memory) == [t for t, _, _ in model]
        kept = set(held_ids(memory))
        assert memory.contents().equal(rollout(*[c for c in candidates if c[0] in kept]))
        assert len(gone) + len(memory) == sum(len(c[2]) for c in candidates)
        assert set(gone.traj.tolist()).isdisjoint(kept)
        lengths_held = memory.trajectories().length.tolist()
        assert len(memory) == sum(lengths_held) <= memory.capacity == capacity
        assert memory.nbytes == capacity * ITEM == budget.charged("memory")
        assert budget.used <= budget.capacity
        model = [c for c in candidates if c[0] in kept]
        assert lengths_held == [len(c[2]) for c in model], "a trajectory was split"


def reference_keep(candidates, capacity, strategy):
    """The documented rule, plainly: rank, then drop the shortest prefix after which all fit."""
    fraction = [Fraction(labels.count(INTERVENTION), len(labels)) for _, _, labels in candidates]
    rows = range(len(candidates))
    order = {"keep_newest": list(rows), "keep_oldest": list(rows)[::-1],
             "keep_least_intervened": sorted(rows, key=lambda i: (-fraction[i], i)),
             "keep_most_intervened": sorted(rows, key=lambda i: (fraction[i], i))}[strategy]
    total, leave = sum(len(c[2]) for c in candidates), set()
    for i in order:
        if total <= capacity:
            break
        leave.add(i)
        total -= len(candidates[i][2])
    return [c for i, c in enumerate(candidates) if i not in leave]


def test_bytes_come_from_dtypes_and_the_capacity_from_the_bytes():
    budget = Budget(1000)
    memory = TrajectoryMemory(SPEC, budget, nbytes=10 * ITEM + ITEM - 1)
    assert (memory.item_nbytes, memory.capacity, memory.nbytes) == (ITEM, 10, 10 * ITEM)
    assert budget.owners == {"memory": 10 * ITEM}
    discrete = TrajectoryMemory({"obs": ((3,), torch.float64), "action": ((), torch.int64)},
                                budget, owner="discrete")
    assert discrete.item_nbytes == 3 * 8 + 8 + 1 + 8 + 8
    assert discrete.capacity == (1000 - 10 * ITEM) // discrete.item_nbytes  # all that was free
    assert budget.used <= budget.capacity
    with pytest.raises(BudgetExceeded, match="'third' asked for"):
        TrajectoryMemory(SPEC, budget, nbytes=ITEM, owner="third")


def test_collected_nbytes_counts_everything_offered_so_a_cap_can_be_a_fraction_of_it():
    memory = TrajectoryMemory(SPEC, Budget(10_000), nbytes=6 * ITEM, strategy="keep_oldest")
    memory.add(rollout((0, 0, [DEMO] * 5)))
    memory.add(rollout((1, 1, [ROBOT] * 4), (2, 1, [ROBOT] * 3)))  # both refused
    assert (len(memory), memory.collected, memory.collected_nbytes) == (5, 12, 12 * ITEM)
    assert memory.filled_nbytes == 5 * ITEM and memory.nbytes_for(12) == memory.collected_nbytes
    capped = TrajectoryMemory(SPEC, Budget(10_000), nbytes=memory.collected_nbytes // 2)
    assert capped.capacity == 6


def test_a_trajectory_longer_than_the_memory_is_an_error_naming_both_sizes():
    memory = TrajectoryMemory(SPEC, Budget(10_000), nbytes=4 * ITEM)
    with pytest.raises(ValueError, match=rf"trajectory 1 has 5 transitions \({5 * ITEM} bytes\)"
                                         rf".*4 transitions \({4 * ITEM} bytes\)"):
        memory.add(rollout((0, 0, [DEMO] * 2), (1, 0, [DEMO] * 5)))
    assert len(memory) == 0 and memory.collected == 0


def test_resize_shrinks_by_the_strategy_and_grows_within_the_budget():
    budget = Budget(40 * ITEM)
    memory = TrajectoryMemory(SPEC, budget, nbytes=20 * ITEM, strategy="keep_least_intervened")
    memory.add(rollout(*FIVE))
    gone = memory.resize(9 * ITEM)
    assert held_ids(memory) == [0, 4] and torch.unique(gone.traj).tolist() == [1, 2, 3]
    assert budget.charged("memory") == memory.nbytes == 9 * ITEM
    memory.resize(30 * ITEM)
    assert memory.capacity == 30 and held_ids(memory) == [0, 4]
    before = snapshot(memory)
    with pytest.raises(BudgetExceeded):
        memory.resize(41 * ITEM)
    assert same(before, snapshot(memory))
    memory.add(rollout((5, 3, [ROBOT] * 20)))
    assert held_ids(memory) == [0, 4, 5] and len(memory) == 28


def test_conformance_check_on_empty_full_and_zero_sized_memories():
    check_store(TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM))
    full = TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM, strategy="uniform")
    full.add(rollout(*FIVE))
    check_store(full)
    check_store(TrajectoryMemory(SPEC, Budget(10_000), nbytes=0))


def test_save_load_round_trip_continues_identically(tmp_path):
    budget = Budget(10_000)
    memory = TrajectoryMemory(SPEC, budget, nbytes=20 * ITEM, strategy="uniform", seed=3)
    memory.add(rollout(*FIVE))
    memory.add(rollout(NEWCOMER))
    memory.save(tmp_path / "m.safetensors")
    saved = snapshot(memory)
    nxt = rollout((6, 4, [ROBOT, INTERVENTION] * 3), (7, 4, [ROBOT] * 5))
    memory.add(nxt)
    after = snapshot(memory)
    fresh = TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM, strategy="uniform", seed=3)
    fresh.load(tmp_path / "m.safetensors")
    assert same(saved, snapshot(fresh))
    fresh.add(nxt)
    assert same(after, snapshot(fresh))
    fresh.load(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="trajectory ids above 5"):
        fresh.add(rollout((5, 4, [ROBOT])))


def test_load_adopts_the_saved_capacity_and_rejects_another_strategy_or_a_damaged_file(tmp_path):
    memory = TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM)
    memory.add(rollout(*FIVE))
    path = tmp_path / "m.safetensors"
    memory.save(path)
    budget = Budget(10_000)
    small = TrajectoryMemory(SPEC, budget, nbytes=0)
    small.load(path)
    assert (small.capacity, budget.charged("memory")) == (20, 20 * ITEM)
    assert small.contents().equal(memory.contents())
    other = TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM, strategy="keep_oldest")
    with pytest.raises(ValueError, match="different configuration"):
        other.load(path)
    tight = TrajectoryMemory(SPEC, Budget(5 * ITEM), nbytes=0)
    with pytest.raises(BudgetExceeded):
        tight.load(path)
    assert tight.capacity == 0
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    before = snapshot(small)
    with pytest.raises(StoreFormatError, match="checksum"):
        small.load(tmp_path / "bad.safetensors")
    assert same(before, snapshot(small))


def test_sample_draws_distinct_held_transitions():
    memory = TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM)
    with pytest.raises(ValueError, match="empty"):
        memory.sample(3)
    memory.add(rollout(*FIVE))
    drawn = memory.sample(8, torch.Generator().manual_seed(0))
    pairs = {tuple(r) for r in drawn.obs.tolist()}
    assert len(drawn) == 8 and len(pairs) == 8
    assert pairs <= {tuple(r) for r in memory.contents().obs.tolist()}
    assert len(memory.sample(50)) == 20


def test_bad_input_is_rejected_before_anything_changes():
    memory = TrajectoryMemory(SPEC, Budget(10_000), nbytes=20 * ITEM)
    memory.add(rollout((3, 1, [DEMO] * 2)))
    before = snapshot(memory)
    good = rollout((4, 1, [ROBOT] * 3))
    cases = [
        ({"obs": good.obs}, TypeError, "expected a Batch"),
        (good.select("obs", "action", "traj", "round"), ValueError, r"missing field\(s\)"),
        (good.replace(obs=torch.zeros(3, 5)), ValueError, "field 'obs' expected items of shape"),
        (good.replace(label=torch.tensor([1, 4, 1])), ValueError, "labels in 0..3"),
        (good.replace(label=torch.ones(3)), ValueError, "field 'label' expected dtype"),
        (rollout((4, 1, [1]), (5, 1, [1]), (4, 1, [1])), ValueError, "contiguous"),
        (rollout((2, 1, [ROBOT])), ValueError, "ids above 3"),
        (good.replace(round=torch.tensor([1, 2, 2])), ValueError, "one round per trajectory"),
        (rollout((4, 0, [ROBOT])), ValueError, "at least 1"),
    ]
    for batch, error, message in cases:
        with pytest.raises(error, match=message):
            memory.add(batch)
        assert same(before, snapshot(memory))
    with pytest.raises(ValueError, match="unknown strategy 'lfi'"):
        TrajectoryMemory(SPEC, Budget(10_000), strategy="lfi")
    with pytest.raises(ValueError, match=r"exactly the fields \['action', 'obs'\]"):
        TrajectoryMemory({"x": ((2,), torch.float32)}, Budget(10_000))


def test_a_registered_strategy_plugs_in_and_a_broken_one_is_caught():
    @retention("test_longest_first")
    def longest_first(trajectories: Trajectories, generator: torch.Generator) -> torch.Tensor:
        """Keeps the shortest trajectories: the longest leave first, the older of equals first."""
        return torch.sort(trajectories.length, descending=True, stable=True).indices

    @retention("test_broken")
    def broken(trajectories: Trajectories, generator: torch.Generator) -> torch.Tensor:
        return torch.zeros(len(trajectories), dtype=torch.int64)

    memory = TrajectoryMemory(SPEC, Budget(10_000), nbytes=10 * ITEM,
                              strategy="test_longest_first")
    memory.add(rollout((0, 0, [DEMO] * 3), (1, 0, [DEMO] * 5), (2, 0, [DEMO] * 2)))
    memory.add(rollout((3, 1, [ROBOT] * 4)))
    assert held_ids(memory) == [0, 2, 3]
    bad = TrajectoryMemory(SPEC, Budget(10_000), nbytes=10 * ITEM, strategy="test_broken")
    with pytest.raises(ValueError, match="must return a permutation of 2 rows"):
        bad.add(rollout((0, 0, [DEMO]), (1, 0, [DEMO])))
    assert len(bad) == 0
    with pytest.raises(ValueError, match="already registered"):
        retention("keep_newest")(longest_first)
    for name in ("test_longest_first", "test_broken"):
        del RETENTION[name]


def test_the_store_is_registered():
    assert get("store", "trajectory") is TrajectoryMemory
    assert set(STRATEGIES) >= {"keep_newest", "keep_oldest", "keep_least_intervened",
                               "keep_most_intervened", "uniform"}
