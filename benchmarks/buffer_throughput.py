"""Stream ingestion and sampling speed of every sample memory, against raw ``Tensor.copy_``.

For each buffer, item shape (64 float32 features; 3x32x32 images stored as
uint8) and capacity (1k / 10k / 100k items): ``add`` of batches of 128
(items/s, after the buffer is full, so every add evicts), ``sample(128)``
(items/s), and the peak resident memory of a fresh process doing only that
case, beside the bytes the budget accounts for. The physical reference is
``Tensor.copy_`` of the same stored bytes per batch; each buffer is reported
as a fraction of it. Herding selection is timed separately (2,000 candidates
x 512 features, choose 200), kernel against its plain reference.

    .venv/bin/python benchmarks/buffer_throughput.py

Writes benchmarks/results/buffer_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results"
BUFFERS = ("reservoir", "ring", "class_balanced", "gdumb")
ITEMS = {"64-float32": ((64,), "raw"), "3x32x32-uint8": ((3, 32, 32), "uint8")}
BATCH, ROUNDS = 128, 200


def _rate(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, time.perf_counter() - start)
    return rounds * BATCH / best


def case(buffer: str, item: str, capacity: int) -> dict:
    """One buffer, item shape and capacity, measured in this (fresh) process."""
    torch.set_num_threads(1)
    from memkit import Batch, Budget
    from memkit.registry import create

    shape, codec = ITEMS[item]
    spec = {"x": (shape, torch.float32), "y": ((), torch.int64)}
    probe = create("store", buffer, spec=spec, budget=Budget(10**7), codec=codec)
    store = create("store", buffer, spec=spec, budget=Budget(10**10), codec=codec,
                   nbytes=probe.nbytes_for(capacity))
    gen = torch.Generator().manual_seed(0)
    for start in range(0, capacity, 4096):  # fill in chunks: the RSS is the store's, not ours
        n = min(4096, capacity - start)
        store.add(Batch(x=torch.rand(n, *shape, generator=gen),
                        y=torch.randint(0, 10, (n,), generator=gen)))
    batch = Batch(x=torch.rand(BATCH, *shape, generator=gen),
                  y=torch.randint(0, 10, (BATCH,), generator=gen))
    add = _rate(lambda: store.add(batch), ROUNDS)
    sample = _rate(lambda: store.sample(BATCH, gen), ROUNDS)
    stored = torch.empty(BATCH, store.item_nbytes, dtype=torch.uint8)
    source = torch.randint(0, 255, (BATCH, store.item_nbytes), dtype=torch.uint8)
    copy = _rate(lambda: stored.copy_(source), ROUNDS)
    return {"buffer": buffer, "item": item, "capacity": capacity, "item_nbytes":
            store.item_nbytes, "nbytes": store.nbytes, "add_items_per_s": add,
            "sample_items_per_s": sample, "copy_items_per_s": copy,
            "add_fraction_of_copy": add / copy, "sample_fraction_of_copy": sample / copy,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def baseline() -> int:
    """Peak RSS of a worker that imported memkit and did nothing else."""
    torch.set_num_threads(1)
    import memkit.buffers  # noqa: F401

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def herding_times(rounds: int = 3) -> dict:
    from memkit.kernels.herding import herding_select, herding_select_reference

    torch.set_num_threads(1)
    features = torch.randn(2000, 512, generator=torch.Generator().manual_seed(0))
    timing = {}
    for name, fn in (("kernel", herding_select), ("reference", herding_select_reference)):
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            fn(features, 200)
            best = min(best, time.perf_counter() - start)
        timing[f"{name}_s"] = best
    timing["speedup"] = timing["reference_s"] / timing["kernel_s"]
    return timing


def in_fresh_process(fn, *args):
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def markdown(rows: list[dict], base: int, herding: dict) -> str:
    lines = ["| buffer | item | capacity | bytes held | add (items/s) | add / copy_ | "
             "sample (items/s) | sample / copy_ | peak RSS over baseline |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['buffer']} | {r['item']} | {r['capacity']:,} | {r['nbytes'] / 1e6:.2f} MB | "
            f"{r['add_items_per_s']:,.0f} | {r['add_fraction_of_copy']:.3f} | "
            f"{r['sample_items_per_s']:,.0f} | {r['sample_fraction_of_copy']:.3f} | "
            f"{(r['peak_rss_bytes'] - base) / 1e6:.1f} MB |")
    lines += ["", f"Herding, 2,000 x 512 choosing 200: kernel {herding['kernel_s'] * 1e3:.1f} ms, "
              f"reference {herding['reference_s'] * 1e3:.1f} ms "
              f"({herding['speedup']:.1f}x)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buffers", nargs="+", default=list(BUFFERS))
    parser.add_argument("--capacities", nargs="+", type=int, default=[1_000, 10_000, 100_000])
    args = parser.parse_args()
    base = in_fresh_process(baseline)
    rows = [in_fresh_process(case, b, i, c) for b in args.buffers for i in ITEMS
            for c in args.capacities]
    herding = in_fresh_process(herding_times)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "threads": 1,
            "batch": BATCH, "baseline_rss_bytes": base}
    OUT.mkdir(exist_ok=True)
    (OUT / "buffer_throughput.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "herding": herding}, indent=1))
    table = markdown(rows, base, herding)
    (OUT / "buffer_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
