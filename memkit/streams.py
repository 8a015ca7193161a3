"""Streams: what a learner sees over time, as a sequence of experiences.

An ``Experience`` carries its training data, the test data it unlocks and
metadata (classes, time step, video id, episode, document ids). A class-
incremental stream (van de Ven et al., "Three types of incremental learning",
2022) splits the classes of a dataset into disjoint groups, one per experience;
with ``task_labels=True`` each batch also carries the task id ``t``
(task-incremental learning).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from memkit.batch import Batch


@dataclass(frozen=True)
class Experience:
    """One step of a stream: train on ``train``; ``test`` is evaluated from now on."""

    index: int
    train: Batch
    test: Batch
    classes: tuple[int, ...] = ()
    meta: Mapping = field(default_factory=dict)


class Stream(Sequence[Experience]):
    """An ordered, indexable sequence of experiences with a name and the number of classes."""

    def __init__(self, experiences: Sequence[Experience], name: str = "stream",
                 n_classes: int | None = None):
        experiences = list(experiences)
        if not experiences:
            raise ValueError(f"Stream {name!r}: expected at least one experience, got none")
        for i, exp in enumerate(experiences):
            if not isinstance(exp, Experience):
                raise TypeError(f"Stream {name!r}: item {i} is a {type(exp).__name__}, "
                                f"expected an Experience")
            if exp.index != i:
                raise ValueError(f"Stream {name!r}: experience at position {i} has index "
                                 f"{exp.index}; indices must be 0, 1, 2, ...")
        self.experiences = experiences
        self.name = name
        self.n_classes = n_classes if n_classes is not None else _count_classes(experiences)

    def __getitem__(self, i):
        return self.experiences[i]

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.experiences[0].train.x.shape[1:])

    @property
    def spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Item spec of the training data (``x``, ``y``), as a sample memory takes it."""
        return self.experiences[0].train.select("x", "y").spec

    def __repr__(self) -> str:
        return (f"Stream({self.name!r}, experiences={len(self)}, classes={self.n_classes}, "
                f"input_shape={self.input_shape})")


def class_incremental(X, y, n_experiences: int, *, X_test=None, y_test=None,
                      class_order: Sequence[int] | None = None, seed: int = 0,
                      test_fraction: float = 0.2, task_labels: bool = False,
                      name: str = "class-incremental") -> Stream:
    """Split a labelled dataset into ``n_experiences`` groups of disjoint classes.

    Without ``X_test``/``y_test`` a stratified ``test_fraction`` of each class
    is held out (seeded). ``class_order`` fixes the order classes arrive in;
    by default it is a seeded permutation. Classes are split as evenly as
    possible (earlier experiences take the remainder).
    """
    X, y = _as_xy(X, y, "X/y")
    classes = torch.unique(y).tolist()
    if X_test is None and y_test is None:
        X, y, X_test, y_test = _stratified_split(X, y, test_fraction, seed)
    elif X_test is None or y_test is None:
        raise ValueError("class_incremental: give both X_test and y_test, or neither")
    else:
        X_test, y_test = _as_xy(X_test, y_test, "X_test/y_test")
        unseen = sorted(set(torch.unique(y_test).tolist()) - set(classes))
        if unseen:
            raise ValueError(f"class_incremental: y_test has classes {unseen} that the "
                             f"training labels never show")
    order = _class_order(classes, class_order, seed)
    if not 1 <= n_experiences <= len(order):
        raise ValueError(f"class_incremental: n_experiences must be between 1 and the "
                         f"{len(order)} classes, got {n_experiences}")
    experiences = []
    for i, group in enumerate(np.array_split(np.array(order), n_experiences)):
        group = tuple(int(c) for c in group)
        train, test = _select(X, y, group, i, task_labels), _select(X_test, y_test, group, i,
                                                                    task_labels)
        experiences.append(Experience(i, train, test, group, {"task": i}))
    return Stream(experiences, name=name, n_classes=len(order))


def _as_xy(X, y, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if X.dim() < 2 or y.dim() != 1 or len(X) != len(y):
        raise ValueError(f"{where}: expected X of shape (n, ...) and y of shape (n,), "
                         f"got {tuple(X.shape)} and {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{where}: expected integer class labels, got dtype {y.dtype}")
    if X.is_floating_point():
        X = X.to(torch.float32)
    return X, y.to(torch.int64)


def _stratified_split(X, y, test_fraction: float, seed: int):
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                           random_state=seed, stratify=y.numpy())
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return X[train_idx], y[train_idx], X[test_idx], y[test_idx]


def _class_order(classes: list[int], class_order, seed: int) -> list[int]:
    if class_order is None:
        perm = np.random.default_rng(seed).permutation(len(classes))
        return [classes[i] for i in perm]
    order = [int(c) for c in class_order]
    if sorted(order) != sorted(classes):
        raise ValueError(f"class_order: expected a permutation of the classes {classes}, "
                         f"got {order}")
    return order


def _select(X, y, group: tuple[int, ...], task: int, task_labels: bool) -> Batch:
    mask = torch.isin(y, torch.tensor(group))
    fields = {"x": X[mask], "y": y[mask]}
    if task_labels:
        fields["t"] = torch.full((int(mask.sum()),), task, dtype=torch.int64)
    return Batch(**fields)


def _count_classes(experiences: Sequence[Experience]) -> int:
    labels = set()
    for exp in experiences:
        labels.update(exp.classes or torch.unique(exp.train.y).tolist())
    return len(labels)
