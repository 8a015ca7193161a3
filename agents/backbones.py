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
