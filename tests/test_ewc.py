import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from memkit import Batch, Budget, BudgetExceeded, run
from memkit.agents.backbones import mlp
from memkit.agents.ewc import EWC
from memkit.agents.finetune import Finetune
from memkit.buffers.ewc import EWCMemory
from memkit.buffers.reservoir import Reservoir
from memkit.config import build
from memkit.data import split_digits
from memkit.run import CHECKPOINT
from memkit.seeding import derive_generator
from memkit.streams import Experience, Stream
from memkit.testing import check_resume, check_store

CONFIG = {"name": "tiny", "seed": 3, "budget": "12KB",
          "stream": {"name": "blobs", "n_classes": 6, "n_experiences": 3, "n_per_class": 60},
          "model": {"name": "mlp", "hidden": [16]},
          "learner": {"name": "ewc", "epochs": 2, "lr": 0.05, "batch_size": 16, "ewc_lambda": 5.0,
                      "gamma": 0.9}}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    model[0].bias.requires_grad_(False)  # a frozen parameter is not remembered
    return model


def tiny_data(n=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(x=torch.randn(n, 3, generator=g), y=torch.randint(0, 3, (n,), generator=g))


def fisher_by_loop(model, data):
    """Mean squared gradient of log p(y|x), one backward pass per example."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in zip(data.x, data.y, strict=True):
        model.zero_grad()
        log_p = torch.log_softmax(model(x[None]), dim=1)[0, y]
        log_p.backward()
        for n, p in params.items():
            total[n] += p.grad**2
    return {n: t / len(data) for n, t in total.items()}


def test_fisher_equals_a_per_example_autograd_loop_and_decays_online():
    model, data = tiny_model(), tiny_data()
    memory = EWCMemory(model, Budget("1KB"), gamma=0.5)
    memory.consolidate(model, data, batch_size=5)  # chunks of 5, 5 and 3
    first = fisher_by_loop(model, data)
    assert set(memory.fisher) == {"0.weight", "2.weight", "2.bias"}
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(memory.fisher[name], first[name], rtol=1e-5, atol=1e-7)
            assert torch.equal(memory.anchor[name], p.detach())
    with torch.no_grad():
        model[2].weight.mul_(1.5)
    other = tiny_data(n=9, seed=1)
    memory.consolidate(model, other, batch_size=4)
    second = fisher_by_loop(model, other)
    for name in first:
        torch.testing.assert_close(memory.fisher[name], 0.5 * first[name] + second[name],
                                   rtol=1e-5, atol=1e-7)
    assert torch.equal(memory.anchor["2.weight"], model[2].weight.detach())
    assert memory.consolidations == 2 and memory.filled_nbytes == memory.nbytes
    assert model.training, "consolidation restores the model's mode"


def test_penalty_is_zero_at_the_anchor_and_half_the_fisher_weighted_square_elsewhere():
    model, data = tiny_model(), tiny_data()
    memory = EWCMemory(model, Budget("1KB"))
    assert memory.penalty(model).item() == 0.0, "an empty Fisher costs nothing"
    memory.consolidate(model, data)
    assert memory.penalty(model).item() == 0.0
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    penalty = memory.penalty(moved)
    expected = sum(0.5 * (memory.fisher[n] * (p - memory.anchor[n]) ** 2).sum()
                   for n, p in moved.named_parameters() if p.requires_grad)
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    for n, p in moved.named_parameters():
        if p.requires_grad:  # d/dtheta = F * (theta - anchor)
            torch.testing.assert_close(p.grad, memory.fisher[n] * (p - memory.anchor[n]))
    assert moved[0].bias.grad is None


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(-4.0, 4.0), seed=st.integers(0, 2**16))
def test_penalty_is_quadratic_along_any_direction_from_the_anchor(scale, seed):
    model = tiny_model()
    memory = EWCMemory(model, Budget("1KB"))
    memory.consolidate(model, tiny_data())
    g = torch.Generator().manual_seed(seed)
    directions = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}

    def penalty_at(t):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(t * directions[n])
        return memory.penalty(moved).item()

    unit = penalty_at(1.0)
    assert unit >= 0.0
    assert penalty_at(scale) == pytest.approx(scale**2 * unit, rel=1e-4, abs=1e-9)


def test_bytes_are_twice_the_parameter_bytes_and_charged_up_front():
    model = tiny_model()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # 12 + 12 + 3
    budget = Budget("1KB")
    memory = EWCMemory(model, budget)
    assert memory.nbytes == 2 * 4 * trainable == EWCMemory.nbytes_for(model) == 216
    assert budget.charged("ewc") == memory.nbytes and memory.filled_nbytes == 0
    small = Budget(215)
    with pytest.raises(BudgetExceeded, match="'ewc' asked for 216 bytes"):
        EWCMemory(model, small)
    assert small.owners == {}


def test_ewc_memory_passes_the_store_checks_and_refuses_another_model(tmp_path):
    model = tiny_model()
    memory = EWCMemory(model, Budget("1KB"), gamma=0.8)
    check_store(memory)
    memory.consolidate(model, tiny_data())
    check_store(memory)
    memory.save(tmp_path / "ewc.safetensors")
    other = EWCMemory(tiny_model(seed=1), Budget("1KB"), gamma=0.8)
    other.load(tmp_path / "ewc.safetensors")
    assert all(torch.equal(t, other.tensors()[k]) for k, t in memory.tensors().items())
    assert other.consolidations == 1
    wider = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match="differ from the ones this memory was built for"):
        memory.penalty(wider)
    with pytest.raises(ValueError, match="differ from the ones"):
        memory.consolidate(wider, tiny_data())
    with pytest.raises(ValueError, match="different configuration"):
        EWCMemory(wider, Budget("1KB"), gamma=0.8).load(tmp_path / "ewc.safetensors")
    with pytest.raises(ValueError, match="non-empty Batch"):
        memory.consolidate(model, tiny_data()[:0])
    with pytest.raises(ValueError, match="gamma"):
        EWCMemory(model, Budget("1KB"), gamma=1.5)


def test_ewc_learner_charges_its_memory_to_the_given_or_a_private_budget():
    stream = build(CONFIG).stream
    model = mlp(stream.input_shape, stream.n_classes, hidden=[16])
    alone = EWC(model)
    assert alone.budget is None
    assert alone.ewc.budget.capacity == alone.ewc.budget.used == EWCMemory.nbytes_for(model)
    setup = build(CONFIG)
    assert setup.learner.stores == {"ewc": setup.learner.ewc}
    assert setup.budget.owners == {"model": 984, "ewc": 2 * 984}
    with pytest.raises(ValueError, match="EWC keeps its own parameter memory"):
        EWC(model, Reservoir(stream.spec, "1KB"))


def test_ewc_loss_adds_lambda_times_the_penalty():
    setup = build(CONFIG)
    learner, stream = setup.learner, setup.stream
    learner.learn(stream[0])
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(0.05)
    batch = stream[1].train[:16]
    penalty = learner.ewc.penalty(learner.model)
    expected = F.cross_entropy(learner.model(batch.x), batch.y) + 5.0 * penalty
    torch.testing.assert_close(learner.loss(batch, stream[1], torch.Generator()), expected)
    assert penalty > 0


def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path):
    full, resumed = check_resume(CONFIG, tmp_path, crash_at=2)
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == [CHECKPOINT]
    assert full.learner.ewc.consolidations == resumed.learner.ewc.consolidations == 3


def permuted_digits(seed: int, n_experiences: int = 3) -> Stream:
    """The EWC paper's permuted-MNIST protocol on 8x8 digits: all 10 classes, new pixel order."""
    base = split_digits(n_experiences=1, seed=seed)[0]
    experiences = []
    for i in range(n_experiences):
        order = (torch.arange(64) if i == 0
                 else torch.randperm(64, generator=derive_generator(seed, "permutation", i)))
        experiences.append(Experience(i, base.train.replace(x=base.train.x[:, order]),
                                      base.test.replace(x=base.test.x[:, order]), base.classes))
    return Stream(experiences, name="permuted_digits", n_classes=10)


def test_ewc_reduces_forgetting_of_the_first_experience_on_permuted_digits():
    def first_drop(cls, **params):
        drops = []
        for seed in range(6):
            stream = permuted_digits(seed)
            torch.manual_seed(seed)
            learner = cls(mlp(stream.input_shape, 10, hidden=[32]), epochs=3, lr=0.1,
                          batch_size=32, seed=seed, **params)
            matrix = run(stream, learner, progress=False).matrix
            drops.append(matrix[0][0] - matrix[-1][0])
        return np.mean(drops)

    finetune, ewc = first_drop(Finetune), first_drop(EWC, ewc_lambda=30.0)
    assert ewc < finetune - 0.08, (ewc, finetune)
