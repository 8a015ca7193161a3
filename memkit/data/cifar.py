"""Split CIFAR-10 / CIFAR-100 from the "python version" batches in a local directory.

CIFAR-10 and CIFAR-100 (Krizhevsky, "Learning multiple layers of features from
tiny images", 2009; https://www.cs.toronto.edu/~kriz/cifar.html): 50,000
training and 10,000 test 32x32 colour images. Each batch file is a pickled dict
with ``b'data'`` (N x 3072 uint8: the red, green and blue 32x32 planes) and
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100). Split CIFAR-100 in
10 experiences is the class-incremental benchmark of iCaRL (Rebuffi et al.,
CVPR 2017).

The batches are pickles, and unpickling can run arbitrary code, so they are
read with an unpickler that admits only the globals numpy arrays need to be
rebuilt; anything else raises ``pickle.UnpicklingError``. Nothing is downloaded.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memkit.registry import register
from memkit.streams import Stream, class_incremental


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as a protocol-2 pickle written by Python 3 uses it: bytes as latin-1."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}; "
                                     f"only 'latin1' (how pickle stores bytes) is allowed")
    return text.encode("latin1")


_RECONSTRUCT = np.array(0).__reduce__()[0]  # numpy's array reconstructor, wherever it lives
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load the global {module}.{name}: only "
                                         f"numpy arrays may be unpickled") from None


@register("stream", "split_cifar10")
def split_cifar10(root: str | Path, n_experiences: int = 5, seed: int = 0,
                  class_order: Sequence[int] | None = None,
                  task_labels: bool = False) -> Stream:
    """CIFAR-10's classes in disjoint groups; x is float32 in [0, 1] of shape (3, 32, 32)."""
    return _split(load_cifar10, root, "split_cifar10", n_experiences=n_experiences, seed=seed,
                  class_order=class_order, task_labels=task_labels)


@register("stream", "split_cifar100")
def split_cifar100(root: str | Path, n_experiences: int = 10, seed: int = 0,
                   class_order: Sequence[int] | None = None,
                   task_labels: bool = False) -> Stream:
    """CIFAR-100's fine classes in disjoint groups; x is float32 in [0, 1] of shape (3, 32, 32)."""
    return _split(load_cifar100, root, "split_cifar100", n_experiences=n_experiences, seed=seed,
                  class_order=class_order, task_labels=task_labels)


def load_cifar10(root: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (n, 3, 32, 32) and labels as int64 from ``root``/cifar-10-batches-py."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    batches = [_read_batch(path, b"labels") for path in _files(root, "cifar-10-batches-py", names)]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def load_cifar100(root: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (n, 3, 32, 32) and fine labels as int64 from ``root``/cifar-100-python."""
    (path,) = _files(root, "cifar-100-python", ["train" if train else "test"])
    return _read_batch(path, b"fine_labels")


def load_pickle(path: str | Path):
    """Unpickle ``path`` with :class:`NumpyOnlyUnpickler` (bytes kept as bytes)."""
    with open(path, "rb") as file:
        try:
            return NumpyOnlyUnpickler(file, encoding="bytes").load()
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(f"{path}: {err}") from None


def _split(loader, root, name: str, **kwargs) -> Stream:
    x_train, y_train = loader(root, train=True)
    x_test, y_test = loader(root, train=False)
    return class_incremental(_as_float(x_train), y_train, X_test=_as_float(x_test),
                             y_test=y_test, name=name, **kwargs)


def _files(root: str | Path, folder: str, names: list[str]) -> list[Path]:
    """``names`` in ``root``/``folder`` (or in ``root`` itself if it holds them)."""
    directory = Path(root) / folder if (Path(root) / folder).is_dir() else Path(root)
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR: {[str(directory / m) for m in missing]} not found; "
                                f"expected the files {names} of the python version "
                                f"({folder}/) in {root}")
    return [directory / name for name in names]


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        found = list(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with keys b'data' and {label_key!r}, "
                         f"got {found}")
    objects = [key for key, value in batch.items()
               if isinstance(value, np.ndarray) and value.dtype.hasobject]
    if objects:
        raise pickle.UnpicklingError(f"{path}: refused object-dtype arrays under {objects}")
    data, labels = batch[b"data"], np.asarray(batch[label_key], dtype=np.int64)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072 and labels.shape == (len(data),)):
        got = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise ValueError(f"{path}: expected b'data' as uint8 (n, 3072) and n labels, got "
                         f"{got} and labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _as_float(images: np.ndarray) -> np.ndarray:
    return np.divide(images, 255, dtype=np.float32)
