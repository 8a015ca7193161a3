"""Trajectory memory: deployment data kept as whole trajectories within a byte budget.

Liu, Nasiriany, Zhang, Bao and Zhu, "Robot Learning on the Job: Human-in-the-Loop
Autonomy and Learning During Deployment" (Sirius), RSS 2023, keep the data of a
growing deployment in a bounded memory: after each round the new trajectories
join the memory and, when they do not all fit, whole trajectories leave in the
order a *retention strategy* gives. A trajectory is never split, so every step
that stays keeps its history and its intervention label context.

Every transition costs the same bytes: its observation and action (their dtypes
and shapes decide), an int8 step label (0 demo, 1 robot, 2 pre-intervention,
3 intervention) and an int64 trajectory id and round. A memory of ``nbytes``
holds ``nbytes // item_nbytes`` transitions, preallocated and charged up front.

An add offers whole trajectories. The held and the offered trajectories, oldest
first, are ranked by the strategy into an *eviction order*; the shortest prefix
of that order whose removal makes the rest fit leaves (held ones are evicted,
offered ones refused). Strategies are registered by name with ``@retention``:

- ``keep_newest``: FIFO, the oldest trajectories leave first;
- ``keep_oldest``: FILO, the newest leave first, so new data is refused first;
- ``keep_least_intervened``: the highest intervention fraction leaves first
  (what the paper's public code calls "LFI");
- ``keep_most_intervened``: the lowest intervention fraction leaves first;
- ``uniform``: a seeded uniformly random order.

A trajectory's intervention fraction is the fraction of its steps labelled
intervention (3); pre-intervention steps (2) do not count. Equal fractions are
ordered by age: the older trajectory leaves first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget, BudgetExceeded, parse_size
from memkit.deployment import StepLabel
from memkit.kernels.sampling import sample_distinct
from memkit.registry import register
from memkit.seeding import derive_generator
from memkit.store import Store, normalize_spec, saved_capacity, spec_to_json

N_LABELS = len(StepLabel)
BOOK = {"label": ((), torch.int8), "traj": ((), torch.int64), "round": ((), torch.int64)}
"""Fields every transition carries beside its observation and action."""


@dataclass(frozen=True)
class Trajectories:
    """One row per trajectory, oldest first: id, round, length and intervention steps."""

    traj: torch.Tensor
    round: torch.Tensor
    length: torch.Tensor
    interventions: torch.Tensor

    def __len__(self) -> int:
        return len(self.traj)

    @property
    def intervention_fraction(self) -> torch.Tensor:
        """Steps labelled intervention / steps, in float64 (equal ratios compare equal)."""
        return self.interventions.double() / self.length.double()

    @staticmethod
    def of(traj: torch.Tensor, round_: torch.Tensor, label: torch.Tensor) -> Trajectories:
        """The trajectories of contiguous steps (ids in one run each), vectorised."""
        ids, length = torch.unique_consecutive(traj, return_counts=True)
        starts = torch.cumsum(length, 0) - length
        owner = torch.repeat_interleave(torch.arange(len(ids)), length)
        hits = torch.zeros(len(ids), dtype=torch.int64)
        hits.index_add_(0, owner, (label == StepLabel.INTERVENTION).to(torch.int64))
        return Trajectories(ids, round_[starts], length, hits)

    @staticmethod
    def cat(a: Trajectories, b: Trajectories) -> Trajectories:
        return Trajectories(*(torch.cat([x, y]) for x, y in
                              zip((a.traj, a.round, a.length, a.interventions),
                                  (b.traj, b.round, b.length, b.interventions), strict=True)))


RetentionStrategy = Callable[[Trajectories, torch.Generator], torch.Tensor]
"""``(trajectories oldest first, generator) -> eviction order``: a permutation of the rows,
the first row leaves first."""

RETENTION: dict[str, RetentionStrategy] = {}


def retention(name: str) -> Callable[[RetentionStrategy], RetentionStrategy]:
    """Decorator: register a retention strategy under ``name``."""
    def decorate(strategy: RetentionStrategy) -> RetentionStrategy:
        if name in RETENTION and RETENTION[name] is not strategy:
            raise ValueError(f"retention: a strategy named {name!r} is already registered")
        RETENTION[name] = strategy
        return strategy
    return decorate


@retention("keep_newest")
def keep_newest(trajectories: Trajectories, generator: torch.Generator) -> torch.Tensor:
    """FIFO: keeps the newest trajectories; the oldest (lowest id, earliest round) leave first."""
    return torch.arange(len(trajectories))


@retention("keep_oldest")
def keep_oldest(trajectories: Trajectories, generator: torch.Generator) -> torch.Tensor:
    """FILO: keeps the oldest trajectories; the newest leave first (new data is refused)."""
    return torch.arange(len(trajectories)).flip(0)


@retention("keep_least_intervened")
def keep_least_intervened(trajectories: Trajectories,
                          generator: torch.Generator) -> torch.Tensor:
    """Keeps the least-intervened: the highest intervention fraction leaves first, the older
    of equal fractions first. The paper's public code calls this "LFI"."""
    return torch.sort(trajectories.intervention_fraction, descending=True, stable=True).indices


@retention("keep_most_intervened")
def keep_most_intervened(trajectories: Trajectories,
                         generator: torch.Generator) -> torch.Tensor:
    """Keeps the most-intervened: the lowest intervention fraction leaves first, the older of
    equal fractions first."""
    return torch.sort(trajectories.intervention_fraction, stable=True).indices


@retention("uniform")
def uniform(trajectories: Trajectories, generator: torch.Generator) -> torch.Tensor:
    """Keeps a uniformly random set: trajectories leave in a seeded random order."""
    return torch.randperm(len(trajectories), generator=generator)


def evict_prefix(order: torch.Tensor, length: torch.Tensor, capacity: int) -> torch.Tensor:
    """The rows that leave: the shortest prefix of ``order`` after which the rest fit."""
    excess = int(length.sum()) - capacity
    if excess <= 0:
        return order[:0]
    freed = torch.cumsum(length[order], 0)
    return order[: int(torch.searchsorted(freed, excess)) + 1]


@register("store", "trajectory")
class TrajectoryMemory(Store):
    """Transitions grouped into whole trajectories, held in time order, evicted by a strategy.

    ``spec`` gives the observation and action fields, e.g.
    ``{"obs": ((8,), torch.float32), "action": ((2,), torch.float32)}`` (a discrete
    action is ``((), torch.int64)``); every transition also carries ``label``, ``traj``
    and ``round``. ``nbytes`` is the allotment (all that is free in the budget when
    None); ``nbytes_for(n)`` gives the allotment for ``n`` transitions, so a memory can
    be capped at a fraction of what a deployment collects (``collected_nbytes``).
    """

    registry_name = "trajectory"
    resizable = ("nbytes",)

    def __init__(self, spec: Spec, budget: Budget | int | str, *,
                 nbytes: int | str | None = None, strategy: str = "keep_newest",
                 owner: str = "memory", seed: int = 0):
        spec = normalize_spec(spec)
        if set(spec) != {"obs", "action"}:
            raise ValueError(f"TrajectoryMemory: expected a spec with exactly the fields "
                             f"['action', 'obs'], got {sorted(spec)}")
        if strategy not in RETENTION:
            raise ValueError(f"TrajectoryMemory: unknown strategy {strategy!r}; expected one "
                             f"of {sorted(RETENTION)}")
        super().__init__(budget, owner)
        self.spec = {**spec, **BOOK}
        self.strategy, self.seed = strategy, seed
        self.item_nbytes = sum(math.prod(shape) * dtype.itemsize
                               for shape, dtype in self.spec.values())
        allotment = self.budget.free if nbytes is None else parse_size(nbytes)
        self.capacity = allotment // self.item_nbytes
        self.budget.charge(owner, self.nbytes_for(self.capacity))
        self._slots = self._allocate(self.capacity)
        self._size = 0
        self.collected = 0
        """Transitions offered over the memory's life (held, evicted or refused)."""
        self._last_traj, self._last_round, self._adds = -1, 0, 0

    def nbytes_for(self, transitions: int) -> int:
        """Bytes this memory needs to hold ``transitions`` transitions."""
        return transitions * self.item_nbytes

    @property
    def collected_nbytes(self) -> int:
        """Bytes of every transition ever offered: cap at ``f * collected_nbytes`` to keep f."""
        return self.nbytes_for(self.collected)

    @property
    def filled_nbytes(self) -> int:
        return self.nbytes_for(self._size)

    def __len__(self) -> int:
        return self._size

    def trajectories(self) -> Trajectories:
        """The trajectories held, oldest first."""
        held = {name: t[: self._size] for name, t in self._slots.items()}
        return Trajectories.of(held["traj"], held["round"], held["label"])

    def contents(self) -> Batch:
        """A copy of every transition held, in time order (trajectory by trajectory)."""
        return Batch(**{name: t[: self._size].clone() for name, t in self._slots.items()})

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """``min(n, len)`` held transitions drawn uniformly without replacement."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"sample: expected a non-negative int, got {n!r}")
        if self._size == 0:
            raise ValueError("sample: the TrajectoryMemory is empty")
        rows = sample_distinct(self._size, n, generator)
        return Batch(**{name: t[rows] for name, t in self._slots.items()})

    def add(self, batch: Batch) -> Batch:
        """Offer whole trajectories; return the transitions that left or were refused.

        Raises ``ValueError`` before anything changes when ``batch`` is malformed or a
        trajectory is longer than the whole capacity.
        """
        self.check(batch)
        offered = Trajectories.of(batch.traj.long(), batch.round.long(), batch.label)
        longest = int(offered.length.max()) if len(offered) else 0
        if longest > self.capacity:
            row = int(offered.length.argmax())
            raise ValueError(
                f"TrajectoryMemory.add: trajectory {int(offered.traj[row])} has {longest} "
                f"transitions ({self.nbytes_for(longest)} bytes), more than the whole memory of "
                f"{self.capacity} transitions ({self.nbytes} bytes)")
        held = self.trajectories()
        table = Trajectories.cat(held, offered)
        leave = self._leave(table, self.capacity)
        stay = torch.ones(len(table), dtype=torch.bool)
        stay[leave] = False
        held_stay = torch.repeat_interleave(stay[: len(held)], held.length)
        new_stay = torch.repeat_interleave(stay[len(held):], offered.length)
        gone = Batch.cat([self._compact(held_stay), self._append(batch, new_stay)])
        self.collected += len(batch)
        self._adds += 1
        if len(offered):
            self._last_traj, self._last_round = int(offered.traj[-1]), int(offered.round[-1])
        return gone

    def resize(self, nbytes: int | str) -> Batch:
        """Change the allotment to ``nbytes``; a shrink evicts whole trajectories by the strategy.

        Growing charges the budget first and raises ``BudgetExceeded`` before anything
        changes. Returns the evicted transitions.
        """
        capacity = parse_size(nbytes) // self.item_nbytes
        held = self.trajectories()
        stay = torch.ones(len(held), dtype=torch.bool)
        stay[self._leave(held, capacity)] = False
        grow = self.nbytes_for(capacity - self.capacity)
        if grow > 0:
            self.budget.charge(self.owner, grow)
        self._adds += 1
        gone = self._compact(torch.repeat_interleave(stay, held.length))
        slots = self._allocate(capacity)
        for name, t in slots.items():
            t[: self._size] = self._slots[name][: self._size]
        self._slots, self.capacity = slots, capacity
        if grow < 0:
            self.budget.release(self.owner, -grow)
        return gone

    def _leave(self, table: Trajectories, capacity: int) -> torch.Tensor:
        """Rows of ``table`` that leave so the rest fit ``capacity``, by the strategy.

        The draws of the ``k``-th update come from ``derive_generator(seed, "evict", k)``,
        so a reloaded memory continues as the original would.
        """
        generator = derive_generator(self.seed, "evict", self._adds)
        order = RETENTION[self.strategy](table, generator)
        if (not isinstance(order, torch.Tensor) or order.shape != (len(table),)
                or not torch.equal(order.sort().values, torch.arange(len(table)))):
            raise ValueError(f"TrajectoryMemory: strategy {self.strategy!r} must return a "
                             f"permutation of {len(table)} rows, got {order!r}")
        return evict_prefix(order, table.length, capacity)

    def _compact(self, stay: torch.Tensor) -> Batch:
        """Drop held steps where ``stay`` is False, keeping the rest in order; return those."""
        if bool(stay.all()):
            return self._empty()
        gone = Batch(**{name: t[: self._size][~stay] for name, t in self._slots.items()})
        kept = int(stay.sum())
        for t in self._slots.values():
            t[:kept] = t[: self._size][stay]
        self._size = kept
        return gone

    def _append(self, batch: Batch, stay: torch.Tensor) -> Batch:
        """Write the offered steps where ``stay`` is True after the held ones; return the rest."""
        n = int(stay.sum())
        for name, t in self._slots.items():
            t[self._size: self._size + n] = batch[name][stay].to(t.dtype)
        self._size += n
        return Batch(**{name: batch[name][~stay].to(t.dtype) for name, t in self._slots.items()})

    def _empty(self) -> Batch:
        return Batch(**{name: t[:0].clone() for name, t in self._slots.items()})

    def _allocate(self, capacity: int) -> dict[str, torch.Tensor]:
        return {name: torch.zeros((capacity, *shape), dtype=dtype)
                for name, (shape, dtype) in self.spec.items()}

    def check(self, batch: Batch) -> None:
        """Raise ``TypeError`` / ``ValueError`` unless ``add(batch)`` would accept ``batch``."""
        where = "TrajectoryMemory.add"
        if not isinstance(batch, Batch):
            raise TypeError(f"{where}: expected a Batch, got {type(batch).__name__}")
        batch.check(self.spec, where=where)
        if len(batch) == 0:
            return
        label, traj, round_ = batch.label, batch.traj.to(torch.int64), batch.round.to(torch.int64)
        if int(label.min()) < 0 or int(label.max()) >= N_LABELS:
            raise ValueError(f"{where}: expected step labels in 0..{N_LABELS - 1}, got values in "
                             f"[{int(label.min())}, {int(label.max())}]")
        ids = torch.unique_consecutive(traj)
        if not bool((ids[1:] > ids[:-1]).all()):
            raise ValueError(f"{where}: expected the steps of each trajectory to be contiguous "
                             f"and trajectory ids increasing, got ids in the order "
                             f"{ids.tolist()[:20]}")
        if int(ids[0]) <= self._last_traj:
            raise ValueError(f"{where}: expected new trajectory ids above {self._last_traj} "
                             f"(the last one offered), got {int(ids[0])}")
        same = traj[1:] == traj[:-1]
        if bool((same & (round_[1:] != round_[:-1])).any()) or bool(
                (round_[1:] < round_[:-1]).any()) or int(round_[0]) < self._last_round:
            raise ValueError(f"{where}: expected one round per trajectory, rounds not "
                             f"decreasing and at least {self._last_round} (the last one "
                             f"offered), got rounds {torch.unique_consecutive(round_).tolist()}")

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self._slots)

    def config(self) -> dict:
        spec = {name: self.spec[name] for name in ("obs", "action")}
        return {"spec": spec_to_json(spec), "owner": self.owner, "nbytes": self.nbytes,
                "strategy": self.strategy, "seed": self.seed}

    def extra_state(self) -> dict:
        return {"size": self._size, "collected": self.collected, "last_traj": self._last_traj,
                "last_round": self._last_round, "adds": self._adds}

    def load_extra_state(self, extra: Mapping) -> None:
        missing = sorted(set(self.extra_state()) - set(extra))
        if missing:
            raise ValueError(f"TrajectoryMemory: saved state lacks the counters {missing}")
        values = {key: int(extra[key]) for key in self.extra_state()}
        if min(values["size"], values["collected"], values["last_round"], values["adds"]) < 0:
            raise ValueError(f"TrajectoryMemory: saved counters must be >= 0, got {values}")
        self._size, self.collected = values["size"], values["collected"]
        self._last_traj, self._last_round = values["last_traj"], values["last_round"]
        self._adds = values["adds"]

    def _expected_shape(self, name, mine, theirs):
        return torch.Size((len(theirs), *mine.shape[1:]))  # a saved memory may be resized

    def _check_adoptable(self, tensors, extra):
        capacity = saved_capacity(self, tensors, extra)
        grow = self.nbytes_for(capacity - self.capacity)
        if grow > self.budget.free:
            raise BudgetExceeded(self.owner, grow, self.budget.free, self.budget.capacity)

    def _adopt(self, tensors):
        capacity = len(tensors["obs"])
        grow = self.nbytes_for(capacity - self.capacity)
        self.budget.adjust(self.owner, grow)
        self._slots = {name: tensors[name].clone() for name in self._slots}
        self.capacity = capacity
