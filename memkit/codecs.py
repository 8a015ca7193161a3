"""Storage codecs for a sample memory's payload ``x``: fewer bytes per item, more items per budget.

``raw`` stores ``x`` in the dtype its spec gives; ``float32`` casts to float32;
``float16`` halves the bytes of float32; ``int8`` is a
per-feature affine quantisation (Jacob et al., "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018)
whose offset and scale are fitted on the first batch added and charged to the
budget with the items; ``uint8`` stores images with values in [0, 1] as
0..255, the way exemplar images are kept on disk (a CIFAR image is 3,072 B).
``sample`` returns float32 for every codec but ``raw``.
"""

from __future__ import annotations

import torch


class Codec:
    """Storage cast to ``dtype`` (``None``: as given); subclasses quantise."""

    def __init__(self, name: str, dtype: torch.dtype | None):
        self.name, self.dtype = name, dtype

    def state(self, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Tensors the codec keeps beside the items (charged to the budget)."""
        return {}

    def fit(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        """Fit ``state`` on the first batch the memory sees."""

    def encode(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return x if self.dtype is None else x.to(self.dtype)

    def decode(self, stored: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return stored if self.dtype is None else stored.to(torch.float32)


class Int8Affine(Codec):
    """``q = round((x - low) / scale) - 128`` per feature; ``scale = (high - low) / 255``."""

    def __init__(self):
        super().__init__("int8", torch.int8)

    def state(self, shape):
        return {"low": torch.zeros(shape), "scale": torch.ones(shape)}

    def fit(self, x, state):
        low, high = x.amin(dim=0), x.amax(dim=0)
        state["low"].copy_(low)
        state["scale"].copy_(((high - low) / 255).clamp_min(1e-8))

    def encode(self, x, state):
        q = torch.round((x - state["low"]) / state["scale"]).clamp(0, 255) - 128
        return q.to(torch.int8)

    def decode(self, stored, state):
        return (stored.to(torch.float32) + 128) * state["scale"] + state["low"]


class Uint8Image(Codec):
    """Values in [0, 1] stored as ``round(255 x)``; decoded as ``q / 255``."""

    def __init__(self):
        super().__init__("uint8", torch.uint8)

    def encode(self, x, state):
        return torch.round(x.clamp(0, 1) * 255).to(torch.uint8)

    def decode(self, stored, state):
        return stored.to(torch.float32) / 255


def get_codec(name: str) -> Codec:
    codecs = {"raw": lambda: Codec("raw", None),
              "float32": lambda: Codec("float32", torch.float32),
              "float16": lambda: Codec("float16", torch.float16),
              "int8": Int8Affine, "uint8": Uint8Image}
    if name not in codecs:
        raise ValueError(f"codec: expected one of {sorted(codecs)}, got {name!r}")
    return codecs[name]()
