import json
import os
import subprocess
import sys

import faiss
import gymnasium as gym
import numpy as np
import pytest

from memkit.agents.episodic_control import (
    EXACT,
    OPTIMISTIC,
    EpisodicControl,
    discounted_returns,
    run_episodes,
)
from memkit.agents.memory_api import record_nbytes
from memkit.budget import Budget

faiss.omp_set_num_threads(1)


def agent(root, **kw):
    kw = {"budget": "1MB", "epsilon": 0.0, **kw}
    return EpisodicControl(root, kw.pop("n_actions", 2), kw.pop("obs_dim", 3), **kw)


def held_returns(memory) -> list[float]:
    """The returns of every record in one action's memory (recalls them all)."""
    return sorted(hit.meta["R"] for hit in memory.recall(np.zeros(memory.dim), k=10_000))


# -- returns and Q values ------------------------------------------------------------------------


def test_discounted_returns_by_hand():
    np.testing.assert_allclose(discounted_returns([1, 0, 2], 0.5), [1.5, 1.0, 2.0])
    np.testing.assert_allclose(discounted_returns([1, 1, 1, 1], 1.0), [4, 3, 2, 1])
    np.testing.assert_allclose(discounted_returns([3, -1], 0.9), [3 - 0.9, -1])
    assert discounted_returns([], 0.9).shape == (0,)


def brute_force_q(table: dict[int, list[tuple[np.ndarray, float]]], z: np.ndarray, k: int,
                  n_actions: int) -> np.ndarray:
    q = np.full(n_actions, OPTIMISTIC)
    for a, rows in table.items():
        keys = np.stack([key for key, _ in rows]).astype(np.float64)
        values = np.array([value for _, value in rows])
        distances = ((keys - z) ** 2).sum(axis=1)
        nearest = np.argsort(distances)[:k]
        q[a] = values[nearest[0]] if distances[nearest[0]] <= EXACT else values[nearest].mean()
    return q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q_values_match_a_brute_force_knn(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n_actions, obs_dim = 3, 5
    table: dict[int, list] = {}
    with agent(tmp_path / "m", n_actions=n_actions, obs_dim=obs_dim, dim=4, k=4, seed=seed,
               gamma=0.9) as mfec:
        seen = []
        for _ in range(4):
            steps = int(rng.integers(3, 12))
            obs = rng.normal(size=(steps, obs_dim))
            actions = rng.integers(0, n_actions - 1, size=steps)  # the last action never taken
            rewards = rng.normal(size=steps)
            returns = mfec.end_episode(list(obs), actions.tolist(), rewards.tolist())
            for o, a, value in zip(obs, actions, returns, strict=True):
                table.setdefault(int(a), []).append((mfec.phi(o), value))
            seen.extend(obs)
        queries = [*rng.normal(size=(6, obs_dim)), *seen[:4]]
        for query in queries:
            expected = brute_force_q(table, mfec.phi(query), 4, n_actions)
            np.testing.assert_allclose(mfec.q_values(query), expected, rtol=1e-6)
        assert mfec.q_values(queries[-1])[2] == OPTIMISTIC
        assert len(mfec) == len(seen)


def test_exact_matches_keep_the_largest_return(tmp_path):
    s, t = [0.5, -1.0, 2.0], [3.0, 0.0, 1.0]
    with agent(tmp_path / "m", gamma=1.0) as mfec:
        mfec.end_episode([s, t], [0, 1], [2.0, 3.0])  # R = 5 after s, 3 after t
        assert mfec.q_values(s)[0] == 5.0 and len(mfec) == 2
        mfec.end_episode([s], [0], [4.0])  # a smaller return: kept as it was
        assert mfec.q_values(s)[0] == 5.0 and len(mfec) == 2
        old = mfec.memories[0].ids()
        mfec.end_episode([s], [0], [8.0])  # a larger one replaces the record
        assert mfec.q_values(s)[0] == 8.0 and len(mfec) == 2
        assert mfec.memories[0].ids() != old
        mfec.end_episode([s, s, s], [0, 0, 0], [1.0, 9.0, 1.0])  # R = 11, 10, 1: one record
        assert mfec.q_values(s)[0] == 11.0 and len(mfec) == 2
        assert mfec.q_values(t)[1] == 3.0


def test_an_action_with_an_empty_memory_is_tried_first(tmp_path):
    s = [0.1, 0.2, 0.3]
    with agent(tmp_path / "m", n_actions=3, seed=4) as mfec:
        assert mfec.q_values(s).tolist() == [OPTIMISTIC] * 3
        first = [mfec.act(s) for _ in range(30)]
        assert set(first) == {0, 1, 2}  # ties between untried actions drawn by the generator
        mfec.end_episode([s, s], [0, 2], [100.0, 100.0])
        assert mfec.q_values(s)[1] == OPTIMISTIC
        assert all(mfec.act([9.0, -9.0, 0.0]) == 1 for _ in range(5))
    with agent(tmp_path / "n", n_actions=3, seed=4) as again:
        assert [again.act(s) for _ in range(30)] == first


# -- persistence ---------------------------------------------------------------------------------

REOPEN = """
import json, sys
import numpy as np
from memkit.agents.episodic_control import EpisodicControl
queries = json.loads(sys.argv[2])
with EpisodicControl(sys.argv[1], 2, 3, budget="1MB", k=3, seed=99) as mfec:
    print(json.dumps([mfec.q_values(q).tolist() for q in queries]), len(mfec))
"""


def test_a_new_process_continues_from_the_memory(tmp_path):
    rng = np.random.default_rng(5)
    queries = rng.normal(size=(5, 3)).tolist()
    with agent(tmp_path / "m", k=3, seed=5) as mfec:
        for _ in range(3):
            mfec.end_episode(list(rng.normal(size=(6, 3))), rng.integers(0, 2, 6).tolist(),
                             rng.normal(size=6).tolist())
        expected, held = [mfec.q_values(q).tolist() for q in queries], len(mfec)
        with agent(tmp_path / "m", k=3, readonly=True) as reader:  # a reader beside the writer
            assert [reader.q_values(q).tolist() for q in queries] == expected
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", REOPEN,
                           str(tmp_path / "m"), json.dumps(queries)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    values, count = done.stdout.rsplit(" ", 1)
    assert json.loads(values) == expected and int(count) == held


# -- bytes ---------------------------------------------------------------------------------------


def test_bytes_never_exceed_the_budget(tmp_path):
    rng = np.random.default_rng(7)
    budget = Budget(4_000)
    with agent(tmp_path / "m", budget=budget, obs_dim=2, dim=2) as mfec:
        share = (budget.capacity - mfec.projection.nbytes) // 2
        written = 0
        for episode in range(12):
            if episode == 6:  # another owner takes every free byte: the tables cannot grow
                taken = budget.free
                budget.charge("model", taken)
            steps = int(rng.integers(1, 15))
            written += steps
            mfec.end_episode(list(rng.normal(size=(steps, 2))),
                             rng.integers(0, 2, steps).tolist(), rng.normal(size=steps).tolist())
            assert budget.used == mfec.nbytes + budget.charged("model") <= budget.capacity
            assert all(memory.nbytes <= share for memory in mfec.memories)
        assert len(mfec) < written  # it evicted
    assert taken > 0 and budget.owners == {"model": taken}


def corridor_of_returns(mfec, returns: list[int]) -> list[list[float]]:
    """One episode in distinct states s_t (action 0), rewards chosen so that R_t = returns[t]."""
    rewards = [a - b for a, b in zip(returns, [*returns[1:], 0], strict=True)]
    obs = [[float(t), 1.0] for t in range(len(returns))]
    mfec.end_episode(obs, [0] * len(returns), rewards)
    return obs


@pytest.mark.parametrize("eviction, kept", [("importance", [11, 19, 21, 23, 25]),
                                            ("recency", [11, 13, 15, 17, 19])])
def test_eviction_drops_what_the_rule_says(tmp_path, eviction, kept):
    record = record_nbytes("", {"R": 10.0}, 2)  # every return here has two digits
    budget = Budget(16 + 5 * record)  # the projection (2 x 2 float32) and five records
    with agent(tmp_path / "m", n_actions=1, obs_dim=2, dim=2, budget=budget, gamma=1.0,
               eviction=eviction, k=1) as mfec:
        obs = corridor_of_returns(mfec, [25, 23, 21, 19, 17, 15, 13, 11])
        assert mfec.nbytes == budget.used == budget.capacity
        if eviction == "recency":
            mfec.q_values(obs[3])  # recalls R = 19's record: now the most recently used
            mfec.end_episode([[50.0, 0.0]], [0], [12.0])
            kept = [12, 13, 15, 11, 19]  # R = 17, the least recently used, left first
        assert held_returns(mfec.memories[0]) == sorted(kept)


# -- learning on a deterministic corridor --------------------------------------------------------


class Corridor(gym.Env):
    """Cells 0..n-1 from cell 0; action 1 steps right, 0 left (a wall at 0); -1 per step;
    the episode ends at cell n-1, or after 3n steps."""

    def __init__(self, n: int = 6):
        self.n, self.limit = n, 3 * n
        self.observation_space = gym.spaces.Box(0.0, n - 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell, self.t = 0, 0
        return np.array([self.cell], np.float32), {}

    def step(self, action):
        self.cell, self.t = max(self.cell + (1 if action == 1 else -1), 0), self.t + 1
        done = self.cell == self.n - 1
        return np.array([self.cell], np.float32), -1.0, done, self.t >= self.limit and not done, {}


def test_a_greedy_agent_learns_the_corridor(tmp_path):
    env = Corridor(6)
    with EpisodicControl(tmp_path / "m", 2, 1, budget="1MB", epsilon=0.0, gamma=1.0,
                         seed=3) as mfec:
        returns = run_episodes(mfec, env, 8, seed=0)
        assert returns[0] < -5  # the first episode wanders
        assert returns[-3:] == [-5.0] * 3  # the shortest path: five steps right
        assert [mfec.act(np.array([c], np.float32)) for c in range(5)] == [1] * 5
    with EpisodicControl(tmp_path / "m", 2, 1, budget="1MB", epsilon=0.0) as again:
        assert run_episodes(again, env, 1, seed=1) == [-5.0]  # a new agent on that memory too


# -- errors --------------------------------------------------------------------------------------


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"n_actions: expected an int >= 1, got 0"):
        agent(tmp_path / "a", n_actions=0)
    with pytest.raises(ValueError, match=r"epsilon: expected a number in \[0, 1\], got 1.5"):
        agent(tmp_path / "a", epsilon=1.5)
    with pytest.raises(FileNotFoundError, match="no episodic control memory to read"):
        agent(tmp_path / "none", readonly=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds other files"):
        agent(tmp_path / "other")
    with agent(tmp_path / "m") as mfec:
        with pytest.raises(ValueError, match=r"observation: expected shape \(3,\), got shape "
                                             r"\(4,\)"):
            mfec.act(np.zeros(4))
        with pytest.raises(ValueError, match=r"expected shape \(3,\), got str"):
            mfec.q_values("abc")
        with pytest.raises(ValueError, match="expected finite values, got NaN"):
            mfec.q_values([0.0, float("nan"), 1.0])
        with pytest.raises(ValueError, match=r"as many actions and rewards as observations "
                                             r"\(2\), got 1 and 2"):
            mfec.end_episode([[0, 0, 0], [1, 1, 1]], [0], [1.0, 2.0])
        with pytest.raises(ValueError, match=r"actions as ints in \[0, 2\), got 2"):
            mfec.end_episode([[0, 0, 0]], [2], [1.0])
        with pytest.raises(ValueError, match="expected finite rewards"):
            mfec.end_episode([[0, 0, 0]], [1], [float("inf")])
        assert len(mfec) == 0  # nothing half-written
        with agent(tmp_path / "m", readonly=True) as reader, \
                pytest.raises(RuntimeError, match="end_episode: this agent was opened with "
                                                  "readonly=True"):
            reader.end_episode([[0, 0, 0]], [1], [1.0])
    with pytest.raises(ValueError, match=r"n_actions: the memory at .* was created with 2, "
                                         r"got 3"):
        agent(tmp_path / "m", n_actions=3)
    with pytest.raises(ValueError, match=r"dim: the memory at .* was created with 64, got 5"):
        agent(tmp_path / "m", dim=5)
    with pytest.raises(ValueError, match=r"obs_dim: the memory at .* was created with 3, got 4"):
        agent(tmp_path / "m", obs_dim=4)
