import numpy as np
import pytest
import torch

from memkit import Batch, Experience, Stream, class_incremental


def dataset(n_classes=7, per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    return rng.normal(size=(len(y), 3)).astype(np.float32), y


def test_classes_are_disjoint_complete_and_rows_land_once():
    X, y = dataset()
    stream = class_incremental(X, y, 3, seed=1)
    groups = [set(e.classes) for e in stream]
    assert [len(g) for g in groups] == [3, 2, 2]
    assert set.union(*groups) == set(range(7)) and sum(map(len, groups)) == 7
    assert sum(len(e.train) + len(e.test) for e in stream) == len(y)
    for exp in stream:
        assert set(exp.train.y.tolist()) == set(exp.classes) == set(exp.test.y.tolist())
    assert stream.n_classes == 7 and stream.input_shape == (3,)
    assert stream.spec == {"x": ((3,), torch.float32), "y": ((), torch.int64)}


def test_test_split_is_stratified_and_disjoint_from_train():
    X, y = dataset(per_class=40)
    stream = class_incremental(X, y, 7, test_fraction=0.25, seed=0)
    for exp in stream:
        assert len(exp.test) == 10 and len(exp.train) == 30
        train_rows = {tuple(r) for r in exp.train.x.tolist()}
        assert not train_rows & {tuple(r) for r in exp.test.x.tolist()}


def test_seeds_reproduce_and_differ():
    X, y = dataset()
    a, b, c = (class_incremental(X, y, 7, seed=s) for s in (3, 3, 4))
    assert [e.classes for e in a] == [e.classes for e in b]
    assert all(ea.train.equal(eb.train) for ea, eb in zip(a, b, strict=True))
    assert [e.classes for e in a] != [e.classes for e in c]


def test_class_order_and_explicit_test_set_and_task_labels():
    X, y = dataset(n_classes=4)
    stream = class_incremental(X, y, 2, X_test=X[::10], y_test=y[::10],
                               class_order=[3, 1, 0, 2], task_labels=True)
    assert [e.classes for e in stream] == [(3, 1), (0, 2)]
    assert len(stream[0].train) == 40 and sorted(stream[0].test.y.tolist()) == [1, 1, 3, 3]
    assert stream[1].train.t.unique().tolist() == [1] == stream[1].test.t.unique().tolist()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_experiences": 8}, "between 1 and the 7 classes"),
    ({"n_experiences": 0}, "between 1 and the 7 classes"),
    ({"n_experiences": 2, "class_order": [0, 1, 2]}, "permutation of the classes"),
    ({"n_experiences": 2, "test_fraction": 1.5}, r"in \(0, 1\)"),
    ({"n_experiences": 2, "X_test": np.zeros((2, 3))}, "both X_test and y_test"),
])
def test_bad_arguments_are_explained(kwargs, message):
    X, y = dataset()
    with pytest.raises(ValueError, match=message):
        class_incremental(X, y, **kwargs)


def test_bad_data_is_explained():
    with pytest.raises(ValueError, match=r"classes \[9\] that the training labels never show"):
        class_incremental(np.zeros((4, 3)), np.array([0, 0, 1, 1]), 1,
                          X_test=np.zeros((2, 3)), y_test=np.array([1, 9]))
    with pytest.raises(ValueError, match=r"got \(5, 3\) and \(4,\)"):
        class_incremental(np.zeros((5, 3)), np.zeros(4, dtype=int), 1)
    with pytest.raises(ValueError, match="integer class labels"):
        class_incremental(np.zeros((5, 3)), np.zeros(5), 1)


def test_stream_from_experiences_checks_order_and_type():
    batch = Batch(x=torch.zeros(2, 1), y=torch.tensor([0, 1]))
    stream = Stream([Experience(0, batch, batch), Experience(1, batch, batch)], name="custom")
    assert len(stream) == 2 and stream.n_classes == 2 and stream[-1].index == 1
    with pytest.raises(ValueError, match="position 0 has index 1"):
        Stream([Experience(1, batch, batch)])
    with pytest.raises(TypeError, match="item 0 is a Batch"):
        Stream([batch])
    with pytest.raises(ValueError, match="at least one experience"):
        Stream([])
