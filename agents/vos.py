"""An online video-object-segmentation learner whose target model learns from a byte-bounded memory.

The learner follows LWL (Bhat et al., "Learning What to Learn for Video Object
Segmentation", ECCV 2020) in miniature, the setting in which Nazemi, Shafiee,
Gharaee & Fieguth ("Memory-Efficient Continual Learning Object Segmentation for
Long Video", IEEE Access 2024, arXiv 2309.15274) study small memories:

- a frozen feature encoder (``FrameEncoder``: 3x3 convolutions down to
  1/``stride`` resolution plus the frame's colours pooled to that resolution).
  By default its weights are random, fixed by the seed ``ENCODER_SEED``; the
  benchmark (benchmarks/vos_long_video.py) uses instead an encoder trained once
  by ``train_frame_encoder`` in this module, on generated videos whose seeds no
  suite uses (a nearest-neighbour pixel-matching loss between nearby frames of one
  appearance regime, ``matching_loss``), cached as safetensors by
  ``trained_encoder(path)``; either way it is frozen while a video is segmented;
- a target model learned online (``TargetModel``: two 1x1 convolutions mapping
  features, and two fixed coordinate channels, to a mask logit map at feature
  resolution, upsampled bilinearly to the frame);
- frame 0 and its ground-truth mask (each feature cell's target share) go into
  the memory and the target model takes ``init_steps`` Adam steps on it; every
  later frame is encoded, its mask predicted, (feature map, the model's own hard
  prediction at feature resolution) written to the memory, and the target model
  takes ``steps_per_frame`` Adam steps on the weighted binary cross-entropy over
  the entries the memory hands back (``training_set``): LWL's and the usage
  store's weights, RMSCL's sparse-code selection and coefficients. Within an
  entry, target pixels weigh ``sqrt(background / target share)`` times a
  background pixel (``balanced_pixel_weights``). When more than ``max_batch``
  entries carry weight, each step trains on ``max_batch`` entries drawn with
  replacement in proportion to their weights (an unbiased estimate of the
  weighted loss), so the unbounded memory stays affordable;
- with a regularizer (GRCL) its penalty joins the loss, and it consolidates
  after frame 0's training and then every ``consolidate_every`` frames, on the
  features of that frame's training set.

The memory and the regularizer are stores charged to one budget, rebuilt for
every video (the feature map's size follows the frame's). ``METHODS`` names the
combinations compared in the paper: ``lwl_fifo``, ``grcl`` (LWL memory + GRCL),
``rmscl``, ``hybrid`` (RMSCL memory + GRCL), ``usage`` (XMem-style) and
``unbounded`` (an LWL memory with room for every frame of the video, on its own
budget: the ceiling). The encoder and target model are the same for every method
and are not charged: the budget is the memory's. Masks are binary: every object
id of frame 0's label map is the one target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from memkit.batch import Batch
from memkit.budget import Budget
from memkit.buffers.grcl import GatedRegularizer
from memkit.buffers.lwl import LWLMemory, frame_spec
from memkit.buffers.rmscl import RMSCLMemory
from memkit.buffers.usage import UsageMemory
from memkit.data.long_video import long_video
from memkit.io import load_tensors, save_tensors
from memkit.registry import register
from memkit.seeding import derive_generator
from memkit.store import Store

ENCODER_SEED = 0
"""The seed that fixes the frozen encoder's initial weights (and the trained one's pairs)."""
TRAIN_VIDEO_SEEDS = 2**31
"""``train_frame_encoder`` trains on ``long_video(TRAIN_VIDEO_SEEDS + i)``: seeds no suite uses."""

MEMORIES: dict[str, type] = {"lwl": LWLMemory, "rmscl": RMSCLMemory, "usage": UsageMemory}

METHODS: dict[str, dict] = {
    "lwl_fifo": {"memory": "lwl"},
    "grcl": {"memory": "lwl", "regularizer": "grcl"},
    "rmscl": {"memory": "rmscl"},
    "hybrid": {"memory": "rmscl", "regularizer": "grcl"},
    "usage": {"memory": "usage"},
    "unbounded": {"memory": "lwl", "unbounded": True},
}
"""Method name -> the ``OnlineVOSLearner`` arguments that make it."""


class FrameEncoder(nn.Module):
    """Frozen features: 3x3 convolutions to 1/``stride`` resolution, plus pooled colours.

    ``log2(stride)`` stride-2 convolutions of ``width`` channels (default
    ``channels``; ReLU after each) and one stride-1 convolution give ``channels``
    features; the frame's RGB in [-0.5, 0.5], average-pooled to the same grid,
    adds 3 more. The weights are drawn from ``torch.Generator().manual_seed(seed)``
    (Kaiming-uniform); ``train_frame_encoder`` trains them once on generated
    frames and ``FrameEncoder.load`` reads such weights back. Either way they are
    frozen while a video is segmented.
    """

    def __init__(self, channels: int = 16, stride: int = 4, seed: int = ENCODER_SEED,
                 width: int | None = None):
        super().__init__()
        if stride not in (1, 2, 4, 8):
            raise ValueError(f"FrameEncoder: expected stride 1, 2, 4 or 8, got {stride!r}")
        width = channels if width is None else width
        self.stride, self.out_channels = stride, channels + 3
        self.channels, self.width = channels, width
        widths = [3] + [width] * int(math.log2(stride)) + [channels]
        steps = [2] * int(math.log2(stride)) + [1]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=s, padding=1)
                                   for a, b, s in zip(widths[:-1], widths[1:], steps, strict=True))
        generator = torch.Generator().manual_seed(seed)
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu", generator=generator)
            nn.init.zeros_(conv.bias)
        self.requires_grad_(False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> float32 ``(B, channels + 3, ceil(H/s), ceil(W/s))``."""
        rgb = frames.float() / 255 - 0.5
        x = rgb
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = F.relu(x) if i < len(self.convs) - 1 else x
        pooled = F.adaptive_avg_pool2d(rgb, x.shape[-2:])
        return torch.cat([x, pooled], dim=1)

    def save(self, path: str | Path, manifest: Mapping | None = None) -> None:
        """Write the weights and the architecture to a safetensors file, atomically."""
        config = {"channels": self.channels, "stride": self.stride, "width": self.width}
        save_tensors(path, dict(self.state_dict()),
                     {"kind": "frame_encoder", "config": config, **(manifest or {})})

    @classmethod
    def load(cls, path: str | Path) -> FrameEncoder:
        """The encoder saved at ``path`` by ``save``, frozen."""
        tensors, manifest = load_tensors(path)
        if manifest.get("kind") != "frame_encoder":
            raise ValueError(f"FrameEncoder.load: expected a frame encoder file, got kind "
                             f"{manifest.get('kind')!r} in {path}")
        encoder = cls(**manifest["config"])
        encoder.load_state_dict(tensors)
        return encoder.requires_grad_(False)


class TargetModel(nn.Module):
    """The online-learned part: two 1x1 convolutions (ReLU between) from features to one logit map.

    With ``coords`` the first convolution also sees two fixed channels, the cell's
    x and y in [-1, 1] (computed, not stored), so the model can learn where the
    target has recently been.
    """

    def __init__(self, in_channels: int, hidden: int = 32, *, coords: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.coords = coords
        self.body = nn.Conv2d(in_channels + 2 * coords, hidden, 1)
        self.head = nn.Conv2d(hidden, 1, 1)
        for conv in (self.body, self.head):
            nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu", generator=generator)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.coords:
            n, _, h, w = features.shape
            ys = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(n, 1, h, w)
            xs = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
            features = torch.cat([features, xs, ys], dim=1)
        return self.head(F.relu(self.body(features)))


def train_frame_encoder(*, channels: int = 16, stride: int = 4, width: int = 32,
                        size: tuple[int, int] = (64, 64), n_videos: int = 12,
                        n_frames: int = 400, steps: int = 1500, pairs: int = 8,
                        lr: float = 3e-3, temperature: float = 10.0,
                        seed: int = ENCODER_SEED) -> FrameEncoder:
    """A ``FrameEncoder`` trained once to match pixels of one object across nearby frames.

    Data: ``long_video(TRAIN_VIDEO_SEEDS + i)`` for ``i < n_videos`` (seeds at or
    above 2**31, so disjoint from every suite seed, which is below 2**31). Each step
    draws ``pairs`` frame pairs ``(a, b)``, ``b`` 1-30 frames after ``a`` in the same
    sub-chunk (so the same appearance regime), and minimises ``matching_loss``: every
    cell of ``b`` is called target by how much more it resembles its nearest target
    cell of ``a`` than its nearest other cell. The encoder learns to tell an object's
    texture and colour from the background's and a look-alike distractor's; which
    object is the target is still the online target model's to learn.
    """
    encoder = FrameEncoder(channels, stride, seed, width).requires_grad_(True)
    videos = [long_video(TRAIN_VIDEO_SEEDS + i, n_frames, size) for i in range(n_videos)]
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    generator = derive_generator(seed, "frame-encoder-pairs")
    for _ in range(steps):
        a, b = _frame_pairs(videos, pairs, generator)
        feature_a, feature_b = encoder(a[0]), encoder(b[0])
        size_ = tuple(feature_a.shape[-2:])
        loss = matching_loss(feature_a, mask_labels(a[1], size_), feature_b,
                             mask_labels(b[1], size_), temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return encoder.requires_grad_(False)


def matching_loss(feature_a: torch.Tensor, label_a: torch.Tensor, feature_b: torch.Tensor,
                  label_b: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """Balanced BCE of ``b``'s labels from nearest-neighbour matching to ``a``'s cells.

    Features ``(n, C, h, w)`` are L2-normalised per cell; a cell of ``b`` gets the
    logit ``temperature * (max cosine to a's target cells - max cosine to a's other
    cells)``; labels are uint8 target shares x 255 (``mask_labels``); a cell of
    ``a`` counts as target when its share is above one half.
    """
    ea = F.normalize(feature_a.flatten(2), dim=1)
    eb = F.normalize(feature_b.flatten(2), dim=1)
    similarity = eb.transpose(1, 2) @ ea  # (n, cells of b, cells of a)
    target_a = (label_a.flatten(1) > 127)[:, None, :]
    nearest_target = similarity.masked_fill(~target_a, -2.0).amax(dim=2)
    nearest_other = similarity.masked_fill(target_a, -2.0).amax(dim=2)
    logits = temperature * (nearest_target - nearest_other)
    target = label_b.flatten(1).float()[:, None] / 255
    weights = balanced_pixel_weights(target.unsqueeze(-1))[:, 0, :, 0]
    loss = F.binary_cross_entropy_with_logits(logits, target[:, 0], reduction="none")
    return (loss * weights).sum(dim=1).mean()


def trained_encoder(path: str | Path, **options) -> FrameEncoder:
    """The encoder saved at ``path``; when there is none, ``train_frame_encoder(**options)``
    trains one (a minute or two on one CPU core) and saves it there atomically."""
    path = Path(path)
    if path.exists():
        return FrameEncoder.load(path)
    encoder = train_frame_encoder(**options)
    encoder.save(path, {"trained_by": "memkit.agents.vos.train_frame_encoder",
                        "options": {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in options.items()}})
    return encoder


def _frame_pairs(videos, n: int, generator: torch.Generator):
    """``n`` pairs (frames, masks) of a frame with target and a frame 1-30 frames later in the
    same sub-chunk, from videos drawn at random."""
    picks = []
    while len(picks) < n:
        video = videos[int(torch.randint(len(videos), (1,), generator=generator))]
        t = int(torch.randint(len(video) - 31, (1,), generator=generator))
        u = t + int(torch.randint(1, 31, (1,), generator=generator))
        if video.meta["regime"][t] == video.meta["regime"][u] and video.masks[t].any():
            picks.append((video, t, u))
    return tuple((torch.stack([pick[0].frames[pick[k]] for pick in picks]),
                  torch.stack([pick[0].masks[pick[k]] for pick in picks])) for k in (1, 2))


def mask_labels(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary masks ``(B, H, W)`` -> uint8 labels ``(B, h, w)``: each cell's target share x 255."""
    share = F.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0]
    return torch.round(share * 255).to(torch.uint8)


def balanced_pixel_weights(target: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weights of labels ``(n, 1, h, w)`` in [0, 1], each entry's summing to 1.

    A target pixel weighs ``sqrt(background share / target share)`` times a
    background pixel (shares clamped to [0.001, 0.999]), so a small target is
    not drowned by its background without over-weighting its boundary.
    """
    share = target.mean(dim=(1, 2, 3), keepdim=True).clamp(1e-3, 1 - 1e-3)
    weights = target * ((1 - share) / share).sqrt() + (1 - target)
    return weights / weights.sum(dim=(1, 2, 3), keepdim=True)


class OnlineVOSLearner:
    """Segments a video frame by frame, learning its target model from a bounded memory.

    ``memory``: a name in ``MEMORIES`` or a callable ``(spec, budget) -> store``
    with ``add``, ``training_set`` and ``entries``; ``regularizer``: ``None``,
    ``"grcl"`` or a callable ``(model, budget) -> store`` with ``consolidate`` and
    ``penalty``; ``budget``: the bytes of both (a ``Budget`` is used as is, so the
    caller can read its ledger). A named memory leaves room for
    ``regularizer_snapshots`` GRCL pairs and takes whole entries from the rest;
    the regularizer then takes all that is left (so at least that many pairs,
    more when the entries leave a remainder). A callable memory is built first and
    must leave the regularizer room. ``unbounded=True`` ignores ``budget`` and
    sizes an LWL memory for every frame of each video on its own budget.
    ``encoder``: a ``FrameEncoder`` (e.g. ``trained_encoder(path)``) used instead of
    the seeded random one of ``channels`` and ``stride``.
    """

    def __init__(self, memory: str | Callable = "lwl", regularizer: str | Callable | None = None,
                 budget: Budget | int | str = "1MB", *, steps_per_frame: int = 2,
                 init_steps: int = 40, lr: float = 0.05, seed: int = 0, channels: int = 16,
                 stride: int = 4, hidden: int = 32, max_batch: int = 16,
                 codec: str = "float16", unbounded: bool = False, coords: bool = True,
                 memory_options: Mapping | None = None,
                 regularizer_options: Mapping | None = None, regularizer_snapshots: int = 2,
                 consolidate_every: int = 25, encoder: FrameEncoder | None = None):
        if not callable(memory) and memory not in MEMORIES:
            raise ValueError(f"OnlineVOSLearner: expected memory among {sorted(MEMORIES)} or a "
                             f"callable, got {memory!r}")
        if regularizer is not None and not callable(regularizer) and regularizer != "grcl":
            raise ValueError(f"OnlineVOSLearner: expected regularizer None, 'grcl' or a "
                             f"callable, got {regularizer!r}")
        if unbounded and (memory != "lwl" or regularizer is not None):
            raise ValueError("OnlineVOSLearner: unbounded=True is the LWL memory alone; "
                             f"got memory={memory!r}, regularizer={regularizer!r}")
        counts = {"steps_per_frame": steps_per_frame, "init_steps": init_steps,
                  "channels": channels, "hidden": hidden, "max_batch": max_batch,
                  "regularizer_snapshots": regularizer_snapshots,
                  "consolidate_every": consolidate_every}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"OnlineVOSLearner: expected {name} >= 1 (an int), "
                                 f"got {value!r}")
        if not lr > 0:
            raise ValueError(f"OnlineVOSLearner: expected lr > 0, got {lr!r}")
        self.memory_factory, self.regularizer_factory = memory, regularizer
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)
        self.steps_per_frame, self.init_steps, self.lr = steps_per_frame, init_steps, lr
        self.seed, self.hidden, self.max_batch = seed, hidden, max_batch
        self.codec, self.unbounded, self.coords = codec, unbounded, coords
        self.memory_options = dict(memory_options or {})
        self.regularizer_options = dict(regularizer_options or {})
        self.regularizer_snapshots, self.consolidate_every = (regularizer_snapshots,
                                                               consolidate_every)
        if encoder is not None and not isinstance(encoder, FrameEncoder):
            raise TypeError(f"OnlineVOSLearner: expected encoder None or a FrameEncoder, "
                            f"got {type(encoder).__name__}")
        self.encoder = FrameEncoder(channels, stride) if encoder is None else encoder
        self.memory: Store | None = None
        self.regularizer: Store | None = None
        self.model: TargetModel | None = None
        self.timing = {"frames": 0, "seconds": 0.0}

    @property
    def stores(self) -> Mapping[str, Store]:
        """The current video's stores by name (empty before the first video)."""
        stores = {"memory": self.memory, "regularizer": self.regularizer}
        return {name: store for name, store in stores.items() if store is not None}

    @property
    def fps(self) -> float:
        """Frames per second of the last ``segment`` call (encoding included)."""
        return self.timing["frames"] / max(self.timing["seconds"], 1e-12)

    def feature_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """The feature map's ``(h, w)`` for frames of ``(H, W)``."""
        return tuple(math.ceil(s / self.encoder.stride) for s in frame_size)

    def frame_nbytes(self, frame_size: tuple[int, int]) -> int:
        """Bytes of one LWL memory entry for frames of ``(H, W)``: the unit of "N frames"."""
        spec = frame_spec(self.encoder.out_channels, *self.feature_size(frame_size))
        return LWLMemory.entry_nbytes(spec, self.codec)

    def segment(self, video) -> torch.Tensor:
        """Masks uint8 ``(T, H, W)`` (1 target, 0 background) for ``video``, online.

        Only frame 0's mask is read from the video; frame 0's output is that mask.
        """
        frames, first = _check_video(video)
        start = time.perf_counter()
        features = self.encode(frames)
        size = tuple(features.shape[-2:])
        self._reset(len(frames), size)
        out = torch.empty(frames.shape[0], *frames.shape[2:], dtype=torch.uint8)
        out[0] = first
        entry = Batch(x=features[:1], y=mask_labels(first[None], size))
        self.memory.add(entry)
        self._train(entry, torch.ones(1), self.init_steps)
        self._consolidate(entry, 0)
        for t in range(1, len(frames)):
            out[t] = self._step(features[t: t + 1], frames.shape[2:], t)
        self.timing = {"frames": len(frames), "seconds": time.perf_counter() - start}
        return out

    def encode(self, frames: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Frozen features of uint8 frames ``(T, 3, H, W)``, ``chunk`` frames at a time."""
        with torch.no_grad():
            return torch.cat([self.encoder(part) for part in frames.split(chunk)])

    def _step(self, feature: torch.Tensor, frame_size, t: int) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(feature)
            upsampled = F.interpolate(logits, size=tuple(frame_size), mode="bilinear",
                                      align_corners=False)
        query = Batch(x=feature, y=((logits[:, 0] > 0) * 255).to(torch.uint8))
        self.memory.add(query)
        entries, weights = self._draw(*self.memory.training_set(query), t)
        self._train(entries, weights, self.steps_per_frame)
        self._consolidate(entries, t)
        return (upsampled[0, 0] > 0).to(torch.uint8)

    def _draw(self, slots: torch.Tensor, weights: torch.Tensor,
              t: int) -> tuple[Batch, torch.Tensor]:
        """The weighted entries, or ``max_batch`` draws in proportion to their weights (each
        entry drawn once or more, weighted by its count)."""
        if len(slots) > self.max_batch:
            generator = derive_generator(self.seed, "vos-draw", t)
            rows = torch.multinomial(weights, self.max_batch, replacement=True,
                                     generator=generator)
            rows, counts = rows.unique(return_counts=True)
            slots, weights = slots[rows], counts / self.max_batch
        return self.memory.entries(slots), weights

    def _train(self, entries: Batch, weights: torch.Tensor, steps: int) -> None:
        x, target = entries.x, entries.y.float()[:, None] / 255
        pixel_weights = balanced_pixel_weights(target)
        weights = weights / weights.sum()
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(self.model(x), target,
                                                      weight=pixel_weights, reduction="none")
            loss = (loss.sum(dim=(1, 2, 3)) * weights).sum()
            if self.regularizer is not None:
                loss = loss + self.regularizer.penalty(self.model)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def _consolidate(self, entries: Batch, t: int) -> None:
        if self.regularizer is not None and t % self.consolidate_every == 0:
            self.regularizer.consolidate(self.model, entries.x)

    def _reset(self, n_frames: int, size: tuple[int, int]) -> None:
        """A fresh target model, optimiser and stores for a video of ``n_frames`` frames."""
        for store in self.stores.values():
            store.release()
        self.memory = self.regularizer = None
        generator = derive_generator(self.seed, "vos-target")
        self.model = TargetModel(self.encoder.out_channels, self.hidden, coords=self.coords,
                                 generator=generator)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        spec = frame_spec(self.encoder.out_channels, *size)
        if self.unbounded:
            self.memory = LWLMemory.unbounded(spec, n_frames, codec=self.codec,
                                              **self.memory_options)
            self.budget = self.memory.budget
            return
        reserve = 0
        if self.regularizer_factory == "grcl":
            reserve = self.regularizer_snapshots * GatedRegularizer.pair_nbytes(self.model)
        if callable(self.memory_factory):
            self.memory = self.memory_factory(spec, self.budget)
        else:
            self.memory = MEMORIES[self.memory_factory](
                spec, self.budget, nbytes=max(self.budget.free - reserve, 0), codec=self.codec,
                **self.memory_options)
        if callable(self.regularizer_factory):
            self.regularizer = self.regularizer_factory(self.model, self.budget)
        elif self.regularizer_factory == "grcl":
            self.regularizer = GatedRegularizer(self.model, self.budget,
                                                **self.regularizer_options)


@register("learner", "vos")
def vos_method(method: str = "lwl_fifo", budget: Budget | int | str = "1MB",
               **options) -> OnlineVOSLearner:
    """The ``OnlineVOSLearner`` of a method in ``METHODS``; ``options`` override its arguments."""
    if method not in METHODS:
        raise ValueError(f"vos_method: expected a method among {sorted(METHODS)}, "
                         f"got {method!r}")
    return OnlineVOSLearner(budget=budget, **{**METHODS[method], **options})


def _check_video(video) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames and frame 0's binary mask of anything with ``frames`` and ``masks`` tensors."""
    frames, masks = getattr(video, "frames", None), getattr(video, "masks", None)
    if not isinstance(frames, torch.Tensor) or not isinstance(masks, torch.Tensor):
        raise TypeError(f"segment: expected a video with tensors 'frames' and 'masks', "
                        f"got {type(video).__name__}")
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3 \
            or len(frames) == 0:
        raise ValueError(f"segment: expected uint8 frames of shape (T >= 1, 3, H, W), "
                         f"got {frames.dtype} {tuple(frames.shape)}")
    if masks.dim() != 3 or tuple(masks.shape[1:]) != tuple(frames.shape[2:]) or len(masks) < 1:
        raise ValueError(f"segment: expected masks of shape (T, {frames.shape[2]}, "
                         f"{frames.shape[3]}) to match the frames, got {tuple(masks.shape)}")
    return frames, (masks[0] > 0).to(torch.uint8)
