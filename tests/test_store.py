import json

import pytest
import torch
from safetensors.torch import save_file

import memkit.io
from memkit import Batch, Budget, BudgetExceeded, StoreFormatError
from memkit.buffers import Reservoir
from memkit.io import read_manifest
from memkit.testing import check_store, random_batch

SPEC = {"x": ((6,), torch.float32), "y": ((), torch.int64)}
ITEM = 6 * 4 + 8


def filled(budget="10KB", n=200, seed=0, data_seed=0):
    store = Reservoir(SPEC, Budget(budget), seed=seed)
    store.add(random_batch(store.spec, n, torch.Generator().manual_seed(data_seed)))
    return store


def test_capacity_comes_from_bytes_and_is_charged_up_front():
    budget = Budget("10KB")
    budget.charge("model", 2_000)
    store = Reservoir(SPEC, budget)
    assert store.item_nbytes == ITEM
    assert store.capacity == 8_000 // ITEM
    assert budget.charged("reservoir") == store.nbytes == store.capacity * ITEM
    assert budget.used <= budget.capacity


def test_nbytes_equals_the_storage_the_tensors_really_use():
    store = Reservoir({"x": ((3, 4), torch.float16), "y": ((), torch.int16),
                       "m": ((2,), torch.bool)}, "1KB")
    real = sum(t.untyped_storage().nbytes() for t in store.tensors().values())
    assert store.nbytes == real == store.capacity * (12 * 2 + 2 + 2)


def test_a_budget_too_small_for_one_item_is_refused():
    budget = Budget(100)
    budget.charge("model", 90)
    with pytest.raises(BudgetExceeded, match="'reservoir' asked for 32 bytes"):
        Reservoir(SPEC, budget)
    assert budget.owners == {"model": 90}


@pytest.mark.parametrize("spec", [{}, {"x": (3, "float32")}, {"x": ((3,), "floaty")},
                                  {"x": ((0,), "float32")}, "x"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ValueError, match="spec"):
        Reservoir(spec, "1KB")


def test_reservoir_passes_the_conformance_check():
    check_store(Reservoir(SPEC, "4KB", seed=3))
    check_store(Reservoir({"x": ((2, 2), torch.uint8), "y": ((), torch.int64)}, 200))


def test_round_trip_restores_tensors_and_counters(tmp_path):
    store = filled()
    store.save(tmp_path / "r.safetensors")
    other = Reservoir(SPEC, Budget("10KB"), seed=0)
    other.load(tmp_path / "r.safetensors")
    assert other.seen == store.seen and len(other) == len(store)
    assert all(torch.equal(store.tensors()[k], other.tensors()[k]) for k in store.tensors())
    manifest = read_manifest(tmp_path / "r.safetensors")
    assert manifest["class"] == "memkit.buffers.reservoir.Reservoir"
    assert manifest["nbytes"] == store.nbytes and len(manifest["sha256"]) == 64
    assert manifest["config"] == store.config() and manifest["format_version"] == 1


def _unchanged(store, before):
    return all(torch.equal(before[k], v) for k, v in store.tensors().items())


def test_truncated_tampered_and_wrong_files_leave_the_store_unchanged(tmp_path):
    source = filled(data_seed=1)
    path = tmp_path / "r.safetensors"
    source.save(path)
    target = filled(data_seed=2)
    before = {k: v.clone() for k, v in target.tensors().items()}
    data = path.read_bytes()
    cases = {"truncated": data[:-7], "tiny": data[:5],
             "tampered": data[:-1] + bytes([data[-1] ^ 1])}
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(StoreFormatError):
            target.load(tmp_path / name)
        assert _unchanged(target, before) and target.seen == 200
    save_file({"a": torch.zeros(2)}, str(tmp_path / "plain"))
    with pytest.raises(StoreFormatError, match="without a memkit manifest"):
        target.load(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="missing"):
        target.load(tmp_path / "missing")
    assert _unchanged(target, before)


def test_wrong_class_or_config_is_refused_naming_both(tmp_path):
    path = tmp_path / "r.safetensors"
    filled().save(path)
    header = read_manifest(path)
    tensors, _ = memkit.io.load_tensors(path)
    memkit.io.save_tensors(tmp_path / "other", tensors,
                           {**{k: v for k, v in header.items() if k != "sha256"},
                            "class": "memkit.buffers.ring.Ring"})
    store = Reservoir(SPEC, "10KB")
    with pytest.raises(ValueError, match=r"holds a 'memkit\.buffers\.ring\.Ring'"):
        store.load(tmp_path / "other")
    with pytest.raises(ValueError, match="different configuration"):
        Reservoir(SPEC, "10KB", seed=9).load(path)
    small = Reservoir(SPEC, "5KB")
    with pytest.raises(BudgetExceeded, match="'reservoir' asked for"):
        small.load(path)
    assert small.nbytes == small.budget.used and len(small) == 0


def test_load_resizes_to_the_saved_capacity_and_recharges_the_budget(tmp_path):
    path = tmp_path / "r.safetensors"
    source = filled("5KB")
    source.save(path)
    budget = Budget("20KB")
    target = Reservoir(SPEC, budget, nbytes="10KB")
    target.load(path)
    assert target.capacity == source.capacity and len(target) == len(source)
    assert budget.charged("reservoir") == target.nbytes == source.nbytes
    for name, t in source.tensors().items():
        assert torch.equal(t, target.tensors()[name])


def test_a_failed_save_leaves_nothing_on_disk(tmp_path, monkeypatch):
    store = filled()
    path = tmp_path / "r.safetensors"
    store.save(path)
    old = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(memkit.io, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        store.save(path)
    with pytest.raises(OSError):
        store.save(tmp_path / "new.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.safetensors"]
    assert path.read_bytes() == old


def test_load_state_dict_checks_keys_shapes_and_extra_before_copying():
    store = filled()
    before = {k: v.clone() for k, v in store.tensors().items()}
    state = store.state_dict()
    with pytest.raises(ValueError, match="expected tensors"):
        store.load_state_dict({"tensors": {"x": state["tensors"]["x"]}, "extra": state["extra"]})
    bad = {**state["tensors"], "x": torch.zeros(len(store.tensors()["x"]), 5)}
    with pytest.raises(ValueError, match=r"'x' expected \(\d+, 6\) torch\.float32"):
        store.load_state_dict({"tensors": bad, "extra": state["extra"]})
    short = {**state["tensors"], "x": torch.zeros(3, 6)}
    with pytest.raises(ValueError, match="must share one positive length"):
        store.load_state_dict({"tensors": short, "extra": state["extra"]})
    zeros = {k: torch.zeros_like(v) for k, v in state["tensors"].items()}
    with pytest.raises(ValueError, match="saved size None"):
        store.load_state_dict({"tensors": zeros, "extra": {}})
    with pytest.raises(KeyError):
        store.load_state_dict({"tensors": zeros, "extra": {"size": 1, "fitted": True}})
    assert _unchanged(store, before)


def test_manifest_is_json_in_the_safetensors_header(tmp_path):
    path = tmp_path / "r.safetensors"
    filled().save(path)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    assert json.loads(header["__metadata__"]["memkit"])["store"] == "reservoir"


def test_add_rejects_bad_input_before_modifying():
    store = filled()
    before = {k: v.clone() for k, v in store.tensors().items()}
    with pytest.raises(ValueError, match=r"field 'x' expected items of shape \(6,\)"):
        store.add(Batch(x=torch.zeros(4, 5), y=torch.zeros(4, dtype=torch.int64)))
    with pytest.raises(ValueError, match=r"missing field\(s\) \['y'\]"):
        store.add(Batch(x=torch.zeros(4, 6)))
    with pytest.raises(TypeError, match="expected a Batch"):
        store.add({"x": torch.zeros(4, 6)})
    assert _unchanged(store, before) and store.seen == 200
