"""The shared supervised loop: SGD over an experience's minibatches, with hooks per method.

A learner subclasses ``SupervisedLearner`` and overrides what its paper changes:
``loss`` (the objective on one minibatch), ``before_experience`` /
``after_experience`` (grow a model, fill a memory, snapshot a teacher) and
``stores``. Shuffling uses ``derive_generator(seed, "shuffle", experience, epoch)``, so a
resumed run draws the same minibatches.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from memkit.batch import Batch
from memkit.budget import Budget, BudgetExceeded, module_nbytes
from memkit.seeding import derive_generator
from memkit.store import SampleMemory, Store
from memkit.streams import Experience


def charge_growth(budget: Budget, model: nn.Module, memory: SampleMemory | None = None,
                  owner: str = "model") -> Batch | None:
    """Charge a grown ``model`` to ``budget``, shrinking ``memory`` first if the bytes are short.

    The MEMO paper's accounting: parameters a learner adds come out of the same
    budget as its exemplars, so a model that grows leaves fewer exemplars.
    Returns what the memory evicted (``None`` if it did not have to shrink).
    Raises ``BudgetExceeded`` for ``owner``, before anything changes, when the
    growth does not fit even with the memory shrunk to one item.
    """
    if memory is not None and memory.budget is not budget:
        raise ValueError(f"charge_growth: the memory {memory.owner!r} is charged to another "
                         f"budget than the model; expected both on {budget!r}")
    need = module_nbytes(model) - budget.charged(owner)
    room = budget.free + (0 if memory is None else (memory.capacity - 1) * memory.item_nbytes)
    if need > room:
        raise BudgetExceeded(owner, need, room, budget.capacity)
    evicted = None
    if need > budget.free and memory is not None:
        evicted = memory.resize(memory.nbytes - (need - budget.free))
    budget.charge_model(model, owner)
    return evicted


class SupervisedLearner:
    """Cross-entropy SGD on each experience; subclasses change the loss and the hooks."""

    def __init__(self, model: nn.Module, *, lr: float = 0.1, momentum: float = 0.0,
                 epochs: int = 1, batch_size: int = 32, seed: int = 0,
                 budget: Budget | None = None):
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ValueError(f"{type(self).__name__}: expected epochs >= 1, batch_size >= 1, "
                             f"lr > 0; got epochs={epochs}, batch_size={batch_size}, lr={lr}")
        self.model = model
        self.lr, self.momentum, self.epochs, self.batch_size = lr, momentum, epochs, batch_size
        self.seed = seed
        self.budget = budget

    @property
    def stores(self) -> Mapping[str, Store]:
        return {}

    def learn(self, experience: Experience) -> None:
        self.check_labels(experience)
        self.before_experience(experience)
        self.model.train()
        optimizer = self.optimizer()
        data = self.training_data(experience)
        for epoch in range(self.epochs):
            generator = derive_generator(self.seed, "shuffle", experience.index, epoch)
            order = torch.randperm(len(data), generator=generator)
            for rows in order.split(self.batch_size):
                loss = self.loss(data[rows], experience, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.after_experience(experience)

    def check_labels(self, experience: Experience) -> None:
        """Raise before any training unless every label has a logit: ``0 <= y < outputs``."""
        y = experience.train.y
        if len(y) == 0:
            return
        training = self.model.training
        self.model.eval()
        with torch.no_grad():
            outputs = self.model(experience.train.x[:1]).shape[-1]
        self.model.train(training)
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= outputs:
            raise ValueError(f"{type(self).__name__}: experience {experience.index} has labels "
                             f"in [{low}, {high}], expected 0..{outputs - 1} (the model has "
                             f"{outputs} outputs)")

    def training_data(self, experience: Experience) -> Batch:
        """What the epochs iterate over: the experience's data (methods may add exemplars)."""
        return experience.train

    def optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimiser per experience over the parameters that require gradients."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)

    def loss(self, batch: Batch, experience: Experience,
             generator: torch.Generator) -> torch.Tensor:
        return nn.functional.cross_entropy(self.model(batch.x), batch.y)

    def before_experience(self, experience: Experience) -> None:
        """Called before training on ``experience``."""

    def after_experience(self, experience: Experience) -> None:
        """Called after training on ``experience``."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return self.model(x).argmax(dim=1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
