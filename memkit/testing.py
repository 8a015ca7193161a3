"""Conformance checks, as gymnasium's ``check_env``: ``check_store`` and ``check_resume``.

``check_store`` runs on a fresh store of your own class. It exercises the
store (adds random items), so do not pass one that holds data you need.
``check_resume`` runs a config three times: whole, crashed part-way, and
resumed from the crash's checkpoint, and checks the last equals the first.
Both raise ``AssertionError`` naming the first broken promise.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

import torch

from memkit.batch import Batch
from memkit.config import Setup, build
from memkit.io import StoreFormatError
from memkit.run import run
from memkit.store import SampleMemory, Store


def check_store(store: Store, *, seed: int = 0, rounds: int = 4) -> None:
    """Check byte accounting, persistence and input validation of ``store``."""
    _check_bytes(store)
    if isinstance(store, SampleMemory):
        _check_sample_memory(store, torch.Generator().manual_seed(seed), rounds)
    with tempfile.TemporaryDirectory() as tmp:
        _check_round_trip(store, Path(tmp))
        _check_corruption(store, Path(tmp))


def check_resume(config: Mapping, directory: str | Path, *, crash_at: int = 1,
                 before_resume: Callable[[Setup], None] | None = None) -> tuple[Setup, Setup]:
    """A run resumed after a crash at experience ``crash_at`` equals the uninterrupted run.

    Compares the score matrix, the memory timeline, the budget ledger, the
    learner's ``state_dict`` and every store's tensors; returns the
    (uninterrupted, resumed) setups for further checks. ``before_resume`` may
    wrap the resumed learner (e.g. to check its state when it starts again).
    """
    directory = Path(directory)
    full = build(config)
    expected = run(full.stream, full.learner, checkpoint_dir=directory / "whole", progress=False)
    crashed = build(config)
    learn = crashed.learner.learn

    def crash(experience):
        if experience.index == crash_at:
            raise _Crash(f"simulated crash at experience {crash_at}")
        learn(experience)

    crashed.learner.learn = crash
    try:
        run(crashed.stream, crashed.learner, checkpoint_dir=directory / "crashed", progress=False)
    except _Crash:
        pass
    else:
        raise AssertionError(f"the stream has no experience {crash_at} to crash at")
    resumed = build(config)
    if before_resume is not None:
        before_resume(resumed)
    result = run(resumed.stream, resumed.learner, checkpoint_dir=directory / "crashed",
                 resume=True, progress=False)
    assert result.matrix == expected.matrix, "resumed scores differ from the uninterrupted run"
    assert result.memory == expected.memory, "resumed memory timeline differs"
    assert resumed.budget.owners == full.budget.owners, "resumed budget ledger differs"
    _assert_same_tensors(full.learner.state_dict(), resumed.learner.state_dict(), "learner")
    for name, store in full.learner.stores.items():
        _assert_same_tensors(store.tensors(), resumed.learner.stores[name].tensors(), name)
    return full, resumed


class _Crash(RuntimeError):
    pass


def _assert_same_tensors(a: Mapping, b: Mapping, where: str) -> None:
    assert a.keys() == b.keys(), f"{where}: tensors {sorted(a)} != {sorted(b)}"
    for key in a:
        assert torch.equal(a[key], b[key]), f"{where}: tensor {key!r} differs after resume"


def load_script(path: str | Path, name: str | None = None) -> ModuleType:
    """Import a script (a benchmark or an example) as module ``name`` (default: its stem).

    The module is registered in ``sys.modules`` first, so its dataclasses and
    pickling-free multiprocessing helpers resolve their module by name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_script: expected a Python file, got {path}")
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def random_batch(spec, n: int, generator: torch.Generator) -> Batch:
    """``n`` random items of ``spec``: normal floats, integers in [0, 10), random booleans."""
    fields = {}
    for name, (shape, dtype) in spec.items():
        size = (n, *shape)
        if dtype.is_floating_point:
            fields[name] = torch.randn(size, generator=generator).to(dtype)
        elif dtype == torch.bool:
            fields[name] = torch.randint(0, 2, size, generator=generator).bool()
        else:
            fields[name] = torch.randint(0, 10, size, generator=generator).to(dtype)
    return Batch(**fields)


def _check_bytes(store: Store) -> None:
    exact = sum(t.numel() * t.element_size() for t in store.tensors().values())
    assert store.nbytes == exact, f"nbytes {store.nbytes} != dtype x numel of tensors {exact}"
    charged = store.budget.charged(store.owner)
    assert store.nbytes <= charged, (
        f"store holds {store.nbytes} bytes but only {charged} are charged to {store.owner!r}")
    assert store.budget.used <= store.budget.capacity, "budget used exceeds its capacity"


def _check_sample_memory(store: SampleMemory, generator: torch.Generator, rounds: int) -> None:
    nbytes = store.nbytes
    for _ in range(rounds):
        batch = random_batch(store.spec, max(store.capacity // 2, 1) + 1, generator)
        evicted = store.add(batch)
        assert isinstance(evicted, Batch), f"add returned {type(evicted).__name__}, not a Batch"
        assert 0 <= len(store) <= store.capacity, f"len {len(store)} > capacity {store.capacity}"
        assert store.nbytes == nbytes, f"nbytes changed from {nbytes} to {store.nbytes} on add"
        _check_bytes(store)
        drawn = store.sample(3, generator)
        assert len(drawn) == min(3, len(store)), f"sample(3) gave {len(drawn)} items"
        drawn.check(store.spec, where="sample")
    _check_rejects(store, generator)
    _check_resize(store, generator)


def _check_resize(store: SampleMemory, generator: torch.Generator) -> None:
    """Shrinking keeps at most the new capacity, returns the rest and releases the bytes."""
    if store.capacity < 2:
        return
    before, held = _snapshot(store), len(store)
    try:
        evicted = store.resize(store.nbytes_for(store.capacity // 2))
    except NotImplementedError:
        return
    assert len(store) + len(evicted) == held, (
        f"resize kept {len(store)} and evicted {len(evicted)} of {held} items")
    assert len(store) <= store.capacity and store.nbytes == store.budget.charged(store.owner)
    evicted.check(store.spec, where="resize")
    rows = {tuple(r.tolist()) for r in before["tensors"]["x"][:held].flatten(1)}
    kept = {tuple(r.tolist()) for r in store.tensors()["x"][: len(store)].flatten(1)}
    assert kept <= rows, "resize invented items"
    store.add(random_batch(store.spec, store.capacity + 1, generator))
    assert len(store) <= store.capacity


def _check_rejects(store: SampleMemory, generator: torch.Generator) -> None:
    before = _snapshot(store)
    name, (shape, dtype) = next(iter(store.spec.items()))
    bad = random_batch({**store.spec, name: ((*shape, 2), dtype)}, 2, generator)
    for wrong, error in ((bad, ValueError), ({"x": torch.zeros(2)}, TypeError)):
        try:
            store.add(wrong)
        except error:
            pass
        else:
            raise AssertionError(f"add accepted a malformed input without {error.__name__}")
        assert _same(before, _snapshot(store)), "a rejected add modified the store"


def _check_round_trip(store: Store, tmp: Path) -> None:
    path = tmp / "store.safetensors"
    store.save(path)
    saved = _snapshot(store)
    if isinstance(store, SampleMemory):
        probe = random_batch(store.spec, 5, torch.Generator().manual_seed(1))
        store.add(probe)
        after_add = _snapshot(store)
        store.load(path)
        assert _same(saved, _snapshot(store)), "load did not restore the saved state"
        store.add(probe)
        assert _same(after_add, _snapshot(store)), "a reloaded store did not continue identically"
        store.load(path)
    assert _same(saved, _snapshot(store)), "save/load round trip changed the state"
    leftovers = [p.name for p in tmp.iterdir() if p.name != path.name]
    assert not leftovers, f"save left temporary files behind: {leftovers}"


def _check_corruption(store: Store, tmp: Path) -> None:
    path = tmp / "store.safetensors"
    store.save(path)
    data = path.read_bytes()
    before = _snapshot(store)
    tampered = bytearray(data)
    tampered[-1] ^= 0xFF
    for label, payload in (("truncated", data[: len(data) // 2]), ("tampered", bytes(tampered))):
        broken = tmp / f"{label}.safetensors"
        broken.write_bytes(payload)
        try:
            store.load(broken)
        except StoreFormatError:
            pass
        else:
            raise AssertionError(f"load accepted a {label} file")
        assert _same(before, _snapshot(store)), f"loading a {label} file modified the store"


def _snapshot(store: Store) -> dict:
    state = store.state_dict()
    return {"tensors": {k: v.clone() for k, v in state["tensors"].items()},
            "extra": dict(state["extra"])}


def _same(a: dict, b: dict) -> bool:
    return a["extra"] == b["extra"] and a["tensors"].keys() == b["tensors"].keys() and all(
        torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])
