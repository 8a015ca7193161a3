import numpy as np
import pytest
import torch

from memkit import Batch


def make(n=5):
    return Batch(x=torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), y=torch.arange(n))


def test_fields_share_leading_dimension_and_error_names_them():
    with pytest.raises(ValueError, match=r"x\(4, 2\), y\(3,\)"):
        Batch(x=torch.zeros(4, 2), y=torch.zeros(3))


def test_rejects_non_tensors_scalars_and_empty():
    with pytest.raises(TypeError, match="field 'y' expected a tensor"):
        Batch(x=torch.zeros(2, 1), y=[0, 1])
    with pytest.raises(ValueError, match="field 'x' expected a leading"):
        Batch(x=torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least one field"):
        Batch()


def test_numpy_fields_become_tensors():
    b = Batch(x=np.ones((2, 3), dtype=np.float32), y=np.array([1, 2]))
    assert isinstance(b.x, torch.Tensor) and b.y.tolist() == [1, 2]


def test_indexing_by_int_slice_tensor_and_name():
    b = make()
    assert len(b) == 5 and b["x"].shape == (5, 3)
    assert b[1].y.tolist() == [1] and b[-1].y.tolist() == [4]
    assert b[1:4].y.tolist() == [1, 2, 3]
    assert b[torch.tensor([4, 0])].y.tolist() == [4, 0]
    assert b[torch.tensor([True, False, True, False, False])].y.tolist() == [0, 2]
    with pytest.raises(KeyError, match="no field 'z'"):
        b["z"]
    with pytest.raises(AttributeError, match="no field 'z'"):
        _ = b.z
    with pytest.raises(TypeError, match="got float"):
        b[1.5]


def test_cat_split_select_replace_roundtrip():
    b = make(7)
    parts = list(b.split(3))
    assert [len(p) for p in parts] == [3, 3, 1]
    assert Batch.cat(parts).equal(b)
    assert list(b.select("y")) == ["y"]
    assert list(b.replace(t=torch.zeros(7))) == ["x", "y", "t"]


def test_cat_errors_name_the_field():
    with pytest.raises(ValueError, match="batch 1 has fields"):
        Batch.cat([make(), make().select("x")])
    other = Batch(x=torch.zeros(2, 4), y=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"field 'x' has item shapes \[\(3,\), \(4,\)\]"):
        Batch.cat([make(), other])


def test_to_casts_floating_fields_only():
    b = make().to(torch.float16)
    assert b.x.dtype == torch.float16 and b.y.dtype == torch.int64


def test_check_names_field_expected_and_actual_shapes():
    spec = {"x": ((3,), torch.float32), "y": ((), torch.int64)}
    make().check(spec)
    with pytest.raises(ValueError, match=r"'x' expected items of shape \(4,\), got \(3,\)"):
        make().check({"x": ((4,), torch.float32)}, where="store.add")
    with pytest.raises(ValueError, match=r"missing field\(s\) \['t'\]"):
        make().check({**spec, "t": ((), torch.int64)})
    with pytest.raises(ValueError, match=r"'y' expected dtype torch\.float32"):
        make().check({"y": ((), torch.float32)})
