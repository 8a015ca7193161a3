"""Batch: named tensors that share a leading dimension.

Every store and learner in memkit passes data around as a ``Batch``: ``x`` and
``y`` plus any extras (task id, time, logits, weight, mask, intervention
label ...). Validation happens here, once, with errors that name the field
and the shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

Spec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]
"""What one item of a batch looks like: field -> (shape without the leading dim, dtype)."""


class Batch(Mapping[str, torch.Tensor]):
    """Named tensors sharing a leading dimension.

    >>> b = Batch(x=torch.zeros(4, 3), y=torch.arange(4))
    >>> len(b), b.x.shape, b[1:3].y.tolist()
    (4, torch.Size([4, 3]), [1, 2])
    """

    __slots__ = ("_fields",)

    def __init__(self, **fields: torch.Tensor | np.ndarray):
        if not fields:
            raise ValueError("Batch: expected at least one field, got none")
        tensors = {name: _as_tensor(name, value) for name, value in fields.items()}
        lengths = {name: t.shape[0] for name, t in tensors.items()}
        if len(set(lengths.values())) > 1:
            shapes = ", ".join(f"{n}{tuple(t.shape)}" for n, t in tensors.items())
            raise ValueError(f"Batch: fields must share their leading dimension, got {shapes}")
        self._fields = tensors

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self._fields[key]
            except KeyError:
                known = list(self._fields)
                raise KeyError(f"Batch has no field {key!r}; fields: {known}") from None
        return Batch(**{name: t[_row_index(key)] for name, t in self._fields.items()})

    def __getattr__(self, name: str) -> torch.Tensor:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._fields[name]
        except KeyError:
            known = list(self._fields)
            raise AttributeError(f"Batch has no field {name!r}; fields: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return next(iter(self._fields.values())).shape[0]

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={tuple(t.shape)}:{str(t.dtype)[6:]}" for n, t in self.items())
        return f"Batch(len={len(self)}, {parts})"

    @property
    def spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The shape (without the leading dim) and dtype of each field."""
        return {n: (tuple(t.shape[1:]), t.dtype) for n, t in self._fields.items()}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._fields.values())

    def to(self, *args, **kwargs) -> Batch:
        """``Tensor.to`` applied to every field (a device, a dtype for floating fields only)."""
        dtype = next((a for a in args if isinstance(a, torch.dtype)), kwargs.get("dtype"))
        out = {}
        for name, t in self._fields.items():
            if dtype is not None and not t.is_floating_point():
                rest = [a for a in args if not isinstance(a, torch.dtype)]
                out[name] = t.to(*rest, **{k: v for k, v in kwargs.items() if k != "dtype"})
            else:
                out[name] = t.to(*args, **kwargs)
        return Batch(**out)

    def select(self, *names: str) -> Batch:
        return Batch(**{name: self[name] for name in names})

    def replace(self, **fields: torch.Tensor) -> Batch:
        """A new batch with ``fields`` added or replaced."""
        return Batch(**{**self._fields, **fields})

    def split(self, size: int) -> Iterator[Batch]:
        """Consecutive minibatches of at most ``size`` rows."""
        if size < 1:
            raise ValueError(f"split: expected a positive size, got {size}")
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def check(self, spec: Spec, where: str = "batch") -> None:
        """Raise ``ValueError`` unless every field of ``spec`` is here with its shape and dtype."""
        missing = [name for name in spec if name not in self._fields]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; expected {list(spec)}, "
                             f"got {list(self._fields)}")
        for name, (shape, dtype) in spec.items():
            t = self._fields[name]
            if tuple(t.shape[1:]) != tuple(shape):
                raise ValueError(f"{where}: field {name!r} expected items of shape {tuple(shape)},"
                                 f" got {tuple(t.shape[1:])} (batch shape {tuple(t.shape)})")
            if t.dtype != dtype and not _casts_safely(t.dtype, dtype):
                raise ValueError(f"{where}: field {name!r} expected dtype {dtype}, got {t.dtype}")

    @staticmethod
    def cat(batches: Sequence[Batch]) -> Batch:
        """Concatenate batches with the same fields along the leading dimension."""
        if not batches:
            raise ValueError("Batch.cat: expected at least one batch, got none")
        names = list(batches[0])
        for i, b in enumerate(batches):
            if list(b) != names:
                raise ValueError(f"Batch.cat: batch {i} has fields {list(b)}, expected {names}")
        out = {}
        for name in names:
            parts = [b[name] for b in batches]
            trailing = {tuple(p.shape[1:]) for p in parts}
            if len(trailing) > 1:
                raise ValueError(f"Batch.cat: field {name!r} has item shapes {sorted(trailing)}")
            out[name] = torch.cat(parts)
        return Batch(**out)

    def equal(self, other: Batch) -> bool:
        """True when both have the same fields with equal shapes, dtypes and values."""
        return list(self) == list(other) and all(
            self[n].dtype == other[n].dtype and torch.equal(self[n], other[n]) for n in self
        )


def _as_tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"Batch: field {name!r} expected a tensor or numpy array, "
                        f"got {type(value).__name__}")
    if value.dim() == 0:
        raise ValueError(f"Batch: field {name!r} expected a leading (batch) dimension, "
                         f"got a 0-d tensor")
    return value


def _row_index(key):
    if isinstance(key, (int, slice)) and not isinstance(key, bool):
        return slice(key, key + 1 or None) if isinstance(key, int) else key
    if isinstance(key, (torch.Tensor, np.ndarray, list)):
        return torch.as_tensor(key)
    raise TypeError(f"Batch: expected a field name, an int, a slice or an index tensor, "
                    f"got {type(key).__name__}")


def _casts_safely(source: torch.dtype, target: torch.dtype) -> bool:
    """Integer labels of any width may be stored in another integer dtype, floats in floats."""
    return source.is_floating_point == target.is_floating_point and source != torch.bool
