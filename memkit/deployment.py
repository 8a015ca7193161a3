"""Human-in-the-loop deployment: a policy acts, a human watches and takes over, every step labelled.

Liu et al., "Robot Learning on the Job: Human-in-the-Loop Autonomy and
Learning During Deployment" (Sirius), RSS 2023. Deployment runs in rounds.
Round 0 collects human demonstrations. In each later round the current
policy acts while a human watches. The human takes over when the policy goes
wrong (a ``Takeover`` rule) and hands control back later. Each step is labelled:
demonstration, robot action, or human intervention. The steps just before
each intervention are relabelled "pre-intervention"
(``relabel_pre_intervention``). After each round the learner learns from
that round's data. The policy then acts alone on held-out seeds, and the
round records its success rate, the human's intervention rate and workload,
the bytes the learner holds and the wall time.

This module imports gymnasium only inside functions, so ``import memkit``
never needs it.
"""

from __future__ import annotations

import enum
import json
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from memkit.batch import Batch
from memkit.store import Store
from memkit.streams import Experience

if TYPE_CHECKING:
    import gymnasium as gym

Predicate = Callable[[Any], bool]
SuccessRule = Callable[[np.ndarray, Mapping], bool]
"""``success(rewards, final_info) -> bool``: did the episode with these rewards succeed?"""


class StepLabel(enum.IntEnum):
    """Who produced a step, as stored in a round's ``label`` field (int8)."""

    DEMO = 0
    ROBOT = 1
    PRE_INTERVENTION = 2
    INTERVENTION = 3


@runtime_checkable
class Human(Protocol):
    """Someone (or a script) who acts on the environment's raw observation."""

    def act(self, obs: Any) -> Any: ...


@runtime_checkable
class DeploymentLearner(Protocol):
    """What ``deploy`` needs from a learner: a deterministic policy, learning, its stores."""

    stores: Mapping[str, Store]

    def act(self, obs: np.ndarray) -> Any: ...

    def learn(self, experience: Experience) -> None: ...


class Takeover:
    """When the human takes control from the policy, and when they hand it back.

    Call ``reset()`` at the start of an episode. Then call ``step(obs, robot_action,
    human_action)`` once per step; it returns ``True`` when the human acts on that step.
    The exact rule:

    * The robot is in control. The policy's action *disagrees* with the human's
      when their L2 distance is more than ``threshold`` (continuous actions) or
      when they differ (integer actions; ``threshold`` is then ignored). The
      human takes over on the ``k``-th disagreement in a row, and at once when
      ``risk(obs)`` is true.
    * The human is in control and has acted for ``c`` steps. They hand back
      when ``c >= hold``, ``risk(obs)`` is false and, if a ``safe`` predicate is
      given, ``safe(obs)`` is true. So ``safe`` can hold the human past
      ``hold``, and ``risk`` keeps them in control. On the hand-back step the
      robot acts, and it is judged from a fresh disagreement count. (With
      ``k=1``, a disagreement on that step takes control straight back and
      restarts the hold. The labels then show one continuous intervention.)

    The rule keeps the state of one episode, so use one instance per running episode.
    """

    def __init__(self, k: int = 3, threshold: float = 0.0, risk: Predicate | None = None,
                 hold: int = 10, safe: Predicate | None = None):
        _check_positive_int("Takeover: k", k)
        _check_positive_int("Takeover: hold", hold)
        if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) \
                or not threshold >= 0:
            raise ValueError(f"Takeover: threshold expected a number >= 0, got {threshold!r}")
        for name, predicate in (("risk", risk), ("safe", safe)):
            if predicate is not None and not callable(predicate):
                raise TypeError(f"Takeover: {name} expected a callable obs -> bool or None, "
                                f"got {type(predicate).__name__}")
        self.k, self.threshold, self.hold = k, float(threshold), hold
        self.risk, self.safe = risk, safe
        self.reset()

    def reset(self) -> None:
        """Start an episode: the robot is in control and nothing has disagreed yet."""
        self.human_in_control = False
        self.streak = 0
        self.held = 0

    def step(self, obs: Any, robot_action: Any, human_action: Any) -> bool:
        """Advance one step; ``True`` when the human acts on it."""
        risky = self.risk is not None and bool(self.risk(obs))
        if self.human_in_control and self._hands_back(obs, risky):
            self.human_in_control, self.streak = False, 0
        if not self.human_in_control:
            self.streak = self.streak + 1 if self.disagree(robot_action, human_action) else 0
            self.human_in_control = risky or self.streak >= self.k
            self.held = 0
        if self.human_in_control:
            self.held += 1
        return self.human_in_control

    def disagree(self, robot_action: Any, human_action: Any) -> bool:
        a, b = np.asarray(robot_action), np.asarray(human_action)
        if a.dtype.kind in "biu" and b.dtype.kind in "biu":
            return not np.array_equal(a, b)
        return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64))) \
            > self.threshold

    def _hands_back(self, obs: Any, risky: bool) -> bool:
        return (self.held >= self.hold and not risky
                and (self.safe is None or bool(self.safe(obs))))

    def __repr__(self) -> str:
        return (f"Takeover(k={self.k}, threshold={self.threshold}, hold={self.hold}, "
                f"risk={self.risk is not None}, safe={self.safe is not None})")


def relabel_pre_intervention(labels: np.ndarray | torch.Tensor,
                             window: int = 15) -> np.ndarray:
    """A copy of one trajectory's ``labels`` in which the steps before each intervention are
    marked PRE_INTERVENTION.

    For each intervention onset (an INTERVENTION step whose predecessor is not one), the up to
    ``window`` steps before it are relabelled. The walk back stops at the start of
    the trajectory and at an earlier INTERVENTION step. Only ROBOT steps change.
    """
    _check_positive_int("relabel_pre_intervention: window", window)
    labels = np.asarray(labels).astype(np.int8)
    if labels.ndim != 1:
        raise ValueError(f"relabel_pre_intervention: expected one trajectory's 1-d labels, "
                         f"got shape {labels.shape}")
    out = labels.copy()
    intervention = labels == StepLabel.INTERVENTION
    onsets = np.flatnonzero(intervention & ~np.r_[False, intervention[:-1]])
    for onset in onsets:
        start = max(onset - window, 0)
        earlier = np.flatnonzero(intervention[start:onset])
        if earlier.size:
            start += int(earlier[-1]) + 1
        span = out[start:onset]
        span[span == StepLabel.ROBOT] = StepLabel.PRE_INTERVENTION
    return out


def flatten_obs(obs: Any) -> np.ndarray:
    """One float32 vector per observation: goal-conditioned dicts (Fetch) become
    ``concat(observation, desired_goal)``; arrays are flattened."""
    if isinstance(obs, Mapping):
        missing = {"observation", "desired_goal"} - set(obs)
        if missing:
            raise ValueError(f"flatten_obs: a dict observation needs keys 'observation' and "
                             f"'desired_goal', got {sorted(obs)}")
        return np.concatenate([np.ravel(obs["observation"]),
                               np.ravel(obs["desired_goal"])]).astype(np.float32)
    return np.asarray(obs, dtype=np.float32).ravel()


@dataclass(frozen=True)
class EpisodeInfo:
    """What one episode measured. ``interventions`` counts takeovers (runs of human steps)."""

    episode_return: float
    length: int
    success: bool
    interventions: int
    human_steps: int


def success_rule(env_id: str | None) -> SuccessRule:
    """The success definition for ``env_id``.

    Fetch*: the final ``info["is_success"]``. LunarLander*: return >= 200.
    CartPole*: return >= 475. Pendulum*: the mean of the last 50 rewards > -0.5,
    i.e. held near upright at the end. Other environments need their own ``success``.
    """
    rules: dict[str, SuccessRule] = {
        "Fetch": lambda r, info: bool(info.get("is_success", 0.0)),
        "LunarLander": lambda r, info: float(r.sum()) >= 200.0,
        "CartPole": lambda r, info: float(r.sum()) >= 475.0,
        "Pendulum": lambda r, info: float(r[-50:].mean()) > -0.5,
    }
    for prefix, rule in rules.items():
        if env_id is not None and env_id.startswith(prefix):
            return rule
    raise ValueError(f"success_rule: no success definition for environment {env_id!r} "
                     f"(known: {', '.join(p + '*' for p in rules)}); pass success=callable"
                     f"(rewards, final_info) -> bool")


def rollout(env: gym.Env, policy: Callable[[np.ndarray], Any] | None, human: Human | None,
            takeover: Takeover | None, *, seed: int, traj_id: int, round: int,
            max_steps: int | None = None,
            success: SuccessRule | None = None) -> tuple[Batch, EpisodeInfo]:
    """Run one episode from ``env.reset(seed=seed)``. Return its labelled steps and
    ``EpisodeInfo``.

    ``policy=None`` is a human demonstration (every step DEMO). With ``human=None`` the
    policy acts alone (every step ROBOT). With both, the ``takeover`` rule decides
    who acts on each step (ROBOT or INTERVENTION). The policy sees ``flatten_obs(obs)``;
    the human, ``risk`` and ``safe`` see the raw observation. Continuous actions are
    clipped to the action space before they are stored and executed. No step is
    labelled PRE_INTERVENTION here; ``DeploymentStream.collect`` applies
    ``relabel_pre_intervention``.
    """
    mode = _mode(policy, human, takeover)
    _check_positive_int("rollout: max_steps", max_steps, optional=True)
    to_action = _action_converter(env.action_space)
    rule = success or success_rule(getattr(env.spec, "id", None))
    obs, info = env.reset(seed=int(seed))
    if takeover is not None:
        takeover.reset()
    observations, actions, labels, rewards = [], [], [], []
    done = False
    while not done and (max_steps is None or len(rewards) < max_steps):
        flat = flatten_obs(obs)
        action, label = _choose(mode, obs, flat, policy, human, takeover, to_action)
        observations.append(flat)
        actions.append(action)
        labels.append(label)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        done = terminated or truncated
    return _episode(observations, actions, labels, rewards, info, rule, traj_id, round)


def _mode(policy, human, takeover) -> str:
    if policy is None and human is None:
        raise ValueError("rollout: expected a policy, a human or both, got neither")
    if human is not None and not callable(getattr(human, "act", None)):
        raise TypeError(f"rollout: human expected an object with act(obs), "
                        f"got {type(human).__name__}")
    if policy is not None and human is not None and takeover is None:
        raise ValueError("rollout: a supervised rollout (policy and human) needs a Takeover rule")
    return "demo" if policy is None else "robot" if human is None else "supervised"


def _choose(mode, obs, flat, policy, human, takeover, to_action) -> tuple[Any, StepLabel]:
    if mode == "demo":
        return to_action(human.act(obs), "human"), StepLabel.DEMO
    robot = to_action(policy(flat), "policy")
    if mode == "robot":
        return robot, StepLabel.ROBOT
    person = to_action(human.act(obs), "human")
    if takeover.step(obs, robot, person):
        return person, StepLabel.INTERVENTION
    return robot, StepLabel.ROBOT


def _action_converter(space) -> Callable[[Any, str], Any]:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        def discrete(action, who: str) -> int:
            a = np.asarray(action)
            if a.size != 1 or a.dtype.kind not in "biu":
                raise TypeError(f"rollout: {who} expected an integer action for {space}, "
                                f"got {action!r}")
            return int(a.reshape(()))
        return discrete
    if isinstance(space, spaces.Box):
        def box(action, who: str) -> np.ndarray:
            a = np.asarray(action, dtype=np.float32)
            if a.size != int(np.prod(space.shape)):
                raise ValueError(f"rollout: {who} expected an action of shape {space.shape}, "
                                 f"got shape {a.shape}")
            return np.clip(a.reshape(space.shape), space.low, space.high).astype(np.float32)
        return box
    raise TypeError(f"rollout: expected a Discrete or Box action space, got {space}")


def _episode(observations, actions, labels, rewards, info, rule, traj_id, round_):
    n = len(labels)
    if n == 0:
        raise ValueError("rollout: the episode has no steps (max_steps or the environment)")
    label = np.asarray(labels, dtype=np.int8)
    action = np.asarray(actions)
    action = action.astype(np.int64) if action.dtype.kind in "biu" else \
        action.astype(np.float32).reshape(n, -1)
    batch = Batch(obs=np.stack(observations), action=action, label=label,
                  traj=np.full(n, traj_id, dtype=np.int64),
                  round=np.full(n, round_, dtype=np.int64))
    human = label == StepLabel.INTERVENTION
    onsets = int((human & ~np.r_[False, human[:-1]]).sum())
    rewards = np.asarray(rewards, dtype=np.float64)
    return batch, EpisodeInfo(episode_return=float(rewards.sum()), length=n,
                              success=bool(rule(rewards, info)), interventions=onsets,
                              human_steps=int(human.sum() + (label == StepLabel.DEMO).sum()))


@dataclass
class DeploymentStream:
    """The episodes of a deployment: seeds, trajectory ids and the data of each round.

    Round 0 holds ``demo_episodes`` human demonstrations. Rounds 1..``rounds`` hold
    ``episodes_per_round`` supervised episodes each. Episode ``e`` of round ``r``
    starts from ``env.reset(seed=episode_seed(r, e))``. That seed comes from
    ``(seed, r, e)``, and it must not be one of ``eval_seeds``. Trajectory ids count
    the episodes of the whole deployment, in order. Each supervised episode's labels
    pass through ``relabel_pre_intervention`` with ``pre_intervention_window``
    (``None`` keeps only ROBOT and INTERVENTION).
    """

    env: gym.Env
    human: Human
    takeover: Takeover
    demo_episodes: int
    rounds: int
    episodes_per_round: int
    eval_seeds: Sequence[int]
    seed: int = 0
    max_steps: int | None = None
    success: SuccessRule | None = None
    pre_intervention_window: int | None = 15
    env_id: str = field(init=False)

    def __post_init__(self) -> None:
        _check_positive_int("deploy: demo_episodes", self.demo_episodes)
        _check_positive_int("deploy: episodes_per_round", self.episodes_per_round)
        _check_positive_int("deploy: max_steps", self.max_steps, optional=True)
        _check_positive_int("deploy: pre_intervention_window", self.pre_intervention_window,
                            optional=True)
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 0:
            raise ValueError(f"deploy: rounds expected an int >= 0, got {self.rounds!r}")
        if not isinstance(self.takeover, Takeover):
            raise TypeError(f"deploy: takeover expected a Takeover, "
                            f"got {type(self.takeover).__name__}")
        self.eval_seeds = _check_eval_seeds(self.eval_seeds)
        self.env_id = getattr(self.env.spec, "id", None) or type(self.env.unwrapped).__name__
        self.success = self.success or success_rule(self.env_id)
        clash = set(self.eval_seeds) & {self.episode_seed(r, e) for r in range(self.rounds + 1)
                                        for e in range(self.episodes(r))}
        if clash:
            raise ValueError(f"deploy: eval_seeds {sorted(clash)} are also training episode "
                             f"seeds for seed={self.seed}; choose other held-out seeds")

    def episodes(self, round: int) -> int:
        return self.demo_episodes if round == 0 else self.episodes_per_round

    def episode_seed(self, round: int, episode: int) -> int:
        state = np.random.SeedSequence([int(self.seed), 0x5EED, round, episode])
        return int(state.generate_state(1, dtype=np.uint32)[0])

    def traj_id(self, round: int, episode: int) -> int:
        before = 0 if round == 0 else self.demo_episodes + (round - 1) * self.episodes_per_round
        return before + episode

    def collect(self, round: int,
                policy: Callable[[np.ndarray], Any] | None) -> tuple[Batch, list[EpisodeInfo]]:
        """The data of ``round``: demonstrations when 0, else ``policy`` under supervision."""
        if (round == 0) != (policy is None):
            raise ValueError(f"DeploymentStream.collect: round 0 takes policy=None (demos), "
                             f"later rounds a policy; got round {round} and "
                             f"policy={'None' if policy is None else 'given'}")
        episodes = [rollout(self.env, policy, self.human, None if round == 0 else self.takeover,
                            seed=self.episode_seed(round, e), traj_id=self.traj_id(round, e),
                            round=round, max_steps=self.max_steps, success=self.success)
                    for e in range(self.episodes(round))]
        batches = [self._relabel(b) for b, _ in episodes]
        return Batch.cat(batches), [info for _, info in episodes]

    def _relabel(self, batch: Batch) -> Batch:
        if self.pre_intervention_window is None:
            return batch
        labels = relabel_pre_intervention(batch.label, self.pre_intervention_window)
        return batch.replace(label=torch.from_numpy(labels))

    def evaluate(self, policy: Callable[[np.ndarray], Any]) -> list[EpisodeInfo]:
        """``policy`` alone (no human) on each held-out seed."""
        return [rollout(self.env, policy, None, None, seed=s, traj_id=-1, round=-1,
                        max_steps=self.max_steps, success=self.success)[1]
                for s in self.eval_seeds]

    def experience(self, round: int, batch: Batch) -> Experience:
        return Experience(round, batch, batch, meta={"round": round, "env": self.env_id})


@dataclass
class DeploymentResult:
    """The per-round records of a deployment; ``to_json`` / ``from_json`` round-trip it.

    Each record holds the round, the episodes, steps and label counts collected, the
    supervised episodes' mean return and success, ``takeovers_per_episode``,
    ``intervention_episode_fraction``, ``human_workload`` (fraction of steps under human
    control), the evaluation's ``success_rate``, ``mean_return`` and ``eval_returns``,
    ``bytes_held`` with its ``stores`` breakdown, and the wall times in seconds
    (``collect_s``, ``learn_s``, ``eval_s``). Round 0 has no takeovers, so those two
    fields are ``None``.
    """

    env: str
    learner: str
    seed: int
    config: dict = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> DeploymentResult:
        return cls(**json.loads(text))


def deploy(env: str | Callable[[], gym.Env], learner: DeploymentLearner, human: Human,
           takeover: Takeover, *, demo_episodes: int, rounds: int, episodes_per_round: int,
           eval_seeds: Sequence[int], seed: int = 0, max_steps: int | None = None,
           success: SuccessRule | None = None, pre_intervention_window: int | None = 15,
           on_round: Callable[[dict, Batch], None] | None = None) -> DeploymentResult:
    """Deploy ``learner`` with ``human`` watching, then learn from each round.

    ``env`` is a registered gymnasium id or a factory returning an environment. Round 0
    collects human demonstrations, then ``learner.learn`` is called and the policy is
    evaluated alone on ``eval_seeds``. Each later round first rolls out the current
    policy under supervision, then learns and evaluates the same way. The learner
    receives every step labelled, with PRE_INTERVENTION applied (see ``DeploymentStream``).
    ``on_round(record, batch)`` is called after each round. The same arguments give
    the same records, apart from the wall times.
    """
    _check_learner(learner)
    environment = _make(env)
    try:
        stream = DeploymentStream(environment, human, takeover, demo_episodes, rounds,
                                  episodes_per_round, eval_seeds, seed, max_steps, success,
                                  pre_intervention_window)
        result = DeploymentResult(stream.env_id, type(learner).__name__, seed, config={
            "demo_episodes": demo_episodes, "rounds": rounds,
            "episodes_per_round": episodes_per_round, "eval_seeds": list(stream.eval_seeds),
            "max_steps": max_steps, "pre_intervention_window": pre_intervention_window,
            "takeover": repr(takeover), "human": type(human).__name__})
        for r in range(rounds + 1):
            record, batch = _round(stream, learner, r)
            result.rounds.append(record)
            if on_round is not None:
                on_round(record, batch)
    finally:
        environment.close()
    return result


def _round(stream: DeploymentStream, learner: DeploymentLearner, r: int) -> tuple[dict, Batch]:
    started = time.perf_counter()
    batch, infos = stream.collect(r, None if r == 0 else learner.act)
    collected = time.perf_counter()
    learner.learn(stream.experience(r, batch))
    learned = time.perf_counter()
    evaluation = stream.evaluate(learner.act)
    evaluated = time.perf_counter()
    stores = {name: int(store.nbytes) for name, store in learner.stores.items()}
    record = {"round": r, **_collection_record(batch, infos, r),
              "success_rate": float(np.mean([i.success for i in evaluation])),
              "mean_return": float(np.mean([i.episode_return for i in evaluation])),
              "eval_returns": [i.episode_return for i in evaluation],
              "bytes_held": sum(stores.values()), "stores": stores,
              "collect_s": collected - started, "learn_s": learned - collected,
              "eval_s": evaluated - learned}
    return record, batch


def _collection_record(batch: Batch, infos: list[EpisodeInfo], r: int) -> dict:
    counts = torch.bincount(batch.label.long(), minlength=len(StepLabel)).tolist()
    takeovers = [i.interventions for i in infos]
    return {"episodes": len(infos), "steps": len(batch),
            "label_counts": {label.name: counts[label] for label in StepLabel},
            "train_return": float(np.mean([i.episode_return for i in infos])),
            "train_success_rate": float(np.mean([i.success for i in infos])),
            "takeovers_per_episode": None if r == 0 else float(np.mean(takeovers)),
            "intervention_episode_fraction": None if r == 0 else
            float(np.mean([t > 0 for t in takeovers])),
            "human_workload": sum(i.human_steps for i in infos) / len(batch)}


def _make(env):
    if isinstance(env, str):
        import gymnasium as gym

        return gym.make(env)
    if callable(env):
        return env()
    raise TypeError(f"deploy: env expected a gymnasium id or a factory returning an "
                    f"environment, got {type(env).__name__}")


def _check_learner(learner) -> None:
    missing = [a for a in ("act", "learn", "stores") if not hasattr(learner, a)]
    if missing:
        raise TypeError(f"deploy: learner expected act(obs), learn(experience) and stores; "
                        f"{type(learner).__name__} lacks {missing}")


def _check_eval_seeds(seeds) -> tuple[int, ...]:
    seeds = tuple(seeds)
    if not seeds or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                            and s >= 0 for s in seeds):
        raise ValueError(f"deploy: eval_seeds expected a non-empty sequence of ints >= 0, "
                         f"got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"deploy: eval_seeds expected distinct seeds, got {seeds!r}")
    return tuple(int(s) for s in seeds)


def _check_positive_int(name: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} expected an int >= 1{' or None' if optional else ''}, "
                         f"got {value!r}")
