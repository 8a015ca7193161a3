"""Joint attention over local context and retrieved memory, mixed per head by a gate.

LongMem (Wang, Dong, Cheng, Liu, Yan, Gao & Wei, "Augmenting Language Models
with Long-Term Memory", NeurIPS 2023) gives one layer of its side network two
attentions per head: the usual causal attention over the current window, and
attention over the M key/value pairs its query retrieved from the memory bank.
A learned per-head gate ``g_h`` in [0, 1] mixes them:

    out_h = g_h * softmax(q K_mem^T / sqrt(d)) V_mem + (1 - g_h) * softmax_causal(q K^T / sqrt(d)) V

Memory slots whose mask is False take no weight; a query with no valid memory
slot at all gets the local attention alone. ``joint_attention`` computes this
in batched form (``scaled_dot_product_attention`` for the local part, einsums
for the memory part); ``joint_attention_reference`` query by query in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mem_k: torch.Tensor,
                    mem_v: torch.Tensor, mem_mask: torch.Tensor, gate: torch.Tensor
                    ) -> torch.Tensor:
    """Gated mix of causal local attention and per-query memory attention, (B, H, T, dh).

    ``q, k, v`` (B, H, T, dh); ``mem_k, mem_v`` (B, H, T, M, dh); ``mem_mask``
    (B, H, T, M) bool; ``gate`` (H,) in [0, 1] (differentiable).
    """
    _check(q, k, v, mem_k, mem_v, mem_mask, gate)
    local = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if mem_k.shape[3] == 0:
        return local
    scores = torch.einsum("bhtd,bhtmd->bhtm", q, mem_k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mem_mask, float("-inf"))
    has_memory = mem_mask.any(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(~has_memory, 0.0), dim=-1)
    memory = torch.einsum("bhtm,bhtmd->bhtd", weights, mem_v)
    g = gate.to(q.dtype)[None, :, None, None] * has_memory
    return g * memory + (1 - g) * local


def joint_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              mem_k: torch.Tensor, mem_v: torch.Tensor, mem_mask: torch.Tensor,
                              gate: torch.Tensor) -> torch.Tensor:
    """``joint_attention`` one query at a time, in float64."""
    _check(q, k, v, mem_k, mem_v, mem_mask, gate)
    batch, heads, length, _ = q.shape
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for t in range(length):
                query = q[b, h, t].double()
                local = _attend(query, k[b, h, :t + 1].double(), v[b, h, :t + 1].double())
                valid = mem_mask[b, h, t]
                if not valid.any():
                    out[b, h, t] = local
                    continue
                memory = _attend(query, mem_k[b, h, t][valid].double(),
                                 mem_v[b, h, t][valid].double())
                g = float(gate[h])
                out[b, h, t] = g * memory + (1 - g) * local
    return out.to(q.dtype)


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    scores = keys @ query / math.sqrt(len(query))
    weights = torch.exp(scores - scores.max())
    return (weights / weights.sum()) @ values


def _check(q, k, v, mem_k, mem_v, mem_mask, gate) -> None:
    tensors = {"q": q, "k": k, "v": v, "mem_k": mem_k, "mem_v": mem_v, "mem_mask": mem_mask,
               "gate": gate}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"joint_attention: expected {name} as a tensor, "
                            f"got {type(t).__name__}")
    if q.dim() != 4:
        raise ValueError(f"joint_attention: expected q of shape (B, H, T, dh), "
                         f"got {tuple(q.shape)}")
    batch, heads, length, dim = q.shape
    memory = mem_k.shape[3] if mem_k.dim() == 5 else -1
    expected = {"k": (batch, heads, length, dim), "v": (batch, heads, length, dim),
                "mem_k": (batch, heads, length, memory, dim),
                "mem_v": (batch, heads, length, memory, dim),
                "mem_mask": (batch, heads, length, memory), "gate": (heads,)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"joint_attention: expected {name} of shape {shape}, "
                             f"got {tuple(tensors[name].shape)}")
    if mem_mask.dtype != torch.bool:
        raise ValueError(f"joint_attention: expected a bool mem_mask, got {mem_mask.dtype}")
