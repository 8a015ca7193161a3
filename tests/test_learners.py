import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from memkit import Batch, Budget, BudgetExceeded, run
from memkit.agents.backbones import mlp
from memkit.agents.derpp import DERpp
from memkit.agents.finetune import Finetune
from memkit.agents.joint import Joint, SeenData
from memkit.agents.lwf import LwF
from memkit.budget import module_nbytes
from memkit.buffers.reservoir import Reservoir
from memkit.config import build
from memkit.data import blobs
from memkit.run import CHECKPOINT
from memkit.seeding import derive_generator
from memkit.streams import Experience, Stream
from memkit.testing import check_resume, check_store

BASE = {"name": "tiny", "seed": 3, "budget": "12KB",
        "stream": {"name": "blobs", "n_classes": 6, "n_experiences": 3, "n_per_class": 60},
        "model": {"name": "mlp", "hidden": [16]}}
TRAINING = {"epochs": 2, "lr": 0.05, "batch_size": 16}
CONFIGS = {
    "finetune": {**BASE, "learner": {"name": "finetune", **TRAINING}},
    "joint": {**BASE, "budget": "50KB", "learner": {"name": "joint", **TRAINING}},
    "derpp": {**BASE, "memory": {"name": "reservoir"},
              "learner": {"name": "derpp", "alpha": 0.3, "beta": 0.5, **TRAINING}},
    "lwf": {**BASE, "learner": {"name": "lwf", **TRAINING}},
}


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def small_stream(seed=1):
    return blobs(n_classes=4, n_experiences=2, n_per_class=30, seed=seed)


# ---------------------------------------------------------------- resume (every learner)

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resume_after_a_crash_gives_the_uninterrupted_result(name, tmp_path):
    check_resume(CONFIGS[name], tmp_path, crash_at=2)
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == [CHECKPOINT]


# ---------------------------------------------------------------- finetune

def test_finetune_is_sgd_on_the_current_experience_with_a_fresh_optimiser():
    stream = small_stream()
    torch.manual_seed(0)
    model = mlp(stream.input_shape, stream.n_classes, hidden=[8])
    reference = copy.deepcopy(model)
    learner = Finetune(model, lr=0.1, momentum=0.9, epochs=2, batch_size=8, seed=5)
    for experience in stream:
        learner.learn(experience)
    for experience in stream:
        optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
        for epoch in range(2):
            generator = derive_generator(5, "shuffle", experience.index, epoch)
            order = torch.randperm(len(experience.train), generator=generator)
            for rows in order.split(8):
                batch = experience.train[rows]
                optimizer.zero_grad()
                F.cross_entropy(reference(batch.x), batch.y).backward()
                optimizer.step()
    assert weights_equal(model, reference)
    assert learner.stores == {}


def test_finetune_refuses_a_memory():
    stream = small_stream()
    memory = Reservoir(stream.spec, "1KB")
    with pytest.raises(ValueError, match="Finetune keeps no memory"):
        Finetune(mlp(stream.input_shape, 4), memory)


# ---------------------------------------------------------------- joint

def test_joint_equals_finetuning_on_the_cumulative_stream_and_holds_every_item():
    stream = small_stream()
    cumulative = Stream([Experience(e.index, Batch.cat([s.train for s in stream[: e.index + 1]]),
                                    e.test, e.classes) for e in stream], n_classes=4)
    torch.manual_seed(0)
    model = mlp(stream.input_shape, stream.n_classes, hidden=[8])
    reference = Finetune(copy.deepcopy(model), epochs=2, batch_size=8, seed=2)
    budget = Budget("20KB")
    budget.charge_model(model)
    joint = Joint(model, epochs=2, batch_size=8, seed=2, budget=budget)
    for experience, union in zip(stream, cumulative, strict=True):
        joint.learn(experience)
        reference.learn(union)
        held = joint.seen.data()
        assert held.equal(union.train) and len(joint.seen) == len(union.train)
        assert joint.seen.nbytes == union.train.nbytes == budget.charged("joint")
    assert weights_equal(joint.model, reference.model)
    assert joint.stores == {"seen": joint.seen}


def test_joint_refuses_what_its_budget_cannot_hold_and_changes_nothing():
    stream = small_stream()
    model = mlp(stream.input_shape, stream.n_classes, hidden=[8])
    budget = Budget(module_nbytes(model) + stream[0].train.nbytes + 100)
    budget.charge_model(model)
    joint = Joint(model, epochs=1, batch_size=8, budget=budget)
    joint.learn(stream[0])
    ledger, weights = budget.owners, copy.deepcopy(model.state_dict())
    with pytest.raises(BudgetExceeded, match="'joint' asked for"):
        joint.learn(stream[1])
    assert budget.owners == ledger and joint.seen.data().equal(stream[0].train)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_seen_data_passes_the_store_checks_and_reloads_into_an_empty_store(tmp_path):
    stream = small_stream()
    seen = SeenData(Budget("10KB"))
    check_store(seen)  # empty
    seen.add(stream[0].train)
    seen.add(stream[1].train)
    check_store(seen)
    with pytest.raises(ValueError, match="expected items of shape"):
        seen.add(Batch(x=torch.zeros(2, 3), y=torch.zeros(2, dtype=torch.int64)))
    seen.save(tmp_path / "seen.safetensors")
    budget = Budget("10KB")
    fresh = SeenData(budget)
    fresh.load(tmp_path / "seen.safetensors")
    assert fresh.data().equal(seen.data()) and budget.charged("joint") == seen.nbytes
    fresh.load_state_dict(SeenData(Budget(1)).state_dict())
    assert len(fresh) == 0 and budget.used == 0, "loading an empty state releases the bytes"


def test_joint_is_the_upper_bound_on_blobs():
    joint = build(CONFIGS["joint"])
    finetune = build(CONFIGS["finetune"])
    upper = run(joint.stream, joint.learner, progress=False)
    lower = run(finetune.stream, finetune.learner, progress=False)
    assert upper.final_average >= 0.95 and upper.forgetting <= 0.05
    assert upper.final_average > lower.final_average + 0.1


# ---------------------------------------------------------------- DER++

def test_derpp_memory_carries_charged_logits_fields():
    setup = build(CONFIGS["derpp"])
    memory = setup.learner.memory
    assert memory.spec["logits"] == ((6,), torch.float32)
    assert memory.item_nbytes == 8 * 4 + 8 + 6 * 4  # x float32, y int64, 6 float32 logits
    assert setup.budget.charged("reservoir") == memory.nbytes == memory.capacity * 64
    with pytest.raises(ValueError, match="expected a memory with a 'logits' field"):
        DERpp(mlp((8,), 6), Reservoir(setup.stream.spec, "2KB"))


def test_derpp_stores_the_logits_the_model_produced_for_each_item():
    setup = build(CONFIGS["derpp"])
    learner, experience = setup.learner, setup.stream[0]
    batch = experience.train[:10]
    learner.loss(batch, experience, torch.Generator().manual_seed(0))
    with torch.no_grad():
        produced = learner.model(batch.x)
    stored = learner.memory.tensors()
    assert len(learner.memory) == 10
    assert torch.equal(stored["logits"][:10], produced) and torch.equal(stored["x"][:10], batch.x)


def test_reservoir_returns_each_item_with_its_own_logits_after_evictions():
    spec = {"x": ((1,), torch.float32), "y": ((), torch.int64), **DERpp.memory_fields(3)}
    memory = Reservoir(spec, Budget(25 * (4 + 8 + 12)), seed=4)
    table = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    for start in range(0, 300, 17):
        ids = torch.arange(start, min(start + 17, 300))
        memory.add(Batch(x=ids[:, None].float(), y=ids % 3, logits=table[ids]))
    drawn = memory.sample(25, torch.Generator().manual_seed(1))
    ids = drawn.x[:, 0].long()
    assert memory.seen == 300 and len(drawn) == 25 and ids.max() >= 25, "items were replaced"
    assert torch.equal(drawn.logits, table[ids]) and torch.equal(drawn.y, ids % 3)


@pytest.mark.parametrize("beta", [0.7, 0.0])
def test_derpp_loss_is_ce_plus_logit_and_label_replay(beta):
    setup = build({**CONFIGS["derpp"], "learner": {**CONFIGS["derpp"]["learner"],
                                                   "alpha": 0.3, "beta": beta,
                                                   "replay_batch_size": 8}})
    learner, experience = setup.learner, setup.stream[0]
    model, memory = learner.model, learner.memory
    memory.add(experience.train[:40].replace(logits=torch.randn(40, 6)))
    batch = experience.train[40:56]
    draws = torch.Generator().manual_seed(7)
    dark, labelled = memory.sample(8, draws), memory.sample(8, draws)
    expected = (F.cross_entropy(model(batch.x), batch.y)
                + 0.3 * ((model(dark.x) - dark.logits) ** 2).mean())
    if beta:
        expected = expected + beta * F.cross_entropy(model(labelled.x), labelled.y)
    got = learner.loss(batch, experience, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected)
    assert len(memory) == 56, "the current minibatch joins the memory after the replay draws"


def test_derpp_beats_finetuning_at_the_same_budget():
    for seed in (0, 1):
        der = build({**CONFIGS["derpp"], "seed": seed})
        finetune = build({**CONFIGS["finetune"], "seed": seed})
        a = run(der.stream, der.learner, progress=False)
        b = run(finetune.stream, finetune.learner, progress=False)
        assert a.final_average > b.final_average + 0.1
        assert a.forgetting < b.forgetting - 0.1


# ---------------------------------------------------------------- LwF

def test_lwf_with_lambda_zero_is_finetuning_exactly():
    lwf = build({**CONFIGS["lwf"], "learner": {**CONFIGS["lwf"]["learner"], "lambda_old": 0.0}})
    finetune = build(CONFIGS["finetune"])
    a = run(lwf.stream, lwf.learner, progress=False)
    b = run(finetune.stream, finetune.learner, progress=False)
    assert weights_equal(lwf.learner.model, finetune.learner.model)
    assert a.matrix == b.matrix


def test_lwf_keeps_a_frozen_charged_teacher_and_the_old_classes():
    setup = build(CONFIGS["lwf"])
    learner, stream = setup.learner, setup.stream
    learner.learn(stream[0])
    assert learner.old_classes.tolist() == sorted(stream[0].classes)
    assert weights_equal(learner.teacher, learner.model)
    assert not any(p.requires_grad for p in learner.teacher.parameters())
    assert setup.budget.charged("teacher") == module_nbytes(learner.model)
    learner.learn(stream[1])
    assert learner.old_classes.tolist() == sorted(stream[0].classes + stream[1].classes)
    assert setup.budget.charged("teacher") == module_nbytes(learner.model), "charged once"
    state = learner.state_dict()
    assert {k for k in state if k.startswith("teacher/")} == {
        f"teacher/{k}" for k in learner.model.state_dict()}


def test_lwf_loss_is_ce_plus_distillation_of_old_class_responses():
    setup = build({**CONFIGS["lwf"], "learner": {**CONFIGS["lwf"]["learner"],
                                                 "lambda_old": 2.5, "temperature": 3.0}})
    learner, stream = setup.learner, setup.stream
    learner.learn(stream[0])
    with torch.no_grad():  # move the student away from its teacher
        for p in learner.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    batch, old = stream[1].train[:20], list(stream[0].classes)
    logits = learner.model(batch.x)
    p_teacher = torch.softmax(learner.teacher(batch.x)[:, sorted(old)] / 3.0, dim=1)
    log_student = torch.log_softmax(logits[:, sorted(old)] / 3.0, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_student)).sum(dim=1).mean()
    expected = F.cross_entropy(logits, batch.y) + 2.5 * kl
    got = learner.loss(batch, stream[1], torch.Generator())
    torch.testing.assert_close(got, expected)
    assert kl > 1e-4, "the test must exercise a non-zero distillation term"


def test_lwf_reduces_forgetting_on_blobs():
    def mean_forgetting(learner):
        values = []
        for seed in range(10):
            setup = build({**BASE, "seed": seed, "budget": "1MB",
                           "model": {"name": "mlp", "hidden": [32]},
                           "learner": {**learner, "epochs": 5, "lr": 0.05, "batch_size": 16}})
            values.append(run(setup.stream, setup.learner, progress=False).forgetting)
        return np.mean(values)

    lwf = mean_forgetting({"name": "lwf", "lambda_old": 1.0, "temperature": 2.0})
    finetune = mean_forgetting({"name": "finetune"})
    assert lwf < finetune - 0.05, (lwf, finetune)


def test_lwf_refuses_a_state_without_old_classes():
    setup = build(CONFIGS["lwf"])
    before = copy.deepcopy(setup.learner.model.state_dict())
    state = {k: v + 1 for k, v in setup.learner.state_dict().items() if k != "old_classes"}
    with pytest.raises(ValueError, match="old_classes"):
        setup.learner.load_state_dict(state)
    assert all(torch.equal(before[k], v) for k, v in setup.learner.model.state_dict().items())
    assert isinstance(setup.learner, LwF) and setup.learner.teacher is None
