"""The DAVIS folder format: read videos with their object masks, write generated ones.

DAVIS (Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for
Video Object Segmentation", CVPR 2016; Pont-Tuset et al., "The 2017 DAVIS
Challenge on Video Object Segmentation", arXiv 1704.00675) stores a video as
numbered frames and per-frame label maps::

    JPEGImages/<resolution>/<video>/00000.jpg, 00001.jpg, ...
    Annotations/<resolution>/<video>/00000.png, ...   (indexed PNGs: 0 background, k object k)
    ImageSets/<year>/<split>.txt                       (one video name a line)

The annotation PNGs are palette ("P") images with the PASCAL VOC colour map
(0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ...); the pixel
values are the object ids, and 255 marks void pixels (ambiguous, not scored):
they are read as 0 and listed in ``meta["void"]`` (bool ``[T, H, W]``, present
only when some pixel is void), which the writer turns back into 255. Grey
("L") PNGs are read as ids too, except a mask holding only 0 and 255 (DAVIS
2016's binary masks), whose 255 becomes 1. The Long Videos dataset and CLVOS23
use the same layout without the resolution level (``resolution=None``).

When only some frames carry an annotation PNG (the test splits annotate only
the first frame; CLVOS23 a few frames per sub-chunk), the other frames' masks
are filled with 0, ``meta["annotated"]`` (bool ``[T]``) says which frames have
a real mask, and ``eval_frames`` lists those frames.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from memkit.io import write_text_atomic
from memkit.video import Video

ANNOTATED = ("all", "first")
VOID = 255
"""The label of void pixels in DAVIS-format annotations."""


def davis_palette() -> list[int]:
    """The 256-colour DAVIS (PASCAL VOC) palette as 768 ints r0, g0, b0, r1, ...

    Bit ``3j + c`` of an index sets bit ``7 - j`` of colour channel ``c``.
    """
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        for j in range(8):
            for c in range(3):
                rgb[c] |= ((index >> (3 * j + c)) & 1) << (7 - j)
        palette.extend(rgb)
    return palette


def read_davis(root: str | os.PathLike, *, resolution: str | None = "480p",
               imageset: tuple[str, str] | None = None, videos: Sequence[str] | None = None,
               annotated: str = "all") -> list[Video]:
    """Videos under ``root`` in the DAVIS layout, with masks from the annotation PNGs.

    ``resolution=None`` reads ``JPEGImages/<video>`` (the Long Videos and CLVOS23
    layout); ``imageset=(year, split)`` reads the names in ``ImageSets/<year>/<split>.txt``;
    ``videos`` picks names (from that list, or from the folders present);
    ``annotated="first"`` reads only the first frame's annotation (the input of
    semi-supervised VOS), ``"all"`` every annotation PNG there is.
    """
    root = Path(root)
    if annotated not in ANNOTATED:
        raise ValueError(f"read_davis: expected annotated in {ANNOTATED}, got {annotated!r}")
    names = _video_names(root, resolution, imageset, videos)
    return [_read_video(root, resolution, name, annotated) for name in names]


def write_davis(videos: Iterable[Video], root: str | os.PathLike, *,
                resolution: str | None = "480p",
                imageset: tuple[str, str] | None = ("2017", "val"),
                jpeg_quality: int = 95) -> None:
    """Write ``videos`` under ``root`` in the DAVIS layout and list them in the image set.

    Each video is written into a temporary folder first and then renamed into
    place (replacing an older copy), so a failure leaves no half-written video.
    Frames are JPEGs at ``jpeg_quality`` without chroma subsampling (generated frames
    have sharp colour edges) named by ``meta["frame_names"]`` if present, else ``00000``, ...;
    masks are written for the frames ``meta["annotated"]`` marks (all by default), with
    ``meta["void"]`` pixels as 255.
    The image-set file keeps the names it already lists and adds the new ones.
    """
    root = Path(root)
    videos = list(videos)
    for video in videos:
        if not isinstance(video, Video):
            raise TypeError(f"write_davis: expected Video objects, got {type(video).__name__}")
        _check_name(video.name, "video name")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"write_davis: expected jpeg_quality in 1..100, got {jpeg_quality!r}")
    plans = [(video, _frame_names(video), _annotated(video), _with_void(video))
             for video in videos]  # every check before the first file is written
    for plan in plans:
        _write_video(*plan, root, resolution, jpeg_quality)
    if imageset is not None:
        _extend_imageset(root, imageset, [video.name for video in videos])


# ----------------------------------------------------------------- reading

def _video_names(root: Path, resolution: str, imageset, videos) -> list[str]:
    frames_dir = _level(root, "JPEGImages", resolution)
    if not frames_dir.is_dir():
        raise FileNotFoundError(f"DAVIS {root}: no folder {frames_dir}; expected "
                                f"{frames_dir.relative_to(root)}/<video>/00000.jpg, ...")
    if imageset is not None:
        path = root / "ImageSets" / imageset[0] / f"{imageset[1]}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"DAVIS {root}: no image set {path}")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = sorted(p.name for p in frames_dir.iterdir() if p.is_dir())
    if videos is not None:
        missing = [v for v in videos if v not in names]
        if missing:
            where = path if imageset is not None else frames_dir
            raise ValueError(f"DAVIS {root}: videos {missing} are not in {where}")
        names = list(videos)
    return names


def _read_video(root: Path, resolution: str, name: str, annotated: str) -> Video:
    frames_dir = _level(root, "JPEGImages", resolution) / name
    masks_dir = _level(root, "Annotations", resolution) / name
    for folder in (frames_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"DAVIS video {name!r}: missing folder {folder}")
    jpegs = sorted(frames_dir.glob("*.jpg"))
    if not jpegs:
        raise FileNotFoundError(f"DAVIS video {name!r}: no .jpg frames in {frames_dir}")
    stems = [p.stem for p in jpegs]
    frames = _read_frames(jpegs)
    masks = torch.zeros(len(jpegs), *frames.shape[2:], dtype=torch.uint8)
    annotated_frames = _annotation_frames(masks_dir, stems, frames_dir, annotated)
    for i in annotated_frames:
        masks[i] = torch.from_numpy(_read_mask(masks_dir / f"{stems[i]}.png", frames.shape[2:]))
    flags = torch.zeros(len(jpegs), dtype=torch.bool)
    flags[annotated_frames] = True
    meta = {"frame_names": stems, "annotated": flags}
    void = masks == VOID
    if void.any():
        meta["void"] = void
        masks[void] = 0
    return Video(name, frames, masks, torch.tensor(annotated_frames, dtype=torch.int64), meta)


def _read_frames(paths: list[Path]) -> torch.Tensor:
    """The JPEGs as uint8 ``[T, 3, H, W]``, all the size of the first."""
    frames = None
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            frame = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        if frames is None:
            frames = torch.empty(len(paths), *frame.shape, dtype=torch.uint8)
        elif frame.shape != frames.shape[1:]:
            raise ValueError(f"{path}: expected a {frames.shape[3]}x{frames.shape[2]} frame like "
                             f"{paths[0].name}, got {frame.shape[2]}x{frame.shape[1]}")
        frames[i] = frame
    return frames


def _annotation_frames(masks_dir: Path, stems: list[str], frames_dir: Path,
                       annotated: str) -> list[int]:
    """Indices of the frames whose annotation PNG is read."""
    pngs = sorted(p.stem for p in masks_dir.glob("*.png"))
    index = {stem: i for i, stem in enumerate(stems)}
    orphans = [f"{stem}.png" for stem in pngs if stem not in index]
    if orphans:
        raise ValueError(f"{masks_dir}: {len(pngs)} annotation PNGs but {frames_dir} has "
                         f"{len(stems)} frames; {', '.join(orphans[:5])} match no .jpg frame")
    if annotated == "first":
        if stems[0] not in pngs:
            raise FileNotFoundError(f"{masks_dir}: expected the first frame's annotation "
                                    f"{stems[0]}.png")
        return [0]
    if not pngs:
        raise FileNotFoundError(f"{masks_dir}: no annotation PNGs")
    return sorted(index[stem] for stem in pngs)


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected an indexed (P) or grey (L) PNG of object ids, "
                             f"got mode {image.mode}")
        mode, mask = image.mode, np.array(image, dtype=np.uint8)
    if mask.shape != tuple(shape):
        raise ValueError(f"{path}: expected a {shape[1]}x{shape[0]} mask like the frames, "
                         f"got {mask.shape[1]}x{mask.shape[0]}")
    if mode == "L" and mask.max() == 255 and np.isin(mask, (0, 255)).all():
        mask = (mask == 255).astype(np.uint8)  # a DAVIS 2016 binary mask
    return mask


# ----------------------------------------------------------------- writing

def _write_video(video: Video, names: list[str], keep: torch.Tensor, masks: torch.Tensor,
                 root: Path, resolution: str | None, quality: int) -> None:
    """Write one video into a temporary folder, then rename its two folders into place."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{video.name}.", suffix=".tmp", dir=root))
    try:
        (tmp / "frames").mkdir()
        (tmp / "masks").mkdir()
        frames, masks = video.frames.permute(0, 2, 3, 1).numpy(), masks.numpy()
        palette = davis_palette()
        for i, stem in enumerate(names):
            Image.fromarray(frames[i]).save(tmp / "frames" / f"{stem}.jpg",
                                            quality=quality, subsampling=0)
            if keep[i]:
                mask = Image.fromarray(masks[i])  # grey "L"; a palette makes it indexed "P"
                mask.putpalette(palette)
                mask.save(tmp / "masks" / f"{stem}.png")
        for part, kind in (("frames", "JPEGImages"), ("masks", "Annotations")):
            _replace_dir(tmp / part, _level(root, kind, resolution) / video.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _annotated(video: Video) -> torch.Tensor:
    """Which frames get an annotation PNG: ``meta["annotated"]``, or all."""
    flags = video.meta.get("annotated")
    keep = torch.ones(len(video), dtype=torch.bool) if flags is None \
        else torch.as_tensor(flags, dtype=torch.bool)
    if keep.shape != (len(video),):
        raise ValueError(f"write_davis: video {video.name!r}: expected meta['annotated'] of "
                         f"shape [{len(video)}], got {list(keep.shape)}")
    return keep


def _with_void(video: Video) -> torch.Tensor:
    """The label maps with ``meta["void"]`` pixels set back to 255."""
    masks = video.masks.clone()
    if "void" in video.meta:
        void = torch.as_tensor(video.meta["void"], dtype=torch.bool)
        if void.shape != masks.shape:
            raise ValueError(f"write_davis: video {video.name!r}: expected meta['void'] of "
                             f"shape {list(masks.shape)}, got {list(void.shape)}")
        masks[void] = VOID
    return masks


def _level(root: Path, kind: str, resolution: str | None) -> Path:
    """``root/kind/resolution``, or ``root/kind`` without a resolution level."""
    return root / kind if resolution is None else root / kind / resolution


def _frame_names(video: Video) -> list[str]:
    names = video.meta.get("frame_names")
    if names is None:
        return [f"{i:05d}" for i in range(len(video))]
    names = [str(n) for n in names]
    if len(names) != len(video) or len(set(names)) != len(names):
        raise ValueError(f"write_davis: video {video.name!r}: expected {len(video)} distinct "
                         f"meta['frame_names'], got {len(names)} ({len(set(names))} distinct)")
    for n in names:
        _check_name(n, "frame name")
    return names


def _replace_dir(new: Path, target: Path) -> None:
    """Move folder ``new`` to ``target``, replacing what was there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _extend_imageset(root: Path, imageset: tuple[str, str], names: list[str]) -> None:
    path = root / "ImageSets" / imageset[0] / f"{imageset[1]}.txt"
    listed = path.read_text().split() if path.is_file() else []
    listed += [name for name in dict.fromkeys(names) if name not in listed]
    write_text_atomic(path, "".join(f"{name}\n" for name in listed))


def _check_name(name, what: str) -> None:
    if not isinstance(name, str) or not name or name.startswith(".") \
            or any(c in "/\\" or c.isspace() for c in name):
        raise ValueError(f"write_davis: expected a {what} usable as a file name (no slashes, "
                         f"no white space, no leading dot), got {name!r}")
