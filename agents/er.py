"""Experience replay (ER).

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning" (2019):
every minibatch of the current experience is trained together with a
minibatch drawn from a small episodic memory; after each experience the
memory is offered that experience's data. With a reservoir memory the
episodic memory is a uniform sample of everything seen.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from memkit.agents.base import SupervisedLearner
from memkit.batch import Batch
from memkit.budget import Budget
from memkit.registry import register
from memkit.store import SampleMemory
from memkit.streams import Experience


@register("learner", "er")
class ExperienceReplay(SupervisedLearner):
    """SGD on current + replayed minibatches; ``memory=None`` is plain fine-tuning."""

    def __init__(self, model: nn.Module, memory: SampleMemory | None = None, *,
                 lr: float = 0.1, momentum: float = 0.0, epochs: int = 1,
                 batch_size: int = 32, replay_batch_size: int | None = None, seed: int = 0,
                 budget: Budget | None = None):
        super().__init__(model, lr=lr, momentum=momentum, epochs=epochs, batch_size=batch_size,
                         seed=seed, budget=budget if budget is not None else
                         getattr(memory, "budget", None))
        self.memory = memory
        self.replay_batch_size = replay_batch_size or batch_size

    @property
    def stores(self) -> Mapping[str, SampleMemory]:
        return {} if self.memory is None else {"memory": self.memory}

    def loss(self, batch: Batch, experience: Experience,
             generator: torch.Generator) -> torch.Tensor:
        batch = batch.select("x", "y")
        if self.memory is not None and len(self.memory) > 0:
            replay = self.memory.sample(self.replay_batch_size, generator).select("x", "y")
            batch = Batch.cat([batch, replay])
        return nn.functional.cross_entropy(self.model(batch.x), batch.y)

    def after_experience(self, experience: Experience) -> None:
        if self.memory is not None:
            self.memory.add(experience.train.select("x", "y"))
