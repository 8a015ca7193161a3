"""Small default backbones sized for the offline datasets (digits, MNIST-5k, MNIST-1D)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from torch import nn

from memkit.registry import register


@register("model", "mlp")
def mlp(input_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (100,)) -> nn.Module:
    """Flatten, then ReLU hidden layers of the given widths, then a linear classifier."""
    if n_classes < 1 or any(h < 1 for h in hidden):
        raise ValueError(f"mlp: expected positive n_classes and hidden widths, "
                         f"got {n_classes} and {list(hidden)}")
    widths = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], n_classes))
    return nn.Sequential(*layers)


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(feature extractor, linear classifier) of an ``nn.Sequential`` that ends in ``nn.Linear``.

    The two share parameters with ``model``: training one trains the other.
    """
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise TypeError(f"split_head: expected an nn.Sequential ending in nn.Linear, "
                        f"got {type(model).__name__}")
    return model[:-1], model[-1]


class BlockMLP(nn.Module):
    """``head(deep(shallow(x)))``: an MLP in the three parts model-growing learners split.

    ``shallow`` (flatten, then ReLU layers) holds what MEMO calls the generalised
    blocks, ``deep`` (ReLU layers) the specialised block, ``head`` the linear
    classifier. Trained as is, it is an ordinary MLP (ER can use it too).
    """

    def __init__(self, shallow: nn.Sequential, deep: nn.Sequential, head: nn.Linear):
        super().__init__()
        self.shallow, self.deep, self.head = shallow, deep, head

    def forward(self, x):
        return self.head(self.deep(self.shallow(x)))


@register("model", "mlp_blocks")
def mlp_blocks(input_shape: Sequence[int], n_classes: int, shallow: Sequence[int] = (64,),
               deep: Sequence[int] = (32,)) -> BlockMLP:
    """A ``BlockMLP``: flatten and ReLU layers of widths ``shallow``, then ``deep``, then a head.

    ``shallow`` may be empty (the shallow part is then only the flatten);
    ``deep`` needs at least one layer, since it is the block a learner copies.
    """
    if n_classes < 1 or not deep or any(h < 1 for h in (*shallow, *deep)):
        raise ValueError(f"mlp_blocks: expected positive n_classes and widths, and at least one "
                         f"deep layer; got {n_classes}, shallow={list(shallow)}, "
                         f"deep={list(deep)}")
    widths = [math.prod(input_shape), *shallow, *deep]
    front, back = widths[: len(shallow) + 1], widths[len(shallow):]
    return BlockMLP(nn.Sequential(nn.Flatten(), *_relu_layers(front)),
                    nn.Sequential(*_relu_layers(back)), nn.Linear(widths[-1], n_classes))


def split_blocks(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Linear]:
    """(shallow, deep, head) of a model built like ``mlp_blocks``; they share its parameters."""
    parts = [getattr(model, name, None) for name in ("shallow", "deep", "head")]
    if not all(isinstance(p, nn.Module) for p in parts) or not isinstance(parts[2], nn.Linear):
        raise TypeError(f"split_blocks: expected a model with modules 'shallow', 'deep' and an "
                        f"nn.Linear 'head' (e.g. mlp_blocks), got {type(model).__name__}")
    return parts[0], parts[1], parts[2]


def _relu_layers(widths: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return layers
