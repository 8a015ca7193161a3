"""Split MNIST-1D: Greydanus's procedurally generated 1-D digits as a class-incremental stream.

MNIST-1D (Greydanus, "Scaling down deep learning", arXiv:2011.14439, 2020;
Greydanus & Kobak, ICML 2024) turns ten hand-designed 1-D templates into
40-point signals by random padding, scaling, translation, correlated and iid
noise, shear and interpolation. The data are generated here, offline, by the
reference implementation (the ``mnist1d`` package's ``make_dataset``; its
``get_dataset``, which downloads, is never called). With the defaults
(5,000 signals, data seed 42) the train/test data are those of the paper's
default ``make_dataset``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from memkit.registry import register
from memkit.streams import Stream, class_incremental


@register("stream", "split_mnist1d")
def split_mnist1d(n_experiences: int = 5, seed: int = 0,
                  class_order: Sequence[int] | None = None, task_labels: bool = False,
                  n_train: int = 4000, n_test: int = 1000, data_seed: int = 42) -> Stream:
    """``n_train`` + ``n_test`` signals from ``data_seed``; ``seed`` draws the class order."""
    X, y = make_mnist1d(n_train + n_test, seed=data_seed)
    return class_incremental(X[:n_train], y[:n_train], n_experiences, X_test=X[n_train:],
                             y_test=y[n_train:], class_order=class_order, seed=seed,
                             task_labels=task_labels, name="split_mnist1d")


def make_mnist1d(n_samples: int = 5000, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """``n_samples`` shuffled signals, float32 (n, 40), and int64 labels; a seed gives one dataset.

    ``n_samples`` must be a multiple of 10 (each class gets the same number).
    """
    if n_samples <= 0 or n_samples % 10:
        raise ValueError(f"make_mnist1d: n_samples must be a positive multiple of 10, "
                         f"got {n_samples}")
    get_dataset_args, make_dataset = _reference_generator()
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = n_samples, 1.0, seed
    with _global_rng_restored():
        data = make_dataset(args)
    return data["x"].astype(np.float32), data["y"].astype(np.int64)


def _reference_generator():
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise ImportError("split_mnist1d needs the mnist1d package, which is not installed; "
                          "run: pip install 'memkit[data]'") from err
    return get_dataset_args, make_dataset


@contextmanager
def _global_rng_restored() -> Iterator[None]:
    """mnist1d seeds the global ``random`` and ``numpy.random`` state; put both back after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
