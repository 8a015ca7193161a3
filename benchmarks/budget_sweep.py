"""Accuracy at equal total bytes: methods x budgets x seeds on three offline streams.

The MEMO paper's comparison (Zhou et al., "A Model or 603 Exemplars", ICLR
2023): every method gets the same total budget in bytes, and its model
(parameters x their dtype size, including any teacher copy or grown block)
and its memory (exemplars under the stream's codec, plus any logits,
Fisher or bookkeeping) are both charged to it. Methods whose model leaves no
room for one exemplar at a budget are recorded as "does not fit".

The grid is three sweep files, benchmarks/sweeps/budget_sweep_<stream>.yaml
(9 learners x 5 budgets x 3 seeds each); this script runs them with
``memkit.sweep.run_sweep`` into runs/budget_sweep/<stream>/ (re-running skips
finished runs) and writes one report over the three:

    .venv/bin/python benchmarks/budget_sweep.py                 # 405 runs, 2 processes
    .venv/bin/python benchmarks/budget_sweep.py --ray           # on a local Ray
    .venv/bin/python benchmarks/budget_sweep.py --ray auto      # on a running Ray cluster
    .venv/bin/python benchmarks/budget_sweep.py --streams split_digits

Writes benchmarks/results/budget_sweep.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from tqdm import tqdm

from memkit.io import write_text_atomic
from memkit.sweep import expand_sweep, load_sweep, run_sweep
from memkit.sweep_report import build_report, markdown, plot

HERE = Path(__file__).parent
STREAMS = ("split_mnist5k", "split_digits", "split_mnist1d")


def sweep_file(stream: str) -> Path:
    return HERE / "sweeps" / f"budget_sweep_{stream}.yaml"


def run_all(streams, runs_dir: Path, runner: str, jobs: int, address: str | None) -> list[dict]:
    """Run each stream's sweep file into ``runs_dir/<stream>``; every record of the grid."""
    sweeps = {s: load_sweep(sweep_file(s)) for s in streams}
    total = sum(len(expand_sweep(s)) for s in sweeps.values())
    bar = tqdm(total=total, desc="budget sweep", unit="run", smoothing=0)
    records = []
    for stream, sweep in sweeps.items():
        before = bar.n
        done = run_sweep(sweep, runs_dir / stream, n_jobs=jobs, runner=runner, address=address,
                         on_result=lambda _: bar.update())
        bar.update(len(done) - (bar.n - before))  # runs recorded by an earlier call
        records += done
    bar.close()
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "budget_sweep",
                        help="sweep folders go here, one per stream")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "budget_sweep")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runner = "ray" if args.ray else ("serial" if args.jobs == 1 else "joblib")
    address = None if args.ray in (None, "local") else args.ray
    records = run_all(args.streams, args.runs, runner, args.jobs, address)
    report = build_report(records)
    meta = {"torch": torch.__version__, "python": platform.python_version(),
            "runner": runner, "jobs": args.jobs, "streams": args.streams}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    write_text_atomic(Path(f"{args.out}.json"), json.dumps({"meta": meta, **report}, indent=1))
    write_text_atomic(Path(f"{args.out}.md"), text)
    plot(report, Path(f"{args.out}.png"))
    print(text)


if __name__ == "__main__":
    main()
