"""DER: dynamically expandable representation, paid for from the exemplars' byte budget.

Yan, Xie and He, "DER: Dynamically Expandable Representation for Class
Incremental Learning", CVPR 2021. Not to be confused with dark experience
replay (Buzzega et al., 2020): this learner is registered as
``der_expandable``. Each experience adds a whole new feature extractor; the
old ones are frozen, so what they learned cannot be overwritten, and the
classifier reads all of them. How the code maps to the paper (and PyCIL's
``DER``, which its authors' comparisons use):

- feature extractors: the model's backbone for the first experience
  (``shallow`` + ``deep`` of ``mlp_blocks``, or everything but the last
  linear layer of an ``nn.Sequential`` such as ``mlp``), then per experience
  a copy of the newest one; older ones are frozen;
- features: the concatenation of all extractors' outputs; one linear head
  over them covers every class seen and grows with the old weights copied in;
- loss: cross-entropy over all logits plus ``aux_weight`` (the paper's
  lambda_a) times the cross-entropy of the auxiliary classifier over the
  newest extractor, whose labels are the new classes (1..k) and one class
  (0) for all old ones;
- after each experience the new classes' rows of the head are rescaled to
  the old rows' mean norm (weight aligning, Zhao et al., CVPR 2020, as PyCIL
  does in place of the paper's classifier re-training on balanced data);
  aligning corrects the head's bias towards new classes, whose data
  outnumber the exemplars (``weight_aligning=False`` turns it off);
- the paper's optional mask-based pruning of each new extractor is left
  out: every new extractor is kept whole and charged whole;
- exemplars: any ``SampleMemory`` (the paper uses herding, a fixed number
  per class); as in PyCIL, every epoch runs over the union of the
  experience's data and all exemplars, and the memory is offered the
  experience's data after training.

Every parameter a new extractor adds is charged to the budget line ``model``
before training on the experience (MEMO's accounting, Zhou et al., ICLR
2023); the memory shrinks, evicting by its own rule, to make room.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from memkit.agents.backbones import split_blocks, split_head
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


@register("learner", "der_expandable")
class DynamicallyExpandableRepresentation(SupervisedLearner):
    """One frozen feature extractor per experience, a head over all of them, replay.

    ``model`` is ``mlp_blocks``-like (``shallow``, ``deep``, ``head``) or an
    ``nn.Sequential`` ending in ``nn.Linear``. ``self.model`` is the grown
    ``ExpandableNet`` (its trunk is empty); the budget defaults to the
    memory's and is required, since every added extractor is charged to it.
    """

    def __init__(self, model: nn.Module, memory: SampleMemory | None = None, *,
                 lr: float = 0.1, momentum: float = 0.0, epochs: int = 1,
                 batch_size: int = 32,
                 aux_weight: float = 1.0, weight_aligning: bool = True, seed: int = 0,
                 budget: Budget | None = None):
        budget = budget if budget is not None else getattr(memory, "budget", None)
        if budget is None or aux_weight < 0:
            raise ValueError(f"DER: expected the budget its model is charged to and "
                             f"aux_weight >= 0, got budget={budget} and aux_weight={aux_weight}")
        backbone, head = _backbone_and_head(model)
        super().__init__(ExpandableNet(nn.Identity(), [backbone], head), lr=lr,
                         momentum=momentum, epochs=epochs, batch_size=batch_size, seed=seed,
                         budget=budget)
        self.memory = memory
        self.aux_weight, self.weight_aligning = aux_weight, weight_aligning

    @property
    def stores(self) -> Mapping[str, SampleMemory]:
        return {} if self.memory is None else {"memory": self.memory}

    def before_experience(self, experience: Experience) -> None:
        """Add a feature extractor for the new classes and pay for it from the memory."""
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
        """Regrow to the saved number of extractors, charge them, then load the weights."""
        self.model = load_network_state(self.model, state, self.budget, self.memory)


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """The whole feature extractor and the classifier of ``model`` (sharing its parameters)."""
    if isinstance(model, nn.Sequential):
        return split_head(model)
    shallow, deep, head = split_blocks(model)
    return nn.Sequential(shallow, deep), head
