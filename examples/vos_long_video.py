"""Segment one long video online with two memories of the same byte budget, and score them.

A generated long video (``memkit.data.long_video``: appearance regimes that recur,
occluders, a look-alike distractor, camera jitter) or the first video of a DAVIS-layout
folder is segmented frame by frame by LWL's FIFO memory and by RMSCL's
reconstruction-based memory (Nazemi et al., "Memory-Efficient Continual Learning
Object Segmentation for Long Video", IEEE Access 2024), each given the bytes of
``--budget-frames`` memory entries. The frozen encoder is the one the benchmark
trained (runs/vos/frame_encoder.safetensors) when it is there, else the seeded
random one. Prints J&F on the annotated frames and the bytes each memory holds::

    .venv/bin/python examples/vos_long_video.py
    .venv/bin/python examples/vos_long_video.py --davis ~/data/DAVIS --scale 0.25
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from memkit.agents.vos import FrameEncoder, vos_method
from memkit.buffers.lwl import frame_spec
from memkit.buffers.rmscl import RMSCLMemory
from memkit.data.davis import read_davis
from memkit.data.long_video import long_video
from memkit.kernels.segmentation import j_and_f

ENCODER = Path(__file__).resolve().parent.parent / "runs" / "vos" / "frame_encoder.safetensors"


def load_video(args: argparse.Namespace):
    """The video to segment: a DAVIS folder's first video (resized) or a generated one."""
    if args.davis is None:
        return long_video(args.seed, n_frames=args.frames, size=(args.size, args.size),
                          ramp=40)
    video = read_davis(args.davis)[0]
    size = [max(16, round(s * args.scale)) for s in video.frames.shape[2:]]
    frames = torch.nn.functional.interpolate(video.frames.float(), size=size, mode="bilinear")
    masks = torch.nn.functional.interpolate(video.masks[:, None].float(), size=size)[:, 0]
    return type(video)(video.name, frames.round().to(torch.uint8), masks.to(torch.uint8),
                       video.eval_frames, video.meta)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis", type=Path, default=None, help="a DAVIS-layout folder")
    parser.add_argument("--scale", type=float, default=0.25, help="resize DAVIS frames")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--budget-frames", type=int, default=4)
    parser.add_argument("--encoder", type=Path, default=ENCODER)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    video = load_video(args)
    encoder = FrameEncoder.load(args.encoder) if args.encoder.exists() else FrameEncoder()
    probe = vos_method("rmscl", 1, encoder=encoder, coords=False)
    spec = frame_spec(encoder.out_channels, *probe.feature_size(tuple(video.frames.shape[2:])))
    budget = args.budget_frames * RMSCLMemory.entry_nbytes(spec, probe.codec)  # the larger entry
    scored = video.eval_frames[video.eval_frames > 0]
    print(f"{video.name}: {len(video)} frames of {tuple(video.frames.shape[2:])}, budget "
          f"{budget:,} B = {args.budget_frames} frames; encoder "
          f"{'trained' if args.encoder.exists() else 'random (seeded)'}")
    results = {}
    for method in ("lwl_fifo", "rmscl"):
        learner = vos_method(method, budget, encoder=encoder, coords=False)
        start = time.perf_counter()
        masks = learner.segment(video)
        score = j_and_f(masks, (video.masks > 0).to(torch.uint8), scored)
        held = {name: store.nbytes for name, store in learner.stores.items()}
        results[method] = {**score, "held": held, "entries": learner.memory.capacity}
        print(f"  {method:9s} J&F {score['JF']:.3f} (J {score['J']:.3f}, F {score['F']:.3f}); "
              f"holds {learner.memory.capacity} frames in {sum(held.values()):,} B; "
              f"{time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
