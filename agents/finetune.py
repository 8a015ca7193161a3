"""Fine-tuning: the lower bound of continual learning.

Plain SGD on each experience in turn, with nothing remembered between them,
the baseline every continual-learning paper reports below its method (e.g.
"Fine-tuning" in Rebuffi et al., "iCaRL: Incremental Classifier and
Representation Learning", CVPR 2017, and in van de Ven et al., "Three types
of incremental learning", Nature Machine Intelligence 2022). In a
class-incremental stream it forgets the old classes almost entirely: what
any memory buys is measured against it.
"""

from __future__ import annotations

from torch import nn

from memkit.agents.base import SupervisedLearner
from memkit.budget import Budget
from memkit.registry import register
from memkit.store import Store


@register("learner", "finetune")
class Finetune(SupervisedLearner):
    """Cross-entropy SGD on the current experience only; it keeps no store."""

    def __init__(self, model: nn.Module, memory: Store | None = None, *, lr: float = 0.1,
                 momentum: float = 0.0, epochs: int = 1, batch_size: int = 32, seed: int = 0,
                 budget: Budget | None = None):
        if memory is not None:
            raise ValueError(f"Finetune keeps no memory (it is the lower bound), got a "
                             f"{type(memory).__name__}; drop the memory section or use 'er'")
        super().__init__(model, lr=lr, momentum=momentum, epochs=epochs, batch_size=batch_size,
                         seed=seed, budget=budget)
