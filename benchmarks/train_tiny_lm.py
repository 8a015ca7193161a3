"""Train a tiny causal LM from scratch on the long-range corpus: the base model memories must beat.

The memory-augmented LMs memkit implements (kNN-LM: Khandelwal et al.,
"Generalization through Memorization: Nearest Neighbor Language Models",
ICLR 2020; MLP Memory, 2025; LongMem: Wang et al., "Augmenting Language Models
with Long-Term Memory", NeurIPS 2023) sit on a frozen causal LM. Here that LM
is a GPT-2 or Llama configuration (``transformers``, no download) trained on
``memkit.data.long_range_text`` documents: random windows of ``window`` tokens,
AdamW with linear warm-up and cosine decay, until a wall-clock budget or a step
count. Its context (128 tokens) is shorter than the distance from a fact's
statement to its uses (150-600 filler words), so alone it can only guess a
used value among its attribute's values, while filler is cheap for it.

Held-out perplexity is measured on test documents (held-out entities) with
windows of ``window`` tokens moving by half a window, each token scored once,
overall and per kind of token: filler, a use's value whose evidence is at
least ``window`` words back ("value_far", beyond any window), an echoed use's
value (evidence a few words back, "value_near"), and a fact's value in its
statement (nothing predicts it).

The model, tokenizer and ``train_info.json`` are written to ``out_dir``
atomically; a second call with the same settings reuses them::

    .venv/bin/python benchmarks/train_tiny_lm.py                  # GPT-2, 12 minutes
    .venv/bin/python benchmarks/train_tiny_lm.py --arch llama --out runs/lm/tiny_llama
"""

from __future__ import annotations

import argparse
import json
import math
import time
from inspect import Parameter, signature
from pathlib import Path

import torch

from memkit.data.long_range_text import (
    N_VALUES,
    corpus_tokenizer,
    long_range_corpus,
    vocabulary_sha256,
)
from memkit.io import atomic_path
from memkit.seeding import derive_generator

ARCHS = ("gpt2", "llama")
INFO = "train_info.json"
KINDS = ("all", "filler", "value_far", "value_near", "statement_value")


# ----------------------------------------------------------------------------- model

def build_model(arch: str, vocab_size: int, *, n_layer: int, d: int, heads: int, window: int,
                special_ids: dict[str, int]) -> torch.nn.Module:
    """A freshly initialised GPT-2 or Llama causal LM of ``window`` positions."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ids = {"bos_token_id": special_ids["bos"], "eos_token_id": special_ids["eos"],
           "pad_token_id": special_ids["pad"]}
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_positions=window, n_embd=d, n_layer=n_layer,
                            n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
        return GPT2LMHeadModel(config)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=n_layer,
                         intermediate_size=(8 * d // 3 + 7) // 8 * 8, num_attention_heads=heads,
                         num_key_value_heads=heads, max_position_embeddings=window,
                         tie_word_embeddings=True, **ids)
    return LlamaForCausalLM(config)


# ----------------------------------------------------------------------------- evaluation

def token_kinds(doc, length: int, window: int) -> dict[str, torch.Tensor]:
    """Boolean masks over token positions 0..length-1 per kind (token ``i + 1`` is word ``i``)."""
    masks = {kind: torch.zeros(length, dtype=torch.bool) for kind in KINDS}
    masks["all"][1:] = True
    for kind, start, end in doc.segments:
        if kind == "filler":
            masks["filler"][start + 1:end + 1] = True
    for fact in doc.facts:
        masks["statement_value"][fact.word + 1] = True
    for use in doc.uses:
        masks["value_far" if use.distance >= window else "value_near"][use.word + 1] = True
    return masks


@torch.no_grad()
def held_out_scores(model: torch.nn.Module, tokenizer, docs, window: int) -> dict[str, dict]:
    """Perplexity, mean loss, top-1 accuracy and token count per kind of token over ``docs``.

    Windows of ``window`` tokens move by ``window // 2``; each token is scored
    once, from at least ``window - window // 2`` previous tokens (all of them at
    a document's start).
    """
    model.eval()
    nll = {kind: [] for kind in KINDS}
    hit = {kind: [] for kind in KINDS}
    for doc in docs:
        ids = torch.tensor(tokenizer.encode(doc.text), dtype=torch.int64)
        log_probs = _window_log_probs(model, ids, window)  # (T-1, V) for targets 1..T-1
        target_lp = log_probs.gather(1, ids[1:, None])[:, 0]
        correct = log_probs.argmax(1) == ids[1:]
        masks = token_kinds(doc, len(ids), window)
        for kind in KINDS:
            nll[kind].append(-target_lp[masks[kind][1:]])
            hit[kind].append(correct[masks[kind][1:]])
    scores = {}
    for kind in KINDS:
        losses, hits = torch.cat(nll[kind]), torch.cat(hit[kind])
        loss = float(losses.mean()) if len(losses) else float("nan")
        scores[kind] = {"loss": loss, "ppl": math.exp(loss), "top1": float(hits.float().mean())
                        if len(hits) else float("nan"), "tokens": len(losses)}
    return scores


def _window_log_probs(model: torch.nn.Module, ids: torch.Tensor, window: int) -> torch.Tensor:
    """log p(ids[t] | previous tokens within ``window``) rows for t = 1..T-1, (T-1, V)."""
    stride = max(1, window // 2)
    spans, end = [(0, min(window, len(ids)), 1)], min(window, len(ids))
    while end < len(ids):
        new_end = min(end + stride, len(ids))
        spans.append((max(0, new_end - window), new_end, end))
        end = new_end
    batch = torch.stack([ids[start:end] for start, end, _ in spans])  # all of one length
    log_probs = model(batch).logits.float().log_softmax(-1)
    return torch.cat([lp[first - 1 - start:end - 1 - start]
                      for (start, end, first), lp in zip(spans, log_probs, strict=True)])


# ----------------------------------------------------------------------------- training

def train_tiny_lm(out_dir: str | Path = "runs/lm/tiny", *, arch: str = "gpt2", n_layer: int = 4,
                  d: int = 128, heads: int = 4, window: int = 128, n_docs: int = 2000,
                  n_test_docs: int = 100, minutes: float = 12.0, steps: int | None = None,
                  batch: int = 32, lr: float = 2e-3, warmup: int = 100, seed: int = 0,
                  corpus: dict | None = None, threads: int = 2, overwrite: bool = False,
                  log: bool = False) -> Path:
    """Train (or reuse) a tiny LM in ``out_dir``; the directory's path.

    Training stops after ``minutes`` of wall-clock time or ``steps`` steps,
    whichever comes first. ``corpus``: options of ``long_range_corpus`` (gap,
    entities, attributes, rounds, qa, echo) over its defaults. An ``out_dir``
    trained with the same settings (everything but ``threads``, ``overwrite``
    and ``log``) is reused as it is; one trained with other settings raises
    unless ``overwrite``.
    """
    settings = _settings(arch=arch, n_layer=n_layer, d=d, heads=heads, window=window,
                         n_docs=n_docs, n_test_docs=n_test_docs, minutes=minutes, steps=steps,
                         batch=batch, lr=lr, warmup=warmup, seed=seed, corpus=corpus or {})
    return cached_training("train_tiny_lm", out_dir, settings, _train, threads=threads,
                           overwrite=overwrite, log=log)


def cached_training(name: str, out_dir: str | Path, settings: dict, train, *, threads: int,
                    overwrite: bool, log: bool) -> Path:
    """``out_dir`` as it is when trained with ``settings``; else ``train(settings, log)`` there.

    ``train`` returns (info, model, tokenizer); they are written atomically (a
    temporary folder renamed into place) with ``INFO`` holding ``info``. A folder
    trained with other settings raises, naming them, unless ``overwrite``.
    """
    _positive_int("threads", threads)
    out_dir = Path(out_dir)
    if (out_dir / INFO).exists():
        old = json.loads((out_dir / INFO).read_text())["settings"]
        if old == settings:
            return out_dir
        if not overwrite:
            changed = sorted(k for k in settings.keys() | old.keys()
                             if settings.get(k) != old.get(k))
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ValueError(f"{name}: {out_dir} holds a model trained with other "
                             f"settings ({diff}); pass overwrite=True to retrain it")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        info, model, tokenizer = train(settings, log)
    finally:
        torch.set_num_threads(previous)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO).write_text(json.dumps(info, indent=1))
    return out_dir


def load_tiny_lm(out_dir: str | Path = "runs/lm/tiny") -> tuple[torch.nn.Module, object, dict]:
    """(model in eval mode, tokenizer, train_info) from a directory ``train_tiny_lm`` wrote."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    if not (out_dir / INFO).is_file():
        raise FileNotFoundError(f"load_tiny_lm: expected a directory written by train_tiny_lm "
                                f"with {INFO}, got {out_dir}")
    model = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True,
                                                 use_safetensors=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out_dir, local_files_only=True)
    return model.eval(), tokenizer, json.loads((out_dir / INFO).read_text())


def _train(settings: dict, log: bool) -> tuple[dict, torch.nn.Module, object]:
    s = settings
    tokenizer = corpus_tokenizer()
    train_docs = long_range_corpus(s["n_docs"], seed=s["seed"], split="train", **s["corpus"])
    test_docs = long_range_corpus(s["n_test_docs"], seed=s["seed"], split="test", **s["corpus"])
    stream = _token_stream(tokenizer, train_docs)
    if len(stream) <= s["window"]:
        raise ValueError(f"n_docs: expected a corpus longer than window={s['window']} tokens, "
                         f"got {len(stream)} tokens")
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
               "pad": tokenizer.pad_token_id}
    with torch.random.fork_rng():
        torch.manual_seed(s["seed"])
        model = build_model(s["arch"], len(tokenizer), n_layer=s["n_layer"], d=s["d"],
                            heads=s["heads"], window=s["window"], special_ids=special)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], betas=(0.9, 0.95),
                                  weight_decay=0.01)
    offsets = torch.arange(s["window"])
    budget, start, step, losses = s["minutes"] * 60.0, time.perf_counter(), 0, []
    model.train()
    while step < (s["steps"] or math.inf):
        elapsed = time.perf_counter() - start
        progress = max(elapsed / budget, step / s["steps"] if s["steps"] else 0.0)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(s["lr"], step, s["warmup"], progress)
        g = derive_generator(s["seed"], "train_tiny_lm.batch", step)
        starts = torch.randint(0, len(stream) - s["window"] + 1, (s["batch"],), generator=g)
        x = stream[starts[:, None] + offsets]
        loss = model(x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if log and step % 100 == 0:
            print(f"step {step}  loss {sum(losses[-100:]) / 100:.3f}  "
                  f"{(time.perf_counter() - start) / 60:.1f} min", flush=True)
    train_minutes = (time.perf_counter() - start) / 60
    scores = held_out_scores(model, tokenizer, test_docs, s["window"])
    tail = losses[-100:]
    info = {"settings": s, "steps": step, "minutes": round(train_minutes, 3),
            "train_loss": sum(tail) / len(tail), "train_tokens": len(stream),
            "test_loss": scores["all"]["loss"], "test": scores,
            "chance_ppl_value": N_VALUES,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "eval_minutes": round((time.perf_counter() - start) / 60 - train_minutes, 3),
            "threads": torch.get_num_threads()}
    return info, model.eval(), tokenizer


def _token_stream(tokenizer, docs) -> torch.Tensor:
    """Every document as [BOS] words [EOS], concatenated."""
    ids = tokenizer([doc.text for doc in docs])["input_ids"] if docs else []
    eos = tokenizer.eos_token_id
    return torch.tensor([t for doc in ids for t in (*doc, eos)], dtype=torch.int64)


def _learning_rate(peak: float, step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to a tenth by ``progress`` 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _settings(**s) -> dict:
    if s["arch"] not in ARCHS:
        raise ValueError(f"arch: expected one of {ARCHS}, got {s['arch']!r}")
    for name in ("n_layer", "d", "heads", "window", "n_docs", "n_test_docs", "batch", "warmup"):
        _positive_int(name, s[name])
    if s["window"] < 2:
        raise ValueError(f"window: expected at least 2 tokens, got {s['window']}")
    if s["d"] % s["heads"]:
        raise ValueError(f"d: expected a multiple of heads={s['heads']}, got {s['d']}")
    if s["steps"] is not None:
        _positive_int("steps", s["steps"])
    for name in ("minutes", "lr"):
        if isinstance(s[name], bool) or not isinstance(s[name], int | float) or s[name] <= 0:
            raise ValueError(f"{name}: expected a positive number, got {s[name]!r}")
    if isinstance(s["seed"], bool) or not isinstance(s["seed"], int) or s["seed"] < 0:
        raise ValueError(f"seed: expected an int >= 0, got {s['seed']!r}")
    defaults = {name: p.default for name, p in signature(long_range_corpus).parameters.items()
                if p.default is not Parameter.empty and name != "split"}
    if not isinstance(s["corpus"], dict) or not s["corpus"].keys() <= defaults.keys():
        raise ValueError(f"corpus: expected a dict with keys among {sorted(defaults)}, "
                         f"got {s['corpus']!r}")
    long_range_corpus(0, seed=0, **s["corpus"])  # checks the values
    settings = {**s, "minutes": float(s["minutes"]), "lr": float(s["lr"]),
                "corpus": {**defaults, **s["corpus"]},
                "vocabulary": vocabulary_sha256()}
    return json.loads(json.dumps(settings))  # as train_info.json will hold it


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=ARCHS, default="gpt2")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", default="runs/lm/tiny")
    parser.add_argument("--n-docs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    path = train_tiny_lm(args.out, arch=args.arch, minutes=args.minutes, steps=args.steps,
                         n_docs=args.n_docs, seed=args.seed, threads=args.threads,
                         overwrite=args.overwrite, log=True)
    info = json.loads((path / INFO).read_text())
    print(json.dumps({k: info[k] for k in ("steps", "minutes", "train_loss", "test")}, indent=1))


if __name__ == "__main__":
    main()
