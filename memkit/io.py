"""Persistence: tensors in safetensors, a JSON manifest in its header, written atomically.

A saved store or checkpoint is one ``.safetensors`` file. Its header's
metadata holds the manifest (format version, class, config, byte count and a
sha256 of the tensor payload), so a file and its manifest can never drift
apart, and one ``os.replace`` publishes both. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import safetensors
import torch
from safetensors.torch import save_file

FORMAT = "memkit"
FORMAT_VERSION = 1


class StoreFormatError(ValueError):
    """A file is not a readable memkit file: truncated, tampered, or of another kind."""


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes of ``tensors``, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On failure the temporary file or folder is removed, so nothing half-written
    is ever left where ``path`` would be.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / ("payload" + suffix)
    try:
        yield target
        if target.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.old")
            _remove(old)
            os.replace(path, old)
            os.replace(target, path)
            _remove(old)
        else:
            os.replace(target, path)
    finally:
        _remove(tmp)


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 manifest: Mapping) -> None:
    """Write ``tensors`` to ``path`` with ``manifest`` (plus format and sha256) in its header."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
              "sha256": tensors_sha256(tensors)}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={FORMAT: json.dumps(header)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    with atomic_path(path, Path(path).suffix) as tmp:
        tmp.write_text(text)


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a memkit file, without reading its tensors."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise StoreFormatError(f"{path}: not a readable safetensors file ({exc})") from None
    if FORMAT not in metadata:
        raise StoreFormatError(f"{path}: a safetensors file without a memkit manifest")
    try:
        manifest = json.loads(metadata[FORMAT])
    except json.JSONDecodeError as exc:
        raise StoreFormatError(f"{path}: the memkit manifest is not valid JSON ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StoreFormatError(f"{path}: format version {manifest.get('format_version')!r}, "
                               f"this memkit reads version {FORMAT_VERSION}")
    return manifest


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a memkit file; verify its checksum; return (tensors, manifest)."""
    manifest = read_manifest(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    except Exception as exc:
        raise StoreFormatError(f"{path}: tensor data unreadable ({exc})") from None
    if tensors_sha256(tensors) != manifest.get("sha256"):
        raise StoreFormatError(f"{path}: checksum mismatch, the tensor data was modified "
                               f"or damaged after it was written")
    return tensors, manifest


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
