"""Sweep runners side by side: serial, joblib on local processes, and local Ray.

Runs the same grid — the Split-Digits budget sweep
(benchmarks/sweeps/budget_sweep_split_digits.yaml), whole and a few of its
runs spread evenly through it — on each runner from an empty sweep folder, and reports wall time,
speed-up over serial, the overhead per run (worker time not spent inside a
run: start-up, dispatch, imports, recording), the fixed and per-run costs
fitted from the two grid sizes, and the grid size at which each parallel
runner starts to beat serial. Every runner must give the same numbers.

    .venv/bin/python benchmarks/sweep_runners.py              # 8 and 135 runs
    .venv/bin/python benchmarks/sweep_runners.py --sizes 4 40

Writes benchmarks/results/sweep_runners.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from joblib.externals.loky import get_reusable_executor

from memkit.io import write_text_atomic
from memkit.sweep import expand_sweep, load_sweep, run_runs

HERE = Path(__file__).parent
GRID = HERE / "sweeps" / "budget_sweep_split_digits.yaml"
RUNNERS = ("serial", "joblib", "ray")


def spread(runs: list, n: int) -> list:
    """``n`` runs evenly spaced through the grid, so every size has the grid's mix."""
    return [runs[i] for i in np.linspace(0, len(runs) - 1, n).round().astype(int)]


def measure(sweep: dict, n: int, runner: str, jobs: int) -> dict:
    """Run ``n`` of ``sweep``'s runs on ``runner`` into a fresh folder, from cold; time it.

    joblib's worker processes are shut down first, so each measurement pays
    their start, as a new ``memkit sweep`` does; Ray is started and stopped by
    the runner itself.
    """
    get_reusable_executor().shutdown(wait=True)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        records = run_runs(spread(expand_sweep(sweep), n), folder, n_jobs=jobs, runner=runner)
        wall = time.perf_counter() - started
    inside = sum(r["finished"] - r["started"] for r in records)
    workers = 1 if runner == "serial" else jobs
    return {"runner": runner, "runs": len(records), "wall_s": wall, "inside_runs_s": inside,
            "overhead_per_run_s": (wall * workers - inside) / len(records),
            "scores": {r["id"]: r["metrics"].get("matrix") for r in records}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs=2, type=int, default=[8, 135], metavar=("SMALL", "BIG"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sweep_runners")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sweep = load_sweep(GRID)
    measure(sweep, 1, "serial", 1)  # the driver's own imports and data caches, paid once
    rows = [measure(sweep, n, runner, args.jobs) for n in args.sizes for runner in RUNNERS]
    fits = {runner: fit([r for r in rows if r["runner"] == runner]) for runner in RUNNERS}
    same = all(r["scores"] == _serial(rows, r["runs"])["scores"] for r in rows)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "jobs": args.jobs,
            "grid": str(GRID.relative_to(HERE.parent)), "identical_scores": same}
    table = markdown(rows, fits, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(f"{args.out}.json"), json.dumps(
        {"meta": meta, "fits": fits, "rows": [{k: v for k, v in r.items() if k != "scores"}
                                             for r in rows]}, indent=1))
    write_text_atomic(Path(f"{args.out}.md"), table)
    print(table)


def _serial(rows: list[dict], n: int) -> dict:
    return next(r for r in rows if r["runner"] == "serial" and r["runs"] == n)


def fit(rows: list[dict]) -> dict:
    """Wall time = fixed + n × per_run, through the two grid sizes."""
    small, big = sorted(rows, key=lambda r: r["runs"])
    per_run = (big["wall_s"] - small["wall_s"]) / (big["runs"] - small["runs"])
    return {"fixed_s": small["wall_s"] - per_run * small["runs"], "per_run_s": per_run}


def break_even(fits: dict, runner: str) -> str:
    """The grid sizes at which ``runner`` finishes before serial, from the fitted costs."""
    gain = fits["serial"]["per_run_s"] - fits[runner]["per_run_s"]
    extra = fits[runner]["fixed_s"] - fits["serial"]["fixed_s"]
    if gain <= 0:
        return "never" if extra >= 0 else f"only below {extra / gain:.0f}"
    return "always" if extra <= 0 else f"{extra / gain:.0f}"


def markdown(rows: list[dict], fits: dict, meta: dict) -> str:
    lines = [f"Grid: {meta['grid']} (a few runs spread through it, and all of it); "
             f"{meta['jobs']} workers "
             f"for joblib and Ray; identical scores on every runner: "
             f"{'yes' if meta['identical_scores'] else 'NO'}.", "",
             "| runs | runner | wall s | speed-up vs serial | time inside runs s | "
             "overhead per run s |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        speedup = _serial(rows, r["runs"])["wall_s"] / r["wall_s"]
        lines.append(f"| {r['runs']} | {r['runner']} | {r['wall_s']:.1f} | {speedup:.2f}× | "
                     f"{r['inside_runs_s']:.1f} | {r['overhead_per_run_s']:.3f} |")
    lines += ["", "| runner | fixed cost s | cost per run s | beats serial from (runs) |",
              "|---|---:|---:|---:|"]
    for runner, f in fits.items():
        where = "—" if runner == "serial" else break_even(fits, runner)
        lines.append(f"| {runner} | {f['fixed_s']:.1f} | {f['per_run_s']:.3f} | {where} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
