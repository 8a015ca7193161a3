"""Accuracy at equal total bytes: methods x budgets x seeds on three offline streams.

The MEMO paper's comparison (Zhou et al., "A Model or 603 Exemplars", ICLR
2023): every method gets the same total budget in bytes, and its model
(parameters x their dtype size, including any teacher copy or grown block)
and its memory (exemplars under the stream's codec, plus any logits,
Fisher or bookkeeping) are both charged to it. Methods whose model leaves no
room for one exemplar at a budget are recorded as "does not fit".

    .venv/bin/python benchmarks/budget_sweep.py            # full grid, 2 processes
    .venv/bin/python benchmarks/budget_sweep.py --quick    # a small grid for a smoke test

Writes benchmarks/results/budget_sweep.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from memkit.agents.backbones import mlp
from memkit.budget import module_nbytes
from memkit.sweep import area_under_budget_curve, run_grid, summarise

OUT = Path(__file__).parent / "results"
DATASETS = {  # stream, codec for the exemplars, input shape of the default model, epochs
    "split_mnist5k": ({"name": "split_mnist5k", "n_experiences": 5}, "uint8", (784,), 3),
    "split_digits": ({"name": "split_digits", "n_experiences": 5}, "uint8", (64,), 5),
    "split_mnist1d": ({"name": "split_mnist1d", "n_experiences": 5}, "float16", (40,), 5),
}
TRAIN = {"lr": 0.05, "momentum": 0.9, "batch_size": 32}
METHODS = {
    "finetune": {"learner": {"name": "finetune"}},
    "er": {"memory": "reservoir", "learner": {"name": "er"}},
    "gdumb": {"memory": "gdumb", "learner": {"name": "gdumb"}},
    "icarl": {"memory": "herding", "learner": {"name": "icarl"}},
    "derpp": {"memory": "reservoir", "learner": {"name": "derpp", "alpha": 0.3, "beta": 0.5}},
    "lwf": {"learner": {"name": "lwf"}},
    "ewc": {"learner": {"name": "ewc"}},
    "der_expandable": {"memory": "reservoir", "model": "mlp_blocks",
                       "learner": {"name": "der_expandable"}},
    "memo": {"memory": "reservoir", "model": "mlp_blocks", "learner": {"name": "memo"}},
}
MULTIPLES = (1.25, 2.5, 5.0, 10.0, 20.0)  # total budget as multiples of the default model


def default_model_nbytes(input_shape: tuple[int, ...]) -> int:
    return module_nbytes(mlp(input_shape, 10))


def config(dataset: str, method: str, budget: int, seed: int) -> dict:
    stream, codec, _, epochs = DATASETS[dataset]
    spec = METHODS[method]
    out = {"name": f"{dataset}-{method}-{budget}-{seed}", "seed": seed, "budget": budget,
           "stream": stream, "model": {"name": spec.get("model", "mlp")},
           "learner": {**TRAIN, "epochs": epochs, **spec["learner"]}}
    if "memory" in spec:
        out["memory"] = {"name": spec["memory"], "codec": codec}
    return out


def grid(datasets, methods, multiples, seeds) -> list[tuple[dict, dict]]:
    jobs = []
    for dataset in datasets:
        base = default_model_nbytes(DATASETS[dataset][2])
        for multiple in multiples:
            budget = int(base * multiple)
            for method in methods:
                for seed in seeds:
                    tags = {"dataset": dataset, "method": method, "multiple": multiple,
                            "seed": seed}
                    jobs.append((config(dataset, method, budget, seed), tags))
    return jobs


def auc_table(summary: list[dict], rows: list[dict]) -> dict:
    """Per dataset/method: AUC over every budget of the grid, a misfit scoring 0, and AUC
    over the budgets at which every method fits (so methods share one range)."""
    accuracy = {(c["dataset"], c["method"], c["budget"]): c["final_average"] for c in summary}
    out = {}
    for dataset in sorted({r["dataset"] for r in rows}):
        budgets = sorted({r["budget"] for r in rows if r["dataset"] == dataset})
        methods = [m for m in METHODS if any(r["method"] == m and r["dataset"] == dataset
                                             for r in rows)]
        common = [b for b in budgets if all((dataset, m, b) in accuracy for m in methods)]
        for method in methods:
            every = [accuracy.get((dataset, method, b), 0.0) for b in budgets]
            shared = [accuracy[(dataset, method, b)] for b in common]
            out[f"{dataset}/{method}"] = {
                "all_budgets": area_under_budget_curve([b / 1e6 for b in budgets], every),
                "common_budgets": (area_under_budget_curve([b / 1e6 for b in common], shared)
                                   if common else None),
                "common_range_mb": [common[0] / 1e6, common[-1] / 1e6] if common else None}
    return out


def pivot(summary: list[dict], rows: list[dict], dataset: str) -> str:
    """Final average accuracy, methods x budgets, for one dataset ("—": does not fit)."""
    budgets = sorted({r["budget"] for r in rows if r["dataset"] == dataset})
    cells = {(c["method"], c["budget"]): c for c in summary if c["dataset"] == dataset}
    lines = [f"**{dataset}**, final average accuracy (mean ± std over seeds) by total budget "
             f"(model + memory, MB)", "",
             "| method | " + " | ".join(f"{b / 1e6:.3f}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for method in METHODS:
        if any(r["method"] == method and r["dataset"] == dataset for r in rows):
            values = [cells.get((method, b)) for b in budgets]
            lines.append(f"| {method} | " + " | ".join(
                "—" if c is None else f"{c['final_average']:.3f} ± {c['final_average_std']:.3f}"
                for c in values) + " |")
    return "\n".join(lines)


def markdown(summary: list[dict], rows: list[dict], auc: dict) -> str:
    datasets = sorted({r["dataset"] for r in rows})
    lines = [pivot(summary, rows, d) + "\n" for d in datasets]
    lines += ["| dataset | method | budget (MB) | final avg acc | forgetting | model KB | "
             "memory KB | exemplars | wall s | runs |", "|---|---|---:|---:|---:|---:|---:|---:|"
             "---:|---:|"]
    for c in summary:
        lines.append(
            f"| {c['dataset']} | {c['method']} | {c['budget'] / 1e6:.3f} | "
            f"{c['final_average']:.3f} ± {c['final_average_std']:.3f} | "
            f"{c['forgetting']:.3f} | {c['model_nbytes'] / 1e3:.1f} | "
            f"{c['memory_nbytes'] / 1e3:.1f} | {c['items']:.0f} | {c['wall_s']:.1f} | "
            f"{c['runs']} |")
    misfits = sorted({(r["dataset"], r["method"], r["budget"]) for r in rows
                      if r["status"] == "does not fit"})
    failed = [r for r in rows if r["status"] == "failed"]
    lines += ["", "AUC: area under final average accuracy vs total MB, divided by the MB range "
              "(the mean accuracy over the range).", "",
              "| dataset/method | AUC, all budgets (misfit = 0) | AUC, budgets where all fit |",
              "|---|---:|---:|"]
    lines += [f"| {k} | {v['all_budgets']:.3f} | "
              + ("—" if v["common_budgets"] is None else
                 f"{v['common_budgets']:.3f} ({v['common_range_mb'][0]:.3g}–"
                 f"{v['common_range_mb'][1]:.3g} MB)") + " |" for k, v in auc.items()]
    if misfits:
        lines += ["", "Did not fit (model alone exceeds the budget, or no room for one item): "
                  + ", ".join(f"{d}/{m} at {b / 1e6:.3f} MB" for d, m, b in misfits)]
    if failed:
        lines += ["", f"{len(failed)} runs failed: " + ", ".join(
            f"{r['dataset']}/{r['method']}/{r['budget']}/{r['seed']}" for r in failed)]
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path) -> None:
    datasets = sorted({c["dataset"] for c in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for method in METHODS:
            cells = sorted((c for c in summary if c["dataset"] == dataset
                            and c["method"] == method), key=lambda c: c["budget"])
            if cells:
                ax.errorbar([c["budget"] / 1e6 for c in cells],
                            [c["final_average"] for c in cells],
                            yerr=[c["final_average_std"] for c in cells], marker="o",
                            capsize=3, label=method)
        budgets = sorted({c["budget"] / 1e6 for c in summary if c["dataset"] == dataset})
        ax.set(title=dataset, xlabel="total budget: model + memory (MB)",
               ylabel="final average accuracy", xscale="log", ylim=(0, 1))
        ax.set_xticks(budgets, [f"{b:.3g}" for b in budgets], minor=False)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--multiples", nargs="+", type=float, default=list(MULTIPLES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="split_digits, 2 budgets, 1 seed")
    parser.add_argument("--out", type=Path, default=OUT / "budget_sweep")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the Markdown and plot from OUT.json without running")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads(Path(f"{args.out}.json").read_text())
        print(write_outputs(saved["runs"], args.out, saved["meta"]))
        return
    if args.quick:
        args.datasets, args.multiples, args.seeds = ["split_digits"], [2.5, 10.0], 1
    torch.set_num_threads(1)
    jobs = grid(args.datasets, args.methods, args.multiples, range(args.seeds))
    bar = tqdm(total=len(jobs), desc="budget sweep", unit="run")
    rows = run_grid(jobs, n_jobs=args.jobs, on_result=lambda _: bar.update())
    bar.close()
    meta = {"torch": torch.__version__, "python": platform.python_version(),
            "seeds": args.seeds, "multiples": args.multiples, "jobs": args.jobs}
    print(write_outputs(rows, args.out, meta))


def write_outputs(rows: list[dict], out: Path, meta: dict) -> str:
    """Write OUT.json, OUT.md and OUT.png; return the Markdown."""
    summary = summarise(rows)
    auc = auc_table(summary, rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "auc": auc, "runs": rows}, indent=1))
    table = markdown(summary, rows, auc)
    Path(f"{out}.md").write_text(table)
    plot(summary, Path(f"{out}.png"))
    return table


if __name__ == "__main__":
    main()
