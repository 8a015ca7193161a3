"""Train a tiny GPT-2 that answers a question from the documents placed before it.

The continual-knowledge agents of ``memkit.agents.qa`` (after CMT: Li, Sun,
Hu, Hu & Zhang, "CMT: A Memory Compression Method for Continual Knowledge
Learning of Large Language Models", AAAI 2025, and MAC: Tack et al., "Online
Adaptation of Language Models with a Memory of Amortized Contexts", NeurIPS
2024) share one frozen reader: a causal LM that continues
"<documents> [SEP] <question> [SEP]" with "<answer> [EOS]". Here that LM is a
GPT-2 built from a configuration (no download) and trained from scratch on
``memkit.data.knowledge`` streams of TRAINING seeds (``TRAIN_SEED_BASE`` and
up; the benchmark evaluates on seeds below it, so people and facts differ):

- reading comprehension: the question's evidence document with 0 to
  ``max_others`` other documents of the stream up to the question's step
  (half the time one of them an older document about the same person, which
  may state a stale value), all in time order, newest last, so the newest
  statement wins;
- closed-book questions (no documents, a fraction ``closed_book``), so a
  question alone gets a guess of the right kind;
- with ``plain``, plain documents "[BOS] text [EOS]".

The default reads the evidence document alone (``max_others=0``, no plain
documents): on one thread, models trained on 0-2 other documents and plain
documents from scratch stayed at chance on the answer (4 layers, 8 minutes:
oracle EM 0.05; 3 layers: answer NLL 3.2 after 2,500 steps, 24 values per
attribute), while on the evidence alone the 3-layer model learned to read
within about 1,000 steps. Reading among other documents is therefore a second
stage: ``init`` warm-starts from a directory this script wrote (a curriculum,
Bengio et al., "Curriculum Learning", ICML 2009), and held-out EM is then also
measured with 0-``max_others`` other documents in context.

The loss is the mean next-token NLL over every token plus the mean NLL of the
answer tokens (so the one-word answer is not drowned by the context). AdamW,
linear warm-up then cosine decay, until a wall-clock budget or a step count.
Reported on held-out seeds: exact match with the evidence document in context
(oracle) and closed-book. Model, tokenizer and ``train_info.json`` are written
to ``out_dir`` atomically and reused when trained with the same settings::

    .venv/bin/python benchmarks/train_qa_lm.py              # 8 minutes, one thread
    .venv/bin/python benchmarks/train_qa_lm.py --init runs/lm/qa --max-others 2 \
        --lr 1e-3 --minutes 6 --out runs/lm/qa_context      # second stage
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from memkit.agents.qa import greedy_answer, qa_prompt
from memkit.data.knowledge import KnowledgeStream, Question, knowledge_stream, vocabulary
from memkit.qa_metrics import exact_match
from memkit.seeding import derive_generator

sys.path.insert(0, str(Path(__file__).parent))
from train_tiny_lm import INFO, build_model, cached_training, load_tiny_lm

TRAIN_SEED_BASE = 1000
"""Training streams use seeds TRAIN_SEED_BASE, TRAIN_SEED_BASE + 1, ...; evaluation, below."""
STREAM = {"entities": 12, "new_entities": 1, "docs_per_step": 6, "update_rate": 0.1,
          "distractors": 2}
"""Stream options shared by training and the benchmark (questions per step set apart)."""


# ----------------------------------------------------------------------------- text

def qa_text(question: str, answer: str, documents: list[str] = ()) -> str:
    """A whole training sequence: the prompt, the answer and [EOS]."""
    return f"{qa_prompt(question, documents)} {answer} [EOS]"


def reading_context(stream: KnowledgeStream, q: Question, g: torch.Generator,
                    max_others: int = 2) -> list[str]:
    """The evidence document and 0-``max_others`` others up to the question's step, by time."""
    docs = stream.documents_up_to(q.time)
    order = {d.doc_id: i for i, d in enumerate(docs)}
    evidence = docs[order[q.doc_id]]
    others = [d for d in docs if d.doc_id != q.doc_id]
    n = int(torch.randint(max_others + 1, (1,), generator=g))
    chosen = []
    stale = [d for d in others if q.entity in d.text.split() and order[d.doc_id] < order[q.doc_id]]
    if n and stale and float(torch.rand((), generator=g)) < 0.5:
        chosen.append(stale[int(torch.randint(len(stale), (1,), generator=g))])
    rest = [d for d in others if d not in chosen]
    picks = torch.randperm(len(rest), generator=g)[: n - len(chosen)].tolist()
    chosen += [rest[i] for i in picks]
    return [d.text for d in sorted([evidence, *chosen], key=lambda d: order[d.doc_id])]


def training_texts(seed: int, n_steps: int, questions_per_step: int, closed_book: float,
                   max_others: int = 2, plain: bool = True) -> list[tuple[str, str]]:
    """(sequence, answer) pairs of one training stream: reading, closed-book and documents.

    A plain document's "answer" is empty (only the all-token loss applies).
    """
    stream = knowledge_stream(n_steps, seed=seed, questions_per_step=questions_per_step,
                              **STREAM)
    g = derive_generator(seed, "train_qa_lm.context")
    out = [(f"{d.text} [EOS]", "") for step in stream for d in step.documents] if plain else []
    for step in stream:
        for q in step.questions:
            docs = [] if float(torch.rand((), generator=g)) < closed_book \
                else reading_context(stream, q, g, max_others)
            out.append((qa_text(q.text, q.answers[0], docs), q.answers[0]))
    return out


def encode(tokenizer, text: str, answer: str) -> tuple[torch.Tensor, int]:
    """Token ids of a sequence and how many tokens before [EOS] are the answer."""
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.int64)
    return ids, len(answer.split())


# ----------------------------------------------------------------------------- answering

def held_out_em(model: torch.nn.Module, tokenizer, seeds: list[int], n_steps: int = 10,
                questions_per_step: int = 8, max_others: int = 0) -> dict[str, float]:
    """EM with the evidence document alone in context (oracle) and with none (closed book).

    With ``max_others`` > 0 also ``context_em``: the evidence among 0-``max_others``
    other documents drawn as in training (seeded by the evaluation seed).
    """
    model.eval()
    em = {"oracle_em": 0.0, "closed_book_em": 0.0, **({"context_em": 0.0} if max_others else {})}
    n = 0
    for seed in seeds:
        stream = knowledge_stream(n_steps, seed=seed, questions_per_step=questions_per_step,
                                  **STREAM)
        texts = {d.doc_id: d.text for d in stream.documents_up_to(len(stream) - 1)}
        g = derive_generator(seed, "train_qa_lm.held_out")
        for q in stream.questions_up_to(len(stream) - 1):
            contexts = {"oracle_em": [texts[q.doc_id]], "closed_book_em": []}
            if max_others:
                contexts["context_em"] = reading_context(stream, q, g, max_others)
            for name, documents in contexts.items():
                answer = greedy_answer(model, tokenizer, qa_prompt(q.text, documents))
                em[name] += exact_match(answer, q.answers)
            n += 1
    return {**{name: value / n for name, value in em.items()}, "questions": n}


# ----------------------------------------------------------------------------- training

def train_qa_lm(out_dir: str | Path = "runs/lm/qa", *, n_layer: int = 3, d: int = 128,
                heads: int = 4, window: int = 256, train_seeds: int = 400, n_steps: int = 10,
                questions_per_step: int = 24, closed_book: float = 0.05, max_others: int = 0,
                plain: bool = False, minutes: float = 8.0,
                steps: int | None = None, batch: int = 16, lr: float = 3e-3, warmup: int = 50,
                seed: int = 0, eval_seeds: tuple[int, ...] = (0, 1),
                init: str | Path | None = None, threads: int = 1,
                overwrite: bool = False, log: bool = False) -> Path:
    """Train (or reuse) the QA LM in ``out_dir``; the directory's path.

    ``init``: a directory this function wrote, whose model training continues
    (its settings become part of these). An ``out_dir`` trained with the same
    settings (everything but ``threads``, ``overwrite`` and ``log``) is reused;
    other settings raise unless ``overwrite``.
    """
    settings = _settings(n_layer=n_layer, d=d, heads=heads, window=window,
                         train_seeds=train_seeds, n_steps=n_steps,
                         questions_per_step=questions_per_step, closed_book=closed_book,
                         max_others=max_others, plain=plain,
                         minutes=minutes, steps=steps, batch=batch, lr=lr, warmup=warmup,
                         seed=seed, eval_seeds=list(eval_seeds))
    if init is not None:  # absent, not None, when training from scratch
        settings["init"] = _init_settings(init)
    return cached_training("train_qa_lm", out_dir, settings, _train, threads=threads,
                           overwrite=overwrite, log=log)


def load_qa_lm(out_dir: str | Path = "runs/lm/qa") -> tuple[torch.nn.Module, object, dict]:
    """(model in eval mode, tokenizer, train_info) from a directory ``train_qa_lm`` wrote."""
    return load_tiny_lm(out_dir)


def _train(s: dict, log: bool) -> tuple[dict, torch.nn.Module, object]:
    from memkit.data.knowledge import knowledge_tokenizer

    tokenizer = knowledge_tokenizer()
    examples = [encode(tokenizer, text, answer)
                for i in range(s["train_seeds"])
                for text, answer in training_texts(TRAIN_SEED_BASE + i, s["n_steps"],
                                                   s["questions_per_step"], s["closed_book"],
                                                   s["max_others"], s["plain"])]
    examples = [(ids[-s["window"]:], n) for ids, n in examples]
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
               "pad": tokenizer.pad_token_id}
    if "init" in s:
        model = load_qa_lm(s["init"]["dir"])[0]
    else:
        with torch.random.fork_rng():
            torch.manual_seed(s["seed"])
            model = build_model("gpt2", len(tokenizer), n_layer=s["n_layer"], d=s["d"],
                                heads=s["heads"], window=s["window"], special_ids=special)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], betas=(0.9, 0.95),
                                  weight_decay=0.01)
    budget, start, step, losses = s["minutes"] * 60.0, time.perf_counter(), 0, []
    answer_losses = []
    model.train()
    while step < (s["steps"] or math.inf):
        progress = max((time.perf_counter() - start) / budget,
                       step / s["steps"] if s["steps"] else 0.0)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(s["lr"], step, s["warmup"], progress)
        g = derive_generator(s["seed"], "train_qa_lm.batch", step)
        chosen = torch.randint(len(examples), (s["batch"],), generator=g).tolist()
        loss, answer_nll = batch_loss(model, [examples[i] for i in chosen],
                                      tokenizer.pad_token_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        answer_losses.append(answer_nll)
        step += 1
        if log and step % 100 == 0:
            answer = [x for x in answer_losses[-100:] if not math.isnan(x)]
            print(f"step {step}  loss {sum(losses[-100:]) / 100:.3f}  answer NLL "
                  f"{sum(answer) / max(len(answer), 1):.3f}  "
                  f"{(time.perf_counter() - start) / 60:.1f} min", flush=True)
    train_minutes = (time.perf_counter() - start) / 60
    scores = held_out_em(model, tokenizer, s["eval_seeds"], max_others=s["max_others"])
    tail = losses[-100:]
    answer = [x for x in answer_losses[-100:] if not math.isnan(x)]
    info = {"settings": s, "steps": step, "minutes": round(train_minutes, 3),
            "train_loss": sum(tail) / len(tail),
            "train_answer_nll": sum(answer) / max(len(answer), 1), "examples": len(examples),
            "held_out": scores,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads()}
    return info, model.eval(), tokenizer


def batch_loss(model: torch.nn.Module, batch: list[tuple[torch.Tensor, int]], pad: int
               ) -> tuple[torch.Tensor, float]:
    """Mean NLL over every real token plus mean NLL over the answer tokens (before [EOS]).

    Returns the loss and the answer tokens' mean NLL alone (nan if the batch has none).
    """
    ids = torch.nn.utils.rnn.pad_sequence([x for x, _ in batch], batch_first=True,
                                          padding_value=pad)
    lengths = torch.tensor([len(x) for x, _ in batch])
    positions = torch.arange(ids.shape[1])
    real = positions < lengths[:, None]
    answer_len = torch.tensor([n for _, n in batch])
    last = (lengths - 1)[:, None]  # the [EOS]
    answer = (positions >= last - answer_len[:, None]) & (positions < last)
    logits = model(ids, attention_mask=real.long()).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    real, answer = real[:, 1:], answer[:, 1:]
    if not answer.any():
        return nll[real].mean(), math.nan
    answer_nll = nll[answer].mean()
    return nll[real].mean() + answer_nll, float(answer_nll.detach())


def _init_settings(init: str | Path) -> dict:
    """The warm start's directory and the settings it was trained with."""
    info = Path(init) / INFO
    if not info.is_file():
        raise ValueError(f"init: expected a directory written by train_qa_lm (with {INFO}), "
                         f"got {init}")
    return {"dir": str(init), "settings": json.loads(info.read_text())["settings"]}


def _learning_rate(peak: float, step: int, warmup: int, progress: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _settings(**s) -> dict:
    for name in ("n_layer", "d", "heads", "window", "train_seeds", "n_steps",
                 "questions_per_step", "batch", "warmup"):
        if isinstance(s[name], bool) or not isinstance(s[name], int) or s[name] <= 0:
            raise ValueError(f"{name}: expected a positive int, got {s[name]!r}")
    if s["d"] % s["heads"]:
        raise ValueError(f"d: expected a multiple of heads={s['heads']}, got {s['d']}")
    if s["steps"] is not None and (not isinstance(s["steps"], int) or s["steps"] <= 0):
        raise ValueError(f"steps: expected None or a positive int, got {s['steps']!r}")
    for name in ("minutes", "lr"):
        if isinstance(s[name], bool) or not isinstance(s[name], int | float) or s[name] <= 0:
            raise ValueError(f"{name}: expected a positive number, got {s[name]!r}")
    if isinstance(s["max_others"], bool) or not isinstance(s["max_others"], int) \
            or s["max_others"] < 0:
        raise ValueError(f"max_others: expected an int >= 0, got {s['max_others']!r}")
    if not 0.0 <= s["closed_book"] <= 1.0:
        raise ValueError(f"closed_book: expected a fraction in [0, 1], got {s['closed_book']!r}")
    if any(not isinstance(e, int) or not 0 <= e < TRAIN_SEED_BASE for e in s["eval_seeds"]):
        raise ValueError(f"eval_seeds: expected ints in [0, {TRAIN_SEED_BASE}) (disjoint from "
                         f"the training seeds), got {s['eval_seeds']!r}")
    settings = {**s, "minutes": float(s["minutes"]), "lr": float(s["lr"]),
                "closed_book": float(s["closed_book"]), "stream": STREAM,
                "train_seed_base": TRAIN_SEED_BASE, "vocabulary": len(vocabulary())}
    return json.loads(json.dumps(settings))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", default="runs/lm/qa")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-others", type=int, default=0)
    parser.add_argument("--closed-book", type=float, default=0.05)
    parser.add_argument("--plain", action="store_true", help="train on plain documents too")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--init", default=None, help="continue from a model this script wrote")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    path = train_qa_lm(args.out, minutes=args.minutes, steps=args.steps, threads=args.threads,
                       max_others=args.max_others, closed_book=args.closed_book,
                       plain=args.plain, lr=args.lr, init=args.init,
                       overwrite=args.overwrite, log=True)
    info = json.loads((path / INFO).read_text())
    print(json.dumps({k: info[k] for k in ("steps", "minutes", "train_loss", "held_out")},
                     indent=1))


if __name__ == "__main__":
    main()
