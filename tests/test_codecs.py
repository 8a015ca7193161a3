import pytest
import torch

from memkit import Batch, Budget
from memkit.buffers import Reservoir
from memkit.testing import check_store

SPEC = {"x": ((64,), torch.float32), "y": ((), torch.int64)}
# bytes of one item (payload + int64 label) and the codec's fixed state (int8: low and scale)
COSTS = {"raw": (264, 0), "float32": (264, 0), "float16": (136, 0), "int8": (72, 512),
         "uint8": (72, 0)}


@pytest.mark.parametrize("codec", sorted(COSTS))
def test_byte_cost_per_item_follows_the_codec(codec):
    item, fixed = COSTS[codec]
    store = Reservoir(SPEC, Budget("100KB"), codec=codec)
    assert store.item_nbytes == item
    assert store.capacity == (100_000 - fixed) // item
    assert store.nbytes == store.capacity * item + fixed == store.budget.charged("reservoir")
    check_store(Reservoir(SPEC, Budget("4KB"), codec=codec))


def test_a_tighter_codec_holds_more_items_in_the_same_budget():
    capacities = [Reservoir(SPEC, "50KB", codec=c).capacity for c in ("float32", "float16",
                                                                       "int8")]
    assert capacities[0] < capacities[1] < capacities[2]


def roundtrip(codec, x):
    store = Reservoir(SPEC, Budget(len(x) * 300), codec=codec)
    store.add(Batch(x=x, y=torch.zeros(len(x), dtype=torch.int64)))
    out = next(store.batches(len(x)))
    assert out.x.dtype == torch.float32
    return store, out.x


def test_reconstruction_errors_stay_within_each_codec_bound():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(200, 64, generator=gen)
    features = torch.randn(200, 64, generator=gen) * 3
    errors = {}
    _, out = roundtrip("float32", features)
    errors["float32"] = (out - features).abs().max().item()
    assert errors["float32"] == 0
    _, out = roundtrip("float16", features)
    errors["float16"] = ((out - features).abs() / features.abs().clamp_min(1e-3)).max().item()
    assert errors["float16"] <= 2**-11
    store, out = roundtrip("int8", features)
    scale = store.tensors()["codec.scale"]
    errors["int8"] = ((out - features).abs() / scale).max().item()
    assert errors["int8"] <= 0.5 + 1e-4, "per-feature error is at most half a step"
    assert torch.allclose(scale, (features.amax(0) - features.amin(0)) / 255)
    _, out = roundtrip("uint8", images)
    errors["uint8"] = (out - images).abs().max().item()
    assert errors["uint8"] <= 0.5 / 255 + 1e-7
    print("reconstruction errors:", errors)


def test_int8_clamps_values_outside_the_first_batch_range():
    store = Reservoir(SPEC, Budget("10KB"), codec="int8")
    store.add(Batch(x=torch.zeros(2, 64) + torch.tensor([[0.0], [1.0]]),
                    y=torch.zeros(2, dtype=torch.int64)))
    store.add(Batch(x=torch.full((1, 64), 5.0), y=torch.zeros(1, dtype=torch.int64)))
    assert next(store.batches(3)).x[2].max().item() == pytest.approx(1.0)


def test_quantising_codecs_need_a_floating_payload():
    with pytest.raises(ValueError, match="codec 'int8': needs a floating-point field 'x'"):
        Reservoir({"x": ((4,), torch.int64), "y": ((), torch.int64)}, "1KB", codec="int8")
    with pytest.raises(ValueError, match="codec: expected one of"):
        Reservoir(SPEC, "10KB", codec="bfloat")
    with pytest.raises(ValueError, match="payload field 'x'"):
        Reservoir({"y": ((), torch.int64)}, "1KB")
