"""Region similarity J and boundary F-measure F, the DAVIS video-segmentation scores.

Perazzi, Pont-Tuset, McWilliams, Van Gool, Gross & Sorkine-Hornung, "A Benchmark
Dataset and Evaluation Methodology for Video Object Segmentation", CVPR 2016:

- J is the intersection over union of the predicted and true masks; two empty
  masks agree perfectly (J = 1).
- F compares the masks' boundaries. A pixel is on a mask's boundary when it
  differs from its right, lower or lower-right neighbour (pixels of the last
  row look only right, of the last column only down, and the bottom-right
  pixel is never on it). A boundary pixel of one mask is matched when a
  boundary pixel of the other lies in the disk of radius
  ``ceil(bound_th * image diagonal)`` around it (``bound_th`` itself when it is
  1 or more). Precision is the matched share of the predicted boundary, recall
  that of the true one, F their harmonic mean. Without a predicted boundary
  precision is 1 and recall 0 (both 1 when the true boundary is empty too);
  without a true one precision is 0 and recall 1; F = 0 when P + R = 0.

``jaccard_frames`` and ``boundary_f_frames`` score all ``T`` frames of a
``[T, H, W]`` pair at once on torch (boundaries by shifted comparisons; each
boundary pixel looks for a match through row-wise running sums of the other
boundary, one lookup per row of the disk); ``*_reference`` are the same
definitions frame by frame with numpy and ``scipy.ndimage``. ``j_and_f`` is the
per-video score of DAVIS 2017 (Pont-Tuset et al., arXiv 1704.00675): J and F
of each object id, averaged over the scored frames, then over objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

BOUND_TH = 0.008
"""The DAVIS tolerance: 0.8% of the image diagonal."""


def jaccard(pred, gt) -> float:
    """Mean region similarity J over the frames of binary masks ``[H, W]`` or ``[T, H, W]``."""
    return float(jaccard_frames(pred, gt).mean())


def boundary_f(pred, gt, bound_th: float = BOUND_TH) -> float:
    """Mean boundary F-measure over the frames of binary masks ``[H, W]`` or ``[T, H, W]``."""
    return float(boundary_f_frames(pred, gt, bound_th).mean())


def jaccard_frames(pred, gt) -> torch.Tensor:
    """Per-frame J (float64 ``[T]``) of masks ``[T, H, W]`` (nonzero is foreground)."""
    p, g = _binary_pair(pred, gt)
    inter = torch.count_nonzero(p & g, dim=(1, 2)).double()
    union = torch.count_nonzero(p, dim=(1, 2)) + torch.count_nonzero(g, dim=(1, 2)) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def boundary_f_frames(pred, gt, bound_th: float = BOUND_TH) -> torch.Tensor:
    """Per-frame boundary F (float64 ``[T]``) of masks ``[T, H, W]`` (nonzero is foreground)."""
    p, g = _binary_pair(pred, gt)
    radius = boundary_radius(p.shape[1:], bound_th)
    pb, gb = boundary_map(p), boundary_map(g)
    matched_p, matched_g = _matched(pb, gb, radius), _matched(gb, pb, radius)
    n_p, n_g = (torch.count_nonzero(b, dim=(1, 2)).double() for b in (pb, gb))
    # An empty boundary has precision (or recall) 1; nothing lies near it, so the other
    # side's matched share is 0: the DAVIS conventions of the module docstring.
    precision = torch.where(n_p > 0, matched_p / n_p.clamp(min=1), torch.ones_like(n_p))
    recall = torch.where(n_g > 0, matched_g / n_g.clamp(min=1), torch.ones_like(n_g))
    total = precision + recall
    return torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-300),
                       torch.zeros_like(total))


def boundary_radius(shape: Sequence[int], bound_th: float = BOUND_TH) -> int:
    """Tolerance radius in pixels: ``ceil(bound_th * hypot(H, W))``, or ``bound_th`` if >= 1."""
    if isinstance(bound_th, bool) or not isinstance(bound_th, int | float) \
            or not math.isfinite(bound_th) or bound_th <= 0:
        raise ValueError(f"boundary F: expected bound_th > 0, got {bound_th!r}")
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"boundary F: bound_th >= 1 is a radius in pixels and must be "
                             f"a whole number, got {bound_th}")
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(*shape))


def boundary_map(masks: torch.Tensor) -> torch.Tensor:
    """Boolean boundary pixels of boolean masks ``[T, H, W]`` (see the module docstring).

    A comparison with a neighbour outside the image is simply absent (False), which
    gives the rules for the last row, the last column and the bottom-right pixel.
    """
    edge = torch.zeros_like(masks)
    edge[:, :, :-1] = masks[:, :, :-1] != masks[:, :, 1:]
    edge[:, :-1, :] |= masks[:, :-1, :] != masks[:, 1:, :]
    edge[:, :-1, :-1] |= masks[:, :-1, :-1] != masks[:, 1:, 1:]
    return edge


def _matched(points: torch.Tensor, other: torch.Tensor, radius: int) -> torch.Tensor:
    """Per frame, how many ``True`` pixels of ``points`` have one of ``other`` within the disk.

    The disk ``dx^2 + dy^2 <= radius^2`` is one run of columns ``|dx| <= isqrt(r^2 - dy^2)``
    per row offset ``dy``; running sums along each row of ``other`` tell whether a
    run holds a pixel, so only the (sparse) boundary pixels of ``points`` are visited.
    """
    n_frames, h, w = other.shape
    counts = F.pad(other.cumsum(dim=2, dtype=torch.int32), (1, 0))
    t, y, x = points.nonzero(as_tuple=True)
    hit = torch.zeros(len(t), dtype=torch.bool)
    for dy in range(-min(radius, h - 1), min(radius, h - 1) + 1):
        half = math.isqrt(radius * radius - dy * dy)
        row = y + dy
        inside = (row >= 0) & (row < h)
        row = row.clamp(0, h - 1)
        hi, lo = (x + half + 1).clamp(max=w), (x - half).clamp(min=0)
        hit |= inside & (counts[t, row, hi] > counts[t, row, lo])
    return torch.bincount(t[hit], minlength=n_frames).double()


def jaccard_reference(pred, gt) -> np.ndarray:
    """Per-frame J, frame by frame in numpy."""
    p, g = (x.numpy() for x in _binary_pair(pred, gt))
    scores = []
    for a, b in zip(p, g, strict=True):
        union = np.logical_or(a, b).sum()
        scores.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
    return np.array(scores, dtype=np.float64)


def boundary_f_reference(pred, gt, bound_th: float = BOUND_TH) -> np.ndarray:
    """Per-frame boundary F, frame by frame with numpy and ``scipy.ndimage``."""
    p, g = (x.numpy() for x in _binary_pair(pred, gt))
    r = boundary_radius(p.shape[1:], bound_th)
    y, x = np.mgrid[-r: r + 1, -r: r + 1]
    disk = x**2 + y**2 <= r**2
    scores = []
    for a, b in zip(p, g, strict=True):
        ab, bb = _boundary_reference(a), _boundary_reference(b)
        n_a, n_b = ab.sum(), bb.sum()
        if n_a == 0 and n_b == 0:
            precision, recall = 1.0, 1.0
        elif n_a == 0:
            precision, recall = 1.0, 0.0
        elif n_b == 0:
            precision, recall = 0.0, 1.0
        else:
            precision = (ab & ndimage.binary_dilation(bb, structure=disk)).sum() / n_a
            recall = (bb & ndimage.binary_dilation(ab, structure=disk)).sum() / n_b
        total = precision + recall
        scores.append(0.0 if total == 0 else 2 * precision * recall / total)
    return np.array(scores, dtype=np.float64)


def _boundary_reference(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    edge = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            neighbours = [(i, j + 1), (i + 1, j), (i + 1, j + 1)]
            if i == h - 1:
                neighbours = [(i, j + 1)]
            elif j == w - 1:
                neighbours = [(i + 1, j)]
            edge[i, j] = any(mask[y, x] != mask[i, j] for y, x in neighbours if y < h and x < w)
    return edge


def j_and_f(pred_masks, gt_masks, frames=None, bound_th: float = BOUND_TH) -> dict[str, float]:
    """J, F and their mean JF of one video's label maps ``[T, H, W]``.

    Objects are the ids ``1..K`` with ``K`` the largest id in ``gt_masks`` (over all
    frames); each is scored as a binary mask on the ``frames`` given (all by default) and the
    scores are averaged over frames, then over objects. With no object in
    ``gt_masks`` the foreground (any nonzero id) is scored against an empty mask.
    """
    pred, gt = _label_pair(pred_masks, gt_masks)
    n_objects = int(gt.max())
    if frames is not None:
        frames = _frame_indices(frames, len(gt))
        pred, gt = pred[frames], gt[frames]
    if n_objects and int(pred.max()) > n_objects:
        raise ValueError(f"j_and_f: predicted ids go up to {int(pred.max())} but the ground "
                         f"truth has objects 1..{n_objects}")
    ids = range(1, n_objects + 1) if n_objects else [None]
    js, fs = [], []
    for k in ids:
        p, g = (pred != 0, gt != 0) if k is None else (pred == k, gt == k)
        js.append(float(jaccard_frames(p, g).mean()))
        fs.append(float(boundary_f_frames(p, g, bound_th).mean()))
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {"J": j, "F": f, "JF": (j + f) / 2}


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"segmentation: expected {name} as a torch.Tensor or numpy array, "
                        f"got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"segmentation: expected {name} of a bool or integer dtype, got {x.dtype}")
    return x


def _binary_pair(pred, gt) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _as_tensor(pred, "pred"), _as_tensor(gt, "gt")
    if p.shape != g.shape or p.dim() not in (2, 3) or p.numel() == 0:
        raise ValueError(f"segmentation: expected pred and gt of one shape [H, W] or [T, H, W] "
                         f"(non-empty), got {list(p.shape)} and {list(g.shape)}")
    p, g = (x.unsqueeze(0) if x.dim() == 2 else x for x in (p, g))
    return (p if p.dtype == torch.bool else p != 0), (g if g.dtype == torch.bool else g != 0)


def _label_pair(pred, gt) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _as_tensor(pred, "pred_masks"), _as_tensor(gt, "gt_masks")
    if p.shape != g.shape or p.dim() != 3 or p.numel() == 0:
        raise ValueError(f"j_and_f: expected pred_masks and gt_masks of one shape [T, H, W] "
                         f"(non-empty), got {list(p.shape)} and {list(g.shape)}")
    if (p.is_signed() and bool((p < 0).any())) or (g.is_signed() and bool((g < 0).any())):
        raise ValueError("j_and_f: expected object ids >= 0, got negative labels")
    return p, g


def _frame_indices(frames, n_frames: int) -> torch.Tensor:
    idx = torch.as_tensor(frames, dtype=torch.int64).reshape(-1)
    if len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= n_frames:
        raise ValueError(f"j_and_f: expected a non-empty list of frames in 0..{n_frames - 1}, "
                         f"got {idx.tolist()[:20]}")
    return idx
