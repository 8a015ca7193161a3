"""MLP Memory: a frozen causal LM interpolated with an MLP trained to imitate kNN-LM retrieval.

"MLP Memory: Language Modeling with Retriever-pretrained External Memory"
(2025). A kNN-LM (Khandelwal et al., ICLR 2020) searches a datastore of
(hidden state, next token) entries at every step, so its cost grows with the
datastore. MLP Memory distils that retrieval into a token-wise MLP
(``memkit.buffers.mlp_memory.MLPMemory``) reading the same hidden state:

- **Training** (``train_mlp_memory``) needs no LM pass: the datastore's own
  entries are the data, the key the input and the stored token the label. The
  target of each entry is the kNN-LM distribution of its key over the other
  entries (k neighbours, temperature 16, the entry itself dropped), computed
  once, and the MLP minimises ``alpha * KL(p_kNN || p_MLP) + (1 - alpha) *
  CE(p_MLP, y)`` with alpha = 0.5 (``memkit.kernels.knn_targets``) by AdamW
  minibatches. ``objective="ce"`` is the control that fits the labels alone.
- **Inference** (``MLPMemoryLM``) mixes ``p = (1 - lam) p_LM + lam p_MLP``
  (lam = 0.25) in log space, at a per-token cost fixed by the MLP's size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from memkit.agents.causal_lm import CausalLM, LMOutput
from memkit.buffers.datastore import Datastore
from memkit.buffers.mlp_memory import MLPMemory
from memkit.kernels.interpolation import interpolate
from memkit.kernels.knn_targets import knn_targets, mlp_memory_loss
from memkit.seeding import derive_generator

OBJECTIVES = ("kl+ce", "ce")


class MLPMemoryLM(CausalLM):
    """p = (1 - lam) * p_LM + lam * p_MLP, the MLP reading the LM's kNN-LM key."""

    def __init__(self, model: nn.Module, tokenizer=None, *, memory: MLPMemory,
                 lam: float = 0.25, window: int | None = None, stride: int | None = None,
                 key_layer: int = -1):
        super().__init__(model, tokenizer, window=window, stride=stride, key_layer=key_layer)
        if not isinstance(memory, MLPMemory):
            raise TypeError(f"memory: expected an MLPMemory, got {type(memory).__name__}")
        if (memory.dim, memory.vocab_size) != (self.dim, self.vocab_size):
            raise ValueError(f"memory: expected dim {self.dim} and vocab_size {self.vocab_size} "
                             f"(the LM's), got dim {memory.dim} and vocab_size "
                             f"{memory.vocab_size}")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam: expected a weight in [0, 1], got {lam}")
        self.memory, self.lam = memory, lam

    @torch.no_grad()
    def next_log_probs(self, out: LMOutput, positions: torch.Tensor | None = None
                       ) -> torch.Tensor:
        log_p_lm = super().next_log_probs(out, positions)
        if self.lam == 0.0:
            return log_p_lm
        keys = out.keys if positions is None else out.keys[:, positions]
        log_p_mlp = self.memory.log_probs(keys.reshape(-1, self.dim))
        return interpolate(log_p_lm, log_p_mlp.view_as(log_p_lm), self.lam)


def train_mlp_memory(memory: MLPMemory, datastore: Datastore, *, steps: int, k: int = 64,
                     temperature: float = 16.0, alpha: float = 0.5, batch: int = 256,
                     lr: float = 1e-3, seed: int = 0, objective: str = "kl+ce",
                     log_every: int = 1, entries: int | None = None) -> list[float]:
    """Train ``memory`` on ``datastore``'s entries for ``steps`` AdamW steps; return the losses.

    Each returned value is the mean loss of ``log_every`` consecutive steps (the
    last group may be shorter). Minibatches walk seeded permutations of the
    entries, so a seed gives the same weights (with one torch thread).
    ``entries`` trains on a seeded sample of that many entries (their targets
    still searched over the whole datastore): the exact search for the targets
    costs (entries x datastore size).
    """
    _check_training(memory, datastore, steps=steps, k=k, alpha=alpha, batch=batch, lr=lr,
                    objective=objective, log_every=log_every)
    held = len(datastore)
    rows = _sample(held, entries, seed)
    keys, labels = datastore.keys[rows], datastore.values[rows].long()
    n = len(rows)
    alpha = 0.0 if objective == "ce" else alpha
    if alpha > 0:
        values, weights = knn_targets(keys, datastore.ids[rows], datastore.keys[:held],
                                      datastore.values[:held].long(), datastore.ids[:held],
                                      k=k, temperature=temperature, metric=datastore.metric)
    else:  # the labels alone: the KL term is not computed
        values, weights = labels[:, None], torch.ones(n, 1)
    optimizer = torch.optim.AdamW(memory.net.parameters(), lr=lr)
    losses, window = [], []
    for step, picked in enumerate(_minibatches(n, batch, steps, seed)):
        logits = memory.forward(keys[picked].float())
        loss = mlp_memory_loss(logits, values[picked], weights[picked], labels[picked], alpha)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        memory.steps += 1
        window.append(loss.item())
        if len(window) == log_every or step == steps - 1:
            losses.append(math.fsum(window) / len(window))
            window = []
    return losses


def _sample(held: int, entries: int | None, seed: int) -> torch.Tensor:
    """Rows of the entries trained on: all, or a seeded sample of ``entries`` in row order."""
    if entries is not None and (isinstance(entries, bool) or not isinstance(entries, int)
                                or entries < 1):
        raise ValueError(f"entries: expected an int >= 1 or None, got {entries!r}")
    if entries is None or entries >= held:
        return torch.arange(held)
    pick = torch.randperm(held, generator=derive_generator(seed, "mlp_memory.entries"))
    return pick[:entries].sort().values


def _minibatches(n: int, batch: int, steps: int, seed: int):
    """``steps`` index tensors of ``batch`` rows (fewer if ``n`` is) from seeded permutations."""
    batch, order, at, epoch = min(batch, n), torch.empty(0, dtype=torch.int64), 0, 0
    for _ in range(steps):
        if at + batch > len(order):
            order = torch.randperm(n, generator=derive_generator(seed, "mlp_memory", epoch))
            at, epoch = 0, epoch + 1
        yield order[at:at + batch]
        at += batch


def _check_training(memory, datastore, *, steps, k, alpha, batch, lr, objective,
                    log_every) -> None:
    if not isinstance(memory, MLPMemory):
        raise TypeError(f"memory: expected an MLPMemory, got {type(memory).__name__}")
    if not isinstance(datastore, Datastore) or datastore.dim != memory.dim:
        got = (f"a Datastore of dim {datastore.dim}" if isinstance(datastore, Datastore)
               else f"a {type(datastore).__name__}")
        raise ValueError(f"datastore: expected a Datastore of dim {memory.dim}, got {got}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
    if not 0.0 <= alpha <= 1.0 or not lr > 0:
        raise ValueError(f"expected alpha in [0, 1] and lr > 0, got alpha={alpha}, lr={lr}")
    for name, value in (("steps", steps), ("k", k), ("batch", batch), ("log_every", log_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    n, needed = len(datastore), k + 1 if objective == "kl+ce" and alpha > 0 else 1
    if n < needed:
        raise ValueError(f"datastore: expected at least {needed} entries (k={k} neighbours "
                         f"besides each entry itself), got {n}")
    low, high = int(datastore.values[:n].min()), int(datastore.values[:n].max())
    if low < 0 or high >= memory.vocab_size:
        raise ValueError(f"datastore: expected values (next tokens) in [0, {memory.vocab_size}), "
                         f"got values in [{low}, {high}]")
