"""Reports over finished runs: a Markdown table and a PNG plot.

The plot has, per run, a heat map of its score matrix, then the average
score after each experience and the bytes held (per budget owner) after each
experience, one line per run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from memkit.budget import format_size
from memkit.io import atomic_path, write_text_atomic
from memkit.run import RunResult

RESULT = "result.json"


def load_run(run_dir: str | Path) -> RunResult:
    path = Path(run_dir) / RESULT
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no {RESULT}; is it a finished memkit run folder?")
    try:
        return RunResult.from_json(path.read_text())
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path}: not a memkit run result ({exc})") from None


def markdown(runs: dict[str, RunResult]) -> str:
    """One row per run: final average, forgetting, backward transfer, bytes used."""
    lines = ["| run | stream | learner | final avg | forgetting | BWT | memory bytes | "
             "budget used |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        last = r.memory[-1] if r.memory else {}
        held = sum(s["nbytes"] for s in last.get("stores", {}).values())
        used = last.get("budget", {}).get("used")
        lines.append(f"| {name} | {r.stream} | {r.learner} | {r.final_average:.3f} | "
                     f"{r.forgetting:.3f} | {r.backward_transfer:+.3f} | {format_size(held)} | "
                     f"{'' if used is None else format_size(used)} |")
    sections = [f"\n### {name}\n\n{r.table()}" for name, r in runs.items()]
    return "\n".join(lines + sections) + "\n"


def plot(runs: dict[str, RunResult], path: str | Path) -> None:
    """Heat maps of each run's matrix, average score and memory bytes per experience."""
    n = len(runs)
    fig, axes = plt.subplots(1, n + 2, figsize=(4 * (n + 2), 3.6), squeeze=False)
    axes = axes[0]
    for ax, (name, r) in zip(axes[:n], runs.items(), strict=True):
        image = ax.imshow(r.scores, vmin=0, vmax=1, cmap="viridis")
        ax.set(title=name, xlabel="evaluated on experience", ylabel="after experience")
        fig.colorbar(image, ax=ax, fraction=0.046)
    for name, r in runs.items():
        steps = range(len(r.matrix))
        line = axes[n].plot(steps, r.average, marker="o", label=name)[0]
        axes[n + 1].plot(steps, [_bytes(m, "filled_nbytes") for m in r.memory], marker="o",
                         color=line.get_color(), label=f"{name}: in use")
        axes[n + 1].plot(steps, [_bytes(m, "nbytes") for m in r.memory], linestyle="--",
                         color=line.get_color(), label=f"{name}: charged")
    axes[n].set(title=f"average {_metric(runs)}", xlabel="experience", ylim=(0, 1.02))
    axes[n + 1].set(title="memory bytes (model + stores)", xlabel="experience", ylabel="bytes")
    axes[n + 1].set_ylim(bottom=0)
    axes[n].legend(fontsize="small")
    axes[n + 1].legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dirs: Sequence[str | Path], out: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.png`` for ``run_dirs`` into the folder ``out``."""
    runs = {Path(d).name or str(d): load_run(d) for d in run_dirs}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / "report.md", out / "report.png"
    write_text_atomic(md, markdown(runs))
    with atomic_path(png, ".png") as tmp:
        plot(runs, tmp)
    return md, png


def _bytes(snapshot: dict, key: str) -> int:
    """Store bytes (``nbytes`` charged or ``filled_nbytes`` in use) plus non-store owners."""
    stores = sum(s[key] for s in snapshot["stores"].values())
    charged = sum(s["nbytes"] for s in snapshot["stores"].values())
    return stores + snapshot.get("budget", {}).get("used", charged) - charged


def _metric(runs: dict[str, RunResult]) -> str:
    return next(iter(runs.values())).metric
