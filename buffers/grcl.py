"""GRCL: a gated regularizer, a parameter memory of (weights snapshot, importance gate) pairs.

Nazemi, Shafiee, Gharaee & Fieguth, "Memory-Efficient Continual Learning Object
Segmentation for Long Video", IEEE Access 2024 (arXiv 2309.15274), propose
Gated-Regularizer Continual Learning for an online video object segmentation
learner whose frame memory is small: besides the frames, it remembers a few
earlier states of the target model and holds the parameters that mattered to
them near those states. A consolidation after a target-model update stores

- ``theta_j``: the trainable parameters, flattened, in float32;
- ``G_j``: a binary gate over the fraction ``p`` of parameters with the largest
  importance, importance being MAS's (Aljundi et al., "Memory Aware Synapses:
  Learning what (not) to forget", ECCV 2018): the mean over recent memory
  features of the absolute gradient of the squared L2 norm of the target
  model's output, ``Omega_i = mean_x |d ||f(x)||^2 / d theta_i|``, per example.
  Ties go to the lower parameter index. The gate is bit-packed, ``ceil(n / 8)``
  bytes for ``n`` parameters (most significant bit first, as ``numpy.packbits``).

and the learner adds ``penalty(model) = lam * sum_j sum_i G_ij (theta_i - theta_ij)^2``
to its loss. The store holds at most ``capacity`` pairs, all preallocated and
charged to the budget up front (``pair_nbytes`` each: snapshot, gate and an
int64 consolidation stamp); when full, a pluggable rule picks the pair to drop:
``"oldest"`` (the default) or ``"keep_first"`` (the oldest but the very first,
the model trained on the ground-truth frame), or any callable taking the held
stamps and returning the slot to overwrite.

When to consolidate is the learner's call; ``agents/vos.py`` consolidates after
training on frame 0 and then every ``every`` frames (default 25), so the pairs
held span the last ``capacity * every`` frames of the video.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from memkit.budget import Budget, BudgetExceeded, parse_size
from memkit.buffers.ewc import trainable
from memkit.registry import register
from memkit.store import Store

_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_gate(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool vector ``(n,)`` into uint8 ``(ceil(n / 8),)``, first bit most significant."""
    padded = torch.zeros(math.ceil(len(bits) / 8) * 8, dtype=torch.uint8)
    padded[: len(bits)] = bits.to(torch.uint8)
    return (padded.view(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)


def unpack_gate(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` bits of uint8 ``(..., ceil(n / 8))`` as bool ``(..., n)``."""
    bits = (packed[..., None] & _BITS) != 0
    return bits.flatten(-2)[..., :n]


def mas_importance(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """MAS importance per trainable parameter, flattened (float32 ``(n,)``).

    ``mean_x |d ||f(x)||^2 / d theta|`` over the rows of ``features`` (each row one
    input of ``model``), by per-example gradients (``torch.func``).
    """
    params = {name: p.detach() for name, p in trainable(model).items()}
    fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def squared_norm(theta, x):
        return functional_call(model, (theta, fixed), (x.unsqueeze(0),)).pow(2).sum()

    grads = vmap(grad(squared_norm), in_dims=(None, 0))(params, features.float())
    return torch.cat([g.abs().mean(dim=0).flatten() for g in grads.values()])


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """The trainable parameters of ``model`` as one vector (differentiable)."""
    return torch.cat([p.reshape(-1) for p in trainable(model).values()])


def _oldest(stamps: torch.Tensor) -> int:
    return int(torch.argmin(stamps))


def _keep_first(stamps: torch.Tensor) -> int:
    later = torch.where(stamps == 0, torch.iinfo(torch.int64).max, stamps)
    return int(torch.argmin(later)) if len(stamps) > 1 else 0


RULES: dict[str, Callable[[torch.Tensor], int]] = {"oldest": _oldest, "keep_first": _keep_first}
"""Named drop rules: held stamps (int64, by slot) -> the slot to overwrite."""


@register("store", "grcl")
class GatedRegularizer(Store):
    """Up to ``capacity`` (float32 snapshot, packed gate) pairs and their quadratic penalty."""

    registry_name = "grcl"

    def __init__(self, model: nn.Module, budget: Budget | int | str, *, owner: str = "grcl",
                 nbytes: int | str | None = None, fraction: float = 0.1, lam: float = 1.0,
                 rule: str | Callable[[torch.Tensor], int] = "oldest"):
        shapes = {name: tuple(p.shape) for name, p in trainable(model).items()}
        if not shapes:
            raise ValueError(f"GatedRegularizer: {type(model).__name__} has no trainable "
                             f"parameters")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
                or not 0 < fraction <= 1:
            raise ValueError(f"GatedRegularizer: expected fraction in (0, 1], got {fraction!r}")
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not lam >= 0:
            raise ValueError(f"GatedRegularizer: expected lam >= 0, got {lam!r}")
        if not callable(rule) and rule not in RULES:
            raise ValueError(f"GatedRegularizer: expected rule among {sorted(RULES)} or a "
                             f"callable, got {rule!r}")
        super().__init__(budget, owner)
        self.shapes, self.fraction, self.lam = shapes, float(fraction), float(lam)
        self.rule = rule
        self.n_params = sum(math.prod(s) for s in shapes.values())
        pair = self.pair_nbytes(model)
        allotment = self.budget.free if nbytes is None else parse_size(nbytes)
        self.capacity = allotment // pair
        if self.capacity < 1:
            raise BudgetExceeded(owner, pair, allotment, self.budget.capacity)
        self.budget.charge(owner, self.capacity * pair)
        self.snapshots = torch.zeros(self.capacity, self.n_params)
        self.gates = torch.zeros(self.capacity, math.ceil(self.n_params / 8), dtype=torch.uint8)
        self.stamps = torch.zeros(self.capacity, dtype=torch.int64)
        self.size = 0
        self.consolidations = 0

    @staticmethod
    def pair_nbytes(model: nn.Module) -> int:
        """Bytes of one pair for ``model``: float32 snapshot, packed gate, int64 stamp."""
        n = sum(p.numel() for p in trainable(model).values())
        return 4 * n + math.ceil(n / 8) + 8

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"snapshots": self.snapshots, "gates": self.gates, "stamps": self.stamps}

    def config(self) -> dict:
        rule = self.rule if isinstance(self.rule, str) else getattr(
            self.rule, "__qualname__", repr(self.rule))
        return {"owner": self.owner, "capacity": self.capacity, "fraction": self.fraction,
                "lam": self.lam, "rule": rule,
                "parameters": {name: list(s) for name, s in self.shapes.items()}}

    def extra_state(self) -> dict:
        return {"size": self.size, "consolidations": self.consolidations}

    def load_extra_state(self, extra: Mapping) -> None:
        size, count = int(extra["size"]), int(extra["consolidations"])
        if not 0 <= size <= self.capacity or count < size:
            raise ValueError(f"GatedRegularizer: saved size {size} and consolidations {count} "
                             f"do not fit {self.capacity} pairs")
        self.size, self.consolidations = size, count

    @property
    def filled_nbytes(self) -> int:
        return self.size * (self.nbytes // self.capacity)

    def gate(self, slot: int) -> torch.Tensor:
        """The gate of held pair ``slot`` as bool ``(n_params,)``."""
        if not 0 <= slot < self.size:
            raise IndexError(f"GatedRegularizer.gate: expected a slot in 0..{self.size - 1}, "
                             f"got {slot}")
        return unpack_gate(self.gates[slot], self.n_params)

    def consolidate(self, model: nn.Module, features: torch.Tensor) -> int:
        """Store the model's weights and the gate of their MAS importance on ``features``.

        ``features``: a non-empty batch of target-model inputs. Returns the slot written.
        """
        self._match(model)
        if not isinstance(features, torch.Tensor) or features.dim() < 2 or len(features) == 0:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else features
            raise ValueError(f"GatedRegularizer.consolidate: expected a non-empty batch of "
                             f"model inputs, got {shape}")
        importance = mas_importance(model, features)
        top = torch.sort(importance, descending=True, stable=True).indices
        bits = torch.zeros(self.n_params, dtype=torch.bool)
        bits[top[: math.ceil(self.fraction * self.n_params)]] = True
        slot = self.size if self.size < self.capacity else self._drop()
        self.snapshots[slot] = flat_parameters(model).detach().float()
        self.gates[slot] = pack_gate(bits)
        self.stamps[slot] = self.consolidations
        self.size = max(self.size, slot + 1)
        self.consolidations += 1
        return slot

    def _drop(self) -> int:
        rule = RULES[self.rule] if isinstance(self.rule, str) else self.rule
        slot = rule(self.stamps[: self.size].clone())
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < self.size:
            raise ValueError(f"GatedRegularizer: the drop rule returned {slot!r}, expected a "
                             f"slot in 0..{self.size - 1}")
        return slot

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``lam * sum_j sum_i G_ij (theta_i - theta_ij)^2``, differentiable in the model."""
        self._match(model)
        theta = flat_parameters(model)
        if self.size == 0:
            return theta.sum() * 0.0
        gates = unpack_gate(self.gates[: self.size], self.n_params)
        return self.lam * ((theta - self.snapshots[: self.size]).pow(2) * gates).sum()

    def _match(self, model: nn.Module) -> None:
        shapes = {name: tuple(p.shape) for name, p in trainable(model).items()}
        if shapes != self.shapes:
            raise ValueError(f"GatedRegularizer: expected a model with trainable parameters "
                             f"{self.shapes}, got {shapes}")
