"""Split Digits: scikit-learn's 8x8 handwritten digits as a class-incremental stream.

The data are the test set of the UCI "Optical Recognition of Handwritten Digits"
dataset (Alpaydin & Kaynak, 1998; 1,797 images, 10 classes), bundled with
scikit-learn as ``sklearn.datasets.load_digits``. Pixel values 0..16 are scaled
to [0, 1] as 64 float32 features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memkit.registry import register
from memkit.streams import Stream, class_incremental


@register("stream", "split_digits")
def split_digits(n_experiences: int = 5, seed: int = 0,
                 class_order: Sequence[int] | None = None, task_labels: bool = False,
                 test_fraction: float = 0.25) -> Stream:
    """The 10 digit classes in ``n_experiences`` disjoint groups, with a stratified test split."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return class_incremental(np.divide(X, 16, dtype=np.float32), y, n_experiences,
                             class_order=class_order, seed=seed, test_fraction=test_fraction,
                             task_labels=task_labels, name="split_digits")
