"""Reservoir update: the vectorised kernel against Algorithm R item by item, side by side.

For each (capacity, batch) the same stream position and the same random draws
go through ``reservoir_slots`` and ``reservoir_slots_reference``; the ratio is
reference time / kernel time. A full ``Reservoir.add`` of 64-float items is
also timed against a plain ``Tensor.copy_`` of the same bytes (the physical
floor). Writes JSON and a Markdown table under benchmarks/results/.

    .venv/bin/python benchmarks/reservoir_kernel.py
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from memkit import Batch, Budget
from memkit.buffers import Reservoir
from memkit.kernels import reservoir_slots, reservoir_slots_reference

OUT = Path(__file__).parent / "results"
SPEC = {"x": ((64,), torch.float32), "y": ((), torch.int64)}


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def kernel_row(capacity: int, batch: int, calls: int = 50) -> dict:
    def loop(kernel):
        def go():
            for k in range(calls):
                kernel(10 * capacity + k * batch, batch, capacity,
                       torch.Generator().manual_seed(k))
        return go

    fast, slow = best_of(loop(reservoir_slots)), best_of(loop(reservoir_slots_reference))
    return {"capacity": capacity, "batch": batch, "kernel_us": 1e6 * fast / calls,
            "reference_us": 1e6 * slow / calls, "speedup": slow / fast}


def add_row(capacity: int, batch: int = 128, calls: int = 200) -> dict:
    item = 64 * 4 + 8
    data = Batch(x=torch.randn(batch, 64), y=torch.randint(0, 10, (batch,)))
    store = Reservoir(SPEC, Budget(capacity * item))
    store.add(Batch(x=torch.randn(capacity, 64), y=torch.zeros(capacity, dtype=torch.int64)))

    def adds():
        for _ in range(calls):
            store.add(data)

    target = torch.empty(batch, 64 + 2)
    source = torch.randn(batch, 64 + 2)  # 64 floats + an 8-byte label, as 66 floats

    def copies():
        for _ in range(calls):
            target.copy_(source)

    t_add, t_copy = best_of(adds), best_of(copies)
    return {"capacity": capacity, "batch": batch, "add_items_per_s": calls * batch / t_add,
            "copy_items_per_s": calls * batch / t_copy, "fraction_of_copy": t_copy / t_add}


def markdown(kernels: list[dict], adds: list[dict]) -> str:
    lines = ["| capacity | batch | kernel (µs/call) | item-by-item (µs/call) | speed-up |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['capacity']:,} | {r['batch']} | {r['kernel_us']:.1f} | "
              f"{r['reference_us']:.1f} | {r['speedup']:.1f}x |" for r in kernels]
    lines += ["", "| capacity | batch | Reservoir.add (items/s) | Tensor.copy_ (items/s) | "
              "add / copy |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['capacity']:,} | {r['batch']} | {r['add_items_per_s']:,.0f} | "
              f"{r['copy_items_per_s']:,.0f} | {r['fraction_of_copy']:.3f} |" for r in adds]
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    kernels = [kernel_row(c, b) for c in (1_000, 10_000, 100_000) for b in (10, 128, 1024)]
    adds = [add_row(c) for c in (1_000, 10_000, 100_000)]
    OUT.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "threads": 1}
    (OUT / "reservoir_kernel.json").write_text(
        json.dumps({"meta": meta, "kernel": kernels, "add": adds}, indent=2))
    table = markdown(kernels, adds)
    (OUT / "reservoir_kernel.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
