"""Model-Free Episodic Control, its per-action tables kept in a persistent ``AgentMemory``.

Blundell, Uria, Pritzel, Li, Ruderman, Leibo, Rae, Wierstra & Hassabis,
"Model-Free Episodic Control", arXiv:1606.04460, 2016. The agent keeps, for each
action a, a table Q_EC(., a) of the highest discounted return R_t = sum_k gamma^k
r_{t+k} it has ever obtained after taking a in an embedded state phi(s); phi is a
fixed Gaussian random projection of the observation (entries N(0, 1/dim), so squared
distances are kept in expectation). It acts epsilon-greedily on

    Q(s, a) = Q_EC(phi(s), a)                                 if phi(s) is in the table,
              mean of Q_EC over the k nearest phi in the table   otherwise,

and after every episode writes each (phi(s_t), a_t, R_t) with the rule
Q_EC(phi, a) <- max(Q_EC(phi, a), R_t) for an exact match (the old record is
forgotten and one with the larger return remembered) and an insertion otherwise.
Full tables drop their least recently used entries (the paper's rule; ``eviction``
may also be ``"usage"`` or ``"importance"``, where a record's importance is its
return).

Here each table is an ``AgentMemory`` (squared-L2 Flat index) under
``root/action_{a}``: a record's embedding is phi(s), its meta ``{"R": return}``,
its item the empty string. The projection and the agent's shape live in
``root/episodic_control.safetensors``, so the experience outlives the process and
a new process that opens the same root continues from it (the projection is read
back; ``seed`` then only seeds the agent's choices). An action whose table is
empty has Q = +inf (``OPTIMISTIC``), so every action is tried. A distance of at
most ``EXACT`` counts as an exact match. Bytes: the projection (float32) is charged
to ``budget`` under ``"{owner}: projection"``; each action's table may then hold up
to an even share (AgentMemory's ``capacity``) of the bytes the budget had free when
the agent opened (less if other owners take them later), charged under
``"{owner}: action {a}"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from memkit.agents.memory_api import AgentMemory
from memkit.budget import Budget
from memkit.io import load_tensors, save_tensors
from memkit.seeding import derive_generator

STATE = "episodic_control.safetensors"
OPTIMISTIC = math.inf
"""Q of an action whose table is empty: larger than any return, so the action is tried."""
EXACT = 1e-9
"""Squared distance at or below which a stored embedding is the query's own state."""
DEFAULT_DIM = 64
"""The dimension of phi when a new memory is created without ``dim``."""


def discounted_returns(rewards: Sequence[float], gamma: float) -> np.ndarray:
    """R_t = r_t + gamma R_{t+1} (R_T = 0) for every step t of one episode."""
    returns, running = np.zeros(len(rewards)), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        returns[t] = running
    return returns


class EpisodicControl:
    """An MFEC agent: ``act(obs)``, ``q_values(obs)``, ``end_episode(obs, actions, rewards)``."""

    def __init__(self, root: str | os.PathLike, n_actions: int, obs_dim: int, *,
                 budget: Budget | int | str, dim: int | None = None, k: int = 11,
                 epsilon: float = 0.005, gamma: float = 0.99, eviction: str = "recency",
                 seed: int = 0, readonly: bool = False, owner: str = "episodic control"):
        for name, value in (("n_actions", n_actions), ("obs_dim", obs_dim), ("k", k)):
            _check_positive(name, value)
        if dim is not None:
            _check_positive("dim", dim)
        for name, value in (("epsilon", epsilon), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
        self.root, self.n_actions, self.obs_dim = Path(root), n_actions, obs_dim
        self.k, self.epsilon, self.gamma, self.readonly = k, float(epsilon), float(gamma), readonly
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)
        self.owner, self.memories = owner, []
        self.generator = derive_generator(seed, "episodic control")
        self.projection = self._open_projection(dim, seed)
        self.dim, self._weights = self.projection.shape[1], self.projection.astype(np.float64)
        try:
            self.budget.charge(f"{owner}: projection", self.projection.nbytes)
            share = self.budget.free // n_actions
            for a in range(n_actions):
                self.memories.append(AgentMemory(
                    self.root / f"action_{a}", dim=self.dim, metric="l2", eviction=eviction,
                    readonly=readonly, owner=f"{owner}: action {a}", budget=self.budget,
                    capacity=share))
        except BaseException:
            self.close()
            raise

    def _open_projection(self, dim: int | None, seed: int) -> np.ndarray:
        path = self.root / STATE
        if not path.exists():
            if self.readonly:
                raise FileNotFoundError(f"{self.root}: no episodic control memory to read "
                                        f"({STATE} missing)")
            if self.root.exists() and any(self.root.iterdir()):
                raise ValueError(f"{self.root}: holds other files, not an episodic control "
                                 f"memory")
            dim = dim or DEFAULT_DIM
            projection = torch.randn(self.obs_dim, dim,
                                     generator=derive_generator(seed, "projection"))
            save_tensors(path, {"projection": projection / math.sqrt(dim)},
                         {"class": type(self).__name__, "n_actions": self.n_actions})
        tensors, manifest = load_tensors(path)
        projection = tensors["projection"].numpy()
        stored = {"n_actions": manifest["n_actions"], "obs_dim": projection.shape[0],
                  "dim": projection.shape[1]}
        given = {"n_actions": self.n_actions, "obs_dim": self.obs_dim, "dim": dim}
        for name, value in given.items():
            if value is not None and value != stored[name]:
                raise ValueError(f"{name}: the memory at {self.root} was created with "
                                 f"{stored[name]}, got {value}")
        return projection

    # -- acting --------------------------------------------------------------------------------

    def phi(self, observation) -> np.ndarray:
        """The embedding phi(s) (float32, shape (dim,)) of one observation."""
        s = _check_observation(observation, self.obs_dim, "observation")
        return (s @ self._weights).astype(np.float32)

    def q_values(self, observation) -> np.ndarray:
        """Q(s, a) for every action: the exact match's return, else the mean over k nearest."""
        z = self.phi(observation)
        return np.array([self._q(memory, z) for memory in self.memories])

    def _q(self, memory: AgentMemory, z: np.ndarray) -> float:
        hits = memory.recall(z, self.k)
        if not hits:
            return OPTIMISTIC
        if hits[0].score <= EXACT:
            return hits[0].meta["R"]
        return float(np.mean([hit.meta["R"] for hit in hits]))

    def act(self, observation) -> int:
        """Epsilon-greedy on ``q_values``; ties and exploration drawn from the seeded generator."""
        if float(torch.rand(1, generator=self.generator)) < self.epsilon:
            _check_observation(observation, self.obs_dim, "observation")
            return self._draw(self.n_actions)
        q = self.q_values(observation)
        best = np.flatnonzero(q == q.max())
        return int(best[self._draw(len(best))])

    def _draw(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    # -- learning ------------------------------------------------------------------------------

    def end_episode(self, observations: Sequence, actions: Sequence[int],
                    rewards: Sequence[float]) -> np.ndarray:
        """Write each step's (phi(s_t), a_t, R_t) by the max rule; return the returns R_t.

        ``observations[t]`` is the state in which ``actions[t]`` was taken and
        ``rewards[t]`` received. One ``remember_many`` (and, for exact matches with
        a smaller stored return, one ``forget``) per action.
        """
        if self.readonly:
            raise RuntimeError("end_episode: this agent was opened with readonly=True")
        steps = len(observations)
        if not len(actions) == len(rewards) == steps:
            raise ValueError(f"end_episode: expected as many actions and rewards as "
                             f"observations ({steps}), got {len(actions)} and {len(rewards)}")
        states = [self.phi(o) for o in observations]
        taken = [_check_action(a, self.n_actions) for a in actions]
        if not np.isfinite(np.asarray(rewards, dtype=np.float64)).all():
            raise ValueError("end_episode: expected finite rewards, got NaN or inf")
        returns = discounted_returns(rewards, self.gamma)
        for a, memory in enumerate(self.memories):
            best = _best_per_state(states, taken, returns, a)
            if best:
                self._write(memory, best)
        return returns

    def _write(self, memory: AgentMemory, best: dict[bytes, tuple[np.ndarray, float]]) -> None:
        """Insert new states; replace an exact match whose return is smaller; keep the rest."""
        stale, new = [], []
        for z, value in best.values():
            hits = memory.recall(z, 1)
            if hits and hits[0].score <= EXACT:
                if hits[0].meta["R"] >= value:
                    continue
                stale.append(hits[0].id)
            new.append((z, value))
        if stale:
            memory.forget(stale)
        if new:
            memory.remember_many([""] * len(new), np.stack([z for z, _ in new]),
                                 meta=[{"R": value} for _, value in new],
                                 importance=[value for _, value in new])

    # -- bookkeeping ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Records held over all actions."""
        return sum(len(memory) for memory in self.memories)

    @property
    def nbytes(self) -> int:
        """Bytes charged: the projection and every action's records."""
        return self.projection.nbytes + sum(memory.nbytes for memory in self.memories)

    def close(self) -> None:
        """Close every action's memory and release this agent's charges."""
        for memory in self.memories:
            memory.close()
        self.memories = []
        if self.budget.charged(f"{self.owner}: projection"):
            self.budget.release(f"{self.owner}: projection")

    def __enter__(self) -> EpisodicControl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_episodes(agent, env, episodes: int, seed: int, first_episode: int = 0) -> list[float]:
    """Play ``episodes`` episodes of a gymnasium ``env`` with ``agent`` (``act`` and
    ``end_episode``); return each episode's undiscounted return. Episode e (counted from
    ``first_episode``) starts from ``env.reset(seed=...)`` derived from (seed, e)."""
    totals = []
    for e in range(first_episode, first_episode + episodes):
        episode_seed = int(np.random.SeedSequence([seed, e]).generate_state(1)[0])
        observation, _ = env.reset(seed=episode_seed)
        observations, actions, rewards, done = [], [], [], False
        while not done:
            action = agent.act(observation)
            observations.append(observation)
            actions.append(action)
            observation, reward, terminated, truncated, _ = env.step(action)
            rewards.append(float(reward))
            done = terminated or truncated
        agent.end_episode(observations, actions, rewards)
        totals.append(float(sum(rewards)))
    return totals


def _best_per_state(states: list[np.ndarray], taken: list[int], returns: np.ndarray,
                    action: int) -> dict[bytes, tuple[np.ndarray, float]]:
    """The largest return per distinct state in which ``action`` was taken, first seen first."""
    best: dict[bytes, tuple[np.ndarray, float]] = {}
    for z, a, value in zip(states, taken, returns, strict=True):
        key = z.tobytes()
        if a == action and (key not in best or value > best[key][1]):
            best[key] = (z, float(value))
    return best


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


def _check_observation(observation, obs_dim: int, name: str) -> np.ndarray:
    s = np.asarray(observation, dtype=np.float64) if isinstance(
        observation, (np.ndarray, list, tuple, torch.Tensor)) else None
    if s is None or s.shape != (obs_dim,):
        got = f"shape {s.shape}" if s is not None else type(observation).__name__
        raise ValueError(f"{name}: expected shape ({obs_dim},), got {got}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf in {s.tolist()}")
    return s


def _check_action(action, n_actions: int) -> int:
    if isinstance(action, bool) or not isinstance(action, (int, np.integer)) \
            or not 0 <= action < n_actions:
        raise ValueError(f"end_episode: expected actions as ints in [0, {n_actions}), "
                         f"got {action!r}")
    return int(action)
