"""Joint training on everything seen so far: the upper bound of continual learning.

At experience ``k`` the learner trains on the union of the training data of
experiences ``0..k``, continuing from its current weights (Avalanche's
"Cumulative" strategy; Lomonaco et al., "Avalanche: an End-to-End Library for
Continual Learning", CVPR Workshops 2021). After the last experience it has
trained on the whole stream, as offline joint training does; it is the
reference iCaRL (Rebuffi et al., CVPR 2017) and DER (Buzzega et al., NeurIPS
2020) report above their methods.

Keeping every item is memory too: ``SeenData`` holds the items, counts their
exact bytes and charges them to the learner's budget, so the upper bound
shows up in the memory timeline and checkpoints like any store, and a budget
too small for the whole stream raises ``BudgetExceeded``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping

import torch
from torch import nn

from memkit.agents.base import SupervisedLearner
from memkit.batch import Batch
from memkit.budget import Budget
from memkit.registry import register
from memkit.store import Store
from memkit.streams import Experience


class SeenData(Store):
    """Every ``(x, y)`` item added, in order, charged to ``budget``; nothing is ever evicted.

    The first ``add`` fixes the item shape and dtypes; later adds must match.
    """

    def __init__(self, budget: Budget | int | str, *, owner: str = "joint"):
        super().__init__(budget, owner)
        self.x = torch.empty(0)
        self.y = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.y)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"x": self.x, "y": self.y}

    def config(self) -> dict:
        return {"owner": self.owner}

    def data(self) -> Batch:
        """All items held, in the order they were added."""
        return Batch(x=self.x, y=self.y)

    def add(self, batch: Batch) -> None:
        """Append ``batch``'s ``x`` and ``y``, charging their bytes first."""
        if not isinstance(batch, Batch):
            raise TypeError(f"SeenData.add: expected a Batch, got {type(batch).__name__}")
        if "x" not in batch:
            raise ValueError(f"SeenData.add: missing field 'x'; got {list(batch)}")
        held = {"x": (tuple(self.x.shape[1:]), self.x.dtype)} if len(self) else {}
        batch.check({**held, "y": ((), torch.int64)}, where="SeenData.add")
        x = torch.cat([self.x, batch.x.to(self.x.dtype)]) if len(self) else batch.x.clone()
        y = torch.cat([self.y, batch.y.to(torch.int64)])
        self.budget.charge(self.owner, x.nbytes + y.nbytes - self.nbytes)
        self.x, self.y = x, y

    def load_state_dict(self, state: Mapping) -> None:
        """Take over saved items of any number and item shape; raise before changing anything."""
        tensors = state.get("tensors") if isinstance(state, Mapping) else None
        if not isinstance(tensors, Mapping) or set(tensors) != {"x", "y"}:
            raise ValueError("SeenData.load_state_dict: expected a state with tensors 'x' and "
                             f"'y', got {tensors if tensors is None else sorted(tensors)}")
        x, y = tensors["x"], tensors["y"]
        if y.dim() != 1 or y.dtype != torch.int64 or x.dim() < 1 or len(x) != len(y):
            raise ValueError(f"SeenData.load_state_dict: expected x of shape (n, ...) and int64 "
                             f"y of shape (n,), got {tuple(x.shape)} and {tuple(y.shape)} "
                             f"{y.dtype}")
        grow = x.nbytes + y.nbytes - self.nbytes
        self.budget.adjust(self.owner, grow)
        self.x, self.y = x.clone(), y.clone()


@register("learner", "joint")
class Joint(SupervisedLearner):
    """SGD on the union of all training data seen so far, held in a charged ``SeenData``.

    Without a ``budget`` the items are charged to a private ledger with no
    practical limit.
    """

    def __init__(self, model: nn.Module, memory: Store | None = None, *, lr: float = 0.1,
                 momentum: float = 0.0, epochs: int = 1, batch_size: int = 32, seed: int = 0,
                 budget: Budget | None = None):
        if memory is not None:
            raise ValueError(f"Joint keeps every item in its own store, got a memory "
                             f"({type(memory).__name__}); drop the memory section")
        super().__init__(model, lr=lr, momentum=momentum, epochs=epochs, batch_size=batch_size,
                         seed=seed, budget=budget)
        self.seen = SeenData(budget if budget is not None else Budget(sys.maxsize))

    @property
    def stores(self) -> Mapping[str, Store]:
        return {"seen": self.seen}

    def learn(self, experience: Experience) -> None:
        self.seen.add(experience.train.select("x", "y"))
        super().learn(dataclasses.replace(experience, train=self.seen.data()))

