"""MLP Memory: a parametric memory, an MLP from a decoder's hidden state to the next token.

"MLP Memory: Language Modeling with Retriever-pretrained External Memory"
(2025) replaces a kNN-LM's datastore (Khandelwal et al., ICLR 2020) by a
token-wise MLP that reads the same hidden state as the kNN-LM key and is
trained to output the kNN-LM distribution (``memkit.agents.mlp_memory``
trains it; ``memkit.kernels.knn_targets`` computes its targets and loss).
The MLP has no attention: residual blocks

    x <- x + W_down GELU(W_up LayerNorm(x))      (W_up: d -> ratio * d)

then ``LayerNorm`` and a linear map to the vocabulary. Its cost per token is
fixed by its size, not by the datastore it imitates.

The parameters are the memory: ``nbytes`` is their exact byte count (by
dtype), charged to the budget when the store is made. Without ``blocks`` the
store takes the most blocks (at most ``MAX_BLOCKS``) whose bytes fit what the
budget has free. Weights start from N(0, 0.02) drawn from the seed (biases 0,
layer-norm gains 1), without touching torch's global random state.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from memkit.budget import Budget, BudgetExceeded
from memkit.registry import register
from memkit.seeding import derive_generator
from memkit.store import Store

MAX_BLOCKS = 8
"""Residual blocks taken at most when the budget decides their number."""
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INIT_STD = 0.02


class ResidualBlock(nn.Module):
    """``x + W_down GELU(W_up LayerNorm(x))``."""

    def __init__(self, dim: int, ratio: int, **factory):
        super().__init__()
        self.norm = nn.LayerNorm(dim, **factory)
        self.up = nn.Linear(dim, ratio * dim, **factory)
        self.down = nn.Linear(ratio * dim, dim, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


def mlp_memory_nbytes(dim: int, vocab_size: int, blocks: int, *, ratio: int = 4,
                      dtype: torch.dtype = torch.float32) -> int:
    """Bytes of an MLP memory's parameters: ``blocks`` residual blocks and the output head."""
    block = 2 * dim + (dim * ratio * dim + ratio * dim) + (ratio * dim * dim + dim)
    head = 2 * dim + dim * vocab_size + vocab_size
    return (blocks * block + head) * dtype.itemsize


@register("store", "mlp_memory")
class MLPMemory(Store):
    """Residual MLP blocks and a vocabulary head over keys; its weights are its memory."""

    registry_name = "mlp_memory"

    def __init__(self, dim: int, vocab_size: int, budget: Budget | int | str, *,
                 blocks: int | None = None, ratio: int = 4,
                 dtype: torch.dtype | str = torch.float32, seed: int = 0,
                 owner: str = "mlp_memory"):
        for name, value in (("dim", dim), ("vocab_size", vocab_size), ("ratio", ratio)):
            _positive(name, value)
        if blocks is not None:
            _positive("blocks", blocks)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
        resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if resolved not in DTYPES:
            raise ValueError(f"dtype: expected one of {[_name(d) for d in DTYPES]}, got {dtype!r}")
        super().__init__(budget, owner)
        self.dim, self.vocab_size, self.ratio, self.dtype = dim, vocab_size, ratio, resolved
        self.seed, self.steps = seed, 0
        self.blocks = self._blocks_for(self.budget.free) if blocks is None else blocks
        self.budget.charge(owner, self.nbytes_for(self.blocks))
        self.net = self._build()

    def nbytes_for(self, blocks: int) -> int:
        """Bytes of this memory's parameters with ``blocks`` residual blocks."""
        return mlp_memory_nbytes(self.dim, self.vocab_size, blocks, ratio=self.ratio,
                                 dtype=self.dtype)

    def _blocks_for(self, allotment: int) -> int:
        fitting = [b for b in range(1, MAX_BLOCKS + 1) if self.nbytes_for(b) <= allotment]
        if not fitting:
            raise BudgetExceeded(self.owner, self.nbytes_for(1), allotment, self.budget.capacity)
        return fitting[-1]

    def _build(self) -> nn.Sequential:
        factory = {"device": "meta", "dtype": self.dtype}  # no draws from the global generator
        net = nn.Sequential(*(ResidualBlock(self.dim, self.ratio, **factory)
                              for _ in range(self.blocks)),
                            nn.LayerNorm(self.dim, **factory),
                            nn.Linear(self.dim, self.vocab_size, **factory)).to_empty(device="cpu")
        generator = derive_generator(self.seed, "mlp_memory_init")
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif p.dim() == 1:  # a layer-norm gain
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=generator) * INIT_STD)
        return net

    # -- reading -------------------------------------------------------------------------------

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        """Float32 next-token logits (n, vocab_size) for keys (n, dim)."""
        if (not isinstance(keys, torch.Tensor) or not keys.is_floating_point()
                or keys.dim() != 2 or keys.shape[1] != self.dim):
            got = (f"{keys.dtype} {tuple(keys.shape)}" if isinstance(keys, torch.Tensor)
                   else type(keys).__name__)
            raise ValueError(f"MLPMemory: expected float keys of shape (n, {self.dim}), got {got}")
        return self.net(keys.to(self.dtype)).float()

    def log_probs(self, keys: torch.Tensor) -> torch.Tensor:
        """log p_MLP (n, vocab_size) for keys (n, dim)."""
        return torch.log_softmax(self.forward(keys), dim=1)

    # -- Store ---------------------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def config(self) -> dict:
        return {"dim": self.dim, "vocab_size": self.vocab_size, "blocks": self.blocks,
                "ratio": self.ratio, "dtype": _name(self.dtype), "seed": self.seed,
                "owner": self.owner}

    def extra_state(self) -> dict:
        return {"steps": self.steps}

    def load_extra_state(self, extra: Mapping) -> None:
        steps = int(extra["steps"])
        if steps < 0:
            raise ValueError(f"MLPMemory: a saved step count must be >= 0, got {steps}")
        self.steps = steps

    @property
    def filled_nbytes(self) -> int:
        """All of ``nbytes`` once trained (an untrained MLP remembers nothing)."""
        return self.nbytes if self.steps else 0


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
