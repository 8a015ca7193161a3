import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memkit.agents.humans import CartPoleLQR
from memkit.batch import Batch
from memkit.buffers.ring import Ring
from memkit.deployment import (
    DeploymentResult,
    DeploymentStream,
    EpisodeInfo,
    StepLabel,
    Takeover,
    deploy,
    flatten_obs,
    relabel_pre_intervention,
    rollout,
    success_rule,
)

gym = pytest.importorskip("gymnasium")
D, R, P, H = (int(label) for label in StepLabel)  # H: human intervention


@pytest.fixture
def cartpole():
    env = gym.make("CartPole-v1")
    yield env
    env.close()


def decisions(takeover, robot, human, obs=None):
    takeover.reset()
    obs = obs if obs is not None else [None] * len(robot)
    return [int(takeover.step(o, r, h)) for o, r, h in zip(obs, robot, human, strict=True)]


def test_step_labels_are_the_shared_codes():
    assert [(s.name, int(s)) for s in StepLabel] == [
        ("DEMO", 0), ("ROBOT", 1), ("PRE_INTERVENTION", 2), ("INTERVENTION", 3)]


def test_takeover_after_k_consecutive_disagreements_then_hold():
    rule = Takeover(k=3, hold=2)
    human = [0] * 12
    robot = [1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1]
    # the streak breaks at step 2; steps 3-5 disagree, the third takes over; held 2 steps,
    # handed back on step 7 with a fresh streak: 7, 8 disagree, 9 agrees, so no new takeover
    assert decisions(rule, robot, human) == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]


def test_continuous_disagreement_is_l2_distance_above_threshold():
    rule = Takeover(k=1, threshold=0.5, hold=1)
    human = [np.zeros(2)] * 4
    robot = [np.array([0.3, 0.4]), np.array([0.3, 0.41]), np.zeros(2), np.array([-1.0, 0.0])]
    assert decisions(rule, robot, human) == [0, 1, 0, 1]  # |(.3, .4)| = .5 is not above


def test_k1_disagreement_on_the_hand_back_step_keeps_the_human_in_control():
    rule = Takeover(k=1, hold=2)  # retaken on step 2, so the hold restarts there
    assert decisions(rule, [1, 1, 1, 0, 0], [0] * 5) == [1, 1, 1, 1, 0]


def test_risk_takes_over_at_once_and_keeps_control_while_it_fires():
    rule = Takeover(k=5, hold=2, risk=lambda o: o > 0)
    obs = [0, 1, 0, 0, 1, 1, 1, 0, 0]  # the robot always agrees: only risk takes over
    assert decisions(rule, [0] * 9, [0] * 9, obs) == [0, 1, 1, 0, 1, 1, 1, 0, 0]


def test_safe_holds_the_human_past_the_hold_period():
    rule = Takeover(k=1, hold=1, safe=lambda o: o == "safe")
    obs = ["x", "x", "x", "safe", "x"]
    assert decisions(rule, [1, 0, 0, 0, 0], [0] * 5, obs) == [1, 1, 1, 0, 0]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"k": 0}, ValueError, "k expected an int >= 1, got 0"),
    ({"k": 2.5}, ValueError, "k expected an int >= 1"),
    ({"hold": 0}, ValueError, "hold expected an int >= 1"),
    ({"threshold": -1.0}, ValueError, "threshold expected a number >= 0"),
    ({"risk": "always"}, TypeError, "risk expected a callable"),
])
def test_takeover_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Takeover(**kwargs)


def test_pre_intervention_relabel_stops_at_an_earlier_intervention():
    labels = [R] * 20 + [H] * 3 + [R] * 5 + [H] * 2 + [R] * 2
    out = relabel_pre_intervention(labels, window=15)
    expected = [R] * 5 + [P] * 15 + [H] * 3 + [P] * 5 + [H] * 2 + [R] * 2
    assert out.tolist() == expected and out.dtype == np.int8
    assert relabel_pre_intervention(torch.tensor(labels, dtype=torch.int8), 3).tolist() == (
        [R] * 17 + [P] * 3 + [H] * 3 + [R] * 2 + [P] * 3 + [H] * 2 + [R] * 2)


def test_pre_intervention_relabel_never_touches_demos_and_stops_at_the_start():
    assert relabel_pre_intervention([D, R, R, H, R], 15).tolist() == [D, P, P, H, R]
    assert relabel_pre_intervention([H, H, R], 15).tolist() == [H, H, R]
    assert relabel_pre_intervention([R, R, R], 15).tolist() == [R, R, R]


def reference_relabel(labels, window):
    out = list(labels)
    for t in range(len(labels)):
        if labels[t] == H and (t == 0 or labels[t - 1] != H):
            s = t - 1
            while s >= 0 and s >= t - window and labels[s] != H:
                out[s] = P if labels[s] == R else labels[s]
                s -= 1
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([D, R, R, R, H]), min_size=1, max_size=60),
       st.integers(1, 20))
def test_pre_intervention_relabel_matches_a_plain_loop(labels, window):
    assert relabel_pre_intervention(labels, window).tolist() == reference_relabel(labels, window)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([D, R, R, R, H]), min_size=1, max_size=60),
       st.integers(1, 20))
def test_pre_intervention_relabel_is_idempotent(labels, window):
    once = relabel_pre_intervention(labels, window)
    assert np.array_equal(relabel_pre_intervention(once, window), once)


@pytest.mark.parametrize("window", [0, -3, 1.5])
def test_pre_intervention_relabel_rejects_a_bad_window(window):
    with pytest.raises(ValueError, match="window expected an int >= 1"):
        relabel_pre_intervention([R, H], window)


def test_pre_intervention_relabel_rejects_several_trajectories():
    with pytest.raises(ValueError, match="1-d labels, got shape"):
        relabel_pre_intervention(np.ones((2, 3)), 2)


def test_flatten_obs_concatenates_observation_and_goal():
    flat = flatten_obs({"observation": np.arange(3.0), "achieved_goal": np.ones(2),
                        "desired_goal": np.array([7.0, 8.0])})
    assert flat.dtype == np.float32 and flat.tolist() == [0, 1, 2, 7, 8]
    with pytest.raises(ValueError, match="needs keys 'observation' and 'desired_goal'"):
        flatten_obs({"observation": np.ones(2)})


def test_success_rules_per_environment():
    rewards = np.ones(500)
    assert success_rule("CartPole-v1")(rewards[:475], {})
    assert not success_rule("CartPole-v1")(rewards[:474], {})
    assert success_rule("LunarLander-v3")(np.array([150.0, 50.0]), {})
    assert not success_rule("LunarLanderContinuous-v3")(np.array([199.9]), {})
    assert success_rule("FetchPush-v4")(rewards, {"is_success": np.float32(1.0)})
    assert not success_rule("FetchPickAndPlace-v4")(rewards, {"is_success": np.float32(0.0)})
    pendulum = np.r_[np.full(150, -5.0), np.full(50, -0.4)]
    assert success_rule("Pendulum-v1")(pendulum, {})
    assert not success_rule("Pendulum-v1")(pendulum[:-2], {})  # mean -0.584
    with pytest.raises(ValueError, match="no success definition for environment 'Acrobot-v1'"):
        success_rule("Acrobot-v1")


def test_a_human_demo_on_cartpole(cartpole):
    batch, info = rollout(cartpole, None, CartPoleLQR(), None, seed=3, traj_id=7, round=0,
                          max_steps=60)
    assert batch.spec == {"obs": ((4,), torch.float32), "action": ((), torch.int64),
                          "label": ((), torch.int8), "traj": ((), torch.int64),
                          "round": ((), torch.int64)}
    assert len(batch) == 60 and set(batch.label.tolist()) == {D}
    assert set(batch.traj.tolist()) == {7} and set(batch.round.tolist()) == {0}
    assert info == EpisodeInfo(60.0, 60, False, 0, 60)
    first, _ = cartpole.reset(seed=3)
    assert np.array_equal(batch.obs[0].numpy(), first)
    _, full = rollout(cartpole, None, CartPoleLQR(), None, seed=3, traj_id=0, round=0)
    assert (full.episode_return, full.length, full.success) == (500.0, 500, True)


def test_a_supervised_rollout_labels_who_acted(cartpole):
    human, rule = CartPoleLQR(), Takeover(k=2, hold=4)
    batch, info = rollout(cartpole, lambda obs: 0, human, rule, seed=1, traj_id=2, round=1,
                          max_steps=120)
    labels, actions = batch.label.numpy(), batch.action.numpy()
    assert set(labels.tolist()) == {R, H}
    assert (actions[labels == R] == 0).all()
    wanted = np.array([human.act(o) for o in batch.obs.numpy()])
    assert np.array_equal(actions[labels == H], wanted[labels == H])
    replay = decisions(Takeover(k=2, hold=4), [0] * len(batch), wanted)
    assert np.array_equal(labels == H, np.array(replay, bool))
    onsets = int(((labels == H) & ~np.r_[False, labels[:-1] == H]).sum())
    assert info.interventions == onsets >= 2 and info.human_steps == int((labels == H).sum())
    assert info.length == len(batch) == 120 and info.episode_return == 120.0


def test_a_policy_alone_acts_every_step(cartpole):
    batch, info = rollout(cartpole, lambda obs: 1, None, None, seed=0, traj_id=0, round=2)
    assert set(batch.label.tolist()) == {R} and set(batch.action.tolist()) == {1}
    assert info.interventions == info.human_steps == 0 and not info.success


@pytest.mark.parametrize(("args", "error", "message"), [
    ((None, None, None), ValueError, "expected a policy, a human or both"),
    ((lambda o: 0, CartPoleLQR(), None), ValueError, "needs a Takeover rule"),
    ((lambda o: 0.5, None, None), TypeError, "policy expected an integer action"),
    ((None, object(), None), TypeError, "human expected an object with act"),
])
def test_rollout_rejects_bad_input(cartpole, args, error, message):
    with pytest.raises(error, match=message):
        rollout(cartpole, *args, seed=0, traj_id=0, round=0, max_steps=5)


def test_rollout_checks_continuous_action_shapes():
    env = gym.make("Pendulum-v1")
    with pytest.raises(ValueError, match=r"policy expected an action of shape \(1,\)"):
        rollout(env, lambda o: np.zeros(3), None, None, seed=0, traj_id=0, round=0)
    batch, _ = rollout(env, lambda o: np.array([9.0]), None, None, seed=0, traj_id=0, round=0,
                       max_steps=3)
    assert batch.action.tolist() == [[2.0]] * 3 and batch.action.dtype == torch.float32


class LinearLearner:
    """A deterministic test policy: push right when w . obs > 0, w fit by least squares."""

    def __init__(self):
        self.memory = Ring({"x": ((4,), torch.float32), "y": ((), torch.int64)}, "20KB")
        self.w = np.zeros(4)
        self.experiences = []

    @property
    def stores(self):
        return {"memory": self.memory}

    def act(self, obs):
        return int(obs @ self.w > 0)

    def learn(self, experience):
        self.experiences.append(experience)
        self.memory.add(Batch(x=experience.train.obs, y=experience.train.action))
        data = self.memory.contents()
        target = 2.0 * data.y.numpy() - 1.0
        self.w = np.linalg.lstsq(data.x.numpy().astype(np.float64), target, rcond=None)[0]


def run_deploy(seed=0, **kwargs):
    learner, batches = LinearLearner(), []
    result = deploy("CartPole-v1", learner, CartPoleLQR(), Takeover(k=2, hold=5),
                    demo_episodes=2, rounds=2, episodes_per_round=2, eval_seeds=[0, 1, 2],
                    seed=seed, max_steps=100, on_round=lambda r, b: batches.append(b),
                    **kwargs)
    return result, learner, batches


def without_times(rounds):
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rounds]


def test_deploy_is_deterministic_and_records_each_round():
    first, learner, batches = run_deploy(seed=4)
    again, _, batches_again = run_deploy(seed=4)
    _, _, batches_other = run_deploy(seed=5)
    assert without_times(first.rounds) == without_times(again.rounds)
    assert all(a.equal(b) for a, b in zip(batches, batches_again, strict=True))
    assert not batches[0].equal(batches_other[0])
    assert [r["round"] for r in first.rounds] == [0, 1, 2]
    demo = first.rounds[0]
    assert demo["label_counts"] == {"DEMO": 200, "ROBOT": 0, "PRE_INTERVENTION": 0,
                                    "INTERVENTION": 0}
    assert demo["human_workload"] == 1.0 and demo["takeovers_per_episode"] is None
    for record, batch in zip(first.rounds, batches, strict=True):
        labels = batch.label.numpy()
        assert record["steps"] == len(batch) and record["episodes"] == 2
        assert record["human_workload"] == np.isin(labels, [D, H]).mean()
        assert record["bytes_held"] == learner.memory.nbytes == record["stores"]["memory"]
        assert len(record["eval_returns"]) == 3
        assert record["success_rate"] == 0.0  # max_steps=100 < the 475 CartPole needs
        assert record["mean_return"] == np.mean(record["eval_returns"])
    assert first.rounds[1]["label_counts"]["PRE_INTERVENTION"] > 0
    for batch in batches:
        for traj in batch.traj.unique():
            labels = batch.label[batch.traj == traj]
            assert np.array_equal(relabel_pre_intervention(labels), labels.numpy())
    assert [sorted(set(b.traj.tolist())) for b in batches] == [[0, 1], [2, 3], [4, 5]]
    assert [set(b.round.tolist()) for b in batches] == [{0}, {1}, {2}]
    assert [(e.index, dict(e.meta)) for e in learner.experiences] == [
        (r, {"round": r, "env": "CartPole-v1"}) for r in range(3)]
    assert DeploymentResult.from_json(first.to_json()) == first


def test_without_a_window_no_step_is_relabelled():
    _, _, batches = run_deploy(seed=4)
    raw, _, raw_batches = run_deploy(seed=4, pre_intervention_window=None)
    assert raw.rounds[1]["label_counts"]["PRE_INTERVENTION"] == 0
    for a, b in zip(batches, raw_batches, strict=True):
        pre = a.label == P
        assert (b.label[pre] == R).all() and torch.equal(a.label[~pre], b.label[~pre])
        assert torch.equal(a.obs, b.obs) and torch.equal(a.action, b.action)


def test_deploy_rejects_bad_input():
    learner, human = LinearLearner(), CartPoleLQR()
    kwargs = {"demo_episodes": 1, "rounds": 1, "episodes_per_round": 1, "eval_seeds": [0]}
    with pytest.raises(TypeError, match=r"lacks \['stores'\]"):
        deploy("CartPole-v1", object.__new__(type("P", (), {"act": 0, "learn": 0})), human,
               Takeover(), **kwargs)
    with pytest.raises(TypeError, match="takeover expected a Takeover"):
        deploy("CartPole-v1", learner, human, None, **kwargs)
    with pytest.raises(ValueError, match="eval_seeds expected a non-empty sequence"):
        deploy("CartPole-v1", learner, human, Takeover(), **{**kwargs, "eval_seeds": []})
    with pytest.raises(ValueError, match="rounds expected an int >= 0"):
        deploy("CartPole-v1", learner, human, Takeover(), **{**kwargs, "rounds": -1})
    with pytest.raises(ValueError, match="pre_intervention_window expected an int >= 1"):
        deploy("CartPole-v1", learner, human, Takeover(), pre_intervention_window=0, **kwargs)
    with pytest.raises(TypeError, match="env expected a gymnasium id or a factory"):
        deploy(3, learner, human, Takeover(), **kwargs)


def test_eval_seeds_must_differ_from_training_seeds(cartpole):
    stream = DeploymentStream(cartpole, CartPoleLQR(), Takeover(), 2, 1, 3, [0], seed=9)
    training = stream.episode_seed(1, 2)
    assert training == DeploymentStream(cartpole, CartPoleLQR(), Takeover(), 2, 1, 3, [0],
                                        seed=9).episode_seed(1, 2)
    with pytest.raises(ValueError, match=rf"eval_seeds \[{training}\] are also training"):
        DeploymentStream(cartpole, CartPoleLQR(), Takeover(), 2, 1, 3, [5, training], seed=9)
    assert [stream.traj_id(r, e) for r, e in [(0, 0), (0, 1), (1, 0), (1, 2)]] == [0, 1, 2, 4]
    with pytest.raises(ValueError, match="round 0 takes policy=None"):
        stream.collect(1, None)
