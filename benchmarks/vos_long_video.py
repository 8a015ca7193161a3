"""Online video object segmentation on long videos under a byte budget: LWL, GRCL, RMSCL.

Nazemi, Shafiee, Gharaee & Fieguth, "Memory-Efficient Continual Learning Object
Segmentation for Long Video" (IEEE Access 2024, arXiv 2309.15274) report that an
LWL-style online learner with a small memory of past frames loses the target on
long videos whose appearance drifts and recurs, and that a gated regularizer
(GRCL) or a reconstruction-based memory (RMSCL) recovers more than 8 J&F points
there while staying level on short videos. This script checks that shape with
memkit's parts (``memkit.agents.vos``): one ``OnlineVOSLearner`` per method and
memory size, run online on every video:

- methods ``lwl_fifo``, ``grcl``, ``rmscl``, ``hybrid``, ``usage`` (XMem-style) at
  memories of N = 4, 8, 16 and 32 frames, and ``unbounded`` (the ceiling, once a video);
- a byte budget of N frames is ``N x E`` with ``E`` the largest memory entry of the
  three memories at the video's feature size (an RMSCL or usage entry carries a
  descriptor or usage counters beside the LWL entry's feature map and mask), so
  every memory holds exactly N frames; a method with GRCL gets its
  ``regularizer_snapshots`` (parameter snapshot, gate) pairs on top, charged to the
  same budget, and the bytes held by each store are recorded;
- videos from ``memkit.data.long_video``: a long suite (2,000 frames, three
  appearance regimes in sub-chunks of 50-300 frames that recur A B C A B C ...,
  at ``drift`` 0.4: per regime the target's and the background's textures are
  swapped with probability 0.2 and hue-rotated by up to 0.4 pi, with contrast,
  brightness and blur changes; a regime's first showing fades in over ``ramp`` =
  40 frames, its recurrences are abrupt) and a short suite (80 frames, one
  regime), 64 x 64 pixels, a look-alike distractor, occluders and camera jitter;
- the frozen encoder is trained once by ``memkit.agents.vos.train_frame_encoder``
  on generated videos whose seeds no suite uses, and cached in
  runs/vos/frame_encoder.safetensors (trained when missing, a minute or two);
- scored by J, F and J&F (``memkit.kernels.segmentation``) on the CLVOS23-style
  annotated frames (first and middle frame of each sub-chunk; frame 0, whose mask
  is given, left out; the DAVIS-style frames for the short suite) and on every
  frame but frame 0; frames per second (encoding included).

Default: 3 seeds (seed s makes the suites' videos ``long_suite(2, seed=s)``,
``short_suite(4, seed=s)`` and the learner's seed), 2 processes: 26 minutes measured
while other jobs shared the two cores. ``--quick``:
one seed, one long video of 2,000 frames, budgets 4 and 32, two short videos (1.5 minutes).
``--davis ROOT``
runs the same methods on the videos of a DAVIS-layout folder (frames resized by
``--davis-scale``; every object id is the one target)::

    .venv/bin/python benchmarks/vos_long_video.py            # the default
    .venv/bin/python benchmarks/vos_long_video.py --quick
    memkit bench vos --davis ~/data/DAVIS --davis-scale 0.25

Writes benchmarks/results/vos_long_video.{json,md,png} and vos_long_video_strip.png
(frames of one long video with the masks of LWL-FIFO, RMSCL and GRCL at the
smallest budget). The numbers (not the frame rates) are the same for the same seeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from memkit.agents.vos import (
    METHODS,
    FrameEncoder,
    OnlineVOSLearner,
    TargetModel,
    trained_encoder,
    vos_method,
)
from memkit.buffers.grcl import GatedRegularizer
from memkit.buffers.lwl import LWLMemory, frame_spec
from memkit.buffers.rmscl import RMSCLMemory
from memkit.buffers.usage import UsageMemory
from memkit.data.davis import read_davis
from memkit.data.long_video import long_suite, short_suite
from memkit.io import write_text_atomic
from memkit.kernels.segmentation import j_and_f
from memkit.runners import run_unordered
from memkit.video import Video

HERE = Path(__file__).resolve().parent
ENCODER_PATH = HERE.parent / "runs" / "vos" / "frame_encoder.safetensors"
BOUNDED = ("lwl_fifo", "grcl", "rmscl", "hybrid", "usage")
STRIP_METHODS = ("lwl_fifo", "rmscl", "grcl")
STRIP_FRAMES = 8


@dataclass(frozen=True)
class Setting:
    """What one benchmark run covers; ``learner`` options go to every ``OnlineVOSLearner``."""

    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[int, ...] = (4, 8, 16, 32)
    methods: tuple[str, ...] = BOUNDED
    long_videos: int = 2
    long_frames: int = 2000
    short_videos: int = 4
    short_frames: int = 80
    size: tuple[int, int] = (64, 64)
    drift: float = 0.4
    ramp: int = 40
    learner: tuple[tuple[str, object], ...] = (("coords", False),)
    davis: str | None = None
    davis_scale: float = 0.25


QUICK = Setting(seeds=(0,), budgets=(4, 32), long_videos=1, short_videos=2)


# ----------------------------------------------------------------- videos and budgets

def one_video(setting: Setting, name: str, seed: int, index: int | str) -> Video:
    """Video ``index`` of a generated suite, or the DAVIS video named ``index``."""
    if name == "davis":
        return scale_video(read_davis(setting.davis, videos=[index])[0], setting.davis_scale)
    kwargs = {"n_frames": setting.long_frames, "size": setting.size, "drift": setting.drift,
              "ramp": setting.ramp} if name == "long" else {
        "n_frames": setting.short_frames, "size": setting.size}
    make = long_suite if name == "long" else short_suite
    return make(index + 1, seed=seed, **kwargs)[index]


def scale_video(video: Video, scale: float) -> Video:
    """``video`` with frames resized by ``scale`` (bilinear) and masks (nearest)."""
    if scale == 1.0:
        return video
    h, w = (max(16, round(s * scale)) for s in video.frames.shape[2:])
    frames = F.interpolate(video.frames.float(), size=(h, w), mode="bilinear",
                           antialias=True, align_corners=False)
    masks = F.interpolate(video.masks[:, None].float(), size=(h, w), mode="nearest")[:, 0]
    return Video(video.name, frames.round().clamp(0, 255).to(torch.uint8),
                 masks.to(torch.uint8), video.eval_frames, video.meta)


def entry_nbytes(learner: OnlineVOSLearner, frame_size: Sequence[int]) -> int:
    """``E``: the largest memory entry (LWL, RMSCL, usage) for frames of ``frame_size``."""
    spec = frame_spec(learner.encoder.out_channels, *learner.feature_size(tuple(frame_size)))
    return max(memory.entry_nbytes(spec, learner.codec)
               for memory in (LWLMemory, RMSCLMemory, UsageMemory))


def pair_nbytes(learner: OnlineVOSLearner) -> int:
    """Bytes of one GRCL (snapshot, gate) pair of ``learner``'s target model."""
    model = TargetModel(learner.encoder.out_channels, learner.hidden, coords=learner.coords)
    return GatedRegularizer.pair_nbytes(model)


def budget_nbytes(learner: OnlineVOSLearner, frame_size: Sequence[int], n_frames: int) -> int:
    """The bytes of a memory of ``n_frames`` frames for ``learner``'s method: ``N x E``, plus
    its ``regularizer_snapshots`` GRCL pairs when it has the GRCL regularizer."""
    pairs = learner.regularizer_snapshots if learner.regularizer_factory == "grcl" else 0
    return n_frames * entry_nbytes(learner, frame_size) + pairs * pair_nbytes(learner)


def build(method: str, n_frames: int | None, frame_size: Sequence[int], seed: int,
          encoder: FrameEncoder, options: dict) -> OnlineVOSLearner:
    """The learner of ``method`` with a memory of ``n_frames`` frames (None: unbounded)."""
    learner = vos_method(method, 1, seed=seed, encoder=encoder, **options)
    if n_frames is None:
        return learner
    return vos_method(method, budget_nbytes(learner, frame_size, n_frames), seed=seed,
                      encoder=encoder, **options)


# ----------------------------------------------------------------- one run

def scored_frames(video: Video) -> dict[str, torch.Tensor]:
    """Frames scored: the annotated ones and all annotated frames, frame 0 left out of both."""
    annotated = video.meta.get("annotated", torch.ones(len(video), dtype=torch.bool)).clone()
    annotated[0] = False
    chosen = video.eval_frames[video.eval_frames > 0]
    return {"annotated": chosen, "all": torch.nonzero(annotated).flatten()}


def strip_frames(video: Video, n: int = STRIP_FRAMES) -> list[int]:
    """``n`` frames spread over the video: middles of evenly spaced sub-chunks (or evenly)."""
    starts = list(video.meta.get("chunk_starts", [0]))
    ends = [*starts[1:], len(video)]
    middles = [s + (e - s) // 2 for s, e in zip(starts, ends, strict=True)]
    pool = middles if len(middles) >= n else list(range(1, len(video)))
    picks = np.linspace(0, len(pool) - 1, n).round().astype(int)
    return sorted({int(pool[i]) for i in picks})


def run_video(setting: Setting, suite_name: str, seed: int, index: int | str,
              method: str) -> list[dict]:
    """Every budget of ``method`` on one video (``unbounded``: one run); a record per run."""
    torch.set_num_threads(1)
    video = one_video(setting, suite_name, seed, index)
    encoder = trained_encoder(ENCODER_PATH)
    sizes = [None] if method == "unbounded" else list(setting.budgets)
    options = dict(setting.learner)
    return [_run(build(method, n, video.frames.shape[2:], seed, encoder, options), video,
                 suite_name, seed, method, n) for n in sizes]


def _run(learner: OnlineVOSLearner, video: Video, suite_name: str, seed: int, method: str,
         n: int | None) -> dict:
    masks = learner.segment(video)
    truth = (video.masks > 0).to(torch.uint8)
    scores = {key: j_and_f(masks, truth, frames) for key, frames in scored_frames(video).items()}
    stores = {name: {"nbytes": store.nbytes, "filled_nbytes": store.filled_nbytes,
                     "capacity": int(store.capacity)}
              for name, store in learner.stores.items()}
    strip = strip_frames(video)
    return {"suite": suite_name, "video": video.name, "seed": seed, "method": method,
            "frames": n, "budget_nbytes": learner.budget.capacity,
            "entry_nbytes": entry_nbytes(learner, video.frames.shape[2:]),
            "pair_nbytes": pair_nbytes(learner),
            "held_nbytes": sum(s["nbytes"] for s in stores.values()), "stores": stores,
            "scores": scores, "fps": learner.fps, "n_frames": len(video),
            "strip": {"frames": strip, "masks": masks[strip].tolist()}}


# ----------------------------------------------------------------- all runs and summary

def tasks(setting: Setting) -> list[tuple]:
    """(setting, suite, seed, video index or DAVIS name, method) for every run, longest first.
    A DAVIS folder is run once, with the first seed."""
    methods = (*setting.methods, "unbounded")
    if setting.davis:
        names = [v.name for v in read_davis(setting.davis)]
        return [(setting, "davis", setting.seeds[0], n, m) for n in names for m in methods]
    counts = {"long": setting.long_videos, "short": setting.short_videos}
    return [(setting, name, seed, i, m) for name in ("long", "short")
            for seed in setting.seeds for i in range(counts[name]) for m in methods]


def run_all(setting: Setting, jobs: int = 2) -> list[dict]:
    """Every run of ``setting`` on ``jobs`` processes; the encoder is trained first if missing."""
    trained_encoder(ENCODER_PATH)
    records, todo = [], tasks(setting)
    started = time.perf_counter()
    for i, result in enumerate(run_unordered(run_video, todo, n_jobs=jobs), 1):
        records += result
        print(f"[{i}/{len(todo)}] {result[0]['suite']} {result[0]['video']} "
              f"{result[0]['method']} {time.perf_counter() - started:.0f}s", flush=True)
    return sorted(records, key=lambda r: (r["suite"], r["method"], r["frames"] or 0,
                                          r["seed"], r["video"]))


def _stat(values: Iterable[float]) -> dict:
    values = list(values)
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def summarise(records: Sequence[dict]) -> dict:
    """Per suite, method and memory size: mean and std over seeds of the per-seed mean over
    videos of J, F, J&F (annotated and all frames), fps and bytes held."""
    groups: dict = {}
    for r in records:
        key = (r["suite"], r["method"], r["frames"])
        groups.setdefault(key, {}).setdefault(r["seed"], []).append(r)
    summary: dict = {}
    for (name, method, n), by_seed in groups.items():
        cell = {}
        for where in ("annotated", "all"):
            for metric in ("J", "F", "JF"):
                cell[f"{metric}_{where}"] = _stat(
                    np.mean([r["scores"][where][metric] for r in runs])
                    for runs in by_seed.values())
        flat = [r for runs in by_seed.values() for r in runs]
        cell["fps"] = _stat(r["fps"] for r in flat)
        cell["held_nbytes"] = _stat(r["held_nbytes"] for r in flat)
        cell["budget_nbytes"] = _stat(r["budget_nbytes"] for r in flat)
        cell["per_seed_JF_annotated"] = {
            str(s): float(np.mean([r["scores"]["annotated"]["JF"] for r in runs]))
            for s, runs in by_seed.items()}
        summary.setdefault(name, {}).setdefault(method, {})[str(n or "unbounded")] = cell
    return summary


def shape_check(summary: dict, budgets: Sequence[int]) -> dict:
    """J&F points (x100, annotated frames) by which GRCL, RMSCL and hybrid beat LWL-FIFO at each
    budget, per suite: mean and std over seeds of the paired per-seed difference."""
    out: dict = {}
    for name, methods in summary.items():
        if "lwl_fifo" not in methods:
            continue
        for method in ("grcl", "rmscl", "hybrid", "usage"):
            for n in budgets:
                mine = methods.get(method, {}).get(str(n))
                base = methods["lwl_fifo"].get(str(n))
                if not mine or not base:
                    continue
                seeds = sorted(set(mine["per_seed_JF_annotated"]) & set(
                    base["per_seed_JF_annotated"]))
                diff = [100 * (mine["per_seed_JF_annotated"][s]
                               - base["per_seed_JF_annotated"][s]) for s in seeds]
                out.setdefault(name, {}).setdefault(method, {})[str(n)] = _stat(diff)
    return out


# ----------------------------------------------------------------- report

def _cell(stat: dict, scale: float = 100, digits: int = 1) -> str:
    if stat["n"] > 1:
        return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"
    return f"{scale * stat['mean']:.{digits}f}"


def markdown(summary: dict, check: dict, meta: dict) -> str:
    """The tables: J&F (x100) per method and budget, per suite, on annotated and all frames."""
    s = meta["setting"]
    videos = (f"DAVIS folder {s['davis']} (frames x {s['davis_scale']})" if s.get("davis")
              else f"frames {s['size'][0]}x{s['size'][1]}, {s['long_videos']} long videos "
                   f"({s['long_frames']} frames, drift {s['drift']}, ramp {s['ramp']}) and "
                   f"{s['short_videos']} short videos "
                   f"({s['short_frames']} frames) per seed")
    lines = ["# Online VOS on long videos under a byte budget (GRCL, RMSCL)", "",
             f"{videos}; seeds {s['seeds']}; "
             f"memory entry E = {meta['entry_nbytes']} B (the first video's), GRCL pair = "
             f"{meta['pair_nbytes']} B; wall time {meta['seconds'] / 60:.1f} min. "
             "Mean ± std over seeds of the per-seed mean over videos; J&F x 100.", ""]
    for name, methods in summary.items():
        budgets = sorted({int(k) for m in methods.values() for k in m if k != "unbounded"})
        for where in ("annotated", "all"):
            lines += [f"## {name}: J&F on {where} frames", "",
                      "| method | " + " | ".join(f"N={n}" for n in budgets) + " | unbounded |",
                      "|---|" + "---|" * (len(budgets) + 1)]
            for method, cells in methods.items():
                row = [_cell(cells[str(n)][f"JF_{where}"]) if str(n) in cells else ""
                       for n in budgets]
                ceiling = cells.get("unbounded")
                row.append(_cell(ceiling[f"JF_{where}"]) if ceiling else "")
                lines.append(f"| {method} | " + " | ".join(row) + " |")
            lines.append("")
        lines += [f"## {name}: frames per second and bytes held (memory + regularizer)", "",
                  "| method | " + " | ".join(f"N={n}" for n in budgets) + " | unbounded |",
                  "|---|" + "---|" * (len(budgets) + 1)]
        for method, cells in methods.items():
            row = [f"{cells[k]['fps']['mean']:.0f} fps, {cells[k]['held_nbytes']['mean']:,.0f} B"
                   if k in cells else "" for k in [*map(str, budgets), "unbounded"]]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## Shape check: J&F points over LWL-FIFO (annotated frames, paired by seed)", ""]
    for name, methods in check.items():
        for method, by_n in methods.items():
            parts = [f"N={n}: {d['mean']:+.1f} ± {d['std']:.1f}" for n, d in by_n.items()]
            lines.append(f"- {name}, {method}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """J&F (annotated frames) against bytes held, one line per method, a panel per suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4.2), squeeze=False)
    for ax, (name, methods) in zip(axes[0], summary.items(), strict=True):
        for method, cells in methods.items():
            if method == "unbounded":
                ceiling = cells["unbounded"]["JF_annotated"]["mean"]
                ax.axhline(100 * ceiling, color="k", ls="--", lw=1, label="unbounded")
                continue
            keys = sorted(cells, key=int)
            x = [cells[k]["held_nbytes"]["mean"] / 1024 for k in keys]
            y = [100 * cells[k]["JF_annotated"]["mean"] for k in keys]
            err = [100 * cells[k]["JF_annotated"]["std"] for k in keys]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes held by the stores (KiB)")
        ax.set_ylabel("J&F x 100 (annotated frames)")
        ax.set_title(f"{name} videos")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_strip(setting: Setting, records: Sequence[dict], path: Path) -> bool:
    """Frames of the first video of the first suite with the ground truth and the masks of
    ``STRIP_METHODS`` at the smallest budget overlaid; False when those runs are missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = "davis" if setting.davis else "long"
    seed = setting.seeds[0]
    first = min(r["video"] for r in records if r["suite"] == name) if setting.davis else 0
    video = one_video(setting, name, seed, first)
    smallest = min(setting.budgets)
    runs = {r["method"]: r for r in records if r["suite"] == name and r["seed"] == seed
            and r["video"] == video.name and r["frames"] == smallest}
    rows = [m for m in STRIP_METHODS if m in runs]
    if not rows:
        return False
    frames = runs[rows[0]]["strip"]["frames"]
    masks = {"ground truth": (video.masks[frames] > 0).numpy()}
    masks.update({f"{m} (N={smallest})": np.array(runs[m]["strip"]["masks"], bool) for m in rows})
    fig, axes = plt.subplots(len(masks), len(frames), figsize=(1.6 * len(frames),
                                                                1.7 * len(masks)), squeeze=False)
    regime = video.meta.get("regime")
    for i, (label, stack) in enumerate(masks.items()):
        for j, t in enumerate(frames):
            ax = axes[i][j]
            ax.imshow(_overlay(video.frames[t], stack[j], i == 0))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                title = f"t={t}" + (f" r={int(regime[t])}" if regime is not None else "")
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _overlay(frame: torch.Tensor, mask: np.ndarray, truth: bool) -> np.ndarray:
    image = frame.permute(1, 2, 0).numpy().astype(np.float32) / 255
    colour = np.array([0.1, 0.9, 0.1] if truth else [1.0, 0.1, 0.6], np.float32)
    image[mask] = 0.45 * image[mask] + 0.55 * colour
    return image


# ----------------------------------------------------------------- entry point

def configure(args: argparse.Namespace) -> Setting:
    setting = QUICK if args.quick else Setting()
    if args.seeds is not None:
        setting = replace(setting, seeds=tuple(args.seeds))
    if args.davis is not None:
        setting = replace(setting, davis=str(args.davis), davis_scale=args.davis_scale)
    return setting


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, a couple of minutes")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--davis", type=Path, default=None,
                        help="a DAVIS-layout folder (JPEGImages/480p/..., Annotations/480p/...)")
    parser.add_argument("--davis-scale", type=float, default=0.25,
                        help="resize DAVIS frames by this factor")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "vos_long_video")
    args = parser.parse_args(argv)
    setting = configure(args)
    started = time.perf_counter()
    records = run_all(setting, args.jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps({"runs": records}))
    summary = summarise(records)
    check = shape_check(summary, setting.budgets)
    meta = {"setting": asdict(setting), "entry_nbytes": records[0]["entry_nbytes"],
            "pair_nbytes": records[0]["pair_nbytes"],
            "encoder": str(ENCODER_PATH),
            "seconds": time.perf_counter() - started, "python": platform.python_version(),
            "torch": torch.__version__, "methods": {m: METHODS[m] for m in METHODS}}
    result = {"meta": meta, "summary": summary, "shape_check": check,
              "runs": [{k: v for k, v in r.items() if k != "strip"} for r in records]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(result, indent=1))
    write_text_atomic(args.out.with_suffix(".md"), markdown(summary, check, meta))
    plot(summary, args.out.with_suffix(".png"))
    plot_strip(setting, records, args.out.with_name(args.out.name + "_strip.png"))
    print(markdown(summary, check, meta))
    return result


if __name__ == "__main__":
    main()
