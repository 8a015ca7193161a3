"""A video with object masks: what video-object-segmentation code reads, writes and scores.

Semi-supervised video object segmentation (VOS) gives the first frame's mask
of each object and asks for the masks of every later frame. A ``Video`` holds
``T`` RGB frames (uint8 ``[T, 3, H, W]``), one label map per frame (uint8
``[T, H, W]``: 0 background, 1..K object ids, as in the DAVIS annotation
PNGs) and the indices of the frames a method is scored on.

Long videos are scored on a few annotated frames the way CLVOS23 does
(Nazemi, Moustafa & Fieguth, "CLVOS23: A Long Video Object Segmentation
Dataset for Continual Learning", CVPR Workshops 2023): a video is cut into
sub-chunks and the first and the middle frame of each sub-chunk are
annotated (``clvos_eval_frames``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import torch


@dataclass(frozen=True, eq=False)
class Video:
    """``T`` frames, their label maps and the indices of the frames used for evaluation.

    Two videos compare by identity (``eq=False``): comparing tensors field by field
    has no single truth value.

    ``frames``: uint8 ``[T, 3, H, W]``; ``masks``: uint8 ``[T, H, W]`` (0 background,
    1..K object ids); ``eval_frames``: int64 ``[n]``, strictly increasing, in ``0..T-1``;
    ``meta``: anything else (the generator's per-frame regime and chunk starts,
    the DAVIS reader's frame names and which frames carry an annotation).
    """

    name: str
    frames: torch.Tensor
    masks: torch.Tensor
    eval_frames: torch.Tensor
    meta: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"Video {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Video: expected a non-empty name string, got {self.name!r}")
        _check_tensor(where, "frames", self.frames, torch.uint8, 4)
        _check_tensor(where, "masks", self.masks, torch.uint8, 3)
        _check_tensor(where, "eval_frames", self.eval_frames, torch.int64, 1)
        if not isinstance(self.meta, Mapping):
            raise TypeError(f"{where}: expected meta to be a mapping, "
                            f"got {type(self.meta).__name__}")
        t, c, h, w = self.frames.shape
        if t == 0 or c != 3:
            raise ValueError(f"{where}: expected frames of shape [T >= 1, 3, H, W], "
                             f"got {list(self.frames.shape)}")
        if tuple(self.masks.shape) != (t, h, w):
            raise ValueError(f"{where}: expected masks of shape [T, H, W] = {[t, h, w]} to "
                             f"match the frames, got {list(self.masks.shape)}")
        _check_indices(where, self.eval_frames, t)

    def __len__(self) -> int:
        return len(self.frames)


def clvos_eval_frames(chunk_starts: Sequence[int], n_frames: int) -> torch.Tensor:
    """First and middle frame of each sub-chunk, as int64 indices in increasing order.

    Sub-chunk ``i`` spans ``chunk_starts[i]`` up to the next start (the last one
    up to ``n_frames``); its middle frame is ``start + length // 2``. A chunk of
    one frame contributes that frame once.
    """
    starts = [int(s) for s in chunk_starts]
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"clvos_eval_frames: expected n_frames >= 1, got {n_frames!r}")
    if not starts or starts[0] != 0 or starts[-1] >= n_frames \
            or any(b <= a for a, b in pairwise(starts)):
        raise ValueError(f"clvos_eval_frames: expected strictly increasing chunk starts "
                         f"beginning at 0 and below n_frames={n_frames}, got {starts}")
    ends = [*starts[1:], n_frames]
    chosen = {f for s, e in zip(starts, ends, strict=True) for f in (s, s + (e - s) // 2)}
    return torch.tensor(sorted(chosen), dtype=torch.int64)


def _check_tensor(where: str, name: str, value, dtype: torch.dtype, rank: int) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: expected {name} to be a torch.Tensor of {dtype}, "
                        f"got {type(value).__name__}")
    if value.dtype != dtype or value.dim() != rank:
        raise ValueError(f"{where}: expected {name} of dtype {dtype} with {rank} dimensions, "
                         f"got {value.dtype} with shape {list(value.shape)}")


def _check_indices(where: str, indices: torch.Tensor, n_frames: int) -> None:
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n_frames):
        raise ValueError(f"{where}: expected eval_frames in 0..{n_frames - 1}, got values from "
                         f"{int(indices.min())} to {int(indices.max())}")
    if len(indices) > 1 and not bool((indices[1:] > indices[:-1]).all()):
        raise ValueError(f"{where}: expected strictly increasing eval_frames, "
                         f"got {indices.tolist()[:20]}")
