"""memkit against Avalanche 0.6.0's storage policies, on the same data, in one run.

Part 1, buffer operations. A memory of 2,000 items of 3x32x32 float32 images
(Split-CIFAR-100's shape: 100 classes, 10 per experience) is fed

- offline: 10 experiences of 5,000 items, one update per experience;
- online: 1,000 updates of 10 items (100 updates per experience),

by three sides: Avalanche's storage policy (``ReservoirSamplingBuffer``,
``ClassBalancedBuffer``, ``ParametricBuffer`` grouped by class with
``HerdingSelectionStrategy``) fed Avalanche tensor datasets; memkit's store
(``Reservoir``, ``ClassBalanced``, ``Herding``) fed the same tensors as a
``Batch``; and memkit's store behind ``MemkitStoragePolicy``, fed the same
Avalanche datasets. Herding runs offline only: it chooses among all of a
class's items at once. Both herding sides use the same feature extractor
(a seeded linear map of the flattened image to 64 features).

Measured per side, each case in a fresh process: the total update time; reading
the whole memory as one batch (Avalanche: a ``DataLoader`` over ``buffer``;
memkit: ``contents()`` copied into new tensors); drawing a minibatch of 32
(Avalanche: ``next`` on a shuffling ``DataLoader`` over ``buffer``, as its DER
and ER-ACE do; memkit: ``sample``), the mean of 100; the growth of the
process's resident memory over the stream; the size of the checkpoint on disk
(Avalanche: ``torch.save`` with dill, as its ``save_checkpoint`` does; memkit:
``Store.save``). The bytes the budget accounts for are the memory's items.

    .venv/bin/python benchmarks/vs_avalanche.py

Writes benchmarks/results/vs_avalanche.{json,md}.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import torch

OUT = Path(__file__).parent / "results"
SHAPE, MEMORY, CLASSES_PER_EXP, MINIBATCH, DRAWS = (3, 32, 32), 2_000, 10, 32, 100
ITEM = 4 * 3 * 32 * 32 + 8
"""Bytes of one item: the float32 image and its int64 label."""
SIDES = ("avalanche", "memkit", "adapter")
CASES = (("offline", "reservoir"), ("offline", "class_balanced"), ("offline", "herding"),
         ("online", "reservoir"), ("online", "class_balanced"))


def updates(setting: str, sizes: dict):
    """The (x, y) of every update: experience ``e`` brings classes 10e .. 10e+9."""
    generator = torch.Generator().manual_seed(0)
    n_exp = sizes["experiences"]
    if setting == "offline":
        plan = [(e, sizes["per_experience"]) for e in range(n_exp)]
    else:
        per_exp = sizes["online_updates"] // n_exp
        plan = [(u // per_exp, sizes["online_batch"]) for u in range(per_exp * n_exp)]
    for e, n in plan:
        y = CLASSES_PER_EXP * e + torch.randint(0, CLASSES_PER_EXP, (n,), generator=generator)
        yield torch.rand(n, *SHAPE, generator=generator), y


def features_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SHAPE[0] * 32 * 32, 64))


def avalanche_policy(method: str, model: torch.nn.Module, memory: int):
    from avalanche.training.storage_policy import (
        ClassBalancedBuffer,
        HerdingSelectionStrategy,
        ParametricBuffer,
        ReservoirSamplingBuffer,
    )

    if method == "reservoir":
        return ReservoirSamplingBuffer(memory)
    if method == "class_balanced":
        return ClassBalancedBuffer(memory, adaptive_size=True)
    return ParametricBuffer(memory, groupby="class",
                            selection_strategy=HerdingSelectionStrategy(model, "1"))


def memkit_store(method: str, model: torch.nn.Module, memory: int):
    from memkit import Budget
    from memkit.registry import create

    spec = {"x": (SHAPE, torch.float32), "y": ((), torch.int64)}
    rank = 4 if method == "herding" else 0  # Herding keeps a hidden int32 rank per item
    store = create("store", method, spec=spec, budget=Budget(memory * (ITEM + rank)))
    if method == "herding":
        store.features = model
    return store


class Side:
    """One side of the comparison: how it is updated, read, sampled and saved."""

    def __init__(self, side: str, method: str, model: torch.nn.Module, memory: int = MEMORY):
        from memkit.integrations.avalanche import MemkitStoragePolicy

        self.side, self.model = side, model
        self.agent = SimpleNamespace(model=model, device="cpu", eval_mb_size=256)
        if side == "avalanche":
            self.policy = avalanche_policy(method, model, memory)
        else:
            self.store = memkit_store(method, model, memory)
            self.policy = MemkitStoragePolicy(self.store) if side == "adapter" else None
        self.generator = torch.Generator().manual_seed(1)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> float:
        from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
        from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

        from memkit import Batch

        if self.side == "memkit":
            batch = Batch(x=x, y=y)
            start = time.perf_counter()
            self.store.add(batch)
            return time.perf_counter() - start
        exp = DatasetExperience(dataset=_make_taskaware_tensor_classification_dataset(
            x, y, task_labels=0))
        start = time.perf_counter()
        self.policy.post_adapt(self.agent, exp)
        return time.perf_counter() - start

    def read_all(self) -> tuple[float, int]:
        start = time.perf_counter()
        if self.side == "memkit":
            items = {name: t.clone() for name, t in self.store.contents().items()}["x"]
        else:
            buffer = self.policy.buffer
            loader = torch.utils.data.DataLoader(buffer, batch_size=len(buffer),
                                                 collate_fn=buffer.collate_fn)
            items = next(iter(loader))[0]
        return time.perf_counter() - start, len(items)

    def sample(self) -> float:
        if self.side == "memkit":
            start = time.perf_counter()
            for _ in range(DRAWS):
                self.store.sample(MINIBATCH, self.generator)
            return (time.perf_counter() - start) / DRAWS
        buffer = self.policy.buffer
        loader = torch.utils.data.DataLoader(buffer, batch_size=MINIBATCH, shuffle=True,
                                             drop_last=True, collate_fn=buffer.collate_fn,
                                             generator=self.generator)
        batches = iter(loader)
        start = time.perf_counter()
        for _ in range(DRAWS):
            try:
                next(batches)
            except StopIteration:
                batches = iter(loader)
                next(batches)
        return (time.perf_counter() - start) / DRAWS

    def checkpoint_bytes(self, directory: str) -> int:
        import dill

        path = os.path.join(directory, "checkpoint")
        if self.side == "memkit":
            self.store.save(path)
        else:  # what avalanche.checkpointing.save_checkpoint does with the strategy
            torch.save({"storage_policy": self.policy}, path, pickle_module=dill)
        size = os.path.getsize(path)
        os.remove(path)
        return size

    def held(self) -> int:
        return len(self.store) if self.side == "memkit" else len(self.policy.buffer)


def rss() -> int:
    """Resident bytes of live objects: after a collection, with freed heap returned to the OS."""
    import psutil

    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        ctypes.CDLL(libc).malloc_trim(0)
    return psutil.Process().memory_info().rss


def warm_up(side: str, method: str, model: torch.nn.Module) -> None:
    """Run every operation once on a small memory, so one-off costs do not count as retained."""
    subject = Side(side, method, model, memory=2 * MINIBATCH)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        subject.update(torch.rand(2 * MINIBATCH, *SHAPE, generator=generator),
                       torch.arange(2 * MINIBATCH) % 2)
    subject.read_all()
    subject.sample()


def case(setting: str, method: str, side: str, sizes: dict) -> dict:
    """One setting, method and side, measured in this (fresh) process."""
    torch.set_num_threads(1)
    model = features_model()
    warm_up(side, method, model)
    before = rss()
    subject = Side(side, method, model)
    times = [subject.update(x, y) for x, y in updates(setting, sizes)]
    retained = rss() - before
    read_s, read_n = subject.read_all()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = subject.checkpoint_bytes(tmp)
    accounted = subject.held() * ITEM
    return {"setting": setting, "method": method, "side": side, "updates": len(times),
            "update_s": sum(times), "first_update_s": times[0], "last_update_s": times[-1],
            "read_all_s": read_s, "read_all_items": read_n, "sample_s": subject.sample(),
            "held": subject.held(), "accounted_bytes": accounted, "rss_growth_bytes": retained,
            "checkpoint_bytes": checkpoint}


def in_fresh_process(fn, *args):
    """Run in a child forked from this process, which has imported memkit and Avalanche."""
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def markdown(rows: list[dict], sizes: dict) -> str:
    """One table per setting: each method's Avalanche, memkit and adapter values and ratios.

    Byte cells also give their multiple of the bytes of the items held (what a
    budget accounts for).
    """
    by = {(r["setting"], r["method"], r["side"]): r for r in rows}
    metrics = (("update (total)", "update_s", _seconds), ("last update", "last_update_s", _seconds),
               ("read all", "read_all_s", _seconds), (f"sample {MINIBATCH}", "sample_s", _seconds),
               ("RSS growth", "rss_growth_bytes", _megabytes),
               ("checkpoint", "checkpoint_bytes", _megabytes))
    lines = []
    for setting in ("offline", "online"):
        shape = (f"{sizes['experiences']} x {sizes['per_experience']:,} items"
                 if setting == "offline" else
                 f"{sizes['online_updates']:,} updates of {sizes['online_batch']}")
        lines += [f"### {setting}: {shape}, memory of {MEMORY:,} items "
                  f"({MEMORY * ITEM / 1e6:.1f} MB when full)", "",
                  "| method | measure | Avalanche | memkit | Avalanche / memkit | memkit adapter "
                  "| Avalanche / adapter |", "|---|---|---:|---:|---:|---:|---:|"]
        for method in ("reservoir", "class_balanced", "herding"):
            if (setting, method, "avalanche") not in by:
                continue
            for label, key, fmt in metrics:
                a, m, d = (by[(setting, method, side)] for side in SIDES)
                lines.append(f"| {method} | {label} | {fmt(a, key)} | {fmt(m, key)} | "
                             f"{a[key] / m[key]:.1f}x | {fmt(d, key)} | {a[key] / d[key]:.1f}x |")
        lines.append("")
    return "\n".join(lines)


def _seconds(row: dict, key: str) -> str:
    value = row[key]
    return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"


def _megabytes(row: dict, key: str) -> str:
    return f"{row[key] / 1e6:.1f} MB ({row[key] / row['accounted_bytes']:.2f}x items)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiences", type=int, default=10)
    parser.add_argument("--per-experience", type=int, default=5_000)
    parser.add_argument("--online-updates", type=int, default=1_000)
    parser.add_argument("--online-batch", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import memkit.buffers  # registers the stores the children create
    import memkit.integrations.avalanche  # noqa: F401 - imports Avalanche once, before forking

    sizes = {"experiences": args.experiences, "per_experience": args.per_experience,
             "online_updates": args.online_updates, "online_batch": args.online_batch}
    rows = []
    for setting, method in CASES:
        for side in SIDES:
            start = time.perf_counter()
            rows.append(in_fresh_process(case, setting, method, side, sizes))
            print(f"{setting} {method} {side}: {time.perf_counter() - start:.1f} s", flush=True)
    import avalanche

    meta = {"torch": torch.__version__, "avalanche": avalanche.__version__,
            "python": platform.python_version(), "threads": 1, "sizes": sizes,
            "memory_items": MEMORY, "minibatch": MINIBATCH,
            "load_average_at_end": os.getloadavg()}
    OUT.mkdir(exist_ok=True)
    (OUT / "vs_avalanche.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, sizes)
    (OUT / "vs_avalanche.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
