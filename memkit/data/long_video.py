"""Procedural long videos with recurring appearance drift, for online video object segmentation.

Nazemi, Shafiee, Gharaee & Fieguth, "Memory-Efficient Continual Learning
Object Segmentation for Long Video" (IEEE Access 2024, arXiv 2309.15274), and
CLVOS23 before it (Nazemi, Moustafa & Fieguth, CVPR Workshops 2023), show that
an online VOS learner with a small memory of past frames fails on long videos
whose target changes appearance and later looks as before again. This module
makes such videos, seeded and with exact masks:

- one textured target (a smooth random blob: radius ``1 + sum_k a_k cos(k phi - p_k)``)
  on a smooth trajectory with slight scale and rotation changes, its texture
  attached to it; distractors (blobs with the target's texture, hue rotated by
  1-2 radians so that they look alike but stay distinguishable; label 0) pass behind it;
- textures cut from scikit-learn's two bundled photographs (``load_sample_images``),
  or smooth procedural noise, or flat colours;
- the video is cut into sub-chunks of 50-300 frames; chunk ``k`` shows regime
  ``k mod n_regimes``, so regimes recur (A B C A B C ...). Regime 0 is the
  untouched appearance; every other regime changes the target's and the
  background's texture (a swap for another cut, a hue rotation, brightness and
  contrast, blur), each drawn once per regime;
- occluders (elongated blobs) now and then sweep across the target; the mask
  leaves out the pixels they cover;
- the camera jitters: everything shifts by a small integer offset per frame.

Appearance changes act on the textures before compositing and every layer is
pasted with a hard mask, so the label map is exactly the visible support of
the target. Each part draws from its own generator
(``derive_generator(seed, part)``): switching occluders off leaves the
trajectories, textures and camera of a seed unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from memkit.seeding import derive_generator
from memkit.video import Video, clvos_eval_frames

TEXTURE = 64
"""Side in pixels of an object's texture image."""
HARMONICS = (2, 3, 4)
"""Harmonics of a blob's radius function."""
TEXTURES = ("photo", "noise", "flat")
DISTRACTOR_HUE = (1.0, 2.0)
"""Range of a distractor's hue rotation from the target's texture, in radians (either sign):
the same texture cut in a clearly different hue, similar but distinguishable."""
PHOTO_TRIES = 4
"""A photo texture is the most varied (highest standard deviation) of this many random cuts,
so that plain sky or out-of-focus background is rarely chosen."""


@dataclass(frozen=True)
class _Path:
    """Per-frame pose of a layer (in scene pixels) and its blob shape."""

    centre: torch.Tensor  # [T, 2] (x, y)
    scale: torch.Tensor  # [T] radius in pixels along the first axis
    aspect: torch.Tensor  # [T] second-axis radius / first-axis radius
    angle: torch.Tensor  # [T] radians
    amplitude: torch.Tensor  # [len(HARMONICS)]
    phase: torch.Tensor  # [len(HARMONICS)]


def long_video(seed: int, n_frames: int = 2000, size: tuple[int, int] = (96, 96), *,
               n_regimes: int = 3, chunk_frames: tuple[int, int] = (50, 300),
               drift: float = 1.0, n_distractors: int = 1, occluders: bool = True,
               jitter: int = 2, texture: str = "photo", ramp: int = 0,
               target_drift: float | None = None, name: str | None = None) -> Video:
    """A video of ``n_frames`` whose appearance regimes switch every 50-300 frames and recur.

    ``ramp``: a regime's first appearance fades in from the previous regime's look
    over its first ``ramp`` frames (a gradual drift an online learner can follow);
    every later recurrence, and every switch with ``ramp=0``, is abrupt.
    ``target_drift`` (default ``drift``) scales the target's (and so the distractors')
    appearance changes apart from the background's.
    ``meta``: ``regime`` (int64 ``[T]``), ``chunk_starts`` (list of int),
    ``n_regimes``, ``occluded`` (bool ``[T]``: an occluder covers part of the
    target), ``camera`` (int64 ``[T, 2]``: the jitter offset (x, y)).
    ``eval_frames``: first and middle frame of each sub-chunk (CLVOS23).
    """
    _check(seed, n_frames, size, n_regimes, drift, n_distractors, jitter, texture)
    if len(chunk_frames) != 2 or not 1 <= chunk_frames[0] <= chunk_frames[1] // 2:
        raise ValueError(f"long video: expected chunk_frames (lo, hi) with 1 <= lo and "
                         f"2 * lo <= hi, got {chunk_frames!r}")
    if isinstance(ramp, bool) or not isinstance(ramp, int) or ramp < 0:
        raise ValueError(f"long video: expected an integer ramp >= 0, got {ramp!r}")
    target_drift = drift if target_drift is None else target_drift
    if not 0.0 <= target_drift <= 1.0:
        raise ValueError(f"long video: expected target_drift in [0, 1], got {target_drift!r}")
    starts = _chunk_starts(derive_generator(seed, "chunks"), n_frames, chunk_frames)
    return _generate(seed, n_frames, size, starts, n_regimes, drift, n_distractors, occluders,
                     jitter, texture, name or f"long_{seed}", clvos_eval_frames(starts, n_frames),
                     ramp, target_drift)


def short_video(seed: int, n_frames: int = 80, size: tuple[int, int] = (96, 96), *,
                n_distractors: int = 1, occluders: bool = True, jitter: int = 2,
                texture: str = "photo", name: str | None = None) -> Video:
    """A short video with one appearance regime (no drift), scored the DAVIS way.

    ``eval_frames`` are all frames but the first (given) and the last, as the
    DAVIS 2017 evaluation does (all frames when there are fewer than three).
    """
    _check(seed, n_frames, size, 1, 0.0, n_distractors, jitter, texture)
    scored = torch.arange(1, n_frames - 1) if n_frames >= 3 else torch.arange(n_frames)
    return _generate(seed, n_frames, size, [0], 1, 0.0, n_distractors, occluders, jitter,
                     texture, name or f"short_{seed}", scored)


def long_suite(n_videos: int = 3, seed: int = 0, **kwargs) -> list[Video]:
    """``n_videos`` long videos, named ``long_<seed>_<i>``, with seeds derived from ``seed``."""
    return [long_video(_video_seed(seed, "long_suite", i), name=f"long_{seed}_{i}", **kwargs)
            for i in range(_count(n_videos))]


def short_suite(n_videos: int = 3, seed: int = 0, **kwargs) -> list[Video]:
    """``n_videos`` short single-regime videos, named ``short_<seed>_<i>``."""
    return [short_video(_video_seed(seed, "short_suite", i), name=f"short_{seed}_{i}", **kwargs)
            for i in range(_count(n_videos))]


def _generate(seed, n_frames, size, starts, n_regimes, drift, n_distractors, occluders, jitter,
              texture, name, eval_frames, ramp: int = 0,
              target_drift: float | None = None) -> Video:
    h, w = size
    regime = _regime_per_frame(starts, n_regimes, n_frames)
    camera = _camera(derive_generator(seed, "camera"), n_frames, jitter)
    looks = _looks(seed, n_regimes, drift, texture, (h + 2 * jitter, w + 2 * jitter),
                   n_distractors, drift if target_drift is None else target_drift)
    target = _target_path(derive_generator(seed, "target"), n_frames, size)
    distractors = [_target_path(derive_generator(seed, "distractor", i), n_frames, size, 0.8)
                   for i in range(n_distractors)]
    occluder, active = _occluder_path(derive_generator(seed, "occluders"), target, occluders)
    frames = torch.empty(n_frames, 3, h, w, dtype=torch.uint8)
    masks = torch.zeros(n_frames, h, w, dtype=torch.uint8)
    for k, (lo, hi) in enumerate(zip(starts, [*starts[1:], n_frames], strict=True)):
        fade = min(ramp, hi - lo) if 0 < k < n_regimes else 0
        for which, look in _segments(looks, k, lo, hi, fade):
            a, b = int(which[0]), int(which[-1]) + 1
            frames[a:b] = _background(look["background"], camera[a:b], jitter, size)
            for path, texture_ in zip(distractors, look["distractor"], strict=True):
                _paste(frames, which, path, camera, texture_)
            t, y, x = _paste(frames, which, target, camera, look["target"])
            masks[t, y, x] = 1
    occluded = torch.zeros(n_frames, dtype=torch.bool)
    t, y, x = _paste(frames, active.nonzero().squeeze(1), occluder, camera, looks["occluder"])
    occluded[t[masks[t, y, x] == 1]] = True
    masks[t, y, x] = 0
    meta = {"regime": regime, "chunk_starts": list(starts), "n_regimes": n_regimes,
            "occluded": occluded, "camera": camera, "ramp": ramp}
    return Video(name, frames, masks, eval_frames.to(torch.int64), meta)


def _segments(looks: dict, k: int, lo: int, hi: int, fade: int):
    """(frames, look) pieces of chunk ``k`` (regime ``k``'s first showing when ``fade`` > 0):
    ``fade`` single frames blending regime ``k - 1`` into ``k``, then the rest in regime ``k``'s
    look. A chunk shows regime ``k mod n_regimes``."""
    n_regimes = len(looks["target"])
    r = k % n_regimes
    for i in range(fade):
        yield torch.tensor([lo + i]), _blend(looks, r - 1, r, (i + 1) / (fade + 1))
    if lo + fade < hi:
        yield torch.arange(lo + fade, hi), _blend(looks, r, r, 1.0)


def _blend(looks: dict, r0: int, r1: int, alpha: float) -> dict:
    """The look ``(1 - alpha) * regime r0 + alpha * regime r1`` of every regime-dependent layer."""
    def mix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return b if alpha == 1.0 else _quantise((1 - alpha) * a + alpha * b)

    background = [looks["background"][r].float() / 255 for r in (r0, r1)]
    return {"target": mix(looks["target"][r0], looks["target"][r1]),
            "distractor": [mix(d[r0], d[r1]) for d in looks["distractor"]],
            "background": looks["background"][r1] if alpha == 1.0
            else mix(*background).mul(255).round().to(torch.uint8)}


# ----------------------------------------------------------------- schedule and motion

def _chunk_starts(g: torch.Generator, n_frames: int, chunk_frames: tuple[int, int]) -> list[int]:
    """Starts of sub-chunks with lengths in ``chunk_frames`` (one chunk if the video is short)."""
    lo, hi = chunk_frames
    starts, remaining = [0], n_frames
    while remaining > hi:
        length = int(torch.randint(lo, min(hi, remaining - lo) + 1, (1,), generator=g))
        starts.append(starts[-1] + length)
        remaining -= length
    return starts


def _regime_per_frame(starts: list[int], n_regimes: int, n_frames: int) -> torch.Tensor:
    lengths = torch.diff(torch.tensor([*starts, n_frames]))
    return torch.repeat_interleave(torch.arange(len(starts)) % n_regimes, lengths)


def _smooth(g: torch.Generator, n_frames: int, periods=(60.0, 400.0), waves: int = 3):
    """A smooth curve in [-1, 1]: a weighted sum of sinusoids with random periods and phases."""
    t = torch.arange(n_frames, dtype=torch.float64)[:, None]
    period = periods[0] + (periods[1] - periods[0]) * torch.rand(waves, generator=g,
                                                                 dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(waves, generator=g, dtype=torch.float64)
    weight = 0.3 + torch.rand(waves, generator=g, dtype=torch.float64)
    return (torch.sin(2 * math.pi * t / period + phase) * weight).sum(1) / weight.sum()


def _camera(g: torch.Generator, n_frames: int, jitter: int) -> torch.Tensor:
    """Integer (x, y) offsets in ``[-jitter, jitter]``: a slow sway plus a per-frame shake."""
    sway = torch.stack([_smooth(g, n_frames, (20.0, 120.0)) for _ in range(2)], dim=1)
    shake = torch.rand(n_frames, 2, generator=g, dtype=torch.float64) * 2 - 1
    return (jitter * (0.7 * sway + 0.3 * shake)).round().clamp(-jitter, jitter).long()


def _blob(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    amplitude = torch.tensor([0.18, 0.1, 0.06]) * torch.rand(3, generator=g)
    return amplitude, 2 * math.pi * torch.rand(3, generator=g)


def _target_path(g: torch.Generator, n_frames: int, size: tuple[int, int],
                 relative: float = 1.0) -> _Path:
    """A blob of radius ~0.16-0.2 of the frame on a smooth path that keeps it mostly in view."""
    h, w = size
    radius = min(h, w) * (0.16 + 0.04 * float(torch.rand(1, generator=g))) * relative
    amplitude, phase = _blob(g)
    reach = torch.tensor([w / 2 - 0.8 * radius, h / 2 - 0.8 * radius]).clamp(min=0)
    centre = torch.stack([_smooth(g, n_frames) for _ in range(2)], 1).float() * reach
    centre += torch.tensor([w / 2, h / 2])
    scale = radius * (1 + 0.15 * _smooth(g, n_frames).float())
    angle = 0.4 * _smooth(g, n_frames).float()
    return _Path(centre, scale, torch.ones(n_frames), angle, amplitude, phase)


def _occluder_path(g: torch.Generator, target: _Path, enabled: bool):
    """Bars that sweep across the target every 40-160 frames, each for 10-30 frames."""
    n = len(target.scale)
    centre, angle = torch.zeros(n, 2), torch.zeros(n)
    scale, active = torch.ones(n), torch.zeros(n, dtype=torch.bool)
    t = int(torch.randint(10, 60, (1,), generator=g))
    while enabled and t < n:
        t = _sweep(g, target, t, centre, angle, scale, active)
        t += int(torch.randint(40, 161, (1,), generator=g))
    no_shape = torch.zeros(len(HARMONICS))
    path = _Path(centre, scale, torch.full((n,), 0.3), angle, no_shape, no_shape)
    return path, active


def _sweep(g, target: _Path, start: int, centre, angle, scale, active) -> int:
    """Fill one pass starting at ``start``: a bar across its heading; return its end frame."""
    n = len(target.scale)
    end = min(n, start + int(torch.randint(10, 31, (1,), generator=g)))
    mid = (start + end - 1) // 2
    size = float(target.scale[mid]) * (0.9 + 0.6 * float(torch.rand(1, generator=g)))
    heading = 2 * math.pi * float(torch.rand(1, generator=g))
    step = torch.tensor([math.cos(heading), math.sin(heading)])
    travel = 1.6 * float(target.scale[mid]) + 0.3 * size
    frac = torch.linspace(-1, 1, end - start)[:, None] if end - start > 1 else torch.zeros(1, 1)
    centre[start:end] = target.centre[mid] + frac * travel * step
    angle[start:end], scale[start:end], active[start:end] = heading + math.pi / 2, size, True
    return end


# ----------------------------------------------------------------- textures and looks

@lru_cache(maxsize=1)
def _photos() -> torch.Tensor:
    """scikit-learn's two sample photographs as float ``[2, 3, 427, 640]`` in [0, 1]."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    return torch.stack([torch.tensor(im).permute(2, 0, 1).float() / 255 for im in images])


def _new_texture(g: torch.Generator, kind: str, hw: tuple[int, int]) -> torch.Tensor:
    """A ``[3, h, w]`` texture in [0, 1]: a photo cut, smooth noise, or a flat colour."""
    if kind == "flat":
        return (0.15 + 0.7 * torch.rand(3, 1, 1, generator=g)).expand(3, *hw).clone()
    if kind == "noise":
        octaves = [F.interpolate(torch.rand(1, 3, k, k, generator=g), size=hw, mode="bilinear",
                                 align_corners=False) / k ** 0.5 for k in (3, 6, 12, 24)]
        noise = torch.stack(octaves).sum(0)[0]
        low, high = noise.amin(dim=(1, 2), keepdim=True), noise.amax(dim=(1, 2), keepdim=True)
        return (noise - low) / (high - low).clamp(min=1e-6)
    cuts = [_photo_cut(g, hw) for _ in range(PHOTO_TRIES)]
    return max(cuts, key=lambda cut: float(cut.std()))


def _photo_cut(g: torch.Generator, hw: tuple[int, int]) -> torch.Tensor:
    """A random window of one of the photographs, resized to ``hw``."""
    photos = _photos()
    side = int(torch.randint(48, 240, (1,), generator=g))
    ch, cw = side, min(photos.shape[3], round(side * hw[1] / hw[0]))
    i = int(torch.randint(len(photos), (1,), generator=g))
    y = int(torch.randint(photos.shape[2] - ch + 1, (1,), generator=g))
    x = int(torch.randint(photos.shape[3] - cw + 1, (1,), generator=g))
    cut = photos[i:i + 1, :, y:y + ch, x:x + cw]
    return F.interpolate(cut, size=hw, mode="bilinear", antialias=True, align_corners=False)[0]


def _appearance(g: torch.Generator, base: torch.Tensor, kind: str, drift: float) -> torch.Tensor:
    """``base`` changed the way one regime changes a layer (``drift`` scales every change)."""
    image = base
    if float(torch.rand(1, generator=g)) < 0.5 * drift:
        image = _new_texture(g, kind, tuple(base.shape[1:]))
    hue = math.pi * drift * (2 * float(torch.rand(1, generator=g)) - 1)
    contrast = math.exp(0.5 * drift * (2 * float(torch.rand(1, generator=g)) - 1))
    brightness = 0.2 * drift * (2 * float(torch.rand(1, generator=g)) - 1)
    sigma = 1.5 * drift * float(torch.rand(1, generator=g))
    image = _hue_rotate(_blur(image, sigma), hue)
    mean = image.mean(dim=(1, 2), keepdim=True)
    return ((image - mean) * contrast + mean + brightness).clamp(0, 1)


def _looks(seed: int, n_regimes: int, drift: float, kind: str, canvas: tuple[int, int],
           n_distractors: int, target_drift: float) -> dict:
    """Per regime, the target's, distractors' and background's textures; the occluder's."""
    g = derive_generator(seed, "textures")
    target, background = _new_texture(g, kind, (TEXTURE, TEXTURE)), _new_texture(g, kind, canvas)
    occluder = _new_texture(g, kind, (TEXTURE, TEXTURE))
    g = derive_generator(seed, "regimes")
    looks = {"target": [target], "background": [background], "occluder": occluder}
    for _ in range(1, n_regimes):
        looks["target"].append(_appearance(g, target, kind, target_drift))
        looks["background"].append(_appearance(g, background, kind, drift))
    g = derive_generator(seed, "distractor_looks")
    looks["distractor"] = []
    for _ in range(n_distractors):
        shift = (DISTRACTOR_HUE[0] + (DISTRACTOR_HUE[1] - DISTRACTOR_HUE[0])
                 * float(torch.rand(1, generator=g))) * (
            1 if float(torch.rand(1, generator=g)) < 0.5 else -1)
        looks["distractor"].append([_quantise(_hue_rotate(t, shift)) for t in looks["target"]])
    looks["target"] = [_quantise(t) for t in looks["target"]]
    looks["occluder"] = _quantise(looks["occluder"])
    looks["background"] = [_quantise(t).mul(255).round().to(torch.uint8)
                           for t in looks["background"]]
    return looks


def _quantise(image: torch.Tensor) -> torch.Tensor:
    """Round to the 256 levels of uint8, so a flat texture paints one exact colour."""
    return image.mul(255).round().div(255)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[3, h, w]`` with reflected borders."""
    radius = min(math.ceil(3 * sigma), min(image.shape[1:]) - 1)
    if sigma < 0.3 or radius < 1:
        return image
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).expand(3, 1, -1)
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel[:, :, None, :], groups=3)
    return F.conv2d(out, kernel[:, :, :, None], groups=3)[0]


def _hue_rotate(image: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate colours about the grey axis by ``angle`` radians (Rodrigues' formula)."""
    axis = torch.full((3,), 3 ** -0.5)
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]],
                          [-axis[1], axis[0], 0.0]])
    rotation = (math.cos(angle) * torch.eye(3) + math.sin(angle) * cross
                + (1 - math.cos(angle)) * torch.outer(axis, axis))
    return torch.einsum("ij,jhw->ihw", rotation, image).clamp(0, 1)


# ----------------------------------------------------------------- rendering

def _background(canvas: torch.Tensor, camera: torch.Tensor, jitter: int,
                size: tuple[int, int]) -> torch.Tensor:
    """Crops ``[n, 3, H, W]`` of the uint8 background canvas, shifted by the camera offsets."""
    h, w = size
    rows = (jitter + camera[:, 1])[:, None] + torch.arange(h)
    cols = (jitter + camera[:, 0])[:, None] + torch.arange(w)
    return canvas[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)


def _paste(frames: torch.Tensor, which: torch.Tensor, path: _Path, camera: torch.Tensor,
           texture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paint the blob of ``path`` into ``frames[which]``; return the painted (frame, y, x).

    The blob is evaluated in a window around its centre that holds it whatever
    its pose, and the texture is sampled only at the pixels it covers.
    """
    _, _, h, w = frames.shape
    centre = path.centre[which] - camera[which].float()
    reach = 1 + float(path.amplitude.abs().sum())
    extent = path.scale[which] * path.aspect[which].clamp(min=1) * reach
    half = math.ceil(float(extent.max())) + 1 if len(which) else 0
    origin = centre.floor().long() - half
    inside, u, v = _blob_support(path, which, centre - origin, 2 * half + 1)
    cols = origin[:, 0, None] + torch.arange(2 * half + 1)
    rows = origin[:, 1, None] + torch.arange(2 * half + 1)
    inside &= ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    t, i, j = inside.nonzero(as_tuple=True)
    grid = torch.stack([u[t, i, j], v[t, i, j]], dim=1) / reach
    colour = F.grid_sample(texture[None], grid.view(1, 1, -1, 2), mode="bilinear",
                           padding_mode="reflection", align_corners=False)[0, :, 0]
    t, y, x = which[t], rows[t, i], cols[t, j]
    frames[t, :, y, x] = colour.t().mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return t, y, x


def _blob_support(path: _Path, which: torch.Tensor, offset: torch.Tensor, side: int):
    """Pixels of a ``side``-wide window the blob covers (its centre at ``offset`` in the
    window) and each pixel's blob coordinates ``(u, v)``, in units of the blob's radii."""
    cos, sin = (f(path.angle[which])[:, None, None] for f in (torch.cos, torch.sin))
    dx = torch.arange(side, dtype=torch.float32)[None, None, :] - offset[:, 0, None, None]
    dy = torch.arange(side, dtype=torch.float32)[None, :, None] - offset[:, 1, None, None]
    scale = path.scale[which][:, None, None]
    u = (cos * dx + sin * dy) / scale
    v = (cos * dy - sin * dx) / (scale * path.aspect[which][:, None, None])
    rho = torch.sqrt(u * u + v * v)
    c, s = u / rho.clamp(min=1e-6), v / rho.clamp(min=1e-6)
    radius = torch.ones_like(rho)
    ck, sk, k = c, s, 1
    for a, p, harmonic in zip(path.amplitude.tolist(), path.phase.tolist(), HARMONICS,
                              strict=True):
        while k < harmonic:  # (ck, sk) = (cos k*phi, sin k*phi) by complex multiplication
            ck, sk, k = ck * c - sk * s, sk * c + ck * s, k + 1
        if a:
            radius += a * (ck * math.cos(p) + sk * math.sin(p))
    return rho < radius, u, v


# ----------------------------------------------------------------- checks

def _video_seed(seed: int, purpose: str, i: int) -> int:
    return int(torch.randint(2**31 - 1, (1,), generator=derive_generator(seed, purpose, i)))


def _count(n_videos: int) -> int:
    if isinstance(n_videos, bool) or not isinstance(n_videos, int) or n_videos < 1:
        raise ValueError(f"video suite: expected n_videos >= 1, got {n_videos!r}")
    return n_videos


def _check(seed, n_frames, size, n_regimes, drift, n_distractors, jitter, texture) -> None:
    ints = {"seed": (seed, 0), "n_frames": (n_frames, 1), "n_regimes": (n_regimes, 1),
            "n_distractors": (n_distractors, 0), "jitter": (jitter, 0)}
    for key, (value, least) in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"long video: expected an integer {key} >= {least}, got {value!r}")
    if len(size) != 2 or not all(isinstance(s, int) and s >= 16 for s in size):
        raise ValueError(f"long video: expected size (H, W) of integers >= 16, got {size!r}")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"long video: expected drift in [0, 1], got {drift!r}")
    if texture not in TEXTURES:
        raise ValueError(f"long video: expected texture in {TEXTURES}, got {texture!r}")
