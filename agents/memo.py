"""MEMO: memory-efficient expandable model, paid for from the exemplars' byte budget.

Zhou, Wang, Ye and Zhan, "A Model or 603 Exemplars: Towards Memory-Efficient
Class-Incremental Learning", ICLR 2023. The paper's point is that a model's
parameters are memory too: methods must be compared at equal total bytes
(parameters x 4 bytes + exemplars x their stored bytes). Its method, MEMO,
finds that shallow layers of a network generalise across tasks while deep
layers specialise, so it shares the shallow ("generalised") blocks and adds
only a deep ("specialised") block per experience. How the code maps to it:

- generalised blocks: the model's ``shallow`` part (``split_blocks``), the
  trunk of an ``ExpandableNet``, shared by all experiences and trained
  throughout (the public code's default ``train_base=True``);
- specialised blocks: the model's ``deep`` part for the first experience,
  then per experience a copy of the newest one; older ones are frozen
  (``train_adaptive=False``);
- features: the concatenation of all specialised blocks' outputs; one linear
  head over them covers every class seen and grows with the old weights
  copied in;
- loss: cross-entropy over all logits plus ``aux_weight`` times the
  cross-entropy of an auxiliary head over the newest block, whose labels are
  the new classes (1..k) and one "old" class (0) for all earlier ones;
- after each experience the new classes' rows of the head are rescaled to
  the old rows' mean norm (weight aligning, Zhao et al., CVPR 2020);
  aligning corrects the head's bias towards new classes, whose data
  outnumber the exemplars (``weight_aligning=False`` turns it off);
- exemplars: any ``SampleMemory`` (the paper uses herding, a fixed number
  per class); as in PyCIL, every epoch runs over the union of the
  experience's data and all exemplars, and the memory is offered the
  experience's data after training.

Every parameter a new block adds is charged to the budget line ``model``
before training on the experience; the memory shrinks (evicting by its own
rule) to make room, so a growing model leaves fewer exemplars.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from memkit.agents.backbones import split_blocks
from memkit.agents.base import SupervisedLearner
from memkit.agents.expandable import (
    ExpandableNet,
    expand,
    experience_classes,
    growth_generator,
    load_network_state,
    network_state,
)
from memkit.batch import Batch
from memkit.budget import Budget
from memkit.registry import register
from memkit.store import SampleMemory
from memkit.streams import Experience


@register("learner", "memo")
class MEMO(SupervisedLearner):
    """Shared generalised blocks, one frozen specialised block per experience, exemplars.

    ``model`` must have ``shallow``, ``deep`` and ``head`` parts (``mlp_blocks``).
    ``self.model`` is the grown ``ExpandableNet``; the budget defaults to the
    memory's and is required, since every added block is charged to it.
    """

    def __init__(self, model: nn.Module, memory: SampleMemory | None = None, *,
                 lr: float = 0.1, momentum: float = 0.0, epochs: int = 1,
                 batch_size: int = 32,
                 aux_weight: float = 1.0, weight_aligning: bool = True, seed: int = 0,
                 budget: Budget | None = None):
        budget = budget if budget is not None else getattr(memory, "budget", None)
        if budget is None or aux_weight < 0:
            raise ValueError(f"MEMO: expected the budget its model is charged to and "
                             f"aux_weight >= 0, got budget={budget} and aux_weight={aux_weight}")
        shallow, deep, head = split_blocks(model)
        super().__init__(ExpandableNet(shallow, [deep], head), lr=lr, momentum=momentum,
                         epochs=epochs, batch_size=batch_size, seed=seed, budget=budget)
        self.memory = memory
        self.aux_weight, self.weight_aligning = aux_weight, weight_aligning

    @property
    def stores(self) -> Mapping[str, SampleMemory]:
        return {} if self.memory is None else {"memory": self.memory}

    def before_experience(self, experience: Experience) -> None:
        """Add a specialised block for the new classes and pay for it from the memory."""
        self.model = expand(self.model, experience_classes(experience), self.budget,
                            self.memory, growth_generator(self.seed, experience))

    def training_data(self, experience: Experience) -> Batch:
        """The experience's data and every exemplar, as one set the epochs shuffle."""
        data = experience.train.select("x", "y")
        if self.memory is None or len(self.memory) == 0:
            return data
        return Batch.cat([data, self.memory.contents().select("x", "y")])

    def loss(self, batch: Batch, experience: Experience,
             generator: torch.Generator) -> torch.Tensor:
        logits, aux_logits = self.model.logits(batch.x)
        columns = self.model.columns(batch.y)
        loss = F.cross_entropy(logits, columns)
        if aux_logits is None:  # the first experience has no old classes
            return loss
        return loss + self.aux_weight * F.cross_entropy(aux_logits,
                                                        self.model.aux_targets(columns))

    def after_experience(self, experience: Experience) -> None:
        if self.weight_aligning:
            self.model.align_weights()
        if self.memory is not None:
            self.memory.add(experience.train.select("x", "y"))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model.predict(x)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return network_state(self.model)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Regrow to the saved number of blocks, charge them, then load the weights."""
        self.model = load_network_state(self.model, state, self.budget, self.memory)
