"""Grids of runs: many configs, run in parallel processes, summarised per cell.

The MEMO paper (Zhou et al., ICLR 2023) compares continual learners across
memory scales, not at one size: a grid of methods x total byte budgets x
seeds, summarised as mean ± std per cell and as the area under the
accuracy-versus-memory curve (AUC). Each run is one process-local job with one
torch thread; the same config gives the same numbers serially and in parallel.
"""

from __future__ import annotations

import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from joblib import Parallel, delayed

from memkit.budget import BudgetExceeded, parse_size
from memkit.config import BudgetTooSmall, build
from memkit.run import run


def run_config(config: Mapping, tags: Mapping | None = None) -> dict:
    """Build and run one config with one torch thread; return its metrics and bytes.

    A config whose parts do not fit its budget is recorded with status
    ``"does not fit"`` and the reason, not raised: at small budgets a large
    model leaving no room for a memory is itself a result.
    """
    torch.set_num_threads(1)
    row = {**(tags or {}), "budget": parse_size(config["budget"])}
    started = time.perf_counter()
    try:
        setup = build(config)
        result = run(setup.stream, setup.learner, budget=setup.budget, progress=False)
    except (BudgetExceeded, BudgetTooSmall) as exc:
        return {**row, "status": "does not fit", "reason": str(exc)}
    except Exception:  # one failing run must not stop a grid; keep its traceback
        return {**row, "status": "failed", "reason": traceback.format_exc()}
    stores = setup.learner.stores.values()
    return {**row, "status": "ok", "final_average": result.final_average,
            "forgetting": result.forgetting, "backward_transfer": result.backward_transfer,
            "model_nbytes": setup.budget.used - sum(s.nbytes for s in stores),
            "memory_nbytes": sum(s.nbytes for s in stores),
            "items": sum(len(s) for s in stores if hasattr(s, "__len__")),
            "wall_s": time.perf_counter() - started, "matrix": result.matrix}


def run_grid(jobs: Sequence[tuple[Mapping, Mapping]], n_jobs: int = 2,
             on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run ``(config, tags)`` pairs in ``n_jobs`` processes; results in input order."""
    runner = Parallel(n_jobs=n_jobs, return_as="generator")
    results = []
    for row in runner(delayed(run_config)(config, tags) for config, tags in jobs):
        results.append(row)
        if on_result is not None:
            on_result(row)
    return results


def summarise(rows: Iterable[dict], keys: Sequence[str] = ("dataset", "method", "budget"),
              metrics: Sequence[str] = ("final_average", "forgetting", "model_nbytes",
                                        "memory_nbytes", "items", "wall_s")) -> list[dict]:
    """Mean and standard deviation of each metric per cell of ``keys`` (ok runs only)."""
    cells = defaultdict(list)
    for row in rows:
        if row["status"] == "ok":
            cells[tuple(row[k] for k in keys)].append(row)
    out = []
    for cell, members in sorted(cells.items(), key=lambda kv: tuple(map(_order, kv[0]))):
        entry = dict(zip(keys, cell, strict=True)) | {"runs": len(members)}
        for metric in metrics:
            values = np.array([m[metric] for m in members], dtype=float)
            entry[metric], entry[f"{metric}_std"] = values.mean(), values.std()
        out.append(entry)
    return out


def _order(value) -> tuple:
    """Numbers before strings, numbers by value (a budget of 2e5 sorts before 1.5e6)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if number else (1, 0, str(value))


def area_under_budget_curve(budgets_mb: Sequence[float], accuracy: Sequence[float]) -> float:
    """Trapezoidal area under accuracy versus total memory (MB), divided by the MB range.

    The division makes it the mean accuracy over the memory range, comparable
    between grids with different ranges; a single budget gives its accuracy.
    """
    x, y = np.asarray(budgets_mb, dtype=float), np.asarray(accuracy, dtype=float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(x) == 1 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))
