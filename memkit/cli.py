"""The ``memkit`` command: run a config or a sweep, report on runs, inspect a file, list parts."""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from tqdm import tqdm

from memkit import lm_cli, memory_cli
from memkit.budget import format_size
from memkit.config import ConfigError, build, load_config
from memkit.io import load_tensors, read_manifest, write_text_atomic
from memkit.registry import available
from memkit.report import RESULT, write_report
from memkit.results import DATABASE, RUNS, ResultStore
from memkit.run import run
from memkit.sweep import expand_sweep, load_sweep, pending, run_sweep
from memkit.sweep_report import (
    FORMATS,
    build_report,
    compare,
    load_records,
    markdown,
    render_comparison,
    write_sweep_report,
)

CONFIG_COPY = "config.yaml"
BENCH_ALIASES = {"vos": "vos_long_video", "runners": "sweep_runners",
                 "knowledge": "knowledge_stream"}
"""Short names for ``memkit bench``: ``memkit bench vos`` runs benchmarks/vos_long_video.py."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"memkit: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memkit", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="run a YAML config; checkpoints after every experience")
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(command=_run)
    p = sub.add_parser("report", help="tables and a PNG plot over run folders or sweep folders",
                       description="Over run folders: a Markdown table and plot of each run. "
                                   "Over sweep folders: mean ± std per cell, AUC over memory "
                                   "per method, accuracy against budget, failed runs.")
    p.add_argument("runs", nargs="*", type=Path, metavar="DIR",
                   help="run folders, or sweep folders (holding results.sqlite)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                   help="two sweep folders side by side: A, B and B - A per cell and method")
    p.add_argument("--format", choices=FORMATS, default="md", help="sweep reports: md, csv "
                                                                   "(cells) or json")
    p.add_argument("--out", type=Path, help="report folder (default: the run or sweep folder, "
                                            "or runs/report for several)")
    p.set_defaults(command=_report)
    p = sub.add_parser("inspect", help="a saved store's or checkpoint's manifest and bytes")
    p.add_argument("file", type=Path)
    p.set_defaults(command=_inspect)
    p = sub.add_parser("list", help="registered stores, learners, models and streams")
    p.set_defaults(command=_list)
    p = sub.add_parser("sweep", help="run a sweep file's grid of configs in parallel; "
                                     "re-running it skips finished runs")
    p.add_argument("sweep", type=Path, metavar="SWEEP.yaml")
    p.add_argument("--out", type=Path, help="sweep folder (default: runs/sweeps/<file stem>)")
    p.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2; "
                                                       "1 runs in this process)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray: a local Ray with no ADDRESS, or an existing cluster "
                        "('auto', 'ray://HEAD:10001'); needs memkit[ray]")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.set_defaults(command=_sweep)
    p = sub.add_parser("bench", help="run benchmarks/NAME.py of this memkit checkout",
                       description="Run a benchmark script of the memkit checkout in the "
                                   "current folder, e.g. 'memkit bench budget-sweep --quick'.")
    p.add_argument("name", help="benchmark name, e.g. budget-sweep, buffer-throughput")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(command=_bench)
    lm_cli.add_parser(sub)
    memory_cli.add_parser(sub)
    return parser


def _run(args) -> int:
    config = load_config(args.config)
    out = args.resume or args.out or Path("runs") / str(config.get("name", args.config.stem))
    if args.resume is not None:
        _check_same_config(config, args.resume)
    setup = build(config)
    write_text_atomic(out / CONFIG_COPY, yaml.safe_dump(config, sort_keys=False))
    result = run(setup.stream, setup.learner, budget=setup.budget, checkpoint_dir=out,
                 resume=args.resume is not None, progress=not args.quiet)
    write_text_atomic(out / RESULT, result.to_json())
    md, png = write_report([out], out)
    print(f"## {setup.name}: {type(setup.learner).__name__} on {setup.stream.name}\n")
    print(result.table())
    print(f"\nbudget {format_size(setup.budget.capacity)} ({setup.budget.capacity} bytes):\n")
    print(setup.budget.report())
    print(f"\nwrote {out / RESULT}, {md}, {png}")
    return 0


def _check_same_config(config: dict, run_dir: Path) -> None:
    saved = run_dir / CONFIG_COPY
    if not saved.exists():
        raise FileNotFoundError(f"--resume {run_dir}: no {CONFIG_COPY}; not a memkit run folder")
    if yaml.safe_load(saved.read_text()) != config:
        raise ConfigError(f"--resume {run_dir}: the config differs from {saved}, "
                          f"which the run was started with")


def _report(args) -> int:
    if args.compare:
        a, b = args.compare
        comparison = compare(load_records([a]), load_records([b]))
        print(render_comparison(comparison, args.format, [str(a), str(b)]), end="")
        return 0
    if not args.runs:
        raise ValueError("memkit report: expected run or sweep folders, or --compare A B")
    out = args.out or (args.runs[0] if len(args.runs) == 1 else Path("runs") / "report")
    if all((d / DATABASE).exists() for d in args.runs):
        path, png, text = write_sweep_report(args.runs, out, args.format)
        print(text, end="")
        print(f"wrote {path}, {png}")
        return 0
    md, png = write_report(args.runs, out)
    print(md.read_text())
    print(f"wrote {md}, {png}")
    return 0


def _inspect(args) -> int:
    manifest = read_manifest(args.file)
    tensors, _ = load_tensors(args.file)
    header = {k: v for k, v in manifest.items() if k not in ("result", "store_extra")}
    print(yaml.safe_dump(header, sort_keys=False).rstrip())
    if "result" in manifest:
        print(f"experiences done: {len(manifest['result']['matrix'])} of "
              f"{manifest['experiences']}")
    print("\n| tensor | shape | dtype | bytes |\n|---|---|---|---:|")
    for name, t in tensors.items():
        print(f"| {name} | {tuple(t.shape)} | {str(t.dtype)[6:]} | "
              f"{t.numel() * t.element_size()} |")
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"\ntotal {total} bytes ({format_size(total)}); checksum verified")
    return 0


def _sweep(args) -> int:
    sweep = load_sweep(args.sweep)
    out = args.out or Path("runs") / "sweeps" / args.sweep.stem
    runs = expand_sweep(sweep)
    with ResultStore(out) as store:
        todo = pending(runs, store.statuses(), args.retry_failed)
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already recorded in {out}")
    # tqdm's bar shows the elapsed time and, from the runs finished so far, the time left
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", smoothing=0)
    axes = {r.id: r.axes for r in runs}

    def finished(record: dict) -> None:
        score = record["metrics"].get("final_average")
        detail = f"final average {score:.3f}" if record["status"] == "ok" else record["status"]
        bar.write(f"{record['id']} {axes[record['id']]}: {detail}")
        bar.update()

    runner = "ray" if args.ray else ("serial" if args.jobs == 1 else "joblib")
    address = None if args.ray in (None, "local") else args.ray
    records = run_sweep(sweep, out, n_jobs=args.jobs, on_result=finished,
                        retry_failed=args.retry_failed, runner=runner, address=address)
    bar.close()
    print(markdown(build_report(records)), end="")
    print(f"\nwrote {out / DATABASE} and {out / RUNS}/<id>.json")
    return 0


def _bench(args) -> int:
    name = BENCH_ALIASES.get(args.name, args.name)
    script = Path("benchmarks") / f"{name.replace('-', '_')}.py"
    if not script.exists():
        known = sorted(p.stem.replace("_", "-") for p in Path("benchmarks").glob("*.py"))
        raise FileNotFoundError(f"memkit bench: no {script} here; run it from a memkit "
                                f"checkout (benchmarks found here: {known or 'none'})")
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _list(args) -> int:
    for kind, names in available().items():
        print(f"{kind}: {', '.join(names) or '(none)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
