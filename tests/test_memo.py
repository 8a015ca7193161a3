import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from memkit import Budget, BudgetExceeded, module_nbytes, run
from memkit.agents.backbones import mlp_blocks, split_blocks
from memkit.agents.der_expandable import DynamicallyExpandableRepresentation
from memkit.agents.er import ExperienceReplay
from memkit.agents.expandable import ExpandableNet
from memkit.agents.memo import MEMO
from memkit.buffers.reservoir import Reservoir
from memkit.config import build
from memkit.data import blobs
from memkit.registry import get
from memkit.run import CHECKPOINT
from memkit.testing import check_resume

LEARNERS = ["memo", "der_expandable"]


def config(learner="memo", memory=True, budget="6KB", deep=(8,)):
    cfg = {"name": "tiny", "seed": 1, "budget": budget,
           "stream": {"name": "blobs", "n_classes": 6, "n_experiences": 3, "n_per_class": 60},
           "model": {"name": "mlp_blocks", "shallow": [16], "deep": list(deep)},
           "memory": {"name": "reservoir"},
           "learner": {"name": learner, "epochs": 3, "lr": 0.1, "batch_size": 16}}
    if not memory:
        del cfg["memory"]
    return cfg


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mlp_blocks_is_an_mlp_in_three_named_parts():
    assert get("model", "mlp_blocks") is mlp_blocks
    model = mlp_blocks((2, 4), 5, shallow=(6,), deep=(7, 3))
    shallow, deep, head = split_blocks(model)
    x = torch.randn(10, 2, 4)
    assert torch.equal(model(x), head(deep(shallow(x))))
    assert (shallow(x).shape[1], deep(shallow(x)).shape[1], head.out_features) == (6, 3, 5)
    n_params = (8 * 6 + 6) + (6 * 7 + 7) + (7 * 3 + 3) + (3 * 5 + 5)
    assert module_nbytes(model) == 4 * n_params
    assert len(mlp_blocks((4,), 2, shallow=(), deep=(3,)).shallow) == 1, "only the flatten"
    with pytest.raises(ValueError, match="at least one deep layer"):
        mlp_blocks((4,), 2, deep=())
    with pytest.raises(TypeError, match="'shallow', 'deep'"):
        split_blocks(nn.Linear(2, 2))


def test_learners_start_from_the_model_the_config_charged():
    for name in LEARNERS:
        setup = build(config(name))
        assert module_nbytes(setup.learner.model) == setup.budget.charged("model")
    with pytest.raises(ValueError, match="budget"):
        MEMO(mlp_blocks((4,), 2), None)


def test_memo_freezes_old_specialised_blocks_and_trains_the_shared_ones():
    setup = build(config("memo"))
    learner, stream = setup.learner, setup.stream
    learner.learn(stream[0])
    old_block, shared = params(learner.model.blocks[0]), params(learner.model.trunk)
    learner.learn(stream[1])
    net = learner.model
    assert same(params(net.blocks[0]), old_block), "the old specialised block did not move"
    assert not any(p.requires_grad for p in net.blocks[0].parameters())
    assert all(p.requires_grad for p in [*net.trunk.parameters(), *net.blocks[1].parameters()])
    assert not same(params(net.trunk), shared), "the generalised blocks keep training"
    assert not same(params(net.blocks[1]), old_block), "the new block started as a copy, trained"
    net.train()
    assert not net.blocks[0].training and net.blocks[1].training


def test_der_freezes_whole_old_backbones():
    setup = build(config("der_expandable"))
    learner, stream = setup.learner, setup.stream
    learner.learn(stream[0])
    first = params(learner.model.blocks[0])
    learner.learn(stream[1])
    learner.learn(stream[2])
    net = learner.model
    assert len(net.blocks) == 3 and list(net.trunk.parameters()) == []
    assert same(params(net.blocks[0]), first)
    trained = [any(p.requires_grad for p in b.parameters()) for b in net.blocks]
    assert trained == [False, False, True]
    assert not same(params(net.blocks[2]), first)


@pytest.mark.parametrize("name", LEARNERS)
def test_every_new_block_is_charged_and_the_memory_pays_for_it(name):
    setup = build(config(name))
    learner, budget, memory = setup.learner, setup.budget, setup.learner.memory
    shrunk = []
    for experience in setup.stream:
        free, capacity, charged = budget.free, memory.capacity, budget.charged("model")
        learner.learn(experience)
        growth = budget.charged("model") - charged
        assert budget.charged("model") == module_nbytes(learner.model)
        assert memory.nbytes + budget.charged("model") <= budget.capacity
        assert set(budget.owners) == {"model", "reservoir"}
        if experience.index > 0:
            assert growth > 0
            assert capacity - memory.capacity >= math.ceil((growth - free) / memory.item_nbytes)
        if memory.capacity < capacity:
            shrunk.append(experience.index)
            assert budget.free < memory.item_nbytes, "the memory shrank no more than needed"
    assert shrunk == [1, 2] and len(learner.model.blocks) == 3
    assert len(memory) == memory.capacity


def test_the_first_growth_only_resizes_the_head_and_later_ones_pay_for_a_block():
    setup = build(config("memo"))
    learner, budget = setup.learner, setup.budget
    learner.learn(setup.stream[0])
    net = learner.model
    assert len(net.blocks) == 1 and net.aux_head is None and net.head.out_features == 2
    before = budget.charged("model")
    learner.learn(setup.stream[1])
    block = module_nbytes(learner.model.blocks[1])
    head = 4 * (16 * 4 + 4)
    aux = 4 * (8 * 3 + 3)
    assert budget.charged("model") - before == block + head - 4 * (8 * 2 + 2) + aux


def grown_net(seen=(3, 5), new=(1, 4), dim=4, seed=0):
    net = ExpandableNet(nn.Flatten(), [nn.Sequential(nn.Linear(6, dim), nn.ReLU())],
                        nn.Linear(dim, 9))
    generator = torch.Generator().manual_seed(seed)
    net = net.grown(torch.tensor(seen), generator)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return net, net.grown(torch.tensor(new), generator)


def test_growth_widens_the_features_and_keeps_the_old_classifier_rows():
    old, new = grown_net()
    x = torch.randn(5, 6)
    assert new.features(x).shape == (5, 2 * 4) == (5, sum(b[0].out_features for b in new.blocks))
    assert torch.equal(new.head.weight[:2, :4], old.head.weight)
    assert torch.equal(new.head.bias[:2], old.head.bias)
    assert torch.equal(new.head.weight[:2, 4:], torch.zeros(2, 4)), "old logits unchanged"
    assert torch.allclose(new(x)[:, :2], old(x), atol=1e-6)
    assert torch.equal(new.blocks[1][0].weight, old.blocks[0][0].weight), "a copy of the last"
    assert new.blocks[1] is not old.blocks[0] and new.blocks[0] is old.blocks[0]
    assert new.classes.tolist() == [3, 5, 1, 4] and new.block_classes.tolist() == [2, 2]
    assert old.classes.tolist() == [3, 5] and len(old.blocks) == 1, "old network unchanged"
    assert same(params(new), params(grown_net()[1])), "fresh rows come from the generator"
    with pytest.raises(ValueError, match=r"not learned before.*\[5\]"):
        new.grown(torch.tensor([7, 5]), torch.Generator())
    with pytest.raises(ValueError, match=r"labels \[0\] are not among"):
        new.columns(torch.tensor([3, 0]))


def test_auxiliary_targets_map_new_classes_to_1_to_k_and_old_ones_to_0():
    _, net = grown_net(seen=(3, 5), new=(1, 4))
    columns = net.columns(torch.tensor([3, 5, 1, 4, 4, 3]))
    assert columns.tolist() == [0, 1, 2, 3, 3, 0]
    assert net.aux_targets(columns).tolist() == [0, 0, 1, 2, 2, 0]
    assert net.aux_head.out_features == 3 and net.aux_head.in_features == net.block_dim


@settings(max_examples=40, deadline=None)
@given(classes=st.permutations(list(range(9))), n_seen=st.integers(1, 8))
def test_auxiliary_targets_property(classes, n_seen):
    _, net = grown_net(seen=classes[:n_seen], new=classes[n_seen:])
    labels = torch.tensor(net.classes.tolist() * 2)
    targets = net.aux_targets(net.columns(labels))
    new = torch.isin(labels, torch.tensor(classes[n_seen:]))
    assert (targets[~new] == 0).all()
    rank = {c: i + 1 for i, c in enumerate(classes[n_seen:])}
    assert targets[new].tolist() == [rank[c] for c in labels[new].tolist()]


@pytest.mark.parametrize("name", LEARNERS)
@pytest.mark.parametrize("aligning", [True, False])
def test_weight_aligning_gives_new_rows_the_old_rows_mean_norm(name, aligning):
    cfg = config(name)
    setup = build({**cfg, "learner": {**cfg["learner"], "weight_aligning": aligning}})
    learner = setup.learner
    for experience in setup.stream:
        learner.learn(experience)
        norms = learner.model.head.weight.norm(dim=1)
        k = len(experience.classes)
        if experience.index > 0:
            gap = abs(norms[-k:].mean().item() - norms[:-k].mean().item())
            assert gap < 1e-5 if aligning else gap > 1e-3


@pytest.mark.parametrize("name", LEARNERS)
def test_a_budget_too_small_for_the_next_block_raises_before_changing_anything(name):
    # the model takes 6488 bytes, the memory 20 items of 40 bytes; a deep block is 4352 bytes
    setup = build(config(name, budget=7300, deep=(64,)))
    learner, budget, memory = setup.learner, setup.budget, setup.learner.memory
    learner.learn(setup.stream[0])
    owners, capacity, net = budget.owners, memory.capacity, learner.model
    with pytest.raises(BudgetExceeded, match="'model' asked for"):
        learner.learn(setup.stream[1])
    assert budget.owners == owners and memory.capacity == capacity and learner.model is net
    assert all(p.requires_grad for p in net.parameters())


def test_a_memory_on_another_budget_is_refused():
    model = mlp_blocks((8,), 6, shallow=(16,), deep=(8,))
    stream = blobs(n_classes=6, n_per_class=20, n_experiences=3)
    memory = Reservoir(stream.spec, Budget("4KB"))
    learner = MEMO(model, memory, budget=Budget("8KB"))
    with pytest.raises(ValueError, match="another budget"):
        learner.learn(stream[0])


def test_both_beat_finetuning_at_the_same_budget():
    finetune = build(config("er", memory=False))
    assert isinstance(finetune.learner, ExperienceReplay) and finetune.learner.memory is None
    base = run(finetune.stream, finetune.learner, progress=False).final_average
    scores = {}
    for name in LEARNERS:
        setup = build(config(name))
        scores[name] = run(setup.stream, setup.learner, progress=False).final_average
    assert all(score > base + 0.2 for score in scores.values()), (scores, base)


@pytest.mark.parametrize("name", LEARNERS)
def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path, name):
    def check_the_ledger_when_learning(resumed):  # the restored network is charged in full
        learn = resumed.learner.learn

        def check_then_learn(experience):
            assert resumed.budget.charged("model") == module_nbytes(resumed.learner.model)
            assert len(resumed.learner.model.blocks) == experience.index
            learn(experience)

        resumed.learner.learn = check_then_learn

    full, resumed = check_resume(config(name), tmp_path, crash_at=2,
                                 before_resume=check_the_ledger_when_learning)
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == [CHECKPOINT]
    frozen = [p.requires_grad for p in resumed.learner.model.parameters()]
    assert frozen == [p.requires_grad for p in full.learner.model.parameters()]


def test_a_state_that_does_not_extend_the_network_is_refused_unchanged():
    a, b = build(config("memo")), build(config("memo"))
    a.learner.learn(a.stream[0])
    a.learner.learn(a.stream[1])
    b.learner.learn(b.stream[0])
    b.learner.learn(b.stream[1])
    b.learner.learn(b.stream[2])
    state, owners, net = a.learner.state_dict(), b.budget.owners, b.learner.model
    with pytest.raises(ValueError, match="does not extend"):
        b.learner.load_state_dict(state)
    assert b.budget.owners == owners and b.learner.model is net
    fresh = build(config("memo"))
    with pytest.raises(ValueError, match="missing"):
        fresh.learner.load_state_dict({k: v for k, v in state.items() if k != "classes"})


def test_der_takes_a_plain_sequential_backbone():
    setup = build({**config("der_expandable"), "model": {"name": "mlp", "hidden": [16]}})
    result = run(setup.stream, setup.learner, progress=False)
    assert isinstance(setup.learner, DynamicallyExpandableRepresentation)
    assert setup.budget.charged("model") == module_nbytes(setup.learner.model)
    assert result.final_average > 0.6
