"""Elastic weight consolidation (EWC), online form.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks",
PNAS 2017 (Eq. 3), in the online form of Schwarz et al., "Progress & Compress:
A scalable framework for continual learning", ICML 2018: the loss on every
minibatch is

    CE(h(x), y) + ewc_lambda * 0.5 * sum_i F_i * (theta_i - theta*_i)^2

and after each experience the running Fisher ``F`` is decayed by ``gamma``
and the Fisher of that experience's training data added, and the anchor
``theta*`` moves to the current weights (``memkit.buffers.ewc.EWCMemory``).
``gamma = 1`` sums the Fishers of all experiences seen, with one anchor.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from memkit.agents.base import SupervisedLearner
from memkit.batch import Batch
from memkit.budget import Budget
from memkit.buffers.ewc import EWCMemory
from memkit.registry import register
from memkit.store import Store
from memkit.streams import Experience


@register("learner", "ewc")
class EWC(SupervisedLearner):
    """SGD with a quadratic penalty pulling important weights to where earlier tasks left them.

    The ``EWCMemory`` is charged to ``budget``; without one, to a private
    budget of exactly its size.
    """

    def __init__(self, model: nn.Module, memory: Store | None = None, *, lr: float = 0.1,
                 momentum: float = 0.0, epochs: int = 1, batch_size: int = 32, seed: int = 0,
                 budget: Budget | None = None, ewc_lambda: float = 100.0, gamma: float = 1.0,
                 fisher_batch_size: int = 256):
        if memory is not None:
            raise ValueError(f"EWC keeps its own parameter memory, got a memory "
                             f"({type(memory).__name__}); drop the memory section")
        if ewc_lambda < 0 or fisher_batch_size < 1:
            raise ValueError(f"EWC: expected ewc_lambda >= 0 and fisher_batch_size >= 1, "
                             f"got {ewc_lambda} and {fisher_batch_size}")
        super().__init__(model, lr=lr, momentum=momentum, epochs=epochs, batch_size=batch_size,
                         seed=seed, budget=budget)
        own = budget if budget is not None else Budget(EWCMemory.nbytes_for(model))
        self.ewc = EWCMemory(model, own, gamma=gamma)
        self.ewc_lambda, self.fisher_batch_size = ewc_lambda, fisher_batch_size

    @property
    def stores(self) -> Mapping[str, Store]:
        return {"ewc": self.ewc}

    def loss(self, batch: Batch, experience: Experience,
             generator: torch.Generator) -> torch.Tensor:
        loss = super().loss(batch, experience, generator)
        return loss + self.ewc_lambda * self.ewc.penalty(self.model)

    def after_experience(self, experience: Experience) -> None:
        self.ewc.consolidate(self.model, experience.train, batch_size=self.fisher_batch_size)
