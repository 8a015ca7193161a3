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

from memkit.batch import Batch
from memkit.budget import Budget
from memkit.registry import register
from memkit.seeding import derive_generator
from memkit.store import SampleMemory
from memkit.streams import Experience


@register("learner", "er")
class ExperienceReplay:
    """SGD on current + replayed minibatches; ``memory=None`` is plain fine-tuning."""

    def __init__(self, model: nn.Module, memory: SampleMemory | None = None, *,
                 lr: float = 0.1, momentum: float = 0.0, epochs: int = 1,
                 batch_size: int = 32, replay_batch_size: int | None = None, seed: int = 0,
                 budget: Budget | None = None):
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ValueError(f"ExperienceReplay: expected epochs >= 1, batch_size >= 1, lr > 0; "
                             f"got epochs={epochs}, batch_size={batch_size}, lr={lr}")
        self.model, self.memory = model, memory
        self.lr, self.momentum, self.epochs = lr, momentum, epochs
        self.batch_size = batch_size
        self.replay_batch_size = replay_batch_size or batch_size
        self.seed = seed
        self.budget = budget if budget is not None else getattr(memory, "budget", None)

    @property
    def stores(self) -> Mapping[str, SampleMemory]:
        return {} if self.memory is None else {"memory": self.memory}

    def learn(self, experience: Experience) -> None:
        self.model.train()
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=self.momentum)
        data = experience.train.select("x", "y")
        for epoch in range(self.epochs):
            generator = derive_generator(self.seed, experience.index, epoch)
            order = torch.randperm(len(data), generator=generator)
            for rows in order.split(self.batch_size):
                batch = self._with_replay(data[rows], generator)
                loss = nn.functional.cross_entropy(self.model(batch.x), batch.y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        if self.memory is not None:
            self.memory.add(data)

    def _with_replay(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.memory is None or len(self.memory) == 0:
            return batch
        replay = self.memory.sample(self.replay_batch_size, generator).select("x", "y")
        return Batch.cat([batch, replay])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return self.model(x).argmax(dim=1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
