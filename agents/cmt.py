"""CMT: a frozen causal LM answering from a bank of compressed document memories.

CMT (Li, Sun, Hu, Hu & Zhang, "CMT: A Memory Compression Method for Continual
Knowledge Learning of Large Language Models", AAAI 2025) builds on MAC (Tack
et al., "Online Adaptation of Language Models with a Memory of Amortized
Contexts", NeurIPS 2024). The LM never changes. A **compressor** reads each new
document (the frozen LM's hidden states at one layer) and emits ``T`` memory vectors in
the LM's embedding space, stored in a ``CMTBank``. An **aggregator** reads a
question (the LM's states again), turns ``P`` learned queries into conditioning
vectors by attending to it, then lets them attend to the memories through
cross-attention blocks; the result is a prefix of ``P`` vectors placed before
the question's embeddings (``inputs_embeds``). MAC aggregates over the whole
bank; CMT adds three parts:

- **memory-aware objective**: one entry alone, aggregated with an empty
  question, must let the LM reconstruct its document (``memory_aware_loss``);
- **self-matching**: the compressor gives each entry a key, the aggregator each
  question a key (unit vectors); InfoNCE over a batch with the question's own
  document as the positive (``self_matching_loss``), and the same inner product
  retrieves from the bank;
- **top-aggregation**: only the ``k`` best-matching entries are aggregated
  (``prefix(question, k)``; ``k=None`` is MAC's aggregation over the whole bank),
  each entry's matching score over ``temperature`` added to the attention logits
  of its vectors (a choice made here: the aggregator leans on the best match).

Choices made here: compressor and aggregator read the frozen LM's hidden
states at ``layer``, by default 0 (the input embeddings with positions), where
each position still holds its own token; a later layer's state at a token is
mostly a prediction of the next one (reading the last layer, a 3-layer reader's
answer loss stayed at chance; reading layer 0 it fell, see
``benchmarks/knowledge_stream.py``). The compressor is ``T`` learned queries
cross-attending over the document's states (``blocks`` pre-norm blocks) rather than MAC's
per-position MLPs over the last ``T`` states, so a document of any length is
read whole; keys are projections of the masked mean of the LM states (of the
document, of the question), so matching does not compete with what the memory
vectors hold; memories carry no position, so aggregation is invariant to the
order of entries. ``qa_loss`` averages the NLL over every answer token of a
batch. The compressor's and aggregator's parameters are charged to the budget
the bank draws from (owners ``cmt.compressor``, ``cmt.aggregator``, ``cmt.bank``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from memkit.agents.causal_lm import CausalLM
from memkit.budget import Budget
from memkit.buffers.cmt import CMTBank
from memkit.io import load_tensors, save_tensors
from memkit.seeding import derive_generator

OBJECTIVES = ("qa", "memory", "matching")
Tokens = str | torch.Tensor | Sequence[str] | Sequence[torch.Tensor]


class CrossAttentionBlock(nn.Module):
    """Pre-norm: x + attention(norm(x) -> norm(context)), then x + MLP(norm(x)).

    Context positions whose mask is False are not attended; a row with no valid
    context gets a zero attention output. ``bias`` (B, M), if given, is added to the
    attention logits of each context position (a log-prior over the context).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: expected a divisor of the dimension {dim}, got {heads}")
        self.heads = heads
        self.norm_x, self.norm_context, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(3))
        self.q, self.kv, self.o = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        batch, n, dim = x.shape
        m, head_dim = context.shape[1], dim // self.heads
        q = self.q(self.norm_x(x)).view(batch, n, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(self.norm_context(context)).view(batch, m, 2, self.heads, head_dim) \
            .permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        if bias is not None:
            scores = scores + bias[:, None, None, :]
        valid = mask[:, None, None, :]
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * valid
        x = x + self.o((weights @ v).transpose(1, 2).reshape(batch, n, dim))
        return x + self.mlp(self.norm_mlp(x))


class Compressor(nn.Module):
    """A document's LM states (B, L, d) -> ``T`` memory vectors (B, T, d) and a key (B, d_key)."""

    def __init__(self, lm_dim: int, tokens: int, key_dim: int, *, blocks: int = 1,
                 heads: int = 4, mlp_ratio: int = 2, seed: int = 0):
        super().__init__()
        for name, value in (("lm_dim", lm_dim), ("tokens", tokens), ("key_dim", key_dim),
                            ("blocks", blocks), ("heads", heads), ("mlp_ratio", mlp_ratio)):
            _positive(name, value)
        self.lm_dim = lm_dim
        self.queries = nn.Parameter(torch.zeros(tokens, lm_dim))
        self.blocks = nn.ModuleList(CrossAttentionBlock(lm_dim, heads, mlp_ratio)
                                    for _ in range(blocks))
        self.key = nn.Linear(lm_dim, key_dim)
        _init(self, derive_generator(seed, "cmt.compressor"))

    def forward(self, states: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_states("Compressor", states, mask, self.lm_dim)
        memories = self.queries.expand(len(states), -1, -1)
        for block in self.blocks:
            memories = block(memories, states, mask)
        return memories, F.normalize(self.key(_masked_mean(states, mask)), dim=-1)


class Aggregator(nn.Module):
    """A question's states and memories (B, M, T, d) with a mask (B, M) -> a prefix (B, P, d).

    ``scores`` (B, M), if given, are the entries' matching logits: added to the
    attention logits of every memory vector of the entry, so the aggregation
    leans on the entries the question matches best.
    """

    def __init__(self, lm_dim: int, prefix_tokens: int, key_dim: int, *, blocks: int = 2,
                 heads: int = 4, mlp_ratio: int = 2, seed: int = 0):
        super().__init__()
        for name, value in (("lm_dim", lm_dim), ("prefix_tokens", prefix_tokens),
                            ("key_dim", key_dim), ("blocks", blocks), ("heads", heads),
                            ("mlp_ratio", mlp_ratio)):
            _positive(name, value)
        self.lm_dim = lm_dim
        self.queries = nn.Parameter(torch.zeros(prefix_tokens, lm_dim))
        self.question = CrossAttentionBlock(lm_dim, heads, mlp_ratio)
        self.blocks = nn.ModuleList(CrossAttentionBlock(lm_dim, heads, mlp_ratio)
                                    for _ in range(blocks))
        self.key = nn.Linear(lm_dim, key_dim)
        self.out = nn.Linear(lm_dim, lm_dim)
        _init(self, derive_generator(seed, "cmt.aggregator"))

    def query_key(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The question's unit matching key (B, d_key)."""
        _check_states("Aggregator", states, mask, self.lm_dim)
        return F.normalize(self.key(_masked_mean(states, mask)), dim=-1)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, memories: torch.Tensor,
                memory_mask: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
        _check_states("Aggregator", states, mask, self.lm_dim)
        batch = len(states)
        if (not isinstance(memories, torch.Tensor) or memories.dim() != 4
                or memories.shape[0] != batch or memories.shape[3] != self.lm_dim):
            raise ValueError(f"Aggregator: expected memories of shape ({batch}, M, T, "
                             f"{self.lm_dim}), got {_describe(memories)}")
        if not isinstance(memory_mask, torch.Tensor) or memory_mask.dtype != torch.bool \
                or memory_mask.shape != memories.shape[:2]:
            raise ValueError(f"Aggregator: expected a bool memory mask of shape "
                             f"{tuple(memories.shape[:2])}, got {_describe(memory_mask)}")
        if scores is not None and (not isinstance(scores, torch.Tensor)
                                   or scores.shape != memory_mask.shape):
            raise ValueError(f"Aggregator: expected scores of shape {tuple(memory_mask.shape)}, "
                             f"got {_describe(scores)}")
        condition = self.question(self.queries.expand(batch, -1, -1), states, mask)
        context = memories.flatten(1, 2)
        context_mask = memory_mask.repeat_interleave(memories.shape[2], dim=1)
        bias = None if scores is None else scores.repeat_interleave(memories.shape[2], dim=1)
        for block in self.blocks:
            condition = block(condition, context, context_mask, bias)
        return self.out(condition)


class CMT:
    """A frozen causal LM, a compressor, an aggregator and a ``CMTBank`` on one budget."""

    def __init__(self, model: nn.Module, tokenizer=None, *, budget: Budget | int | str,
                 tokens: int = 12, key_dim: int = 64, prefix_tokens: int | None = None,
                 compressor_blocks: int = 1, aggregator_blocks: int = 2,
                 heads: int | None = None, mlp_ratio: int = 2,
                 bank_nbytes: int | str | None = None,
                 dtype: torch.dtype | str = torch.float16, eviction: str = "fifo",
                 temperature: float = 0.1, layer: int = 0, seed: int = 0):
        self.lm = CausalLM(model, tokenizer)
        self.layer = _check_layer(layer, model.config.num_hidden_layers)
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        heads = model.config.num_attention_heads if heads is None else heads
        prefix_tokens = tokens if prefix_tokens is None else prefix_tokens
        self._config = {"lm_dim": self.lm.dim, "tokens": tokens, "key_dim": key_dim,
                        "prefix_tokens": prefix_tokens, "compressor_blocks": compressor_blocks,
                        "aggregator_blocks": aggregator_blocks, "heads": heads,
                        "mlp_ratio": mlp_ratio, "layer": layer}
        self.compressor = Compressor(self.lm.dim, tokens, key_dim, blocks=compressor_blocks,
                                     heads=heads, mlp_ratio=mlp_ratio, seed=seed)
        self.aggregator = Aggregator(self.lm.dim, prefix_tokens, key_dim,
                                     blocks=aggregator_blocks, heads=heads,
                                     mlp_ratio=mlp_ratio, seed=seed)
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)
        self.budget.charge_model(self.compressor, owner="cmt.compressor")
        self.budget.charge_model(self.aggregator, owner="cmt.aggregator")
        self.bank = CMTBank(tokens, self.lm.dim, key_dim, self.budget, nbytes=bank_nbytes,
                            dtype=dtype, eviction=eviction, owner="cmt.bank")

    @property
    def model(self) -> nn.Module:
        return self.lm.model

    @property
    def stores(self) -> dict[str, CMTBank]:
        return {"bank": self.bank}

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: the compressor's and the aggregator's."""
        return [*self.compressor.parameters(), *self.aggregator.parameters()]

    # -- reading ---------------------------------------------------------------------------------

    def sequences(self, tokens: Tokens, what: str) -> list[torch.Tensor]:
        """A batch of 1-D id tensors from a str, ids (T,) or (B, T), or a list of either."""
        if isinstance(tokens, str) or (isinstance(tokens, torch.Tensor) and tokens.dim() == 1):
            tokens = [tokens]
        elif isinstance(tokens, torch.Tensor) and tokens.dim() == 2:
            tokens = list(tokens)
        if not isinstance(tokens, Sequence | torch.Tensor) or len(tokens) == 0:
            raise ValueError(f"{what}: expected a str, token ids or a non-empty list of them, "
                             f"got {_describe(tokens)}")
        out = [self.lm.encode(t) if isinstance(t, str) else self.lm._check_ids(t, dims=1)
               for t in tokens]
        longest = max(len(t) for t in out)
        if longest > self.lm.window:
            raise ValueError(f"{what}: expected at most {self.lm.window} tokens (the model's "
                             f"positions), got {longest}")
        return out

    @torch.no_grad()
    def states(self, sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen LM's states at ``layer`` (B, L, d) float32, right-padded; the mask (B, L)."""
        ids, mask = _pad(sequences, 0)
        out = self.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        return out.hidden_states[self.layer].float() * mask[..., None], mask

    def compress(self, documents: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Memories (B, T, d) and unit keys (B, d_key) of documents (differentiable)."""
        return self.compressor(*self.states(self.sequences(documents, "compress")))

    @torch.no_grad()
    def memorize(self, doc_ids: torch.Tensor | Sequence[int], documents: Tokens,
                 time: int) -> torch.Tensor:
        """Compress ``documents`` and write them to the bank; return the evicted document ids."""
        memories, keys = self.compress(documents)
        doc_ids = torch.as_tensor(doc_ids, dtype=torch.int64).reshape(-1)
        if len(doc_ids) != len(memories):
            raise ValueError(f"memorize: expected one document id per document "
                             f"({len(memories)}), got {len(doc_ids)}")
        return self.bank.write(doc_ids, memories, keys, time)

    # -- answering -------------------------------------------------------------------------------

    def retrieve(self, query_keys: torch.Tensor, k: int | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Memories (B, M, T, d), mask (B, M) and matching logits (B, M) or None.

        ``k`` None: the whole bank, unweighted (MAC). Otherwise each query's top ``k``
        entries by key and their scores over ``temperature``.
        """
        if k is None:
            memories = self.bank.entries().memories
            mask = torch.ones((len(query_keys), len(memories)), dtype=torch.bool)
            return memories.expand(len(query_keys), -1, -1, -1), mask, None
        scores, slots = self.bank.search(query_keys.detach(), k)
        return *self.bank.gather(slots), scores / self.temperature

    def prefix(self, question_ids: Tokens, k: int | None = None) -> torch.Tensor:
        """The prefix (B, P, d) for questions, over the whole bank (k None) or the top ``k``."""
        states, mask = self.states(self.sequences(question_ids, "prefix"))
        return self.aggregator(states, mask, *self.retrieve(
            self.aggregator.query_key(states, mask), k))

    @torch.no_grad()
    def answer_log_prob(self, question_ids: Tokens, answer_ids: Tokens,
                        k: int | None = None) -> torch.Tensor:
        """log p(answer | [prefix; question]) per question (B,): minus the answer's NLL."""
        questions = self.sequences(question_ids, "answer_log_prob")
        answers = self.sequences(answer_ids, "answer_log_prob")
        log_probs, mask = answer_log_probs(self.model, self.prefix(questions, k), questions,
                                           answers)
        return (log_probs * mask).sum(dim=1)

    @torch.no_grad()
    def generate(self, question_ids: str | torch.Tensor, max_new_tokens: int,
                 k: int | None = None) -> str | torch.Tensor:
        """Greedy continuation of one question after its prefix (a str gives a str)."""
        _positive("max_new_tokens", max_new_tokens)
        questions = self.sequences(question_ids, "generate")
        if len(questions) != 1:
            raise ValueError(f"generate: expected one question, got {len(questions)}")
        question = questions[0]
        prefix = self.prefix([question], k)
        ids = question
        embed = self.model.get_input_embeddings()
        for _ in range(max_new_tokens):
            if len(prefix[0]) + len(ids) > self.lm.window:
                raise ValueError(f"generate: prefix, question and answer exceed the model's "
                                 f"{self.lm.window} positions")
            x = torch.cat([prefix.to(embed.weight.dtype), embed(ids[None])], dim=1)
            ids = torch.cat([ids, self.model(inputs_embeds=x).logits[0, -1].argmax()[None]])
        new = ids[len(question):]
        return self.lm.tokenizer.decode(new.tolist()) if isinstance(question_ids, str) else new

    # -- persistence -----------------------------------------------------------------------------

    def config(self) -> dict:
        """The modules' shape (what a saved file must match)."""
        return dict(self._config)

    def save(self, path: str | os.PathLike) -> None:
        """Write the compressor's and aggregator's tensors and config to one safetensors file."""
        save_tensors(path, self._module_tensors(), {"kind": "cmt.modules",
                                                    "config": self.config()})

    def load(self, path: str | os.PathLike) -> None:
        """Load modules written by ``save`` of a CMT of the same configuration."""
        tensors, manifest = load_tensors(path)
        if manifest.get("kind") != "cmt.modules" or manifest.get("config") != self.config():
            raise ValueError(f"{path}: expected a cmt.modules file with config {self.config()}, "
                             f"got kind {manifest.get('kind')!r} config {manifest.get('config')}")
        mine = self._module_tensors()
        if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in tensors.items()}:
            raise ValueError(f"{path}: the saved modules' tensors do not match this CMT's")
        for name, module in (("compressor", self.compressor), ("aggregator", self.aggregator)):
            module.load_state_dict({k.removeprefix(f"{name}."): v for k, v in tensors.items()
                                    if k.startswith(f"{name}.")})

    def _module_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, module in (("compressor", self.compressor),
                                                      ("aggregator", self.aggregator))
                for k, v in module.state_dict().items()}


# -- losses --------------------------------------------------------------------------------------

def answer_log_probs(model: nn.Module, prefix: torch.Tensor, questions: Sequence[torch.Tensor],
                     answers: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each answer token after [prefix; question; earlier answer tokens].

    One right-padded pass of ``model`` over ``inputs_embeds``; returns (B, A) log
    probabilities and the mask (B, A) of real answer tokens.
    """
    if len(questions) != len(prefix) or len(answers) != len(prefix):
        raise ValueError(f"expected one question and one answer per prefix ({len(prefix)}), "
                         f"got {len(questions)} and {len(answers)}")
    if any(len(a) == 0 for a in answers):
        raise ValueError("expected answers of at least one token")
    embed = model.get_input_embeddings()
    prefix = prefix.to(embed.weight.dtype)
    rows = [torch.cat([p, embed(torch.cat([q, a]))]) for p, q, a in
            zip(prefix, questions, answers, strict=True)]
    limit = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    if max(len(r) for r in rows) > limit:
        raise ValueError(f"prefix, question and answer exceed the model's {limit} positions")
    x, mask = _pad(rows, 0.0)
    logits = model(inputs_embeds=x, attention_mask=mask.long()).logits
    targets, answer_mask = _pad(list(answers), 0)
    starts = torch.tensor([len(prefix[0]) + len(q) - 1 for q in questions])
    positions = (starts[:, None] + torch.arange(targets.shape[1])).clamp_max(x.shape[1] - 1)
    picked = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1])).float()
    log_probs = torch.log_softmax(picked, dim=-1).gather(2, targets[..., None])[..., 0]
    return log_probs * answer_mask, answer_mask


def qa_loss(model: nn.Module, prefix: torch.Tensor, questions: Sequence[torch.Tensor],
            answers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean NLL over every answer token of the batch, after [prefix; question]."""
    log_probs, mask = answer_log_probs(model, prefix, questions, answers)
    return -log_probs.sum() / mask.sum()


def memory_aware_loss(agent: CMT, documents: Sequence[torch.Tensor],
                      memories: torch.Tensor) -> torch.Tensor:
    """NLL of each document's tokens after the prefix aggregated from its own entry alone.

    ``memories`` (B, T, d) are the documents' own; the question is empty.
    """
    batch, dim = len(memories), agent.lm.dim
    empty = memories.new_zeros((batch, 0, dim))
    no_tokens = torch.zeros((batch, 0), dtype=torch.bool)
    prefix = agent.aggregator(empty, no_tokens, memories[:, None],
                              torch.ones((batch, 1), dtype=torch.bool))
    nothing = [torch.zeros(0, dtype=torch.int64)] * batch
    return qa_loss(agent.model, prefix, nothing, documents)


def self_matching_loss(query_keys: torch.Tensor, entry_keys: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """InfoNCE: question ``i``'s positive is entry ``i``, the batch's other entries negatives."""
    if query_keys.dim() != 2 or query_keys.shape != entry_keys.shape:
        raise ValueError(f"self_matching_loss: expected query and entry keys of one shape "
                         f"(B, d_key), got {tuple(query_keys.shape)} and "
                         f"{tuple(entry_keys.shape)}")
    logits = query_keys @ entry_keys.T / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def train_cmt(agent: CMT, examples: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
              *, steps: int, objectives: Sequence[str] = OBJECTIVES, k: int | None = None,
              lr: float = 1e-3, seed: int = 0, batch_size: int | None = None,
              own_steps: int = 0) -> dict[str, list[float]]:
    """Train the compressor and aggregator on (document, question, answer) id triples.

    Each step takes ``batch_size`` examples (all when None; otherwise a draw seeded
    by ``seed`` and the step); the batch's documents are compressed and form the
    memory its questions are answered from: all of them (k None) or each question's
    top ``k`` by key. For the first ``own_steps`` steps the answer objective reads
    each question's own entry alone instead (a curriculum: through a frozen LM the
    answer's gradient is too weak to learn reading and choosing at once). The loss
    is the sum of the chosen objectives. Returns each objective's and the total's
    value per step.
    """
    objectives = tuple(objectives)
    if not objectives or not set(objectives) <= set(OBJECTIVES):
        raise ValueError(f"objectives: expected a non-empty subset of {OBJECTIVES}, "
                         f"got {objectives}")
    _positive("steps", steps)
    batch_size = len(examples) if batch_size is None else _positive("batch_size", batch_size)
    if not 1 <= batch_size <= len(examples) or ("matching" in objectives and batch_size < 2):
        raise ValueError(f"batch_size: expected 1..{len(examples)} examples (2 or more for "
                         f"matching), got {batch_size}")
    if k is not None and not (isinstance(k, int) and 1 <= k <= batch_size):
        raise ValueError(f"k: expected None or an int in [1, {batch_size}], got {k!r}")
    if isinstance(own_steps, bool) or not isinstance(own_steps, int) or own_steps < 0:
        raise ValueError(f"own_steps: expected an int >= 0, got {own_steps!r}")
    triples = [tuple(_one(agent, t) for t in example) for example in examples]
    optimizer = torch.optim.Adam(agent.parameters(), lr=lr)
    history: dict[str, list[float]] = {name: [] for name in (*objectives, "total")}
    for step in range(steps):
        chosen = torch.randperm(len(triples), generator=derive_generator(seed, "cmt.train", step))
        batch = [triples[i] for i in chosen[:batch_size].sort().values]
        losses = _step_losses(agent, batch, objectives, k, own=step < own_steps)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        for name, value in (*losses.items(), ("total", total)):
            history[name].append(float(value.detach()))
    return history


def _step_losses(agent: CMT, batch: list[tuple[torch.Tensor, ...]], objectives: tuple[str, ...],
                 k: int | None, own: bool) -> dict[str, torch.Tensor]:
    documents, questions, answers = (list(part) for part in zip(*batch, strict=True))
    memories, entry_keys = agent.compressor(*agent.states(documents))
    q_states, q_mask = agent.states(questions)
    query_keys = agent.aggregator.query_key(q_states, q_mask)
    losses = {}
    if "qa" in objectives:
        scores = None
        if own:
            chosen = torch.arange(len(batch))[:, None]
        elif k is None:
            chosen = torch.arange(len(batch)).expand(len(batch), -1)
        else:
            scores, chosen = (query_keys @ entry_keys.T / agent.temperature).topk(k, dim=1)
            chosen = chosen.detach()
        mask = torch.ones(chosen.shape, dtype=torch.bool)
        prefix = agent.aggregator(q_states, q_mask, memories[chosen], mask, scores)
        losses["qa"] = qa_loss(agent.model, prefix, questions, answers)
    if "memory" in objectives:
        losses["memory"] = memory_aware_loss(agent, documents, memories)
    if "matching" in objectives:
        losses["matching"] = self_matching_loss(query_keys, entry_keys, agent.temperature)
    return losses


# -- helpers -------------------------------------------------------------------------------------

@torch.no_grad()
def _init(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded init: matrices N(0, 1/fan_in), norms' scales 1, biases 0."""
    for name, p in module.named_parameters():
        if p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1]))
        else:
            p.fill_(1.0 if name.endswith("weight") else 0.0)


def _one(agent: CMT, tokens: str | torch.Tensor) -> torch.Tensor:
    """One id sequence of an example (a str or a 1-D id tensor)."""
    if not isinstance(tokens, str) and not (isinstance(tokens, torch.Tensor)
                                            and tokens.dim() == 1):
        raise ValueError(f"train_cmt: expected examples of (document, question, answer) as "
                         f"strs or 1-D id tensors, got {_describe(tokens)}")
    return agent.sequences(tokens, "train_cmt")[0]


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(states.dtype)[..., None]
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _pad(rows: Sequence[torch.Tensor], value) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows (L_i, ...) to (B, L, ...) with ``value``; the mask (B, L) marks real ones."""
    padded = nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)
    lengths = torch.tensor([len(r) for r in rows])
    return padded, torch.arange(padded.shape[1]) < lengths[:, None]


def _check_states(where: str, states, mask, dim: int) -> None:
    if not isinstance(states, torch.Tensor) or states.dim() != 3 or states.shape[2] != dim:
        raise ValueError(f"{where}: expected LM states of shape (B, L, {dim}), "
                         f"got {_describe(states)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool \
            or mask.shape != states.shape[:2]:
        raise ValueError(f"{where}: expected a bool mask of shape {tuple(states.shape[:2])}, "
                         f"got {_describe(mask)}")


def _check_layer(layer, n_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) \
            or not -n_layers - 1 <= layer <= n_layers:
        raise ValueError(f"layer: expected an int in [{-n_layers - 1}, {n_layers}] (the LM's "
                         f"{n_layers + 1} hidden states; 0 is the input embeddings), "
                         f"got {layer!r}")
    return layer


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"shape {tuple(t.shape)} {t.dtype}"
    return type(t).__name__
