"""iCaRL: incremental classifier and representation learning.

Rebuffi, Kolesnikov, Sperl & Lampert, "iCaRL: Incremental Classifier and
Representation Learning", CVPR 2017, with PyCIL's fixed-size exemplar memory
(Zhou et al., "PyCIL: a Python Toolbox for Class-Incremental Learning", 2023):

- *update representation* (Algorithm 3): train on the experience's data and
  all exemplars, every epoch, with binary cross-entropy over the classes seen
  so far: one-hot targets for the new classes, and for the old classes the
  sigmoid outputs of the model as it was after the previous experience (the
  *teacher*, a frozen copy). PyCIL swaps this loss for cross-entropy plus
  softmax distillation; this file keeps the paper's;
- *reduce / construct exemplar sets* (Algorithms 4-5): after each experience
  the ``Herding`` memory keeps ``capacity // classes seen`` exemplars per
  class, chosen by herding on the current model's features;
- *classify* (Algorithm 1): nearest mean of exemplars on L2-normalised
  features (``Herding.class_means``), recomputed after each experience.

The teacher is a whole model copy, so it is charged to the budget under
``"teacher"``; if the bytes are short the memory shrinks to pay for it
(``charge_growth``), by herding rank.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from memkit.agents.backbones import split_head
from memkit.agents.base import SupervisedLearner, charge_growth
from memkit.batch import Batch
from memkit.budget import Budget
from memkit.buffers.herding import Herding
from memkit.registry import register
from memkit.streams import Experience


@register("learner", "icarl")
class ICaRL(SupervisedLearner):
    """Sigmoid classifier with distillation, herding exemplars, nearest-mean-of-exemplars.

    ``model`` is an ``nn.Sequential`` ending in a linear layer over all classes
    (``split_head``); its body gives the features.
    """

    def __init__(self, model: nn.Module, memory: Herding | None = None, *, lr: float = 0.1,
                 momentum: float = 0.0, epochs: int = 1, batch_size: int = 32, seed: int = 0,
                 budget: Budget | None = None):
        if not isinstance(memory, Herding):
            raise TypeError(f"ICaRL: expected a Herding memory (its exemplar sets), "
                            f"got {type(memory).__name__}")
        super().__init__(model, lr=lr, momentum=momentum, epochs=epochs, batch_size=batch_size,
                         seed=seed, budget=budget if budget is not None else memory.budget)
        self.extractor, head = split_head(model)
        self.memory = memory
        self.memory.features = self.features
        self.teacher: nn.Module | None = None
        self.known = torch.zeros(head.out_features, dtype=torch.bool)
        """Classes trained on in earlier experiences (the teacher's)."""
        self.new = torch.zeros_like(self.known)
        """Classes of the current experience."""
        self.mean_classes = torch.zeros(0, dtype=torch.int64)
        self.means = torch.zeros(0, 0)
        """Exemplar means (rows) of ``mean_classes``, the nearest-mean prototypes."""

    @property
    def stores(self) -> Mapping[str, Herding]:
        return {"memory": self.memory}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The model's features of ``x`` (eval mode, no gradient)."""
        self.model.eval()
        with torch.no_grad():
            return self.extractor(x)

    def learn(self, experience: Experience) -> None:
        """Train on the experience's data together with every exemplar held."""
        self.new = torch.zeros_like(self.known)
        self.new[list(experience.classes) or experience.train.y.unique()] = True
        data = [experience.train.select("x", "y"), *self.memory.batches(len(self.memory) or 1)]
        super().learn(dataclasses.replace(experience, train=Batch.cat(data)))

    def loss(self, batch: Batch, experience: Experience,
             generator: torch.Generator) -> torch.Tensor:
        logits = self.model(batch.x)
        targets = nn.functional.one_hot(batch.y, len(self.known)).to(logits.dtype)
        old = self.known & ~self.new
        if self.teacher is not None:
            with torch.no_grad():
                targets[:, old] = torch.sigmoid(self.teacher(batch.x)[:, old])
        seen = self.known | self.new
        bce = nn.functional.binary_cross_entropy_with_logits(
            logits[:, seen], targets[:, seen], reduction="sum")
        return bce / len(batch)

    def after_experience(self, experience: Experience) -> None:
        self.known |= self.new
        self._snapshot_teacher()
        train = experience.train[torch.isin(experience.train.y, torch.nonzero(self.new)[:, 0])]
        self.memory.add(train, features=self.features(train.x))
        self.update_class_means()

    def _snapshot_teacher(self) -> None:
        """Freeze a copy of the model for the next experience's distillation targets."""
        if self.teacher is None:
            self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
            if self.budget is not None:
                charge_growth(self.budget, self.teacher, self.memory, owner="teacher")
        else:
            self.teacher.load_state_dict(self.model.state_dict())

    def update_class_means(self) -> None:
        """Recompute the nearest-mean prototypes from the exemplars held now."""
        self.mean_classes, self.means = self.memory.class_means(self.features)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The class whose exemplar mean is nearest to the normalised features of ``x``."""
        if len(self.mean_classes) == 0:
            raise RuntimeError("ICaRL.predict: no exemplar means yet; learn an experience first")
        f = nn.functional.normalize(self.features(x), dim=1)
        return self.mean_classes[torch.cdist(f, self.means).argmin(dim=1)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.teacher is not None:
            state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        return {**state, "known": self.known.clone(), "mean_classes": self.mean_classes,
                "means": self.means}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        names = list(self.model.state_dict())
        shapes = {f"{part}.{k}": v.shape for part in ("model", "teacher")
                  for k, v in self.model.state_dict().items()}
        shapes["known"] = self.known.shape
        expected = {*(f"model.{k}" for k in names), "known", "mean_classes", "means"}
        teacher = {f"teacher.{k}" for k in names}
        if set(state) not in (expected, expected | teacher):
            raise ValueError(f"ICaRL.load_state_dict: expected {sorted(expected)} (plus "
                             f"teacher.* once a teacher exists), got {sorted(state)}")
        wrong = sorted(k for k, v in state.items() if k in shapes and v.shape != shapes[k])
        if wrong:
            raise ValueError(f"ICaRL.load_state_dict: {wrong} do not have this model's shapes")
        self.model.load_state_dict({k: state[f"model.{k}"] for k in names})
        if teacher <= set(state):
            self._snapshot_teacher()
            self.teacher.load_state_dict({k: state[f"teacher.{k}"] for k in names})
        self.known = state["known"].clone()
        self.mean_classes, self.means = state["mean_classes"].clone(), state["means"].clone()
