from collections import Counter

import pytest
import torch
from torch import nn

import memkit.agents.er  # noqa: F401 - registers "er"
from memkit import Batch, Budget, module_nbytes, run
from memkit.agents.backbones import mlp
from memkit.agents.gdumb import GDumbLearner
from memkit.agents.icarl import ICaRL
from memkit.buffers.gdumb import GDumb
from memkit.buffers.herding import Herding
from memkit.config import build
from memkit.data import blobs
from memkit.testing import check_resume

STREAM = {"name": "blobs", "n_classes": 6, "n_experiences": 3, "n_per_class": 60,
          "n_features": 4, "cluster_std": 2.0}
TRAIN = {"epochs": 5, "lr": 0.05, "batch_size": 16}


def config(learner, memory=None, seed=0, budget="4KB"):
    out = {"name": learner, "seed": seed, "budget": budget, "stream": STREAM,
           "model": {"name": "mlp", "hidden": [16]}, "learner": {"name": learner, **TRAIN}}
    if memory is not None:
        out["memory"] = {"name": memory}
    return out


ICARL = config("icarl", "herding")
GDUMB = config("gdumb", "gdumb")
FINETUNE = config("er")


def final_average(cfg):
    setup = build(cfg)
    return run(setup.stream, setup.learner, progress=False).final_average


@pytest.mark.parametrize("seed", [0, 1])
def test_icarl_and_gdumb_clearly_beat_finetuning_at_the_same_budget(seed):
    finetune = final_average({**FINETUNE, "seed": seed})
    icarl = final_average({**ICARL, "seed": seed})
    gdumb = final_average({**GDUMB, "seed": seed})
    assert icarl > finetune + 0.25 and gdumb > finetune + 0.25, (icarl, gdumb, finetune)


def test_icarl_charges_its_teacher_and_pays_with_exemplars():
    setup = build(ICARL)
    learner, budget = setup.learner, setup.budget
    capacity = learner.memory.capacity
    run(setup.stream, learner, progress=False)
    model_bytes = module_nbytes(learner.model)
    assert budget.charged("teacher") == model_bytes == module_nbytes(learner.teacher)
    assert budget.used <= budget.capacity
    shrunk = (budget.capacity - 2 * model_bytes) // learner.memory.item_nbytes
    assert learner.memory.capacity == shrunk < capacity
    assert learner.memory.per_class == learner.memory.capacity // 6
    assert all(not p.requires_grad for p in learner.teacher.parameters())


def test_icarl_predicts_the_nearest_exemplar_mean():
    setup = build(ICARL)
    learner = setup.learner
    run(setup.stream, learner, progress=False)
    x = torch.cat([e.test.x for e in setup.stream])
    classes, means = learner.memory.class_means(learner.features)
    f = nn.functional.normalize(learner.features(x), dim=1)
    nearest = classes[(f @ means.T).argmax(dim=1)]  # the largest cosine
    assert torch.equal(learner.predict(x), nearest)


def test_changing_the_stored_exemplars_changes_icarl_predictions():
    setup = build(ICARL)
    learner, memory = setup.learner, setup.learner.memory
    run(setup.stream, learner, progress=False)
    test = setup.stream[0].test
    a, b = setup.stream[0].classes
    before = learner.predict(test.x)
    assert (before == test.y).float().mean() > 0.8
    state = memory.state_dict()
    tensors = {k: v.clone() for k, v in state["tensors"].items()}
    y = state["tensors"]["y"]
    tensors["y"][y == a], tensors["y"][y == b] = b, a  # a's exemplars become b's and back
    memory.load_state_dict({"tensors": tensors, "extra": state["extra"]})
    learner.update_class_means()
    after = learner.predict(test.x)
    swapped = torch.where(before == a, b, torch.where(before == b, a, before))
    assert torch.equal(after, swapped)


def test_icarl_loss_is_bce_with_teacher_targets_for_old_classes():
    stream = blobs(n_classes=4, n_experiences=2, n_per_class=30, n_features=4)
    model = mlp(stream.input_shape, 4, hidden=(8,))
    learner = ICaRL(model, Herding(stream.spec, Budget("4KB")), epochs=1, lr=0.05)
    learner.learn(stream[0])
    with torch.no_grad():
        learner.model[-1].bias.add_(0.5)  # the student now differs from its teacher
    learner.new = torch.zeros(4, dtype=torch.bool)
    learner.new[list(stream[1].classes)] = True
    batch = stream[1].train[:10]
    old, new = list(stream[0].classes), list(stream[1].classes)
    logits = learner.model(batch.x)
    teacher = torch.sigmoid(learner.teacher(batch.x))
    expected = sum(nn.functional.binary_cross_entropy_with_logits(
        logits[i, c], teacher[i, c] if c in old else (batch.y[i] == c).float())
        for i in range(10) for c in old + new) / 10
    loss = learner.loss(batch, stream[1], torch.Generator())
    assert torch.allclose(loss, expected, atol=1e-5)


def test_icarl_and_gdumb_need_their_memories():
    model = mlp((4,), 3)
    with pytest.raises(TypeError, match="expected a Herding memory"):
        ICaRL(model, None)
    with pytest.raises(TypeError, match="expected a sample memory"):
        GDumbLearner(model, None)
    with pytest.raises(RuntimeError, match="learn an experience first"):
        ICaRL(model, Herding({"x": ((4,), torch.float32), "y": ((), torch.int64)}, "1KB")
              ).predict(torch.zeros(2, 4))


def _gdumb(seed, budget="4KB"):
    stream = blobs(**{k: v for k, v in STREAM.items() if k != "name"})
    model = mlp(stream.input_shape, stream.n_classes, hidden=(16,))
    memory = GDumb(stream.spec, Budget(budget), seed=seed)
    return stream, GDumbLearner(model, memory, seed=seed, **TRAIN)


def test_gdumb_retrains_from_the_same_seeded_initialisation_whatever_the_weights():
    stream, a = _gdumb(seed=4)
    _, b = _gdumb(seed=4)
    with torch.no_grad():
        for p in b.model.parameters():
            p.normal_()  # b starts from other weights
    rng = torch.get_rng_state()
    a.reinitialise(0)
    assert torch.equal(torch.get_rng_state(), rng), "the global random state is untouched"
    b.reinitialise(0)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    a.learn(stream[0])
    b.learn(stream[0])
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    _, c = _gdumb(seed=5)
    c.reinitialise(0)
    a.reinitialise(0)
    assert not torch.equal(a.model[1].weight, c.model[1].weight)


def test_gdumb_trains_on_the_memory_only():
    stream, learner = _gdumb(seed=0)
    seen = []

    def record(batch, experience, generator):
        seen.append(batch)
        return learner.model(batch.x).sum() * 0

    learner.loss = record
    learner.learn(stream[0])
    seen.clear()
    learner.learn(stream[1])
    held = next(learner.memory.batches(len(learner.memory)))
    trained = Counter(map(tuple, Batch.cat(seen).x.tolist()))
    assert trained == Counter({tuple(row): TRAIN["epochs"] for row in held.x.tolist()})
    assert set(learner.memory.class_counts()) == {*stream[0].classes, *stream[1].classes}


@pytest.mark.parametrize("cfg", [ICARL, GDUMB], ids=["icarl", "gdumb"])
def test_resume_after_a_crash_gives_the_uninterrupted_result(cfg, tmp_path):
    check_resume(cfg, tmp_path, crash_at=2)


def test_icarl_refuses_a_state_of_another_shape_before_loading_it():
    setup = build(ICARL)
    learner = setup.learner
    learner.learn(setup.stream[0])
    state = learner.state_dict()
    before = {k: v.clone() for k, v in state.items()}
    with pytest.raises(ValueError, match="expected"):
        learner.load_state_dict({k: v for k, v in state.items() if k != "known"})
    bad = {**state, "teacher.3.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match=r"\['teacher\.3\.weight'\] do not have this model"):
        learner.load_state_dict(bad)
    assert all(torch.equal(v, learner.state_dict()[k]) for k, v in before.items())
