import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memkit import Budget, BudgetExceeded
from memkit.agents.vos import METHODS, FrameEncoder, OnlineVOSLearner, vos_method
from memkit.buffers.grcl import GatedRegularizer
from memkit.buffers.lwl import LWLMemory, frame_spec
from memkit.buffers.rmscl import RMSCLMemory
from memkit.buffers.usage import UsageMemory
from memkit.registry import get
from memkit.video import Video

SIZE = 48
TARGET_PAIR = 4 * (21 * 32 + 32 + 32 + 1) + math.ceil(737 / 8) + 8
"""Bytes of one GRCL pair for the default target model (19 features + 2 coordinates -> 32 -> 1)."""


def moving_square(n_frames=30, size=SIZE, side=12, seed=0):
    """A bright noisy square moving on a dark noisy background, with its exact masks."""
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(n_frames, 3, size, size, generator=g) * 60).to(torch.uint8)
    masks = torch.zeros(n_frames, size, size, dtype=torch.uint8)
    for t in range(n_frames):
        y = 6 + round(t * (size - side - 12) / max(n_frames - 1, 1))
        x = 4 + round((size - side - 8) * (0.5 + 0.5 * math.sin(t / 5)))
        masks[t, y: y + side, x: x + side] = 1
        frames[t, :, y: y + side, x: x + side] = 200 + (
            torch.rand(3, side, side, generator=g) * 55).to(torch.uint8)
    return Video("square", frames, masks, torch.arange(n_frames))


def iou(pred, gt):
    inter = (pred.bool() & gt.bool()).sum(dim=(1, 2)).float()
    union = (pred.bool() | gt.bool()).sum(dim=(1, 2)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def frames_budget(n, size=SIZE):
    return OnlineVOSLearner().frame_nbytes((size, size)) * n


@pytest.fixture(scope="module")
def square():
    return moving_square()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_follows_a_moving_square(method, square):
    learner = vos_method(method, budget=frames_budget(8))
    masks = learner.segment(square)
    assert masks.dtype == torch.uint8 and masks.shape == square.masks.shape
    assert set(masks.unique().tolist()) <= {0, 1} and torch.equal(masks[0], square.masks[0])
    assert float(iou(masks[1:], square.masks[1:]).mean()) > 0.7
    assert learner.timing["frames"] == 30 and learner.fps > 0


def test_one_entry_costs_the_feature_map_at_its_dtype_the_mask_and_the_weight():
    learner = OnlineVOSLearner()
    assert learner.feature_size((SIZE, SIZE)) == (12, 12) and learner.feature_size((50, 47)) == (
        13, 12)
    assert learner.frame_nbytes((SIZE, SIZE)) == 19 * 12 * 12 * 2 + 12 * 12 + 4
    assert OnlineVOSLearner(codec="float32").frame_nbytes((SIZE, SIZE)) == \
        19 * 12 * 12 * 4 + 12 * 12 + 4
    assert FrameEncoder()(torch.zeros(2, 3, 50, 47, dtype=torch.uint8)).shape == (2, 19, 13, 12)


@pytest.mark.parametrize(("method", "stores"), [
    ("lwl_fifo", {"memory": LWLMemory}), ("rmscl", {"memory": RMSCLMemory}),
    ("usage", {"memory": UsageMemory}),
    ("grcl", {"memory": LWLMemory, "regularizer": GatedRegularizer}),
    ("hybrid", {"memory": RMSCLMemory, "regularizer": GatedRegularizer})])
def test_stores_share_one_budget_and_the_regularizer_takes_what_the_entries_leave(method,
                                                                                  stores):
    budget = Budget(frames_budget(6))
    learner = vos_method(method, budget=budget, regularizer_snapshots=3)
    learner.segment(moving_square(n_frames=12))
    assert {name: type(s) for name, s in learner.stores.items()} == stores
    assert budget.used <= budget.capacity
    assert budget.owners == {s.owner: s.nbytes for s in learner.stores.values()}
    entry = type(learner.memory).entry_nbytes(learner.memory.spec)
    reserve = 3 * TARGET_PAIR if "regularizer" in stores else 0
    assert learner.memory.capacity == (budget.capacity - reserve) // entry
    if "regularizer" in stores:
        assert GatedRegularizer.pair_nbytes(learner.model) == TARGET_PAIR
        grcl = learner.regularizer
        assert grcl.capacity == (budget.capacity - learner.memory.nbytes) // TARGET_PAIR >= 3
        assert grcl.nbytes == grcl.capacity * TARGET_PAIR and budget.free < TARGET_PAIR


def test_unbounded_memory_holds_every_frame_on_its_own_budget_and_draws_max_batch():
    drawn = []

    class Recording(LWLMemory):
        def entries(self, slots):
            drawn.append(len(slots))
            return super().entries(slots)

    video = moving_square(n_frames=20)
    learner = vos_method("unbounded", budget=1, max_batch=4)
    learner.segment(video)
    assert len(learner.memory) == 20 and learner.memory.capacity == 20
    assert learner.budget.capacity == 20 * learner.frame_nbytes((SIZE, SIZE))
    recorder = OnlineVOSLearner(memory=lambda spec, budget: Recording.unbounded(spec, 20),
                                max_batch=4)
    recorder.segment(video)
    # frames 1..3 train on every held entry; later ones on 4 draws (repeats counted once)
    assert drawn[:3] == [2, 3, 4] and len(drawn) == 19 and max(drawn[3:]) <= 4


def test_the_same_seed_gives_the_same_masks_and_stores(square):
    runs = []
    for _ in range(2):
        learner = vos_method("hybrid", budget=frames_budget(5), seed=3, consolidate_every=7)
        runs.append((learner.segment(square), learner))
    (a, first), (b, second) = runs
    assert torch.equal(a, b)
    for name, store in first.stores.items():
        for key, tensor in store.tensors().items():
            assert torch.equal(second.stores[name].tensors()[key], tensor), (name, key)
    assert first.regularizer.consolidations == 5  # frames 0, 7, 14, 21 and 28


def test_stores_are_rebuilt_for_each_video():
    budget = Budget(frames_budget(6))
    learner = vos_method("rmscl", budget=budget)
    learner.segment(moving_square(n_frames=8))
    first = learner.memory
    learner.segment(moving_square(n_frames=8, size=32, side=8))
    assert learner.memory is not first and learner.memory.spec["x"][0] == (19, 8, 8)
    assert budget.owners == {"rmscl": learner.memory.nbytes}
    assert len(learner.memory) <= learner.memory.capacity


@settings(max_examples=15, deadline=None)
@given(method=st.sampled_from(sorted(METHODS)), n_frames=st.integers(1, 10),
       size=st.integers(4, 20), entries=st.integers(1, 6), slack=st.integers(0, 5000),
       seed=st.integers(0, 100))
def test_the_budget_is_never_exceeded_on_random_videos(method, n_frames, size, entries, slack,
                                                       seed):
    g = torch.Generator().manual_seed(seed)
    video = Video("noise", torch.randint(0, 256, (n_frames, 3, size, size), generator=g,
                                         dtype=torch.uint8),
                  torch.randint(0, 2, (n_frames, size, size), generator=g, dtype=torch.uint8),
                  torch.arange(n_frames))
    spec = frame_spec(19, *OnlineVOSLearner().feature_size((size, size)))
    per_frame = max(cls.entry_nbytes(spec) for cls in (LWLMemory, RMSCLMemory, UsageMemory))
    budget = Budget(entries * per_frame + 2 * TARGET_PAIR + slack)
    learner = vos_method(method, budget=budget, init_steps=2, steps_per_frame=1, seed=seed)
    masks = learner.segment(video)
    assert masks.shape == video.masks.shape and set(masks.unique().tolist()) <= {0, 1}
    assert learner.budget.used <= learner.budget.capacity
    for store in learner.stores.values():
        assert store.nbytes == learner.budget.charged(store.owner)
    assert len(learner.memory) <= learner.memory.capacity


def test_registered_names():
    assert get("learner", "vos") is vos_method
    assert {get("store", name) for name in ("lwl", "rmscl", "usage", "grcl")} == {
        LWLMemory, RMSCLMemory, UsageMemory, GatedRegularizer}
    assert set(METHODS) == {"lwl_fifo", "grcl", "rmscl", "hybrid", "usage", "unbounded"}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"memory": "fifo"}, "memory among"), ({"regularizer": "ewc"}, "regularizer None"),
    ({"memory": "rmscl", "unbounded": True}, "LWL memory alone"),
    ({"steps_per_frame": 0}, "steps_per_frame >= 1"), ({"max_batch": 1.5}, "max_batch >= 1"),
    ({"lr": 0.0}, "lr > 0")])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OnlineVOSLearner(**kwargs)
    with pytest.raises(ValueError, match="method among"):
        vos_method("lwl")


def test_bad_videos_are_rejected_and_a_tiny_budget_says_so():
    learner = OnlineVOSLearner(budget=frames_budget(2))
    square = moving_square(n_frames=3)
    with pytest.raises(TypeError, match="tensors 'frames' and 'masks'"):
        learner.segment(square.frames)
    with pytest.raises(ValueError, match=r"uint8 frames of shape \(T >= 1, 3, H, W\)"):
        learner.segment(type("V", (), {"frames": square.frames.float(), "masks": square.masks}))
    with pytest.raises(ValueError, match=r"masks of shape \(T, 48, 48\)"):
        learner.segment(type("V", (), {"frames": square.frames, "masks": square.masks[:, 1:]}))
    with pytest.raises(BudgetExceeded, match="'lwl' asked for"):
        OnlineVOSLearner(budget=100).segment(square)
