"""Key/value datastore: recall@k and queries/s of each backend against exact search, one thread.

For each kind of keys (d = 128) and each size, one ``Datastore`` per backend is
filled with exactly that many entries (its byte budget is
``datastore_nbytes`` of that many) and searched with 500 held-out queries
for k = 1, 8 and 64. Recall@k is the mean overlap of the ids returned with the
ids of the exact search (the ``Flat`` datastore) over the same stored keys.
Keys are stored as float16; approximate indexes re-rank their candidates
exactly against them (``rerank`` 4 for SQ8 and PQ, 1 otherwise).

Keys: ``clustered`` (a mixture of 100 Gaussians), ``random`` (i.i.d. normal)
and ``digits`` (scikit-learn's 1,797 8x8 digits with pixel noise, through a
random ReLU projection to 128 features, as an untrained network's hidden
state would be). A second table times memkit's exact chunked kernel
(``kernels/topk.py``) against faiss's ``IndexFlatL2`` on the same float32 keys.
Writes benchmarks/results/datastore.{json,md}.

To keep the default run near 10 minutes on 2 shared cores, HNSW32 is built up
to 100k entries (``--hnsw-max``) and the digits keys go up to 100k
(``--digits-max``); IVF uses at most 1024 lists.

    .venv/bin/python benchmarks/datastore.py              # sizes 10k, 100k, 1M
    .venv/bin/python benchmarks/datastore.py --sizes 10000 100000 --data clustered
    memkit bench datastore --sizes 10000
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from sklearn.datasets import load_digits

from memkit import Budget
from memkit.buffers.datastore import Datastore, datastore_nbytes
from memkit.kernels.topk import topk_search
from memkit.seeding import derive_generator

OUT = Path(__file__).parent / "results"
DIM = 128
KS = (1, 8, 64)
WRITE_BATCH = 100_000


def clustered(n: int, seed: int) -> torch.Tensor:
    """A mixture of 100 Gaussians: centres N(0, 1), spread 0.5 per coordinate."""
    centres = torch.randn(100, DIM, generator=derive_generator(0, "centres"))
    g = derive_generator(seed, "clustered")
    return centres[torch.randint(0, 100, (n,), generator=g)] + 0.5 * torch.randn(n, DIM,
                                                                                 generator=g)


def iid(n: int, seed: int) -> torch.Tensor:
    """I.i.d. standard normal keys: no structure for an index to exploit."""
    return torch.randn(n, DIM, generator=derive_generator(seed, "random"))


def digits(n: int, seed: int) -> torch.Tensor:
    """Noisy digits (pixel noise of std 2 on 0..16) through one random ReLU layer."""
    images = torch.from_numpy(load_digits().data).float()
    layer = derive_generator(0, "projection")
    weight, bias = torch.randn(64, DIM, generator=layer) / 8, torch.randn(DIM, generator=layer)
    g = derive_generator(seed, "digits")
    x = images[torch.randint(0, len(images), (n,), generator=g)]
    return torch.relu((x + 2 * torch.randn(x.shape, generator=g)) @ weight + bias)


DATA = {"clustered": clustered, "random": iid, "digits": digits}


def backends(n: int, hnsw_max: int) -> list[tuple[str, dict]]:
    """Index strings and options at ``n`` entries: nlist the power of 2 at most 4 sqrt(n), and
    at most 1024 (k-means on 39 keys per list takes about 10 s at 1024 lists here)."""
    nlist = min(2 ** math.floor(math.log2(4 * math.sqrt(n))), 1024)
    ivf = {"nprobe": 16, "train_size": 39 * nlist}
    out = [("Flat", {}), (f"IVF{nlist},Flat", ivf), (f"IVF{nlist},SQ8", ivf),
           (f"IVF{nlist},PQ16", {**ivf, "train_size": max(39 * nlist, 39 * 256)})]
    if n <= hnsw_max:
        out.append(("HNSW32", {"ef_search": 64}))
    return out


def build(index: str, options: dict, keys: torch.Tensor) -> tuple[Datastore, float]:
    budget = Budget(datastore_nbytes(DIM, len(keys), index=index))
    start = time.perf_counter()
    store = Datastore(DIM, budget, index=index, **options)
    for i in range(0, len(keys), WRITE_BATCH):
        part = keys[i:i + WRITE_BATCH]
        store.write(part, torch.arange(i, i + len(part)))
    return store, time.perf_counter() - start


def searches(store: Datastore, queries: torch.Tensor) -> dict[int, tuple[torch.Tensor, float]]:
    out = {}
    for k in KS:
        start = time.perf_counter()
        ids = store.search(queries, k, count=False).ids
        out[k] = ids, time.perf_counter() - start
    return out


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = (found.unsqueeze(2) == exact.unsqueeze(1)).any(dim=2) & (found >= 0)
    return float(hits.float().mean())


def kernel_vs_faiss(keys: torch.Tensor, queries: torch.Tensor, k: int = 8) -> dict:
    """Exact search of the same float32 keys: memkit's chunked kernel against IndexFlatL2.

    faiss is timed with its default ``distance_compute_blas_threshold`` (128000 in
    1.15, which keeps these batches off BLAS) and with it lowered to 20 (BLAS).
    """
    index = faiss.IndexFlatL2(DIM)
    index.add(keys.numpy())
    default = faiss.cvar.distance_compute_blas_threshold
    timings = {"memkit": lambda: topk_search(queries, keys, k)}
    for name, threshold in (("faiss", default), ("faiss_blas", 20)):
        def search(threshold=threshold):
            faiss.cvar.distance_compute_blas_threshold = threshold
            try:
                index.search(queries.numpy(), k)
            finally:
                faiss.cvar.distance_compute_blas_threshold = default
        timings[name] = search
    row = {"k": k}
    for name, fn in timings.items():
        start = time.perf_counter()
        fn()
        row[f"{name}_qps"] = len(queries) / (time.perf_counter() - start)
    return row


def run_size(kind: str, n: int, n_queries: int, hnsw_max: int) -> tuple[list[dict], dict]:
    data = DATA[kind](n + n_queries, seed=n)
    keys, queries = data[:n].contiguous(), data[n:].contiguous()
    rows, exact = [], None
    for index, options in backends(n, hnsw_max):
        store, seconds = build(index, options, keys)
        found = searches(store, queries)
        if index == "Flat":
            exact = {k: ids for k, (ids, _) in found.items()}
        rows.append({"data": kind, "n": n, "index": index, "options": options,
                     "build_s": seconds, "bytes_per_entry": store.nbytes / store.capacity,
                     "qps": {k: n_queries / s for k, (_, s) in found.items()},
                     "recall": {k: recall(ids, exact[k]) for k, (ids, _) in found.items()}})
        print(_line(rows[-1]), flush=True)
        del store
        gc.collect()
    flat = kernel_vs_faiss(keys, queries) if kind == "clustered" else {}
    return rows, flat


def _line(r: dict) -> str:
    return (f"| {r['data']} | {r['n']:,} | {r['index']} | {r['build_s']:.1f} | "
            f"{r['bytes_per_entry']:.0f} | " + " | ".join(f"{r['qps'][k]:,.0f}" for k in KS)
            + " | " + " | ".join(f"{r['recall'][k]:.3f}" for k in KS) + " |")


def markdown(rows: list[dict], flat: dict[int, dict]) -> str:
    lines = ["| keys | entries | index | build (s) | bytes/entry | q/s k=1 | q/s k=8 | q/s k=64 "
             "| R@1 | R@8 | R@64 |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [_line(r) for r in rows]
    lines += ["", "Exact search of float32 keys (clustered, k = 8, 1 thread): memkit's chunked "
              "kernel vs faiss IndexFlatL2, with faiss's default BLAS threshold and with BLAS "
              "forced:", "",
              "| entries | memkit q/s | faiss q/s | faiss BLAS q/s | memkit / faiss | "
              "memkit / faiss BLAS |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {n:,} | {r['memkit_qps']:,.0f} | {r['faiss_qps']:,.0f} | "
              f"{r['faiss_blas_qps']:,.0f} | {r['memkit_qps'] / r['faiss_qps']:.2f} | "
              f"{r['memkit_qps'] / r['faiss_blas_qps']:.2f} |" for n, r in flat.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--data", nargs="+", choices=sorted(DATA), default=list(DATA))
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--hnsw-max", type=int, default=100_000,
                        help="largest size at which HNSW32 is built (76-188 s at 1M here)")
    parser.add_argument("--digits-max", type=int, default=100_000,
                        help="largest size for the digits keys (1,797 images: at 1M each "
                             "would recur ~560 times, with noise)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    rows, flat = [], {}
    for n in args.sizes:
        for kind in [d for d in args.data if d != "digits" or n <= args.digits_max]:
            size_rows, size_flat = run_size(kind, n, args.queries, args.hnsw_max)
            rows += size_rows
            if size_flat:
                flat[n] = size_flat
    meta = {"torch": torch.__version__, "faiss": faiss.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "threads": 1, "dim": DIM,
            "queries": args.queries, "sizes": args.sizes, "hnsw_max": args.hnsw_max,
            "digits_max": args.digits_max,
            "seconds": time.perf_counter() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "datastore.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "exact_kernel_vs_faiss": flat}, indent=2))
    table = markdown(rows, flat)
    (args.out / "datastore.md").write_text(table)
    print(table)
    print(f"{meta['seconds']:.0f} s; wrote {args.out / 'datastore.json'} and datastore.md")


if __name__ == "__main__":
    main()
