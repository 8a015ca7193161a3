"""Question-answering agents over a stream of documents: the LM alone, fine-tuned, retrieving, CMT.

Continual knowledge learning gives a language model documents step by step
and asks questions whose answer is the newest fact stated so far (StreamingQA:
Liška et al., "StreamingQA: A Benchmark for Adaptation to New Knowledge over
Time in Question Answering Models", ICML 2022). CMT (Li, Sun, Hu, Hu & Zhang,
"CMT: A Memory Compression Method for Continual Knowledge Learning of Large
Language Models", AAAI 2025) compares against the baselines here, on one frozen
reader LM that continues "<documents> [SEP] <question> [SEP]" with
"<answer> [EOS]" (``benchmarks/train_qa_lm.py``):

- ``ClosedBook``: the LM alone, the question without documents;
- ``OnlineFinetune``: a copy of the LM fine-tuned (next-token loss) on each
  step's documents, asked closed-book: what it learns later overwrites what it
  learned earlier (catastrophic forgetting);
- ``RetrieveDocuments``: retrieval-augmented reading (Lewis et al.,
  "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", NeurIPS
  2020): raw documents in an ``AgentMemory`` under its byte budget, the ``k``
  most similar to the question put before it, newest last;
- ``OracleDocument``: the question's evidence document in context, the upper
  bound of reading;
- ``CompressedMemory``: CMT (``k`` an int: its top-k aggregation) or MAC (Tack
  et al., "Online Adaptation of Language Models with a Memory of Amortized
  Contexts", NeurIPS 2024; ``k`` None: aggregation over the whole bank); each
  document is compressed into a few vectors, the LM never changes.

Every agent has ``observe(step)``, ``answer(questions) -> {qid: answer}``
(greedy decoding, stopped at [EOS]), ``nbytes`` (the memory it holds beyond
the shared frozen LM) and ``stores``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from memkit.agents.cmt import CMT
from memkit.agents.memory_api import AgentMemory
from memkit.data.knowledge import SEP, KnowledgeStep, KnowledgeSteps, Question
from memkit.seeding import derive_generator

MAX_ANSWER_TOKENS = 4
"""Greedy decoding stops at [EOS] or after this many tokens."""


def qa_prompt(question: str, documents: Sequence[str] = ()) -> str:
    """"<documents> [SEP] <question> [SEP]" (documents as given), or "<question> [SEP]"."""
    context = " ".join(documents)
    return f"{context} {SEP} {question} {SEP}" if context else f"{question} {SEP}"


def answer_triples(steps: KnowledgeSteps, tokenizer) -> list[tuple[torch.Tensor, ...]]:
    """(evidence document, "question [SEP]", "answer <eos>") token ids of every question.

    What ``memkit.agents.cmt.train_cmt`` trains on: each question of ``steps`` with
    the document that states its answer. The document and the prompt are encoded
    as the agents encode them; the answer ends with the tokenizer's end-of-sequence
    token and loses a beginning-of-sequence token the tokenizer may add.
    """
    if not isinstance(steps, KnowledgeSteps):
        raise TypeError(f"answer_triples: expected KnowledgeSteps, got {type(steps).__name__}")
    last = len(steps) - 1
    texts = {d.doc_id: d.text for d in steps.documents_up_to(last)}
    out = []
    for q in steps.questions_up_to(last):
        answer = tokenizer.encode(f"{q.answers[0]} {tokenizer.eos_token}")
        if answer and answer[0] == tokenizer.bos_token_id:
            answer = answer[1:]
        out.append(tuple(torch.tensor(ids, dtype=torch.int64) for ids in (
            tokenizer.encode(texts[q.doc_id]), tokenizer.encode(qa_prompt(q.text)), answer)))
    return out


@torch.no_grad()
def greedy_answer(model: nn.Module, tokenizer, prompt: str,
                  max_new_tokens: int = MAX_ANSWER_TOKENS) -> str:
    """Greedy continuation of ``prompt`` up to [EOS] (or ``max_new_tokens``), decoded.

    A prompt longer than the model's positions keeps its first token ([BOS]) and
    its last tokens (the question), dropping the oldest context.
    """
    ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.int64)
    limit = model.config.n_positions - max_new_tokens
    if len(ids) > limit:
        ids = torch.cat([ids[:1], ids[len(ids) - limit + 1:]])
    eos, new = tokenizer.eos_token_id, []
    for _ in range(max_new_tokens):
        context = torch.cat([ids, torch.tensor(new, dtype=torch.int64)])[None]
        token = int(model(context).logits[0, -1].argmax())
        if token == eos:
            break
        new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def _check_step(step) -> KnowledgeStep:
    if not isinstance(step, KnowledgeStep):
        raise TypeError(f"observe: expected a KnowledgeStep, got {type(step).__name__}")
    return step


def _check_questions(questions) -> list[Question]:
    questions = list(questions) if isinstance(questions, Sequence) else questions
    if not isinstance(questions, list) or not all(isinstance(q, Question) for q in questions):
        raise TypeError(f"answer: expected a sequence of Question, got {questions!r:.80}")
    return questions


class Reader:
    """An agent that answers by greedy decoding from a prompt it builds per question."""

    def __init__(self, model: nn.Module, tokenizer):
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"model: expected a transformers causal LM, got "
                            f"{type(model).__name__}")
        if tokenizer is None or not hasattr(tokenizer, "encode"):
            raise TypeError(f"tokenizer: expected a tokenizer with encode/decode, got "
                            f"{type(tokenizer).__name__}")
        self.model, self.tokenizer = model.eval(), tokenizer

    def observe(self, step: KnowledgeStep) -> None:
        _check_step(step)

    def prompt(self, question: Question) -> str:
        return qa_prompt(question.text)

    def answer(self, questions: Sequence[Question]) -> dict[str, str]:
        """{qid: answer} by greedy decoding after each question's prompt."""
        return {q.qid: greedy_answer(self.model, self.tokenizer, self.prompt(q))
                for q in _check_questions(questions)}

    @property
    def nbytes(self) -> int:
        return 0

    @property
    def stores(self) -> dict:
        return {}


class ClosedBook(Reader):
    """The frozen LM alone: "<question> [SEP]"."""


class OracleDocument(Reader):
    """The question's evidence document alone in context: the upper bound of reading.

    It keeps every observed document's text by id (``nbytes``: their UTF-8 bytes).
    """

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__(model, tokenizer)
        self.documents: dict[str, str] = {}

    def observe(self, step: KnowledgeStep) -> None:
        for d in _check_step(step).documents:
            self.documents[d.doc_id] = d.text

    def prompt(self, question: Question) -> str:
        if question.doc_id not in self.documents:
            raise ValueError(f"OracleDocument: question {question.qid} names evidence "
                             f"{question.doc_id!r}, which was not observed")
        return qa_prompt(question.text, [self.documents[question.doc_id]])

    @property
    def nbytes(self) -> int:
        return sum(len(t.encode()) for t in self.documents.values())


class OnlineFinetune(Reader):
    """A copy of the LM trained on each step's documents ("[BOS] text [EOS]"), asked closed-book.

    ``epochs`` passes of AdamW at ``lr`` per step, one document per update, in a
    seeded order. ``nbytes`` is the bytes of its weights (a full copy).
    """

    def __init__(self, model: nn.Module, tokenizer, lr: float = 1e-4, epochs: int = 1,
                 seed: int = 0):
        super().__init__(copy.deepcopy(model).requires_grad_(True), tokenizer)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
            raise ValueError(f"lr: expected a number > 0, got {lr!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs: expected an int >= 1, got {epochs!r}")
        self.epochs, self.seed = epochs, seed
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)

    def observe(self, step: KnowledgeStep) -> None:
        step = _check_step(step)
        texts = [f"{d.text} [EOS]" for d in step.documents]
        limit = self.model.config.n_positions
        self.model.train()
        for epoch in range(self.epochs):
            g = derive_generator(self.seed, "online_finetune", step.time, epoch)
            for i in torch.randperm(len(texts), generator=g).tolist():
                ids = torch.tensor(self.tokenizer.encode(texts[i])[:limit])[None]
                loss = self.model(ids, labels=ids).loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        self.model.eval()

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


class RetrieveDocuments(Reader):
    """Raw documents in an ``AgentMemory``; the top ``k`` for a question in context, newest last.

    Each document is remembered with meta {doc_id, time} (the memory's embedder
    embeds it); the memory's budget bounds what is kept (it evicts by its rule).
    Recalled documents that do not fit the model's positions with the question
    are dropped, the least similar first.
    """

    def __init__(self, model: nn.Module, tokenizer, memory: AgentMemory, k: int = 3):
        super().__init__(model, tokenizer)
        if not isinstance(memory, AgentMemory):
            raise TypeError(f"memory: expected an AgentMemory, got {type(memory).__name__}")
        if memory.embed is None:
            raise ValueError("memory: expected an AgentMemory with an embedder (embed=...)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        self.memory, self.k = memory, k

    def observe(self, step: KnowledgeStep) -> None:
        docs = _check_step(step).documents
        if docs:
            self.memory.remember_many([d.text for d in docs],
                                      meta=[{"doc_id": d.doc_id, "time": d.time} for d in docs])

    def recall(self, question: Question) -> list:
        """The recalled records that fit the context, in time order (newest last)."""
        if len(self.memory) == 0:
            return []
        found = self.memory.recall(question.text, min(self.k, len(self.memory)))
        room = self.model.config.n_positions - MAX_ANSWER_TOKENS \
            - len(self.tokenizer.encode(qa_prompt(question.text)))
        kept = []
        for record in found:  # best first
            size = len(record.item.split())
            if size <= room:
                kept.append(record)
                room -= size
        return sorted(kept, key=lambda r: (r.meta["time"], r.id))

    def prompt(self, question: Question) -> str:
        return qa_prompt(question.text, [r.item for r in self.recall(question)])

    @property
    def nbytes(self) -> int:
        return self.memory.nbytes

    @property
    def stores(self) -> dict:
        return {"memory": self.memory}


class CompressedMemory:
    """CMT (top-``k`` aggregation) or MAC (``k`` None: the whole bank) over a frozen LM.

    ``observe`` compresses each document ("[BOS] text") into the bank; a
    question "[BOS] question [SEP]" is answered greedily after the aggregated
    prefix. ``nbytes`` is the bytes of the entries held (the bank's modules are
    charged to its budget as well, once).
    """

    def __init__(self, cmt: CMT, k: int | None = 3):
        if not isinstance(cmt, CMT):
            raise TypeError(f"cmt: expected a CMT, got {type(cmt).__name__}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k: expected None (MAC) or an int >= 1 (CMT), got {k!r}")
        if cmt.lm.tokenizer is None:
            raise ValueError("cmt: expected a CMT built with its tokenizer")
        self.cmt, self.k = cmt, k
        self.doc_index: dict[str, int] = {}

    def observe(self, step: KnowledgeStep) -> None:
        docs = _check_step(step).documents
        if not docs:
            return
        for d in docs:
            self.doc_index.setdefault(d.doc_id, len(self.doc_index))
        window = self.cmt.lm.window
        ids = [self.cmt.lm.encode(d.text)[:window] for d in docs]
        self.cmt.memorize([self.doc_index[d.doc_id] for d in docs], ids, step.time)

    @torch.no_grad()
    def answer(self, questions: Sequence[Question]) -> dict[str, str]:
        """{qid: answer}: greedy decoding after [prefix; question], stopped at [EOS]."""
        tokenizer, out = self.cmt.lm.tokenizer, {}
        k = None if self.k is None or len(self.cmt.bank) == 0 else min(self.k,
                                                                       len(self.cmt.bank))
        for q in _check_questions(questions):
            ids = self.cmt.lm.encode(qa_prompt(q.text))
            new = self.cmt.generate(ids, MAX_ANSWER_TOKENS, k=k).tolist()
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id)]
            out[q.qid] = tokenizer.decode(new, skip_special_tokens=True)
        return out

    @property
    def nbytes(self) -> int:
        return self.cmt.bank.filled_nbytes

    @property
    def stores(self) -> dict:
        return dict(self.cmt.stores)
