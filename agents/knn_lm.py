"""kNN-LM: a frozen causal LM interpolated with a nearest-neighbour distribution over a datastore.

Khandelwal, Levy, Jurafsky, Zettlemoyer & Lewis, "Generalization through
Memorization: Nearest Neighbor Language Models" (ICLR 2020). The datastore
holds one entry per token of a corpus: the key is the frozen LM's hidden state
for the token's context (the input of the last layer's feed-forward block,
after its layer norm), the value is the token. At every step the model
retrieves the ``k`` entries nearest to the current context's key and predicts

    p(y) = lambda * p_kNN(y) + (1 - lambda) * p_LM(y),

``p_kNN`` a softmax over the neighbours' negative squared distances summed by
token (``memkit.kernels.interpolation``); the paper uses k = 1024 and
lambda = 0.25. Nothing is trained.

``KNNLM`` takes a ``memkit.buffers.Datastore`` built from a corpus
(``build_datastore``) and, optionally, a second one, ``cache``, that the model
fills with each document's own tokens as they are scored and empties between
documents (the continuous-cache use of the same datastore: a token is only
written after it was predicted). Both are searched and the ``k`` nearest of
the union are used. Both stores are charged to their budgets by the Datastore.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from memkit.agents.causal_lm import CausalLM, LMOutput
from memkit.buffers.datastore import Datastore, Hits
from memkit.kernels.interpolation import interpolate, knn_log_probs


class KNNLM(CausalLM):
    """p = lam * p_kNN + (1 - lam) * p_LM over a corpus datastore and/or a per-document cache."""

    def __init__(self, model: nn.Module, tokenizer=None, *, datastore: Datastore | None = None,
                 cache: Datastore | None = None, k: int = 1024, lam: float = 0.25,
                 temperature: float = 1.0, window: int | None = None, stride: int | None = None,
                 key_layer: int = -1):
        super().__init__(model, tokenizer, window=window, stride=stride, key_layer=key_layer)
        stores = [s for s in (datastore, cache) if s is not None]
        for name, store in (("datastore", datastore), ("cache", cache)):
            if store is not None and (not isinstance(store, Datastore) or store.dim != self.dim):
                raise ValueError(f"{name}: expected a Datastore of dim {self.dim}, got "
                                 f"{_describe(store)}")
        if len({s.metric for s in stores}) > 1:
            raise ValueError("datastore and cache: expected one metric, got "
                             f"{[s.metric for s in stores]}")
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        if not 0.0 <= lam <= 1.0 or temperature <= 0:
            raise ValueError(f"expected lam in [0, 1] and temperature > 0, got lam={lam}, "
                             f"temperature={temperature}")
        self.datastore, self.cache, self.stores = datastore, cache, stores
        self.k, self.lam, self.temperature = k, lam, temperature

    def neighbours(self, queries: torch.Tensor) -> Hits:
        """The ``k`` nearest entries of the datastore and the cache together, best first."""
        found = [s.search(queries, self.k) for s in self.stores if len(s)]
        if len(found) == 1:
            return found[0]
        if not found:
            empty = torch.full((len(queries), 0), -1, dtype=torch.int64)
            return Hits(empty.float(), empty, empty)
        distances = torch.cat([h.distances for h in found], 1)
        order = torch.sort(distances, dim=1, descending=self.stores[0].metric == "ip",
                           stable=True).indices[:, :self.k]
        return Hits(distances.gather(1, order),
                    torch.cat([h.values for h in found], 1).gather(1, order),
                    torch.cat([h.ids for h in found], 1).gather(1, order))

    def knn_log_probs(self, queries: torch.Tensor) -> torch.Tensor:
        """log p_kNN (q, V) for keys (q, d); rows without any neighbour are nan."""
        hits = self.neighbours(queries)
        metric = self.stores[0].metric if self.stores else "l2"
        return knn_log_probs(hits.distances, hits.values.long(), self.vocab_size,
                             temperature=self.temperature, metric=metric)

    def next_log_probs(self, out: LMOutput, positions: torch.Tensor | None = None
                       ) -> torch.Tensor:
        log_p_lm = super().next_log_probs(out, positions)
        if not self.stores:
            return log_p_lm
        keys = out.keys if positions is None else out.keys[:, positions]
        log_p_knn = self.knn_log_probs(keys.reshape(-1, self.dim))
        return interpolate(log_p_lm, log_p_knn.view_as(log_p_lm), self.lam)

    def begin_document(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    def after_window(self, out: LMOutput, positions: torch.Tensor, targets: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.write(out.keys[0, positions], targets)


def build_datastore(lm: CausalLM, documents: Iterable[torch.Tensor], datastore: Datastore) -> int:
    """Write one entry per scored token of ``documents`` (key: its context's key; value: it).

    Documents are read with ``lm``'s sliding windows, so every token but each
    document's first gets exactly one entry. Returns the number of entries written.
    """
    if datastore.dim != lm.dim:
        raise ValueError(f"datastore: expected dim {lm.dim} (the LM's hidden size), "
                         f"got {datastore.dim}")
    written = 0
    for ids in documents:
        ids = lm._check_ids(ids, dims=1)
        for start, end, first in lm.windows(len(ids)):
            keys = lm.forward(ids[None, start:end]).keys[0, first - 1 - start:end - 1 - start]
            datastore.write(keys, ids[first:end])
            written += len(keys)
    return written


def _describe(store) -> str:
    if isinstance(store, Datastore):
        return f"a Datastore of dim {store.dim}"
    return f"a {type(store).__name__}"
