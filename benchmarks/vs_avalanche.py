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

Part 2, end to end. Split-Digits and Split-MNIST-5k (5 experiences of 2
classes), converted with ``to_avalanche`` so both sides train on the same
tensors in the same experience order. Each run, in a fresh process, builds the
same MLP (``memkit.agents.backbones.mlp``, one hidden layer of 100, initialised
from the run's seed) and trains it with SGD (lr 0.05, momentum 0.9, a fresh
optimiser state per experience on both sides), 3 epochs per experience, on
minibatches of 32 current + 32 replayed items, with a memory of 200 items
(digits) or 500 (MNIST-5k) filled with each experience's data after training
on it. Rows: Avalanche ``Naive`` + ``ReplayPlugin`` with a
``ReservoirSamplingBuffer`` against memkit ``ExperienceReplay`` with a
``Reservoir``; ``ReplayPlugin`` with a ``ClassBalancedBuffer`` against
``ExperienceReplay`` with a ``ClassBalanced`` store; and Avalanche ``Naive`` +
``MemkitReplayPlugin`` with a ``Reservoir``; Avalanche ``ICaRL`` (memory of
M items, ``fixed_memory=True``, on an ``nc_benchmark`` over the same tensors in
the same class order, see ``icarl_benchmark``) against memkit ``ICaRL`` with a
``Herding`` store: both train on minibatches of 32 drawn from the experience's
data and every exemplar, with the paper's sigmoid/BCE loss and distillation
(Avalanche: mean over all outputs; memkit: summed over the classes seen,
over the minibatch), and classify by nearest exemplar mean. Training time is the wall time of
the training calls (Avalanche: ``strategy.train`` per experience, evaluator
without metrics or loggers; memkit: ``learn``); accuracy is then computed the
same way for every side: the model's argmax on each experience's test set,
averaged over the experiences. Imports (Avalanche, and the ``torch._dynamo``
that the first optimiser a process builds pulls in) happen once, before the
runs are forked, so neither side's time includes them.

    .venv/bin/python benchmarks/vs_avalanche.py --part 1|2|all

Part 1 writes benchmarks/results/vs_avalanche.{json,md}, part 2
benchmarks/results/vs_avalanche_end_to_end.{json,md}.
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


def run_part_1(args) -> None:
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


STREAMS = {"split_digits": 200, "split_mnist5k": 500}
"""Each end-to-end stream and its memory size in items."""
RUNS = (("replay", "avalanche"), ("replay", "memkit"), ("replay", "avalanche+memkit_plugin"),
        ("class_balanced", "avalanche"), ("class_balanced", "memkit"),
        ("icarl", "avalanche"), ("icarl", "memkit"))
STORES = {"replay": "reservoir", "class_balanced": "class_balanced", "icarl": "herding"}
E2E = {"lr": 0.05, "momentum": 0.9, "batch_size": 32, "replay_batch_size": 32, "hidden": 100}


def make_stream(name: str, seed: int):
    from memkit import data

    return getattr(data, name)(seed=seed)


def make_model(stream, seed: int) -> torch.nn.Module:
    from memkit.agents.backbones import mlp

    torch.manual_seed(seed)
    return mlp(tuple(stream[0].train.x.shape[1:]), stream.n_classes, hidden=(E2E["hidden"],))


def make_store(method: str, stream, memory: int):
    """A memkit store of exactly ``memory`` items of the stream's ``x`` and ``y``."""
    from memkit import Budget
    from memkit.registry import create

    x = stream[0].train.x
    spec = {"x": (tuple(x.shape[1:]), x.dtype), "y": ((), torch.int64)}
    name = STORES[method]
    item = create("store", name, spec=spec, budget=Budget(2**20)).item_nbytes  # a small probe
    store = create("store", name, spec=spec, budget=Budget(memory * item))
    if store.capacity != memory:
        raise RuntimeError(f"make_store: expected a store of {memory} items, got {store.capacity}")
    return store


def train_memkit(method: str, stream, model, memory: int, seed: int, epochs: int):
    """Training seconds and the trained learner's ``predict``."""
    from memkit.agents.er import ExperienceReplay
    from memkit.agents.icarl import ICaRL

    store = make_store(method, stream, memory)
    settings = {"lr": E2E["lr"], "momentum": E2E["momentum"], "epochs": epochs,
                "batch_size": E2E["batch_size"], "seed": seed}
    if method == "icarl":
        learner = ICaRL(model, store, **settings)
    else:
        learner = ExperienceReplay(model, store, replay_batch_size=E2E["replay_batch_size"],
                                   **settings)
    start = time.perf_counter()
    for experience in stream:
        learner.learn(experience)
    return time.perf_counter() - start, learner.predict


def icarl_benchmark(stream):
    """``nc_benchmark`` over the stream's tensors, in its class order: what Avalanche's ICaRL needs.

    ICaRL reads ``experience.benchmark.n_classes_per_exp``, which ``to_avalanche``'s
    benchmark lacks, and appends a dataset whose task labels Avalanche cannot
    concatenate with ``to_avalanche``'s (``FlatData.concat`` of a ``ConstantSequence``).
    """
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    from memkit import Batch

    train, test = (Batch.cat([getattr(exp, part) for exp in stream]) for part in ("train", "test"))
    return nc_benchmark(*(_make_taskaware_tensor_classification_dataset(b.x, b.y)
                          for b in (train, test)),
                        n_experiences=len(stream), task_labels=False, shuffle=False,
                        fixed_class_order=[c for exp in stream for c in exp.classes])


def train_avalanche(method: str, side: str, stream, model, memory: int, seed: int,
                    epochs: int):
    """Training seconds and the trained strategy's prediction (its model's argmax)."""
    from avalanche.training.determinism.rng_manager import RNGManager
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer, ReservoirSamplingBuffer
    from avalanche.training.supervised import ICaRL, Naive

    from memkit.agents.backbones import split_head
    from memkit.integrations.avalanche import MemkitReplayPlugin, to_avalanche

    benchmark = icarl_benchmark(stream) if method == "icarl" else to_avalanche(stream)
    optimizer = torch.optim.SGD(model.parameters(), lr=E2E["lr"], momentum=E2E["momentum"])
    common = {"optimizer": optimizer, "train_mb_size": E2E["batch_size"], "train_epochs": epochs,
              "device": "cpu", "evaluator": EvaluationPlugin(loggers=[])}
    if method == "icarl":
        extractor, head = split_head(model)
        strategy = ICaRL(feature_extractor=extractor, classifier=head, memory_size=memory,
                         buffer_transform=None, fixed_memory=True, **common)
    elif side == "avalanche":
        policy = (ReservoirSamplingBuffer(memory) if method == "replay" else
                  ClassBalancedBuffer(memory, adaptive_size=True))
        strategy = Naive(model=model, criterion=torch.nn.CrossEntropyLoss(), plugins=[
            ReplayPlugin(mem_size=memory, batch_size=E2E["batch_size"],
                         batch_size_mem=E2E["replay_batch_size"], storage_policy=policy)],
                         **common)
    else:
        strategy = Naive(model=model, criterion=torch.nn.CrossEntropyLoss(), plugins=[
            MemkitReplayPlugin(make_store(method, stream, memory),
                               batch_size_mem=E2E["replay_batch_size"], seed=seed)], **common)
    RNGManager.set_random_seeds(seed)
    start = time.perf_counter()
    for experience in benchmark.train_stream:
        strategy.train(experience)
    seconds = time.perf_counter() - start

    def predict(x: torch.Tensor) -> torch.Tensor:  # ICaRL's model is nearest-mean in eval mode
        strategy.model.eval()
        with torch.no_grad():
            return strategy.model(x).argmax(1)

    return seconds, predict


def final_accuracy(predict, stream) -> float:
    """Mean over the experiences of the test accuracy of ``predict`` on each."""
    accuracies = [(predict(exp.test.x) == exp.test.y).float().mean().item() for exp in stream]
    return sum(accuracies) / len(accuracies)


def end_to_end(stream_name: str, method: str, side: str, seed: int, epochs: int) -> dict:
    """One training run in this (fresh) process: training seconds and final accuracy."""
    torch.set_num_threads(1)
    stream = make_stream(stream_name, seed)
    model = make_model(stream, seed)
    memory = STREAMS[stream_name]
    if side == "memkit":
        seconds, predict = train_memkit(method, stream, model, memory, seed, epochs)
    else:
        seconds, predict = train_avalanche(method, side, stream, model, memory, seed, epochs)
    return {"stream": stream_name, "method": method, "side": side, "seed": seed,
            "memory_items": memory, "epochs": epochs, "train_s": seconds,
            "final_accuracy": final_accuracy(predict, stream)}


def summary(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds of each (stream, method, side)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["stream"], row["method"], row["side"]), []).append(row)
    out = []
    for (stream, method, side), runs in groups.items():
        acc = torch.tensor([r["final_accuracy"] for r in runs], dtype=torch.float64)
        sec = torch.tensor([r["train_s"] for r in runs], dtype=torch.float64)
        out.append({"stream": stream, "method": method, "side": side, "seeds": len(runs),
                    "accuracy_mean": acc.mean().item(), "accuracy_std": acc.std().item(),
                    "train_s_mean": sec.mean().item(), "train_s_std": sec.std().item()})
    return out


def markdown_end_to_end(stats: list[dict], meta: dict) -> str:
    """One row per stream, method and side; time ratios against the Avalanche strategy."""
    by = {(s["stream"], s["method"], s["side"]): s for s in stats}
    lines = [f"MLP ({meta['hidden']} hidden), SGD lr {meta['lr']} momentum {meta['momentum']}, "
             f"{meta['epochs']} epochs per experience, minibatches of {meta['batch_size']} + "
             f"{meta['replay_batch_size']} replayed, mean ± std over {meta['seeds']} seeds, "
             f"1 torch thread, avalanche-lib {meta['avalanche']}.", "",
             "| stream | method | side | final avg accuracy | train time | "
             "Avalanche time / this |", "|---|---|---|---:|---:|---:|"]
    for stream, method, side in by:
        s, base = by[(stream, method, side)], by[(stream, method, "avalanche")]
        lines.append(f"| {stream} (M={STREAMS[stream]}) | {method} | {side} | "
                     f"{100 * s['accuracy_mean']:.1f} ± {100 * s['accuracy_std']:.1f} % | "
                     f"{s['train_s_mean']:.2f} ± {s['train_s_std']:.2f} s | "
                     f"{base['train_s_mean'] / s['train_s_mean']:.1f}x |")
    return "\n".join(lines) + "\n"


def run_part_2(args) -> None:
    from avalanche.training.supervised import Naive  # noqa: F401 - imported before forking

    import memkit.buffers  # registers the stores the children create
    import memkit.integrations.avalanche  # noqa: F401 - imports Avalanche once, before forking

    # The first optimiser a process builds imports torch._dynamo (seconds): do it here, once.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    rows = []
    for stream in STREAMS:
        for seed in range(args.seeds):
            for method, side in RUNS:
                start = time.perf_counter()
                rows.append(in_fresh_process(end_to_end, stream, method, side, seed, args.epochs))
                print(f"{stream} {method} {side} seed {seed}: {rows[-1]['train_s']:.2f} s "
                      f"train, acc {rows[-1]['final_accuracy']:.3f} "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)
    import avalanche

    stats = summary(rows)
    meta = {"torch": torch.__version__, "avalanche": avalanche.__version__,
            "python": platform.python_version(), "threads": 1, "seeds": args.seeds,
            "epochs": args.epochs, "streams": STREAMS, **E2E,
            "load_average_at_end": os.getloadavg()}
    OUT.mkdir(exist_ok=True)
    (OUT / "vs_avalanche_end_to_end.json").write_text(
        json.dumps({"meta": meta, "summary": stats, "rows": rows}, indent=1))
    table = markdown_end_to_end(stats, meta)
    (OUT / "vs_avalanche_end_to_end.md").write_text(table)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("1", "2", "all"), default="all")
    parser.add_argument("--experiences", type=int, default=10)
    parser.add_argument("--per-experience", type=int, default=5_000)
    parser.add_argument("--online-updates", type=int, default=1_000)
    parser.add_argument("--online-batch", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3, help="part 2: seeds per row")
    parser.add_argument("--epochs", type=int, default=3, help="part 2: epochs per experience")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part in ("1", "all"):
        run_part_1(args)
    if args.part in ("2", "all"):
        run_part_2(args)


if __name__ == "__main__":
    main()
