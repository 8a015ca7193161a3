"""Learning without Forgetting (LwF), class-incremental form.

Li and Hoiem, "Learning without Forgetting", IEEE TPAMI 2017. No exemplars:
the network as it was at the end of the previous experience (the teacher,
frozen) labels the new data, and the network is trained to keep the
teacher's responses on the old classes while learning the new ones:

    CE(h(x), y) + lambda_old * KL(softmax(t_old(x) / T) || softmax(h_old(x) / T))

``h_old`` and ``t_old`` are the student's and the teacher's logits restricted
to the classes of earlier experiences (the paper's old-task outputs ``y_o``;
the KL divergence differs from its modified cross-entropy only by the
teacher's entropy, a constant). The paper uses ``T = 2`` and
``lambda_old = 1``. In the class-incremental setting the old and new classes
share one head and the cross-entropy runs over all of its logits, as in
Avalanche's ``LwF``; with ``lambda_old = 0`` the learner is fine-tuning.

The teacher is a whole copy of the model, so it is memory: it is kept in the
learner's ``state_dict`` and charged to the budget under owner ``teacher``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from memkit.agents.base import SupervisedLearner
from memkit.batch import Batch
from memkit.budget import Budget
from memkit.registry import register
from memkit.store import Store
from memkit.streams import Experience


@register("learner", "lwf")
class LwF(SupervisedLearner):
    """Cross-entropy plus distillation of the previous model's old-class responses."""

    def __init__(self, model: nn.Module, memory: Store | None = None, *, lr: float = 0.1,
                 momentum: float = 0.0, epochs: int = 1, batch_size: int = 32, seed: int = 0,
                 budget: Budget | None = None, lambda_old: float = 1.0,
                 temperature: float = 2.0):
        if memory is not None:
            raise ValueError(f"LwF keeps no exemplars, got a memory ({type(memory).__name__}); "
                             f"drop the memory section")
        if lambda_old < 0 or temperature <= 0:
            raise ValueError(f"LwF: expected lambda_old >= 0 and temperature > 0, "
                             f"got {lambda_old} and {temperature}")
        super().__init__(model, lr=lr, momentum=momentum, epochs=epochs, batch_size=batch_size,
                         seed=seed, budget=budget)
        self.lambda_old, self.temperature = lambda_old, temperature
        self.teacher: nn.Module | None = None
        self.old_classes = torch.empty(0, dtype=torch.int64)

    def loss(self, batch: Batch, experience: Experience,
             generator: torch.Generator) -> torch.Tensor:
        logits = self.model(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        if self.teacher is None:
            return loss
        with torch.no_grad():
            target = self.teacher(batch.x)[:, self.old_classes] / self.temperature
        student = logits[:, self.old_classes] / self.temperature
        distill = F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(target, dim=1),
                           reduction="batchmean", log_target=True)
        return loss + self.lambda_old * distill

    def after_experience(self, experience: Experience) -> None:
        """The trained model becomes the teacher; its classes join the old ones."""
        classes = torch.tensor(experience.classes or torch.unique(experience.train.y).tolist(),
                               dtype=torch.int64)
        self.old_classes = torch.unique(torch.cat([self.old_classes, classes]))
        self._set_teacher(copy.deepcopy(self.model))

    def _set_teacher(self, teacher: nn.Module | None) -> None:
        """Freeze and charge ``teacher`` (or release the old one for ``None``)."""
        if self.budget is not None and teacher is not None:
            self.budget.charge_model(teacher, owner="teacher")
        elif self.budget is not None and self.budget.charged("teacher"):
            self.budget.release("teacher")
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.teacher = teacher

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        if self.teacher is not None:
            state.update({f"teacher/{k}": v for k, v in self.teacher.state_dict().items()})
        return {**state, "old_classes": self.old_classes}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore model, teacher and old classes; a bad state raises before anything changes."""
        model = {k.removeprefix("model/"): v for k, v in state.items() if k.startswith("model/")}
        teacher = {k.removeprefix("teacher/"): v for k, v in state.items()
                   if k.startswith("teacher/")}
        old = state.get("old_classes")
        if not model or old is None or old.dim() != 1 or old.dtype != torch.int64:
            got = None if old is None else f"{tuple(old.shape)} {old.dtype}"
            raise ValueError(f"LwF.load_state_dict: expected 'model/...' tensors and an int64 "
                             f"'old_classes' vector, got {len(model)} model tensors and "
                             f"old_classes {got}")
        new_teacher = None
        if teacher:
            new_teacher = copy.deepcopy(self.model)
            new_teacher.load_state_dict(teacher)
        probe = copy.deepcopy(self.model)
        probe.load_state_dict(model)  # checks names and shapes without touching the model
        self._set_teacher(new_teacher)
        self.model.load_state_dict(model)
        self.old_classes = old.clone()
