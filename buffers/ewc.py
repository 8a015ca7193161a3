"""Online elastic weight consolidation (EWC): a parameter memory of Fisher values and anchors.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks",
PNAS 2017, protect what earlier tasks needed with the quadratic penalty

    sum_i (lambda / 2) * F_i * (theta_i - theta*_i)^2

where ``F`` is the diagonal Fisher information at the end of a task and
``theta*`` the weights there. This store keeps the online form of Schwarz et
al., "Progress & Compress: A scalable framework for continual learning",
ICML 2018 (their Eq. 8): one running Fisher, decayed by ``gamma`` at every
consolidation (``F <- gamma * F + F_new``), and one anchor, the weights at
the last consolidation. ``penalty`` returns ``0.5 * sum F * (theta - anchor)^2``;
the learner multiplies it by its lambda.

``F_new`` is the diagonal empirical Fisher: the mean over the data of the
squared per-example gradients of the log-likelihood of the true label,
computed exactly per example with ``torch.func`` (``vmap`` over ``grad``),
not from squared minibatch gradients.

One float32 Fisher tensor and one float32 anchor per trainable parameter:
the store costs twice the model's float32 parameter bytes, charged when it is
created.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from memkit.batch import Batch
from memkit.budget import Budget
from memkit.registry import register
from memkit.store import Store


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` that require gradients, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def empirical_fisher(model: nn.Module, data: Batch, batch_size: int = 256
                     ) -> dict[str, torch.Tensor]:
    """Mean over ``data`` of the squared per-example gradients of ``log p(y | x)``.

    The model is evaluated in eval mode (batch-norm statistics and dropout
    fixed) and restored to its mode after.
    """
    params = {name: p.detach() for name, p in trainable(model).items()}
    fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def log_likelihood(theta, x, y):
        logits = functional_call(model, (theta, fixed), (x.unsqueeze(0),))
        return -F.cross_entropy(logits, y.unsqueeze(0))

    per_example = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    total = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for part in data.split(batch_size):
            for name, g in per_example(params, part.x, part.y).items():
                total[name] += g.float().pow(2).sum(dim=0)
    finally:
        model.train(was_training)
    return {name: t / len(data) for name, t in total.items()}


@register("store", "ewc")
class EWCMemory(Store):
    """A running diagonal Fisher and an anchor per trainable parameter of ``model``."""

    registry_name = "ewc"

    def __init__(self, model: nn.Module, budget: Budget | int | str, *, owner: str = "ewc",
                 gamma: float = 1.0):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"EWCMemory: expected gamma in [0, 1], got {gamma}")
        shapes = {name: tuple(p.shape) for name, p in trainable(model).items()}
        if not shapes:
            raise ValueError(f"EWCMemory: {type(model).__name__} has no trainable parameters")
        super().__init__(budget, owner)
        self.budget.charge(owner, self.nbytes_for(model))
        self.gamma = gamma
        self.fisher = {name: torch.zeros(shape) for name, shape in shapes.items()}
        self.anchor = {name: torch.zeros(shape) for name, shape in shapes.items()}
        self.consolidations = 0

    @staticmethod
    def nbytes_for(model: nn.Module) -> int:
        """Bytes an ``EWCMemory`` of ``model`` holds: two float32 values per trainable weight."""
        return 2 * 4 * sum(p.numel() for p in trainable(model).values())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"fisher.{n}": t for n, t in self.fisher.items()},
                **{f"anchor.{n}": t for n, t in self.anchor.items()}}

    def config(self) -> dict:
        return {"owner": self.owner, "gamma": self.gamma,
                "parameters": {name: list(t.shape) for name, t in self.fisher.items()}}

    def extra_state(self) -> dict:
        return {"consolidations": self.consolidations}

    def load_extra_state(self, extra: Mapping) -> None:
        count = int(extra["consolidations"])
        if count < 0:
            raise ValueError(f"EWCMemory: a saved consolidation count must be >= 0, got {count}")
        self.consolidations = count

    @property
    def filled_nbytes(self) -> int:
        return self.nbytes if self.consolidations else 0

    def consolidate(self, model: nn.Module, data: Batch, batch_size: int = 256) -> None:
        """``F <- gamma * F + Fisher(model, data)`` and ``anchor <- model's weights``."""
        params = self._match(model)
        if not isinstance(data, Batch) or len(data) == 0:
            raise ValueError(f"EWCMemory.consolidate: expected a non-empty Batch with x and y, "
                             f"got {data!r}")
        fisher = empirical_fisher(model, data, batch_size)
        for name, p in params.items():
            self.fisher[name].mul_(self.gamma).add_(fisher[name])
            self.anchor[name].copy_(p.detach())
        self.consolidations += 1

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``0.5 * sum F * (theta - anchor)^2``, differentiable in ``model``'s parameters."""
        params = self._match(model)
        return 0.5 * sum((self.fisher[n] * (p - self.anchor[n]).pow(2)).sum()
                         for n, p in params.items())

    def _match(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = trainable(model)
        shapes = {name: tuple(p.shape) for name, p in params.items()}
        expected = {name: tuple(t.shape) for name, t in self.fisher.items()}
        if shapes != expected:
            diff = {n: (expected.get(n), shapes.get(n)) for n in sorted(shapes.keys()
                    | expected.keys()) if shapes.get(n) != expected.get(n)}
            raise ValueError(f"EWCMemory: the model's trainable parameters differ from the ones "
                             f"this memory was built for; (expected, got) shapes: {diff}")
        return params
