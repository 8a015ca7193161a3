"""Herding exemplar memory: iCaRL's exemplar sets, charged in bytes.

Rebuffi et al., "iCaRL: Incremental Classifier and Representation Learning",
CVPR 2017, as PyCIL implements it with a fixed memory (Zhou et al., "PyCIL: a
Python Toolbox for Class-Incremental Learning", 2023):

- ``add(batch)`` treats ``batch`` as all the data of the classes it contains
  (iCaRL sees each class in one experience). With ``t`` classes seen, each
  class may keep ``m = capacity // t`` exemplars;
- *reduce exemplar set* (Algorithm 5): a class already held keeps the first
  ``m`` exemplars of its herding order, kept as a hidden per-item ``rank``;
- *construct exemplar set* (Algorithm 4): a class in the batch gets the first
  ``m`` of its samples in herding order (``memkit.kernels.herding``) over
  L2-normalised features, stored with their rank. A class that was already
  held is chosen again from the batch, its old exemplars evicted;
- ``class_means`` gives the nearest-mean-of-exemplars prototypes: the mean of
  each class's L2-normalised exemplar features, normalised again (PyCIL also
  averages the features of horizontally flipped images, which is a property of
  image backbones and is left to the feature function).

Features are, in order: the ``features=`` tensor given to ``add``, the
``features`` attribute (a callable on ``x``, e.g. the learner's feature
extractor), or the flattened ``x``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from memkit.batch import Batch, Spec
from memkit.budget import Budget
from memkit.kernels.herding import herding_select
from memkit.labels import check_classes, check_label_spec, check_labels, classes_in_order
from memkit.registry import register
from memkit.store import SampleMemory, normalize_spec

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@register("store", "herding")
class Herding(SampleMemory):
    """``capacity // classes seen`` exemplars per class, chosen and reduced in herding order."""

    registry_name = "herding"

    def __init__(self, spec: Spec, budget: Budget | int | str, *, owner: str = "herding",
                 nbytes: int | str | None = None, codec: str = "raw"):
        check_label_spec(normalize_spec(spec), "Herding")
        super().__init__(spec, budget, owner=owner, nbytes=nbytes, codec=codec,
                         aux={"rank": ((), torch.int32)})
        self.features: FeatureFn | None = None
        """Feature function used when ``add`` gets no ``features=``; flattened ``x`` if None."""
        self.classes: list[int] = []
        """Classes seen, in the order they arrived."""

    @property
    def per_class(self) -> int:
        """Exemplars each class may keep: ``capacity // classes seen``."""
        return self.capacity // max(len(self.classes), 1)

    def add(self, batch: Batch, features: torch.Tensor | None = None) -> Batch:
        self._check(batch)
        check_labels(batch.y, "Herding.add")
        features = self._features(batch.x, features)
        labels = batch.y.to(torch.int64)
        arrivals = classes_in_order(labels)
        self.classes += [c for c in arrivals if c not in self.classes]
        m = self.per_class
        held = self._slots["y"][: self._size].to(torch.int64)
        gone = torch.isin(held, torch.tensor(arrivals, dtype=torch.int64))
        gone |= self._slots["rank"][: self._size] >= m
        evicted = self._remove(torch.nonzero(gone).squeeze(1))
        rows, ranks = [torch.empty(0, dtype=torch.int64)], [torch.empty(0, dtype=torch.int32)]
        for c in arrivals:
            members = torch.nonzero(labels == c).squeeze(1)
            order = herding_select(features[members], min(m, len(members)))
            rows.append(members[order])
            ranks.append(torch.arange(len(order), dtype=torch.int32))
        rows = torch.cat(rows)
        self._write(self._size + torch.arange(len(rows)), batch[rows], rank=torch.cat(ranks))
        self._size += len(rows)
        return evicted

    def _keep(self, capacity: int) -> torch.Tensor:
        """Reduce every exemplar set to the first ``capacity // classes`` of its herding order."""
        m = capacity // len(self.classes)
        return torch.nonzero(self._slots["rank"][: self._size] < m).squeeze(1)

    def class_means(self, features_fn: FeatureFn | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(classes held, sorted; their exemplar means), for nearest-mean-of-exemplars."""
        if self._size == 0:
            raise ValueError("Herding.class_means: the memory holds no exemplars")
        fn = features_fn or self.features or _flat
        with torch.no_grad():
            feats = torch.cat([fn(b.x) for b in self.batches(1024)]).float()
        feats = torch.nn.functional.normalize(feats, dim=1)
        classes, inverse = torch.unique(self._slots["y"][: self._size].to(torch.int64),
                                        return_inverse=True)
        sums = torch.zeros(len(classes), feats.shape[1]).index_add_(0, inverse, feats)
        counts = torch.bincount(inverse, minlength=len(classes)).unsqueeze(1)
        return classes, torch.nn.functional.normalize(sums / counts, dim=1)

    def _features(self, x: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
        if given is None:
            with torch.no_grad():
                given = (self.features or _flat)(x)
        if not isinstance(given, torch.Tensor) or given.dim() != 2 or len(given) != len(x):
            got = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            raise ValueError(f"Herding.add: expected features of shape ({len(x)}, d), one row "
                             f"per item, got {got}")
        if not given.is_floating_point() or not torch.isfinite(given).all():
            raise ValueError("Herding.add: expected finite floating-point features")
        return given.detach()

    def extra_state(self) -> dict:
        return {**super().extra_state(), "classes": list(self.classes)}

    def load_extra_state(self, extra: Mapping) -> None:
        classes = check_classes(extra, "Herding")
        super().load_extra_state(extra)
        self.classes = classes


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).float()
