"""A frozen Hugging Face causal LM, scored with a sliding window, with hooks for an external memory.

The memory-augmented language models memkit implements all read a frozen
decoder's states and change its next-token distribution:

- kNN-LM (Khandelwal et al., "Generalization through Memorization: Nearest
  Neighbor Language Models", ICLR 2020) keys its datastore on the input of the
  last layer's feed-forward block, after that block's layer norm;
- MLP Memory ("MLP Memory: Language Modeling with Retriever-pretrained External
  Memory", 2025) reads the same state;
- LongMem (Wang et al., "Augmenting Language Models with Long-Term Memory",
  NeurIPS 2023) reads every layer's hidden states and one layer's attention
  keys and values.

``CausalLM`` gives them one forward pass returning all of these
(``LMOutput``), and one scoring loop: a document longer than the model's
``window`` is scored with windows of ``window`` tokens moving by ``stride``,
each token once, every token predicted from at least ``window - stride``
previous tokens. ``next_log_probs`` is where a memory wrapper mixes in its
distribution; ``after_window`` is where it writes what was just scored (so
nothing is read before it was scored); ``begin_document`` is where it forgets
the previous document. Any ``transformers`` causal LM works whose decoder
layers are found by ``decoder_layers`` (GPT-2, Llama and Mistral-like,
GPT-NeoX, OPT).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

LAYER_PATHS = ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers")
"""Where decoder layers live in GPT-2, Llama-like, GPT-NeoX and OPT models."""
FFN_NAMES = ("mlp", "feed_forward", "ffn", "fc1")
"""A decoder layer's feed-forward block (OPT's is its first linear layer)."""


def module_at(model: nn.Module, paths: Sequence[str], kind: type, what: str) -> nn.Module:
    """The first submodule of type ``kind`` at one of the dotted ``paths`` (e.g. "model.norm")."""
    for path in paths:
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, kind):
            return module
    raise ValueError(f"{what}: expected a causal LM with {what.replace('_', ' ')} at one of "
                     f"{tuple(paths)}, got a {type(model).__name__}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a ``transformers`` causal LM, in order."""
    return module_at(model, LAYER_PATHS, nn.ModuleList, "decoder_layers")


def feed_forward(layer: nn.Module) -> nn.Module:
    """The feed-forward block of one decoder layer: its input is the kNN-LM key."""
    for name in FFN_NAMES:
        if isinstance(getattr(layer, name, None), nn.Module):
            return getattr(layer, name)
    raise ValueError(f"feed_forward: expected a decoder layer with one of {FFN_NAMES}, "
                     f"got a {type(layer).__name__}")


@dataclass
class LMOutput:
    """One forward pass: (B, T, V) float32 logits, (B, T, d) keys, hidden states and the cache.

    ``keys`` are the input of layer ``key_layer``'s feed-forward block;
    ``hidden_states`` are the embeddings and each layer's output;
    ``cache.layers[i].keys`` / ``.values`` are layer ``i``'s attention keys and
    values, (B, kv_heads, T, head_dim).
    """

    logits: torch.Tensor
    keys: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    cache: object


class CausalLM:
    """A frozen causal LM with sliding-window scoring, generation and memory hooks."""

    def __init__(self, model: nn.Module, tokenizer=None, *, window: int | None = None,
                 stride: int | None = None, key_layer: int = -1):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        layers = decoder_layers(model)
        if not -len(layers) <= key_layer < len(layers):
            raise ValueError(f"key_layer: expected an index into {len(layers)} decoder layers, "
                             f"got {key_layer}")
        self.key_layer = key_layer % len(layers)
        self._ffn = feed_forward(layers[self.key_layer])
        config = model.config
        limit = getattr(config, "max_position_embeddings", None) or config.n_positions
        self.window = _positive("window", limit if window is None else window)
        if self.window > limit:
            raise ValueError(f"window: expected at most the model's {limit} positions, "
                             f"got {self.window}")
        self.stride = _positive("stride", self.window // 2 if stride is None else stride)
        if self.window > 1 and self.stride >= self.window:
            raise ValueError(f"stride: expected less than window={self.window}, got {self.stride}")
        self.dim = config.hidden_size
        self.vocab_size = model.get_output_embeddings().weight.shape[0]

    # -- one forward pass ----------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> LMOutput:
        """Logits, kNN keys, hidden states and attention cache for token ids (B, T)."""
        ids = self._check_ids(ids, dims=2)
        captured = []
        hook = self._ffn.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        try:
            out = self.model(ids, output_hidden_states=True, use_cache=True)
        finally:
            hook.remove()
        cache = getattr(out, "cache", None) or out.past_key_values
        return LMOutput(out.logits.float(), captured[-1].float(), out.hidden_states, cache)

    def next_log_probs(self, out: LMOutput, positions: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """log p(next token) at window ``positions`` (all if None), (B, n, V).

        The LM's own distribution; memory wrappers override this to mix theirs in,
        computing it only where asked.
        """
        logits = out.logits if positions is None else out.logits[:, positions]
        return torch.log_softmax(logits, dim=-1)

    # -- memory hooks --------------------------------------------------------------------------

    def begin_document(self) -> None:
        """Called before a document is scored (a memory of the previous one is dropped here)."""

    def after_window(self, out: LMOutput, positions: torch.Tensor, targets: torch.Tensor) -> None:
        """Called after a window was scored: ``out.keys[0, positions]`` predicted ``targets``."""

    # -- scoring -------------------------------------------------------------------------------

    def windows(self, length: int) -> list[tuple[int, int, int]]:
        """(start, end, first target) per window over ``length`` tokens; targets first..end-1."""
        spans, end = [], min(self.window, length)
        spans.append((0, end, 1))
        while end < length:
            new_end = min(end + self.stride, length)
            spans.append((max(0, new_end - self.window), new_end, end))
            end = new_end
        return spans

    def token_log_probs(self, ids: torch.Tensor, *, write: bool = True,
                        reset: bool = True) -> torch.Tensor:
        """log p(ids[t] | up to ``window`` previous tokens) for t = 1..T-1, each scored once.

        ``reset`` calls ``begin_document`` first; ``write`` calls ``after_window``
        with what each window scored.
        """
        ids = self._check_ids(ids, dims=1)
        if len(ids) < 2:
            raise ValueError(f"token_log_probs: expected at least 2 tokens, got {len(ids)}")
        if reset:
            self.begin_document()
        scores = []
        for start, end, first in self.windows(len(ids)):
            out = self.forward(ids[None, start:end])
            positions = torch.arange(first - 1 - start, end - 1 - start)
            targets = ids[first:end]
            log_probs = self.next_log_probs(out, positions)[0]
            scores.append(log_probs.gather(1, targets[:, None])[:, 0])
            if write:
                self.after_window(out, positions, targets)
        return torch.cat(scores)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (T,) of ``text`` through the tokenizer."""
        if self.tokenizer is None:
            raise ValueError("encode: this CausalLM has no tokenizer; pass token ids instead")
        if not isinstance(text, str):
            raise TypeError(f"encode: expected a str, got {type(text).__name__}")
        return torch.tensor(self.tokenizer.encode(text), dtype=torch.int64)

    def log_prob(self, text: str | torch.Tensor) -> float:
        """Total log-probability of a text (its first token is not scored)."""
        ids = self.encode(text) if isinstance(text, str) else text
        return float(self.token_log_probs(ids).sum())

    def perplexity(self, texts: Sequence[str] | Sequence[torch.Tensor]) -> float:
        """exp of the mean negative log-probability over every scored token of ``texts``."""
        if isinstance(texts, str | torch.Tensor) or len(texts) == 0:
            raise ValueError("perplexity: expected a non-empty sequence of texts or id tensors")
        total, count = 0.0, 0
        for text in texts:
            ids = self.encode(text) if isinstance(text, str) else text
            scores = self.token_log_probs(ids)
            total, count = total - float(scores.sum()), count + len(scores)
        return math.exp(total / count)

    @torch.no_grad()
    def generate(self, prompt: str | torch.Tensor, max_new_tokens: int, *,
                 temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> str | torch.Tensor:
        """Continue ``prompt`` by ``max_new_tokens`` tokens from ``next_log_probs``.

        ``temperature`` 0 picks the most likely token; above 0 samples. A str
        prompt gives a str (the continuation only), ids give ids.
        """
        _positive("max_new_tokens", max_new_tokens)
        if temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {temperature}")
        ids = self.encode(prompt) if isinstance(prompt, str) else self._check_ids(prompt, dims=1)
        new = []
        for _ in range(max_new_tokens):
            context = torch.cat([ids, torch.tensor(new, dtype=torch.int64)])[-self.window:]
            out = self.forward(context[None])
            log_probs = self.next_log_probs(out, torch.tensor([len(context) - 1]))[0, 0]
            if temperature == 0:
                new.append(int(log_probs.argmax()))
            else:
                probs = torch.softmax(log_probs / temperature, dim=-1)
                new.append(int(torch.multinomial(probs, 1, generator=generator)))
        if isinstance(prompt, str):
            return self.tokenizer.decode(new)
        return torch.tensor(new, dtype=torch.int64)

    def _check_ids(self, ids, *, dims: int) -> torch.Tensor:
        if (not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64)
                or ids.dim() != dims or ids.shape[-1] == 0):
            raise ValueError(f"expected int64 token ids of {dims} dimension(s), got "
                             f"{_describe(ids)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"expected token ids in [0, {self.vocab_size}), got ids in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.long()


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"a {t.dtype} tensor of shape {tuple(t.shape)}"
    return f"a {type(t).__name__}"
