import numpy as np
import pytest
import torch

from memkit.deployment import Human, Takeover, rollout

pytestmark = pytest.mark.filterwarnings("ignore:builtin type swig:DeprecationWarning")

gym = pytest.importorskip("gymnasium")
pytest.importorskip("gymnasium_robotics")
from memkit.agents.humans import (  # noqa: E402 - after the optional-dependency skips
    HUMANS,
    CartPoleLQR,
    LunarLanderHuman,
    PendulumHuman,
    cartpole_linearisation,
    human_for,
    make_env,
)


@pytest.fixture(scope="module")
def envs():
    made = {}
    yield lambda env_id: made.setdefault(env_id, make_env(env_id))
    for env in made.values():
        env.close()


def demo(env, env_id, seed, **kwargs):
    return rollout(env, None, human_for(env_id), None, seed=seed, traj_id=0, round=0, **kwargs)


def test_every_listed_environment_has_a_human():
    assert sorted(HUMANS) == ["CartPole-v1", "FetchPickAndPlace-v4", "FetchPush-v4",
                              "LunarLander-v3", "LunarLanderContinuous-v3", "Pendulum-v1"]
    assert all(isinstance(human_for(env_id), Human) for env_id in HUMANS)


def test_unknown_environment_is_explained():
    with pytest.raises(ValueError, match=r"no scripted human for 'Acrobot-v1'; expected one of"):
        human_for("Acrobot-v1")


def test_cartpole_linearisation_matches_the_simulator(envs):
    a, b = cartpole_linearisation()
    env = envs("CartPole-v1").unwrapped
    x0 = np.array([0.0, 0.01, 0.001, -0.002])
    for action, force in ((1, 10.0), (0, -10.0)):
        env.state = x0.copy()
        stepped, *_ = env.step(action)
        assert np.allclose(stepped, a @ x0 + b[:, 0] * force / 10.0, atol=1e-7)


def test_cartpole_lqr_balances_a_full_episode(envs):
    human = CartPoleLQR()
    assert human.act(np.array([0.0, 0.0, 0.05, 0.0])) == 1  # falling right: push right
    assert human.act(np.array([0.0, 0.0, -0.05, 0.0])) == 0
    _, info = demo(envs("CartPole-v1"), "CartPole-v1", seed=11)
    assert (info.episode_return, info.success) == (500.0, True)


@pytest.mark.parametrize(("env_id", "seed"), [("LunarLander-v3", 1000),
                                              ("LunarLanderContinuous-v3", 1001)])
def test_lunar_lander_heuristic_lands(envs, env_id, seed):
    from gymnasium.envs.box2d.lunar_lander import heuristic

    env = envs(env_id)
    batch, info = demo(env, env_id, seed)
    assert info.success and info.episode_return >= 200
    obs, _ = env.reset(seed=seed)
    mine = human_for(env_id).act(obs)
    assert np.array_equal(np.asarray(mine), np.asarray(heuristic(env, obs)))
    if env_id == "LunarLander-v3":
        assert isinstance(mine, int) and batch.action.dtype == torch.int64
    else:
        assert mine.dtype == np.float32 and batch.action.shape == (info.length, 2)


def test_lunar_lander_human_takes_its_mode_from_the_flag():
    obs = np.array([0.1, 1.0, 0.0, -0.5, 0.1, 0.0, 0.0, 0.0], np.float32)
    assert isinstance(LunarLanderHuman(continuous=False).act(obs), int)
    assert LunarLanderHuman(continuous=True).act(obs).shape == (2,)


def test_pendulum_swings_up_and_holds(envs):
    human = PendulumHuman()
    assert human.act(np.array([1.0, 0.0, 0.0], np.float32)).tolist() == [0.0]  # upright, still
    assert human.act(np.array([-1.0, 0.0, 0.0], np.float32)).tolist() == [0.0]  # no pump at rest
    assert human.act(np.array([np.cos(0.2), np.sin(0.2), 0.0], np.float32))[0] < 0
    _, info = demo(envs("Pendulum-v1"), "Pendulum-v1", seed=3)
    assert info.success and info.episode_return > -400


def test_fetch_push_constructs_and_a_short_supervised_rollout_runs(envs):
    env = envs("FetchPush-v4")
    assert env.spec.id == "FetchPush-v4" and env.action_space.shape == (4,)
    batch, info = rollout(env, lambda obs: np.zeros(4), human_for("FetchPush-v4"),
                          Takeover(k=2, threshold=0.5, hold=3), seed=0, traj_id=5, round=1,
                          max_steps=10)
    assert batch.spec == {"obs": ((28,), torch.float32), "action": ((4,), torch.float32),
                          "label": ((), torch.int8), "traj": ((), torch.int64),
                          "round": ((), torch.int64)}
    assert len(batch) == info.length == 10 and info.interventions >= 1
    assert batch.label.tolist()[:2] == [1, 3]  # the zero policy disagrees from step 0


@pytest.mark.parametrize("env_id", ["FetchPush-v4", "FetchPickAndPlace-v4"])
def test_fetch_humans_solve_an_episode(envs, env_id):
    _, info = demo(envs(env_id), env_id, seed=21)
    assert info.success and info.length == 50 and info.human_steps == 50


def test_make_env_passes_keyword_arguments():
    env = make_env("LunarLander-v3", continuous=True)
    assert env.unwrapped.continuous
    env.close()
