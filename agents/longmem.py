"""LongMem: a frozen causal LM, a cached memory bank and a trainable residual side network.

LongMem (Wang, Dong, Cheng, Liu, Yan, Gao & Wei, "Augmenting Language Models
with Long-Term Memory", NeurIPS 2023) keeps the backbone LM frozen. After each
segment, the attention keys and values of one backbone layer (``memory_layer``)
go into a ``LongMemBank`` (chunks of 4 tokens, FIFO). A side network of half
the backbone's depth, its layers initialised from every other backbone layer,
reads the backbone's hidden states: side layer ``l`` starts from its previous
output and adds the cross-network residual ``h[b(l+1)] - h[b(l)]`` (with
``b(l) = 2l`` for half depth, ``h[0]`` the embeddings). One side layer is
memory-augmented: each head's query retrieves its top ``k_chunks`` chunks by
inner product with their mean keys and mixes attention over them with the
causal local attention through a learned per-head gate ``sigmoid(param)``
(``memkit.kernels.memory_attention.joint_attention``). The backbone's frozen
final norm and LM head read the side network's output. Only the side network
trains; its bytes are charged to the same budget as the bank.

Choices made here:

- Side layer ``l`` is initialised from backbone layer ``b(l)``, the first of
  the pair it stands for: its input at initialisation is closest to ``h[b(l)]``,
  exactly that layer's input.
- ``side_memory_layer`` defaults to the side layer standing for
  ``memory_layer`` (the last ``l`` with ``b(l) <= memory_layer``): for an even
  ``memory_layer`` it is initialised from that very layer, so its queries start
  in the space of the cached keys.
- The last decoder layer's raw output (the input of the final norm) replaces
  Hugging Face's normed last hidden state, so every residual is a difference of
  raw layer outputs.
- Grouped-query backbones keep their ``kv_heads`` in the bank; query head ``h``
  retrieves from bank head ``h // (heads // kv_heads)``, as its attention reads.
- A query with nothing in memory gets local attention alone; ``memory="off"``
  forces that everywhere (the side network without memory).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memkit.agents.causal_lm import CausalLM, LMOutput, decoder_layers, module_at
from memkit.budget import Budget
from memkit.buffers.longmem import LongMemBank
from memkit.io import load_tensors, save_tensors
from memkit.kernels.memory_attention import joint_attention
from memkit.seeding import derive_generator

FINAL_NORM_PATHS = ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm",
                    "model.decoder.final_layer_norm")
"""Where the final norm lives in GPT-2, Llama-like, GPT-NeoX and OPT models."""
MEMORY_MODES = ("on", "off")
Retrieve = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None"]


@dataclass(frozen=True)
class SideConfig:
    """The side network's shape, the backbone layers it stands for, and its init source."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    norm: str
    """``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm)."""
    eps: float
    mlp: str
    """``"plain"`` (fc, act, proj) or ``"gated"`` (down(act(gate(x)) * up(x)))."""
    activation: str
    attention_bias: bool
    mlp_bias: bool
    boundaries: tuple[int, ...]
    """Side layer ``l`` is initialised from backbone layer ``boundaries[l]`` and adds
    ``h[boundaries[l + 1]] - h[boundaries[l]]``."""
    memory_layer: int
    cross_residual: bool
    gate_init: float
    source: str
    """``"gpt2"`` or ``"llama"`` (copied from the backbone) or ``"random"`` (seeded)."""
    seed: int

    @property
    def depth(self) -> int:
        return len(self.boundaries) - 1


class SideAttention(nn.Module):
    """Multi-head attention with q/k/v/o projections, grouped kv heads, no positions."""

    def __init__(self, c: SideConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.heads, c.kv_heads, c.head_dim
        self.q = nn.Linear(c.hidden, c.heads * c.head_dim, bias=c.attention_bias)
        self.k = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=c.attention_bias)
        self.v = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=c.attention_bias)
        self.o = nn.Linear(c.heads * c.head_dim, c.hidden, bias=c.attention_bias)

    def forward(self, x: torch.Tensor, retrieve: Retrieve | None = None,
                gate: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        repeat = self.heads // self.kv_heads
        k, v = (proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
                .repeat_interleave(repeat, dim=1) for proj in (self.k, self.v))
        memory = None if retrieve is None else retrieve(q)
        if memory is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = joint_attention(q, k, v, *memory, gate)
        return self.o(out.transpose(1, 2).reshape(batch, length, -1))


class SideMLP(nn.Module):
    """The feed-forward block: plain (GPT-2's) or gated (Llama's)."""

    def __init__(self, c: SideConfig):
        from transformers.activations import ACT2FN  # the backbone's own activation by name

        super().__init__()
        self.gated, self.act = c.mlp == "gated", ACT2FN[c.activation]
        self.up = nn.Linear(c.hidden, c.intermediate, bias=c.mlp_bias)
        self.down = nn.Linear(c.intermediate, c.hidden, bias=c.mlp_bias)
        if self.gated:
            self.gate = nn.Linear(c.hidden, c.intermediate, bias=c.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


class SideBlock(nn.Module):
    """A pre-norm decoder block: x + attn(norm1(x)), then + mlp(norm2(.))."""

    def __init__(self, c: SideConfig):
        super().__init__()
        norm = nn.LayerNorm if c.norm == "layer" else nn.RMSNorm
        self.norm1, self.norm2 = norm(c.hidden, eps=c.eps), norm(c.hidden, eps=c.eps)
        self.attn, self.mlp = SideAttention(c), SideMLP(c)

    def forward(self, x: torch.Tensor, retrieve: Retrieve | None = None,
                gate: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), retrieve, gate)
        return x + self.mlp(self.norm2(x))


class SideNetwork(nn.Module):
    """Side blocks over a backbone's hidden states with cross-network residuals and a gate."""

    def __init__(self, config: SideConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(SideBlock(config) for _ in range(config.depth))
        self.gate_logit = nn.Parameter(torch.full((config.heads,), float(config.gate_init)))

    @property
    def gate(self) -> torch.Tensor:
        """The per-head memory gate g_h = sigmoid(param), in [0, 1]."""
        return torch.sigmoid(self.gate_logit)

    def forward(self, hidden_states: Sequence[torch.Tensor],
                retrieve: Retrieve | None = None) -> torch.Tensor:
        """The side output (B, T, d) from the embeddings and raw layer outputs ``h[0..L]``."""
        b = self.config.boundaries
        x = hidden_states[0]
        for layer, block in enumerate(self.blocks):
            memory = retrieve if layer == self.config.memory_layer else None
            x = block(x, memory, self.gate)
            if self.config.cross_residual:
                x = x + (hidden_states[b[layer + 1]] - hidden_states[b[layer]])
        return x


class LongMem(CausalLM):
    """A frozen causal LM read by a memory-augmented residual side network."""

    def __init__(self, model: nn.Module, tokenizer=None, *, budget: Budget | int | str,
                 window: int | None = None, stride: int | None = None,
                 memory_layer: int | None = None, side_depth: int | None = None,
                 side_memory_layer: int | None = None, chunk: int = 4, k_chunks: int = 16,
                 bank_nbytes: int | str | None = None,
                 key_dtype: torch.dtype | str = torch.float16, cross_residual: bool = True,
                 gate_init: float = -3.0, memory: str = "on", seed: int = 0):
        super().__init__(model, tokenizer, window=window, stride=stride)
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)
        depth = len(decoder_layers(model))
        self.memory_layer = _index("memory_layer", (2 * depth) // 3 if memory_layer is None
                                   else memory_layer, depth)
        self.k_chunks = _positive("k_chunks", k_chunks)
        self.side = SideNetwork(side_config(model, side_depth=side_depth,
                                            memory_layer=self.memory_layer,
                                            side_memory_layer=side_memory_layer,
                                            cross_residual=cross_residual,
                                            gate_init=gate_init, seed=seed))
        init_side_network(self.side, model)
        self.budget.charge_model(self.side, owner="longmem.side")
        c = self.side.config
        self.bank = LongMemBank(c.kv_heads, c.head_dim, self.budget, nbytes=bank_nbytes,
                                chunk=chunk, key_dtype=key_dtype, owner="longmem.bank")
        self._final_norm = final_norm(model)
        self._lm_head = model.get_output_embeddings()
        self.memory = memory

    @property
    def memory(self) -> str:
        """``"on"``: the side network reads the bank; ``"off"``: local attention only."""
        return self._memory

    @memory.setter
    def memory(self, mode: str) -> None:
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory: expected one of {MEMORY_MODES}, got {mode!r}")
        self._memory = mode

    @property
    def stores(self) -> dict[str, LongMemBank]:
        return {"bank": self.bank}

    def forward(self, ids: torch.Tensor) -> LMOutput:
        """The backbone's pass, with the last layer's raw output as the last hidden state."""
        captured = []
        hook = self._final_norm.register_forward_pre_hook(lambda _, a: captured.append(a[0]))
        try:
            out = super().forward(ids)
        finally:
            hook.remove()
        return dataclasses.replace(out, hidden_states=(*out.hidden_states[:-1], captured[-1]))

    def side_logits(self, out: LMOutput) -> torch.Tensor:
        """(B, T, V) float32 logits of the side network (differentiable in its parameters)."""
        retrieve = self._retrieve if self.memory == "on" else None
        hidden = self.side(out.hidden_states, retrieve)
        return self._lm_head(self._final_norm(hidden)).float()

    @torch.no_grad()
    def next_log_probs(self, out: LMOutput, positions: torch.Tensor | None = None
                       ) -> torch.Tensor:
        logits = self.side_logits(out)
        return torch.log_softmax(logits if positions is None else logits[:, positions], dim=-1)

    def begin_document(self) -> None:
        self.bank.clear()

    def after_window(self, out: LMOutput, positions: torch.Tensor, targets: torch.Tensor) -> None:
        """Write the memory layer's keys and values of the tokens at ``positions`` to the bank."""
        layer = out.cache.layers[self.memory_layer]
        self.bank.write(layer.keys[0, :, positions].transpose(0, 1),
                        layer.values[0, :, positions].transpose(0, 1))

    def _retrieve(self, q: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Memory keys, values (B, H, T, M, dh) and mask (B, H, T, M) for queries (B, H, T, dh)."""
        if len(self.bank) == 0:
            return None
        batch, heads, length, dim = q.shape
        kv, group = self.bank.heads, heads // self.bank.heads
        grouped = q.detach().view(batch, kv, group, length, dim).permute(0, 2, 3, 1, 4)
        keys, values, mask = self.bank.retrieve(grouped.reshape(-1, kv, dim), self.k_chunks)
        slots = keys.shape[2]

        def per_head(t: torch.Tensor) -> torch.Tensor:
            t = t.view(batch, group, length, kv, slots, -1).permute(0, 3, 1, 2, 4, 5)
            return t.reshape(batch, heads, length, slots, -1)

        return per_head(keys), per_head(values), per_head(mask.unsqueeze(-1)).squeeze(-1)

    def save(self, path: str | os.PathLike) -> None:
        """Write the side network's tensors and config to one safetensors file."""
        save_tensors(path, self.side.state_dict(), {"kind": "longmem.side",
                                                    "config": _config_json(self.side.config)})

    def load(self, path: str | os.PathLike) -> None:
        """Load a side network written by ``save`` of a LongMem of the same configuration."""
        tensors, manifest = load_tensors(path)
        expected = _config_json(self.side.config)
        if manifest.get("kind") != "longmem.side" or manifest.get("config") != expected:
            raise ValueError(f"{path}: expected a longmem.side file with config {expected}, "
                             f"got kind {manifest.get('kind')!r} config {manifest.get('config')}")
        mine = self.side.state_dict()
        if {k: tuple(v.shape) for k, v in mine.items()} != \
                {k: tuple(v.shape) for k, v in tensors.items()}:
            raise ValueError(f"{path}: the saved side network's tensors do not match this one's")
        self.side.load_state_dict(tensors)


def side_config(model: nn.Module, *, side_depth: int | None, memory_layer: int,
                side_memory_layer: int | None, cross_residual: bool, gate_init: float,
                seed: int) -> SideConfig:
    """The side network's shape for ``model``, matching its block variant where it is known."""
    config, layers = model.config, decoder_layers(model)
    depth = len(layers)
    side_depth = max(depth // 2, 1) if side_depth is None else side_depth
    if _positive("side_depth", side_depth) > depth:
        raise ValueError(f"side_depth: expected at most the backbone's {depth} layers, "
                         f"got {side_depth}")
    boundaries = tuple(layer * depth // side_depth for layer in range(side_depth + 1))
    mirror = max(i for i in range(side_depth) if boundaries[i] <= memory_layer)
    side_memory_layer = _index("side_memory_layer", mirror if side_memory_layer is None
                               else side_memory_layer, side_depth)
    hidden, heads = config.hidden_size, config.num_attention_heads
    common = {"hidden": hidden, "heads": heads, "boundaries": boundaries,
              "memory_layer": side_memory_layer, "cross_residual": bool(cross_residual),
              "gate_init": float(gate_init), "seed": seed}
    source = block_source(layers[0])
    if source == "gpt2":
        return SideConfig(kv_heads=heads, head_dim=hidden // heads,
                          intermediate=getattr(config, "n_inner", None) or 4 * hidden,
                          norm="layer", eps=config.layer_norm_epsilon, mlp="plain",
                          activation=config.activation_function, attention_bias=True,
                          mlp_bias=True, source=source, **common)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if source == "llama":
        return SideConfig(kv_heads=kv_heads, head_dim=head_dim,
                          intermediate=config.intermediate_size, norm="rms",
                          eps=config.rms_norm_eps, mlp="gated", activation=config.hidden_act,
                          attention_bias=bool(getattr(config, "attention_bias", False)),
                          mlp_bias=bool(getattr(config, "mlp_bias", False)), source=source,
                          **common)
    return SideConfig(kv_heads=kv_heads, head_dim=head_dim,
                      intermediate=getattr(config, "intermediate_size", None) or 4 * hidden,
                      norm="layer", eps=1e-5, mlp="plain", activation="gelu",
                      attention_bias=True, mlp_bias=True, source=source, **common)


def block_source(layer: nn.Module) -> str:
    """``"gpt2"`` or ``"llama"`` when a decoder layer has those modules, else ``"random"``."""
    gpt2 = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "ln_1", "ln_2")
    llama = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
             "post_attention_layernorm")
    names = dict(layer.named_modules())
    for source, parts in (("gpt2", gpt2), ("llama", llama)):
        if all(part in names for part in parts):
            return source
    return "random"


@torch.no_grad()
def init_side_network(side: SideNetwork, model: nn.Module) -> None:
    """Copy backbone layer ``boundaries[l]`` into side block ``l`` (or a seeded random init)."""
    c, layers = side.config, decoder_layers(model)
    if c.source == "random":
        generator = derive_generator(c.seed, "longmem.side")
        for name, p in side.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            elif name != "gate_logit":
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        return
    copy = _copy_gpt2 if c.source == "gpt2" else _copy_llama
    for block, index in zip(side.blocks, c.boundaries[:-1], strict=True):
        copy(block, layers[index])


def _copy_gpt2(block: SideBlock, layer: nn.Module) -> None:
    """GPT-2's Conv1D weights are (in, out): transposed into (out, in) linear weights."""
    d = block.attn.q.in_features
    w, b = layer.attn.c_attn.weight, layer.attn.c_attn.bias
    for i, proj in enumerate((block.attn.q, block.attn.k, block.attn.v)):
        proj.weight.copy_(w[:, i * d:(i + 1) * d].T)
        proj.bias.copy_(b[i * d:(i + 1) * d])
    for mine, theirs in ((block.attn.o, layer.attn.c_proj), (block.mlp.up, layer.mlp.c_fc),
                         (block.mlp.down, layer.mlp.c_proj)):
        mine.weight.copy_(theirs.weight.T)
        mine.bias.copy_(theirs.bias)
    block.norm1.load_state_dict(layer.ln_1.state_dict())
    block.norm2.load_state_dict(layer.ln_2.state_dict())


def _copy_llama(block: SideBlock, layer: nn.Module) -> None:
    attn, mlp = layer.self_attn, layer.mlp
    pairs = ((block.attn.q, attn.q_proj), (block.attn.k, attn.k_proj),
             (block.attn.v, attn.v_proj), (block.attn.o, attn.o_proj),
             (block.mlp.gate, mlp.gate_proj), (block.mlp.up, mlp.up_proj),
             (block.mlp.down, mlp.down_proj))
    for mine, theirs in pairs:
        mine.load_state_dict(theirs.state_dict())
    block.norm1.weight.copy_(layer.input_layernorm.weight)
    block.norm2.weight.copy_(layer.post_attention_layernorm.weight)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last decoder layer and the LM head."""
    return module_at(model, FINAL_NORM_PATHS, nn.Module, "final_norm")


def train_side_network(longmem: LongMem, documents: Sequence[torch.Tensor], *, steps: int,
                       lr: float, seed: int, segment: int | None = None) -> list[float]:
    """Train the side network for ``steps`` segments; return each segment's loss.

    Documents come in a seeded order (a new one each pass); each is read in
    consecutive segments of ``segment`` tokens (default: the window), the bank
    holding the earlier segments of the same document. The loss is the cross
    entropy of the side network's next-token logits; only its parameters move.
    """
    segment = longmem.window if segment is None else segment
    _positive("steps", steps)
    if not 1 <= segment <= longmem.window:
        raise ValueError(f"segment: expected an int in [1, {longmem.window}], got {segment!r}")
    documents = [longmem._check_ids(d, dims=1) for d in documents]
    if not documents or any(len(d) < 2 for d in documents):
        raise ValueError("train_side_network: expected a non-empty list of documents of at "
                         "least 2 tokens each")
    optimizer = torch.optim.Adam(longmem.side.parameters(), lr=lr)
    losses: list[float] = []
    passes = 0
    while len(losses) < steps:
        order = torch.randperm(len(documents), generator=derive_generator(seed, "longmem.train",
                                                                          passes))
        for index in order.tolist():
            _train_document(longmem, documents[index], segment, optimizer, losses, steps)
            if len(losses) == steps:
                break
        passes += 1
    longmem.begin_document()
    return losses


def _train_document(longmem: LongMem, ids: torch.Tensor, segment: int,
                    optimizer: torch.optim.Optimizer, losses: list[float], steps: int) -> None:
    longmem.begin_document()
    for start in range(0, len(ids) - 1, segment):
        part = ids[start:start + segment + 1]
        out = longmem.forward(part[None, :-1])
        loss = F.cross_entropy(longmem.side_logits(out)[0], part[1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        longmem.after_window(out, torch.arange(len(part) - 1), part[1:])
        if len(losses) == steps:
            return


def _config_json(config: SideConfig) -> dict:
    out = dataclasses.asdict(config)
    out["boundaries"] = list(out["boundaries"])
    return out


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def _index(name: str, value, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(f"{name}: expected an int in [0, {limit - 1}], got {value!r}")
    return value
