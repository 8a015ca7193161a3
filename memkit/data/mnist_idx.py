"""Split MNIST from the original IDX files in a local directory.

MNIST (LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to
document recognition", Proc. IEEE 1998): 60,000 training and 10,000 test
28x28 grey-level digits. The IDX format (http://yann.lecun.com/exdb/mnist/) is
a big-endian header -- a magic number whose low byte is the number of
dimensions (0x00000803 for images, 0x00000801 for labels), then one uint32 per
dimension -- followed by the uint8 values. Files may be gzipped (``.gz``).
Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memkit.registry import register
from memkit.streams import Stream, class_incremental

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@register("stream", "split_mnist")
def split_mnist(root: str | Path, n_experiences: int = 5, seed: int = 0,
                class_order: Sequence[int] | None = None, task_labels: bool = False,
                flatten: bool = True) -> Stream:
    """MNIST's 10 classes in disjoint groups; x is float32 in [0, 1], (784,) or (1, 28, 28)."""
    x_train, y_train = load_mnist(root, train=True)
    x_test, y_test = load_mnist(root, train=False)
    return class_incremental(_as_float(x_train, flatten), y_train, n_experiences,
                             X_test=_as_float(x_test, flatten), y_test=y_test,
                             class_order=class_order, seed=seed, task_labels=task_labels,
                             name="split_mnist")


def load_mnist(root: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (n, 28, 28) and labels as int64 (n,) from the IDX files in ``root``."""
    images_name, labels_name = FILES[train]
    images = read_idx(_find(Path(root), images_name), IMAGES_MAGIC)
    labels = read_idx(_find(Path(root), labels_name), LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"MNIST in {root}: {images_name} holds {len(images)} images but "
                         f"{labels_name} holds {len(labels)} labels")
    return images, labels


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The uint8 array in the IDX file ``path`` (gzipped if .gz), checked against ``magic``."""
    data = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header: expected {header} bytes, "
                         f"got {len(data)}")
    got, *dims = struct.unpack(f">{1 + ndim}I", data[:header])
    if got != magic:
        raise ValueError(f"{path}: bad IDX magic number: expected 0x{magic:08X}, got 0x{got:08X}")
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise ValueError(f"{path}: expected {expected} bytes ({header}-byte header and "
                         f"{math.prod(dims)} values for shape {tuple(dims)}), got {len(data)}"
                         + (" (truncated)" if len(data) < expected else ""))
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _find(root: Path, name: str) -> Path:
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    expected = ", ".join(file for pair in FILES.values() for file in pair)
    raise FileNotFoundError(f"MNIST: neither {root / name} nor {root / name}.gz exists; "
                            f"expected the IDX files {expected} (each optionally .gz) in {root}")


def _as_float(images: np.ndarray, flatten: bool) -> np.ndarray:
    x = np.divide(images, 255, dtype=np.float32)
    return x.reshape(len(x), -1) if flatten else x[:, None]
