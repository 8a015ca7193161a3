"""Class labels in sample memories: checks and bookkeeping shared by class-aware stores.

Class-balanced, herding and GDumb memories keep quotas per class; they need
integer labels ``y`` >= 0 and the order in which classes first arrived.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def classes_in_order(labels: torch.Tensor) -> list[int]:
    """The distinct labels in the order of their first occurrence."""
    unique, inverse = torch.unique(labels, return_inverse=True)
    first = torch.full((len(unique),), len(labels), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(len(labels)), "amin")
    return unique[torch.argsort(first)].tolist()


def check_label_spec(spec: Mapping, where: str) -> None:
    """Raise unless ``spec`` has integer class labels ``y`` (one per item)."""
    shape, dtype = spec.get("y", (None, None))
    if shape != () or dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(f"{where}: expected a field 'y' of integer class labels with shape (), "
                         f"got {spec.get('y')!r}")


def check_labels(labels: torch.Tensor, where: str) -> None:
    """Raise unless every class label is >= 0."""
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"{where}: expected class labels y >= 0, got {int(labels.min())}")


def check_classes(extra: Mapping, where: str) -> list[int]:
    """The saved list of classes, checked: distinct labels >= 0."""
    classes = [int(c) for c in extra["classes"]]
    if len(set(classes)) != len(classes) or min(classes, default=0) < 0:
        raise ValueError(f"{where}: saved classes must be distinct labels >= 0, "
                         f"got {extra['classes']}")
    return classes
