"""Blobs: seeded isotropic Gaussian clusters, one per class, as a class-incremental stream.

Generated with scikit-learn's ``make_blobs`` (Pedregosa et al., "Scikit-learn:
Machine learning in Python", JMLR 2011): cluster centres drawn uniformly from
[-10, 10] in every feature. Small, separable and instant, for fast tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memkit.registry import register
from memkit.streams import Stream, class_incremental


@register("stream", "blobs")
def blobs(n_classes: int = 6, n_features: int = 8, n_per_class: int = 100,
          n_experiences: int = 3, seed: int = 0, class_order: Sequence[int] | None = None,
          task_labels: bool = False, test_fraction: float = 0.25,
          cluster_std: float = 1.0) -> Stream:
    """``n_classes`` blobs of ``n_per_class`` points; ``seed`` draws data and class order."""
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=[n_per_class] * n_classes, n_features=n_features,
                      cluster_std=cluster_std, random_state=seed)
    return class_incremental(X.astype(np.float32), y, n_experiences, class_order=class_order,
                             seed=seed, test_fraction=test_fraction, task_labels=task_labels,
                             name="blobs")
