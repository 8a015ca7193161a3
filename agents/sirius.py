"""Sirius: intervention-weighted behavioural cloning over a bounded trajectory memory.

Liu, Nasiriany, Zhang, Bao and Zhu, "Robot Learning on the Job: Human-in-the-Loop
Autonomy and Learning During Deployment", RSS 2023. A policy is deployed while a
human watches and takes over when it goes wrong; every step is labelled demo,
robot, pre-intervention (the steps just before a takeover) or intervention. After
each round the policy is trained by behavioural cloning on the memory's data with
the weighted negative log-likelihood

    L = sum_i w_i * (-log pi(a_i | s_i)) / sum_i w_i,

where, with r_c the fraction of class c in the data, Sirius weights demos by 1,
interventions by 0.5 / r_int, pre-intervention steps by 0.002 / r_pre and robot
steps by (1 - 0.5 - r_demo - 0.002) / r_robot: interventions then carry half of the
total weight, pre-intervention steps almost none. Intervention-weighted regression
(IWR; Mandlekar et al., "Human-in-the-Loop Imitation Learning using Remote
Teleoperation", 2020) weights interventions by (n - n_int) / n_int and everything
else by 1, so interventions carry as much weight as all other steps together.

The loss is weighted, not the sampling: minibatches are drawn uniformly from the
memory and each step's NLL is scaled by ``w_i / mean(w)`` (mean over the memory),
an unbiased estimate of ``L`` whose scale does not depend on the weighting.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from memkit.batch import Batch
from memkit.budget import Budget
from memkit.buffers.trajectory import TrajectoryMemory
from memkit.deployment import StepLabel
from memkit.registry import register
from memkit.seeding import derive_generator
from memkit.streams import Experience

DEMO, ROBOT, PRE_INTERVENTION, INTERVENTION = StepLabel
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
"""A Gaussian head's log standard deviation is squashed into this range (normalised units)."""
MIN_OBS_STD = 1e-3
FIELDS = ("obs", "action", "label", "traj", "round")


def _class_counts(label: torch.Tensor) -> tuple[torch.Tensor, int]:
    if not isinstance(label, torch.Tensor) or label.dim() != 1 or label.is_floating_point() \
            or label.dtype == torch.bool:
        raise ValueError(f"weights: expected a 1-d integer tensor of step labels, got "
                         f"{label.dtype if isinstance(label, torch.Tensor) else type(label)} "
                         f"of shape {tuple(getattr(label, 'shape', ()))}")
    if len(label) and (int(label.min()) < DEMO or int(label.max()) > INTERVENTION):
        raise ValueError(f"weights: expected step labels in {int(DEMO)}..{int(INTERVENTION)}, "
                         f"got values in [{int(label.min())}, {int(label.max())}]")
    return torch.bincount(label.to(torch.int64), minlength=len(StepLabel)), len(label)


def sirius_weights(label: torch.Tensor) -> torch.Tensor:
    """Sirius' per-step weights (float32), from the class fractions r_c of ``label``.

    demo 1; intervention 0.5 / r_int; pre-intervention 0.002 / r_pre; robot
    max(1 - 0.5 - r_demo - 0.002, 0) / r_robot. A class that is absent has no steps,
    so its term simply does not appear; the others keep their formula. With every
    class present the weights sum to n (classes carry r_demo, 0.5, 0.002 and the
    rest of the total); the robot weight is 0 once demos make up 49.8 % or more.
    """
    counts, n = _class_counts(label)
    r = counts.double() / max(n, 1)
    per_class = torch.ones(len(StepLabel), dtype=torch.float64)
    share = {INTERVENTION: 0.5, PRE_INTERVENTION: 0.002,
             ROBOT: max(1.0 - 0.5 - float(r[DEMO]) - 0.002, 0.0)}
    for c, mass in share.items():
        if counts[c] > 0:
            per_class[c] = mass / r[c]
    return per_class[label.to(torch.int64)].float()


def iwr_weights(label: torch.Tensor) -> torch.Tensor:
    """IWR's per-step weights (float32): interventions (n - n_int) / n_int, all else 1."""
    counts, n = _class_counts(label)
    per_class = torch.ones(len(StepLabel), dtype=torch.float64)
    if counts[INTERVENTION] > 0:
        per_class[INTERVENTION] = (n - counts[INTERVENTION]) / counts[INTERVENTION]
    return per_class[label.to(torch.int64)].float()


def uniform_weights(label: torch.Tensor) -> torch.Tensor:
    """Plain behavioural cloning: every step weighs 1 (float32)."""
    _class_counts(label)
    return torch.ones(len(label))


WEIGHTINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sirius": sirius_weights, "iwr": iwr_weights, "uniform": uniform_weights}


@dataclass(frozen=True)
class ActionSpace:
    """A discrete space ``{start, ..., start + n - 1}`` or a box ``[low, high]`` (1-d, finite)."""

    n: int = 0
    start: int = 0
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @property
    def discrete(self) -> bool:
        return self.n > 0

    @property
    def dim(self) -> int:
        """Logits of a discrete space, action dimensions of a box."""
        return self.n if self.discrete else len(self.low)

    @property
    def spec(self) -> dict:
        """How a transition stores the action."""
        return {"action": ((), torch.int64) if self.discrete else ((self.dim,), torch.float32)}

    @staticmethod
    def of(space) -> ActionSpace:
        """From a gymnasium ``Discrete`` / ``Box``, an int ``n``, or a ``(low, high)`` pair."""
        if isinstance(space, ActionSpace):
            return space
        if isinstance(space, (int, np.integer)) and not isinstance(space, bool) and space > 0:
            return ActionSpace(n=int(space))
        if hasattr(space, "n") and not hasattr(space, "low"):
            return ActionSpace(n=int(space.n), start=int(getattr(space, "start", 0)))
        low, high = (space.low, space.high) if hasattr(space, "low") else _pair(space)
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if low.ndim != 1 or low.shape != high.shape or not len(low) \
                or not np.isfinite(low).all() or not np.isfinite(high).all() \
                or not (low < high).all():
            raise ValueError(f"action space: expected finite 1-d bounds with low < high, "
                             f"got low={low.tolist()} and high={high.tolist()}")
        return ActionSpace(low=tuple(low.tolist()), high=tuple(high.tolist()))


def _pair(space) -> tuple:
    try:
        low, high = space
    except (TypeError, ValueError):
        raise TypeError(f"action space: expected a gymnasium Discrete or Box, an int n or a "
                        f"(low, high) pair, got {space!r}") from None
    return low, high


class BCPolicy(nn.Module):
    """An MLP trunk and a head: categorical (discrete), Gaussian or Gaussian mixture (box).

    Observations are standardised by ``obs_mean`` / ``obs_std`` (set by
    ``fit_observations``). A box action ``a`` is modelled in normalised units
    ``u = (a - centre) / half_range`` in [-1, 1]: each Gaussian's mean is
    tanh-squashed into (-1, 1), its diagonal log-std, a function of the state, is
    squashed into [LOG_STD_MIN, LOG_STD_MAX], and targets outside the box are
    clipped to it. ``act`` is deterministic: the argmax class, the mean, or the
    mean of the most likely mixture component, mapped back to the box.
    """

    def __init__(self, obs_dim: int, action_space, *, head: str | None = None,
                 hidden: Sequence[int] = (256, 256), n_components: int = 5):
        super().__init__()
        space = ActionSpace.of(action_space)
        head = head or ("categorical" if space.discrete else "gaussian")
        allowed = ("categorical",) if space.discrete else ("gaussian", "gmm")
        if head not in allowed:
            kind = "discrete" if space.discrete else "box"
            raise ValueError(f"BCPolicy: a {kind} action space takes a head among {allowed}, "
                             f"got {head!r}")
        if obs_dim < 1 or n_components < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"BCPolicy: expected positive obs_dim, widths and n_components, "
                             f"got {obs_dim}, {list(hidden)}, {n_components}")
        self.space, self.head, self.obs_dim = space, head, obs_dim
        self.n_components = n_components if head == "gmm" else 1
        widths = [obs_dim, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        d = space.dim
        outputs = d if space.discrete else self.n_components * 2 * d + (head == "gmm") * \
            self.n_components
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], outputs))
        if not space.discrete:
            low, high = torch.tensor(space.low), torch.tensor(space.high)
            self.register_buffer("centre", ((low + high) / 2).float())
            self.register_buffer("half_range", ((high - low) / 2).float())
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    def fit_observations(self, obs: torch.Tensor) -> None:
        """Standardise inputs by the mean and std of ``obs``; a feature whose std is below
        ``MIN_OBS_STD`` is only centred, so a value that barely varies in the data is not
        blown up when it varies at test time."""
        std = obs.std(0, unbiased=False)
        self.obs_mean.copy_(obs.mean(0))
        self.obs_std.copy_(torch.where(std < MIN_OBS_STD, torch.ones_like(std), std))

    def distribution(self, obs: torch.Tensor) -> Distribution:
        """The action distribution (normalised units for a box) at each observation."""
        out = self.net((obs - self.obs_mean) / self.obs_std)
        if self.space.discrete:
            return Categorical(logits=out, validate_args=False)
        k, d = self.n_components, self.space.dim
        mean = torch.tanh(out[:, : k * d]).view(-1, k, d)
        raw = out[:, k * d: 2 * k * d].view(-1, k, d)
        std = torch.exp(LOG_STD_MIN + (LOG_STD_MAX - LOG_STD_MIN) * torch.sigmoid(raw))
        if self.head == "gaussian":
            return Independent(Normal(mean[:, 0], std[:, 0], validate_args=False), 1,
                               validate_args=False)
        return MixtureSameFamily(Categorical(logits=out[:, 2 * k * d:], validate_args=False),
                                 Independent(Normal(mean, std, validate_args=False), 1,
                                             validate_args=False), validate_args=False)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(action | obs) per row; box actions in normalised units, clipped to the box."""
        dist = self.distribution(obs)
        if self.space.discrete:
            return dist.log_prob(action.to(torch.int64) - self.space.start)
        u = ((action - self.centre) / self.half_range).clamp(-1.0, 1.0)
        return dist.log_prob(u)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions for a batch of observations, in the space's own units."""
        dist = self.distribution(obs)
        if self.space.discrete:
            return dist.logits.argmax(-1) + self.space.start
        if self.head == "gmm":
            best = dist.mixture_distribution.logits.argmax(-1)
            u = dist.component_distribution.base_dist.loc[torch.arange(len(obs)), best]
        else:
            u = dist.mean
        return self.centre + self.half_range * u


@register("learner", "sirius")
class SiriusLearner:
    """Weighted BC over a ``TrajectoryMemory``, retrained (or fine-tuned) after each round.

    A round's labels come as the deployment wrote them, pre-intervention steps
    already relabelled (``memkit.deployment.relabel_pre_intervention``).

    The memory holds ``memory_nbytes`` bytes, or, with ``memory_fraction`` f, grows
    before each round to f of every transition collected so far (never less than
    the round's longest trajectory, so one always fits); with neither it keeps
    everything (f = 1). The model and the memory are charged to ``budget``.
    ``retrain=True`` re-initialises the policy from ``derive_generator(seed,
    "reinit", round)`` before each round, as Sirius does, and refits the input
    standardisation on the memory; fine-tuning keeps the weights and the
    standardisation fitted on the first round. Each round trains ``steps`` Adam
    steps, or ``epochs`` passes over the memory when ``steps`` is None.
    """

    def __init__(self, obs_dim: int, action_space, budget: Budget | int | str, *,
                 strategy: str = "keep_newest", memory_nbytes: int | str | None = None,
                 memory_fraction: float | None = None, weighting: str = "sirius",
                 head: str | None = None, hidden: Sequence[int] = (256, 256),
                 n_components: int = 5, epochs: int = 10, steps: int | None = None,
                 batch_size: int = 256, lr: float = 1e-3, retrain: bool = True, seed: int = 0):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"SiriusLearner: unknown weighting {weighting!r}; expected one of "
                             f"{sorted(WEIGHTINGS)}")
        if memory_nbytes is not None and memory_fraction is not None:
            raise ValueError("SiriusLearner: give memory_nbytes or memory_fraction, not both")
        fraction = 1.0 if memory_nbytes is None and memory_fraction is None else memory_fraction
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"SiriusLearner: expected memory_fraction in (0, 1], got {fraction}")
        if epochs < 1 or batch_size < 1 or lr <= 0 or (steps is not None and steps < 1):
            raise ValueError(f"SiriusLearner: expected epochs, batch_size, steps >= 1 and lr > 0; "
                             f"got epochs={epochs}, batch_size={batch_size}, steps={steps}, "
                             f"lr={lr}")
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)
        self.policy = BCPolicy(obs_dim, action_space, head=head, hidden=hidden,
                               n_components=n_components)
        self.weighting, self.fraction, self.retrain, self.seed = weighting, fraction, retrain, seed
        self.epochs, self.steps, self.batch_size, self.lr = epochs, steps, batch_size, lr
        self.reinitialise(0)
        self.budget.charge_model(self.policy)
        spec = {"obs": ((obs_dim,), torch.float32), **self.policy.space.spec}
        self.memory = TrajectoryMemory(spec, self.budget, strategy=strategy, seed=seed,
                                       nbytes=0 if fraction is not None else memory_nbytes)

    @property
    def stores(self) -> Mapping[str, TrajectoryMemory]:
        return {"memory": self.memory}

    def learn(self, experience: Experience) -> None:
        """Add the round's trajectories to the memory, reweight it, and train the policy."""
        data = experience.train
        if not isinstance(data, Batch) or any(name not in data for name in FIELDS):
            raise ValueError(f"SiriusLearner.learn: expected experience.train to be a Batch with "
                             f"fields {list(FIELDS)}, got {data!r}")
        self.memory.check(data)
        self._check_actions(data.action)
        if self.fraction is not None:
            self._grow(data)
        self.memory.add(data.select(*FIELDS))
        held = self.memory.contents()
        if len(held) == 0:
            return
        if self.retrain:
            self.reinitialise(experience.index)
        if self.retrain or self.memory.collected == len(data):  # fine-tuning: first data only
            self.policy.fit_observations(held.obs)
        weights = WEIGHTINGS[self.weighting](held.label)
        self._train(held, weights / weights.mean(), experience.index)

    def _check_actions(self, action: torch.Tensor) -> None:
        space = self.policy.space
        if not len(action):
            return
        if space.discrete:
            low, high = int(action.min()), int(action.max())
            if action.is_floating_point() or low < space.start or high >= space.start + space.n:
                raise ValueError(f"SiriusLearner.learn: expected integer actions in "
                                 f"{space.start}..{space.start + space.n - 1}, got "
                                 f"{action.dtype} values in [{low}, {high}]")
        elif not bool(torch.isfinite(action).all()):
            raise ValueError("SiriusLearner.learn: expected finite box actions, got NaN or inf")

    def _grow(self, data: Batch) -> None:
        """Resize the memory to ``fraction`` of all transitions collected, with this round."""
        longest = int(torch.unique_consecutive(data.traj, return_counts=True)[1].max()) \
            if len(data) else 0
        wanted = max(math.floor(self.fraction * (self.memory.collected + len(data))), longest)
        if wanted > self.memory.capacity:
            self.memory.resize(self.memory.nbytes_for(wanted))

    def _train(self, data: Batch, weights: torch.Tensor, round_: int) -> None:
        self.policy.train()
        optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.lr)
        per_epoch = math.ceil(len(data) / self.batch_size)
        steps = self.steps if self.steps is not None else self.epochs * per_epoch
        for epoch in range(math.ceil(steps / per_epoch)):
            generator = derive_generator(self.seed, "shuffle", round_, epoch)
            order = torch.randperm(len(data), generator=generator)
            for rows in order.split(self.batch_size)[: steps - epoch * per_epoch]:
                nll = -self.policy.log_prob(data.obs[rows], data.action[rows])
                loss = (weights[rows] * nll).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.policy.eval()

    def reinitialise(self, round_: int) -> None:
        """Fresh policy weights from ``derive_generator(seed, "reinit", round_)``."""
        generator = derive_generator(self.seed, "reinit", round_)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            for module in self.policy.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic actions for a batch of observations ``[n, obs_dim]``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.policy.obs_dim:
            raise ValueError(f"SiriusLearner: expected observations of shape (n, "
                             f"{self.policy.obs_dim}), got {tuple(getattr(x, 'shape', ()))}")
        self.policy.eval()
        with torch.no_grad():
            return self.policy.act(x.to(torch.float32))

    def act(self, obs: np.ndarray) -> np.ndarray | int:
        """The deterministic action for one observation: an int, or a float32 array."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.shape != (self.policy.obs_dim,):
            raise ValueError(f"SiriusLearner.act: expected an observation of shape "
                             f"({self.policy.obs_dim},), got {obs.shape}")
        action = self.predict(torch.from_numpy(obs).unsqueeze(0))[0]
        return int(action) if self.policy.space.discrete else action.numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.policy.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.policy.load_state_dict(state)
