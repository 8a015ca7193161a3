"""GDumb: greedy sampler and dumb learner.

Prabhu, Torr & Dokania, "GDumb: A simple approach that questions our progress
in continual learning", ECCV 2020: the stream only feeds a class-balanced
memory (the greedy sampler, ``memkit.buffers.gdumb.GDumb``); the model is never
trained on the stream. Whenever a model is needed (here, after each
experience) it is trained *from scratch* on the memory alone.

"From scratch" is a seeded re-initialisation: every module's
``reset_parameters`` runs under ``torch.random.fork_rng`` seeded from
``derive_generator(seed, "reinit", experience)``, so the same seed gives the same
initial weights whatever the model held before, and the global random state is
left as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from memkit.agents.base import SupervisedLearner
from memkit.batch import Batch
from memkit.budget import Budget
from memkit.buffers.gdumb import GDumb
from memkit.registry import register
from memkit.seeding import derive_generator
from memkit.store import SampleMemory
from memkit.streams import Experience


@register("learner", "gdumb")
class GDumbLearner(SupervisedLearner):
    """After each experience: greedy-sample it into memory, re-initialise, train on the memory."""

    def __init__(self, model: nn.Module, memory: GDumb | None = None, *, lr: float = 0.1,
                 momentum: float = 0.0, epochs: int = 1, batch_size: int = 32, seed: int = 0,
                 budget: Budget | None = None):
        if not isinstance(memory, SampleMemory):
            raise TypeError(f"GDumbLearner: expected a sample memory (GDumb's greedy sampler), "
                            f"got {type(memory).__name__}")
        super().__init__(model, lr=lr, momentum=momentum, epochs=epochs, batch_size=batch_size,
                         seed=seed, budget=budget if budget is not None else memory.budget)
        self.memory = memory

    @property
    def stores(self) -> Mapping[str, SampleMemory]:
        return {"memory": self.memory}

    def learn(self, experience: Experience) -> None:
        self.memory.add(experience.train.select(*self.memory.spec))
        self.reinitialise(experience.index)
        if len(self.memory):
            held = Batch.cat(list(self.memory.batches(len(self.memory))))
            super().learn(dataclasses.replace(experience, train=held))

    def reinitialise(self, step: int) -> None:
        """Reset every module's parameters from ``derive_generator(seed, "reinit", step)``."""
        generator = derive_generator(self.seed, "reinit", step)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in self.model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
