import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from memkit import Batch, Budget, BudgetExceeded, run
from memkit.agents.sirius import (
    ActionSpace,
    BCPolicy,
    SiriusLearner,
    iwr_weights,
    sirius_weights,
    uniform_weights,
)
from memkit.budget import module_nbytes
from memkit.buffers.trajectory import TrajectoryMemory
from memkit.deployment import StepLabel
from memkit.registry import get
from memkit.run import CHECKPOINT
from memkit.streams import Experience, Stream

DEMO, ROBOT, PRE, INTERVENTION = StepLabel
FAST = {"hidden": (32, 32), "batch_size": 64, "lr": 3e-3}


def labels(*counts: int, seed: int = 0) -> torch.Tensor:
    """``counts[c]`` steps of each label c, shuffled."""
    label = torch.cat([torch.full((n,), c, dtype=torch.int8) for c, n in enumerate(counts)])
    return label[torch.randperm(len(label), generator=torch.Generator().manual_seed(seed))]


def per_label(weights: torch.Tensor, label: torch.Tensor) -> dict[int, float]:
    """The one weight each present label gets (and check it is one value per label)."""
    out = {}
    for c in torch.unique(label).tolist():
        values = torch.unique(weights[label == c])
        assert len(values) == 1
        out[c] = float(values)
    return out


def episodes(obs: torch.Tensor, action: torch.Tensor, label: torch.Tensor, *, first_traj=0,
             round_=0, length=10) -> Batch:
    """Cut rows into trajectories of ``length`` steps with ids from ``first_traj``."""
    n = len(obs)
    return Batch(obs=obs, action=action, label=label.to(torch.int8),
                 traj=first_traj + torch.arange(n) // length,
                 round=torch.full((n,), round_, dtype=torch.int64))


def uniform_obs(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.rand(n, dim, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- weights

def test_sirius_and_iwr_weights_against_hand_computed_values():
    label = labels(4, 10, 2, 4)  # n = 20: r_demo 0.2, r_robot 0.5, r_pre 0.1, r_int 0.2
    w = sirius_weights(label)
    assert w.dtype == torch.float32 and w.shape == (20,)
    expected = {DEMO: 1.0, ROBOT: (1 - 0.5 - 0.2 - 0.002) / 0.5, PRE: 0.002 / 0.1,
                INTERVENTION: 0.5 / 0.2}  # 1, 0.596, 0.02, 2.5
    assert per_label(w, label) == pytest.approx(expected, rel=1e-6)
    assert float(w.sum()) == pytest.approx(20.0)  # every class present: the weights sum to n
    assert per_label(iwr_weights(label), label) == {DEMO: 1.0, ROBOT: 1.0, PRE: 1.0,
                                                    INTERVENTION: (20 - 4) / 4}
    assert torch.equal(uniform_weights(label), torch.ones(20))


def test_absent_classes_have_no_term_and_the_robot_weight_is_clamped_at_zero():
    no_pre = labels(2, 6, 0, 2)  # r_demo 0.2, r_robot 0.6, r_int 0.2
    assert per_label(sirius_weights(no_pre), no_pre) == pytest.approx(
        {DEMO: 1.0, ROBOT: (1 - 0.5 - 0.2 - 0.002) / 0.6, INTERVENTION: 2.5}, rel=1e-6)
    many_demos = labels(6, 2, 0, 2)  # r_demo 0.6 > 0.498
    assert per_label(sirius_weights(many_demos), many_demos) == pytest.approx(
        {DEMO: 1.0, ROBOT: 0.0, INTERVENTION: 2.5})
    robot_only = labels(0, 5)
    assert per_label(sirius_weights(robot_only), robot_only) == pytest.approx({ROBOT: 0.498})
    assert per_label(iwr_weights(robot_only), robot_only) == {ROBOT: 1.0}
    assert len(sirius_weights(torch.zeros(0, dtype=torch.int8))) == 0


@pytest.mark.parametrize("fn", [sirius_weights, iwr_weights, uniform_weights])
def test_weights_reject_bad_labels(fn):
    with pytest.raises(ValueError, match=r"labels in 0..3, got values in \[0, 4\]"):
        fn(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="1-d integer tensor"):
        fn(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-d integer tensor"):
        fn(torch.zeros(2, 2, dtype=torch.int64))


# ---------------------------------------------------------------- the policy

def test_gaussian_and_mixture_heads_learn_a_linear_map_scaled_to_the_box():
    obs = uniform_obs(1500, 4, seed=0)
    W = torch.randn(4, 2, generator=torch.Generator().manual_seed(1)) * 0.6
    data = episodes(obs, obs @ W, torch.full((1500,), DEMO))
    test = uniform_obs(400, 4, seed=2)
    box = gym.spaces.Box(low=-2.0, high=2.0, shape=(2,))  # Pendulum's torque range
    for head in ("gaussian", "gmm"):
        learner = SiriusLearner(4, box, "1MB", head=head, weighting="uniform", steps=400,
                                n_components=3, **FAST)
        learner.learn(Experience(0, data, data))
        error = (learner.predict(test) - test @ W).abs().mean()
        assert error < 0.06 * (test @ W).abs().mean(), head
        action = learner.act(test[0].numpy())
        assert action.dtype == np.float32 and action.shape == (2,)
        assert np.all(np.abs(learner.predict(test * 50).numpy()) <= 2.0)  # tanh keeps the box


def test_categorical_head_learns_a_discrete_rule():
    obs = uniform_obs(1500, 4, seed=3)
    V = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    data = episodes(obs, (obs @ V).argmax(1) - 1, torch.full((1500,), DEMO))
    learner = SiriusLearner(4, gym.spaces.Discrete(3, start=-1), "1MB", steps=400, **FAST)
    learner.learn(Experience(0, data, data))
    test = uniform_obs(400, 4, seed=5)
    assert (learner.predict(test) == (test @ V).argmax(1) - 1).float().mean() > 0.93
    action = learner.act(test[0].numpy())
    assert isinstance(action, int) and -1 <= action <= 1


def test_the_mixture_acts_with_its_most_likely_mode_where_a_gaussian_averages():
    obs = uniform_obs(1200, 2, seed=6)
    mode = torch.rand(1200, generator=torch.Generator().manual_seed(7)) < 0.7
    action = torch.where(mode, 0.5, -0.5).unsqueeze(1)  # two modes, 70 % / 30 %
    data = episodes(obs, action, torch.full((1200,), DEMO))
    test = uniform_obs(200, 2, seed=8)
    acted = {}
    for head in ("gaussian", "gmm"):
        learner = SiriusLearner(2, ([-1.0], [1.0]), "1MB", head=head, weighting="uniform",
                                steps=300, n_components=2, **FAST)
        learner.learn(Experience(0, data, data))
        acted[head] = float(learner.predict(test).mean())
    assert acted["gmm"] == pytest.approx(0.5, abs=0.08)
    assert acted["gaussian"] == pytest.approx(0.7 * 0.5 - 0.3 * 0.5, abs=0.08)


def test_weighting_decides_whether_interventions_or_robot_actions_are_followed():
    # Same states everywhere; demos and interventions choose 1, the robot chose 0.
    # Shares of the total weight on action 1: uniform 0.1 + 0.2 = 0.3; Sirius
    # (0.1 + 0.5) / 0.998 = 0.60; IWR (0.1 + 0.2 * 4) / (1 + 0.2 * 3) = 0.56.
    n = 2000
    label = labels(200, 1400, 0, 400, seed=9)
    action = (label != ROBOT).to(torch.int64)
    data = episodes(uniform_obs(n, 3, seed=10), action, label)
    test = uniform_obs(300, 3, seed=11)
    chose_one = {}
    for weighting in ("uniform", "sirius", "iwr"):
        learner = SiriusLearner(3, 2, "1MB", weighting=weighting, steps=300, **FAST)
        learner.learn(Experience(0, data, data))
        chose_one[weighting] = float(learner.predict(test).float().mean())
    assert chose_one["uniform"] < 0.1
    assert chose_one["sirius"] > 0.8 and chose_one["iwr"] > 0.8


# ---------------------------------------------------------------- rounds, memory, budget

def deployment(rounds=3, n=120, obs_dim=3, seed=0, length=10):
    """Round 0 of demos, then rounds of robot steps with interventions (discrete actions)."""
    batches, first = [], 0
    for r in range(rounds):
        obs = uniform_obs(n, obs_dim, seed=seed + r)
        label = torch.full((n,), DEMO if r == 0 else ROBOT)
        if r:
            label[torch.arange(n) % length >= length - 3] = INTERVENTION
        action = (obs[:, 0] > 0).to(torch.int64)
        batches.append(episodes(obs, action, label, first_traj=first, round_=r, length=length))
        first += n // length
    return batches


def experiences(batches):
    return [Experience(r, b, Batch(x=b.obs, y=b.action)) for r, b in enumerate(batches)]


def test_the_model_and_the_memory_share_one_budget_that_is_never_exceeded():
    budget = Budget("200KB")
    learner = SiriusLearner(3, 2, budget, memory_nbytes=3000, steps=5, **FAST)
    item = learner.memory.item_nbytes
    assert item == 3 * 4 + 8 + 1 + 8 + 8
    assert budget.owners == {"model": module_nbytes(learner.policy),
                             "memory": 3000 // item * item}
    for exp in experiences(deployment(rounds=4)):
        learner.learn(exp)
        assert len(learner.memory) <= learner.memory.capacity == 3000 // item
        assert budget.used <= budget.capacity
    assert learner.memory.collected == 480 and len(learner.memory) == 80  # 8 trajectories of 10
    assert learner.memory.trajectories().traj.tolist() == list(range(40, 48))  # the newest
    with pytest.raises(BudgetExceeded, match="'model' asked for"):
        SiriusLearner(3, 2, 1000, **FAST)


def test_memory_fraction_grows_with_what_was_collected_and_none_keeps_everything():
    fraction = SiriusLearner(3, 2, "1MB", memory_fraction=0.3, strategy="keep_least_intervened",
                             steps=5, **FAST)
    everything = SiriusLearner(3, 2, "1MB", steps=5, **FAST)
    collected = 0
    for exp in experiences(deployment(rounds=4)):
        collected += len(exp.train)
        fraction.learn(exp)
        everything.learn(exp)
        assert fraction.memory.capacity == max(math.floor(0.3 * collected), 10)
        assert len(fraction.memory) <= fraction.memory.capacity
        assert fraction.budget.charged("memory") == fraction.memory.nbytes
        assert len(everything.memory) == everything.memory.capacity == collected
    held = fraction.memory.trajectories()
    assert {9, 10, 11} <= set(held.traj.tolist())  # the demos that got in never leave (0 %)
    assert len(fraction.memory) == 10 * (fraction.memory.capacity // 10)


def test_same_seed_same_policy_and_memory_other_seed_differs():
    def trained(seed):
        learner = SiriusLearner(3, 2, "1MB", memory_fraction=0.5, strategy="uniform", steps=20,
                                seed=seed, **FAST)
        for exp in experiences(deployment()):
            learner.learn(exp)
        return learner

    a, b, c = trained(0), trained(0), trained(1)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert a.memory.contents().equal(b.memory.contents())
    assert not torch.equal(a.state_dict()["net.0.weight"], c.state_dict()["net.0.weight"])


def test_retraining_depends_only_on_the_memory_while_fine_tuning_remembers_earlier_rounds():
    first, second = deployment(rounds=2)
    both = Batch.cat([first, second])

    def final(retrain, *rounds):
        learner = SiriusLearner(3, 2, "1MB", retrain=retrain, steps=30, **FAST)
        for index, data in rounds:
            learner.learn(Experience(index, data, data))
        return learner.state_dict()

    for retrain, equal in ((True, True), (False, False)):
        stepwise, at_once = final(retrain, (0, first), (1, second)), final(retrain, (1, both))
        assert all(torch.equal(stepwise[k], at_once[k]) for k in stepwise) == equal


def test_a_run_resumed_after_a_crash_equals_the_uninterrupted_run(tmp_path):
    stream = Stream(experiences(deployment(rounds=3)), name="toy_deployment", n_classes=2)

    def learner():
        return SiriusLearner(3, 2, "1MB", memory_fraction=0.4, strategy="uniform", steps=20,
                             **FAST)

    whole = learner()
    expected = run(stream, whole, checkpoint_dir=tmp_path / "whole", progress=False)
    crashed = learner()
    learn = crashed.learn

    def crash(experience):
        if experience.index == 2:
            raise KeyboardInterrupt
        learn(experience)

    crashed.learn = crash
    with pytest.raises(KeyboardInterrupt):
        run(stream, crashed, checkpoint_dir=tmp_path / "crashed", progress=False)
    resumed = learner()
    result = run(stream, resumed, checkpoint_dir=tmp_path / "crashed", resume=True,
                 progress=False)
    assert result.matrix == expected.matrix and result.memory == expected.memory
    assert resumed.budget.owners == whole.budget.owners
    assert all(torch.equal(whole.state_dict()[k], resumed.state_dict()[k])
               for k in whole.state_dict())
    assert resumed.memory.contents().equal(whole.memory.contents())
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == [CHECKPOINT]


# ---------------------------------------------------------------- spaces and bad input

def test_action_spaces_from_gymnasium_ints_and_bounds():
    assert ActionSpace.of(gym.spaces.Discrete(4, start=2)) == ActionSpace(n=4, start=2)
    assert ActionSpace.of(3) == ActionSpace(n=3)
    box = ActionSpace.of(gym.spaces.Box(-1.0, 1.0, shape=(2,)))
    assert (box.low, box.high, box.dim) == ((-1.0, -1.0), (1.0, 1.0), 2)
    assert ActionSpace.of(([-2.0], [2.0])).spec == {"action": ((1,), torch.float32)}
    assert ActionSpace.of(5).spec == {"action": ((), torch.int64)}
    policy = BCPolicy(3, box, head="gmm", hidden=(8,), n_components=4)
    assert policy.net[-1].out_features == 4 * 2 * 2 + 4
    assert policy.log_prob(torch.zeros(5, 3), torch.full((5, 2), 7.0)).isfinite().all()


def test_inputs_are_standardised_but_a_feature_that_barely_varies_is_only_centred():
    policy = BCPolicy(3, 2, hidden=(4,))
    obs = torch.stack([torch.arange(6.0), torch.full((6,), 5.0), 1 + 1e-4 * torch.arange(6.0)], 1)
    policy.fit_observations(obs)
    assert torch.allclose(policy.obs_mean, torch.tensor([2.5, 5.0, 1.00025]))
    assert torch.allclose(policy.obs_std, torch.tensor([obs[:, 0].std(unbiased=False), 1, 1]))


def test_bad_configuration_and_input_raise_clear_errors():
    bad_spaces = [(gym.spaces.Box(-np.inf, np.inf, shape=(2,)), "finite 1-d bounds"),
                  (gym.spaces.Box(-1, 1, shape=(2, 2)), "finite 1-d bounds"),
                  ("left", "expected a gymnasium Discrete or Box")]
    for space, message in bad_spaces:
        with pytest.raises((ValueError, TypeError), match=message):
            SiriusLearner(3, space, "1MB")
    configs = [({"weighting": "lfi"}, "unknown weighting 'lfi'"),
               ({"head": "gaussian"}, r"discrete action space takes a head among \('categorical"),
               ({"memory_nbytes": 1000, "memory_fraction": 0.5}, "not both"),
               ({"memory_fraction": 0.0}, r"memory_fraction in \(0, 1\]"),
               ({"memory_fraction": 1.5}, r"memory_fraction in \(0, 1\]"),
               ({"strategy": "fifo"}, "unknown strategy 'fifo'"),
               ({"epochs": 0}, "expected epochs")]
    for kwargs, message in configs:
        with pytest.raises(ValueError, match=message):
            SiriusLearner(3, 2, "1MB", **kwargs)
    learner = SiriusLearner(3, 2, "1MB", memory_fraction=0.5, steps=5, **FAST)
    data = deployment(rounds=1)[0]
    bad_rounds = [(data.select("obs", "action", "traj", "round"), "fields"),
                  (data.replace(action=data.action + 5), r"actions in 0..1, got .* \[5, 6\]"),
                  (data.replace(obs=torch.zeros(len(data), 4)), "field 'obs' expected items"),
                  (data.replace(traj=torch.arange(len(data)) % 2), "contiguous")]
    for batch, message in bad_rounds:
        with pytest.raises(ValueError, match=message):
            learner.learn(Experience(0, batch, batch))
        assert learner.memory.capacity == 0 and learner.memory.collected == 0
    with pytest.raises(ValueError, match=r"shape \(3,\), got \(4,\)"):
        learner.act(np.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(n, 3\), got \(3,\)"):
        learner.predict(torch.zeros(3))


def test_the_learner_is_registered_and_its_memory_is_its_store():
    assert get("learner", "sirius") is SiriusLearner
    learner = SiriusLearner(3, 2, "1MB", **FAST)
    assert isinstance(learner.stores["memory"], TrajectoryMemory)
