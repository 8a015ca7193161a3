"""Dark Experience Replay++ (DER++).

Buzzega, Boschini, Porrello, Abati and Calderara, "Dark Experience for General
Continual Learning: a Strong, Simple Baseline", NeurIPS 2020. A reservoir
memory over the stream keeps each item with the logits the network produced
when the item was stored (its "dark knowledge"). Every minibatch is trained
on (Algorithm 1 of the paper)

    CE(h(x), y) + alpha * MSE(h(x'), z') + beta * CE(h(x''), y'')

with ``(x', z')`` and ``(x'', y'')`` two independent minibatches drawn from
the memory; ``beta = 0`` is DER. The memory is updated online, during
training, with the current minibatch and its detached logits (the paper's
``reservoir(M, (x, z))``); the replay minibatches are drawn before that
update, as in the paper. With several epochs an item is offered to the
memory once per epoch, and the MSE is averaged over items and logits, both as
in the authors' code (mammoth).

The logits are a per-item field of the memory (``memory_fields``), so their
bytes are charged like any other field: at equal budget DER++ keeps fewer
items than ER.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from memkit.agents.base import SupervisedLearner
from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.registry import register
from memkit.store import SampleMemory
from memkit.streams import Experience


@register("learner", "derpp")
class DERpp(SupervisedLearner):
    """Replay of labels (``beta``) and of stored logits (``alpha``) from a reservoir memory."""

    def __init__(self, model: nn.Module, memory: SampleMemory | None = None, *,
                 lr: float = 0.1, momentum: float = 0.0, epochs: int = 1,
                 batch_size: int = 32, replay_batch_size: int | None = None,
                 alpha: float = 0.1, beta: float = 0.5, seed: int = 0,
                 budget: Budget | None = None):
        if memory is None or "logits" not in memory.spec:
            got = "none" if memory is None else f"fields {list(memory.spec)}"
            raise ValueError(f"DERpp: expected a memory with a 'logits' field "
                             f"(spec from DERpp.memory_fields), got {got}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"DERpp: expected alpha >= 0 and beta >= 0, got {alpha} and {beta}")
        super().__init__(model, lr=lr, momentum=momentum, epochs=epochs, batch_size=batch_size,
                         seed=seed, budget=budget if budget is not None else memory.budget)
        self.memory = memory
        self.replay_batch_size = replay_batch_size or batch_size
        self.alpha, self.beta = alpha, beta

    @staticmethod
    def memory_fields(n_classes: int) -> Spec:
        """The logits stored with every item: one float32 per class."""
        return {"logits": ((n_classes,), torch.float32)}

    @property
    def stores(self) -> Mapping[str, SampleMemory]:
        return {"memory": self.memory}

    def loss(self, batch: Batch, experience: Experience,
             generator: torch.Generator) -> torch.Tensor:
        logits = self.model(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        if len(self.memory) > 0:
            if self.alpha > 0:
                dark = self.memory.sample(self.replay_batch_size, generator)
                loss = loss + self.alpha * F.mse_loss(self.model(dark.x), dark.logits)
            if self.beta > 0:
                labelled = self.memory.sample(self.replay_batch_size, generator)
                loss = loss + self.beta * F.cross_entropy(self.model(labelled.x), labelled.y)
        stored = batch.replace(logits=logits.detach())
        self.memory.add(stored.select(*self.memory.spec))
        return loss
