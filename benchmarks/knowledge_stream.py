"""QA agents on the knowledge stream: EM/F1 as it advances, retention, updated facts, bytes, time.

Continual knowledge learning (StreamingQA: Liška et al., ICML 2022; CMT: Li,
Sun, Hu, Hu & Zhang, "CMT: A Memory Compression Method for Continual Knowledge
Learning of Large Language Models", AAAI 2025; MAC: Tack et al., "Online
Adaptation of Language Models with a Memory of Amortized Contexts", NeurIPS
2024): documents arrive step by step and questions ask for the newest fact.
For each evaluation seed a ``memkit.data.knowledge`` stream of ``n_steps``
steps is generated (evaluation seeds are below ``TRAIN_SEED_BASE``; the QA LM
of ``benchmarks/train_qa_lm.py`` and the CMT/MAC modules are trained on seeds
from it, so no person or fact is shared). The QA LM is trained in two stages:
on the evidence document alone, then (warm-started) on the evidence among 0-2
other documents, so that top-k retrieval has a reader that can pick the right
one. After each step every agent of
``memkit.agents.qa`` answers all questions asked so far, each scored against
the answer valid at its own time:

- EM / F1 (``memkit.qa_metrics``) per step;
- retention: EM on questions whose evidence was inserted at steps 0-1
  ("early") vs at the last four steps ("late"; few questions, since most facts
  never change);
- EM on ``updated`` questions (the value changed at least once) and the stale
  rate: the share of them answered with an older value of that fact;
- agents: ``memkit.agents.qa``'s ClosedBook, OnlineFinetune, RetrieveDocuments
  (top ``k`` and top 1, one ``AgentMemory`` each), CMT (top ``k``), MAC and
  OracleDocument;
- bytes per document observed (``agent.nbytes``) and milliseconds per query
  (wall clock, one thread, on a shared machine: indicative).

CMT (top-k) and MAC (whole bank) are trained with ``train_cmt`` on
training-seed (evidence document, question, answer) triples with the QA LM
frozen (CMT: QA + memory-aware + self-matching losses, top-k inside the batch;
MAC: the QA loss over the whole batch), and cached under ``runs/knowledge_stream``.
Writes benchmarks/results/knowledge_stream.{json,md,png} (``--quick``:
knowledge_stream_quick.*)::

    .venv/bin/python benchmarks/knowledge_stream.py --quick
    memkit bench knowledge
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from memkit.agents.cmt import CMT, train_cmt
from memkit.agents.embedders import HashingEmbedder, MiniLM
from memkit.agents.memory_api import AgentMemory
from memkit.agents.qa import (
    ClosedBook,
    CompressedMemory,
    OnlineFinetune,
    OracleDocument,
    RetrieveDocuments,
    answer_triples,
)
from memkit.budget import Budget
from memkit.data.knowledge import Question, knowledge_stream
from memkit.io import write_text_atomic
from memkit.qa_metrics import exact_match, normalize_answer, qa_scores

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_qa_lm import STREAM, TRAIN_SEED_BASE, load_qa_lm, train_qa_lm  # noqa: E402

AGENTS = ("closed_book", "online_finetune", "retrieve", "retrieve_1", "cmt", "mac", "oracle")
TOP_K_SWEEP = (1, 3, 5, 10, None)
"""After the last step, CMT's bank is also read with these k (None: the whole bank, unweighted)."""
EARLY, LATE = 1, 4
"""Evidence inserted at steps 0..EARLY is "early"; at the last LATE steps up to now, "late"."""


@dataclass(frozen=True)
class Setting:
    seeds: tuple[int, ...] = (0, 1, 2)
    n_steps: int = 10
    questions_per_step: int = 8
    k: int = 3
    memory_budget: str = "1MB"
    embedder: str = "minilm"
    finetune_lr: float = 1e-3
    finetune_epochs: int = 3
    cmt_tokens: int = 4
    cmt_layer: int = 0
    cmt_key_dim: int = 64
    cmt_prefix: int = 8
    cmt_bank: str = "256KB"
    cmt_train_seeds: int = 60
    cmt_train_steps: int = 3000
    cmt_own_steps: int = 1000
    cmt_batch: int = 16
    cmt_lr: float = 1e-3
    lm_base: str = "runs/lm/qa"
    lm_dir: str = "runs/lm/qa_context"
    lm_context_minutes: float = 12.0
    lm_max_others: int = 2
    lm_context_lr: float = 1e-3
    cache_dir: str = "runs/knowledge_stream"


QUICK = Setting(seeds=(0,), n_steps=5, cmt_train_steps=100, cmt_own_steps=50,
                cmt_train_seeds=20,
                embedder="hashing")


# ----------------------------------------------------------------------------- scoring

def fact_history(documents) -> dict[tuple[str, str], list[tuple[int, str]]]:
    """(entity, attribute) -> [(time, value)] stated by the non-distractor documents."""
    history: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for d in documents:
        if not d.distractor:
            for entity, attribute, value in d.facts:
                history.setdefault((entity, attribute), []).append((d.time, value))
    return history


def _em(predictions: Mapping[str, str], questions: Sequence[Question]) -> float | None:
    return qa_scores(predictions, questions)["em"] if questions else None


def step_scores(predictions: Mapping[str, str], questions: Sequence[Question], *, step: int,
                history: Mapping[tuple[str, str], list[tuple[int, str]]]) -> dict:
    """EM/F1 over ``questions``, early/late retention, updated EM and stale rate at ``step``.

    Early: evidence inserted at steps 0..EARLY; late: at the LATE steps up to
    ``step``. Stale: an updated question answered with a value ``history``
    stated for its fact at or before the question's time, other than its answer.
    A group with no question scores None.
    """
    overall = qa_scores(predictions, questions)
    early = [q for q in questions if q.inserted_at <= EARLY]
    late = [q for q in questions if q.inserted_at > step - LATE]
    updated = [q for q in questions if q.updated]
    stale = [q for q in updated if not exact_match(predictions[q.qid], q.answers) and any(
        t <= q.time and normalize_answer(v) == normalize_answer(predictions[q.qid])
        for t, v in history.get((q.entity, q.attribute), ()))]
    return {"em": overall["em"], "f1": overall["f1"], "n": overall["n"],
            "early_em": _em(predictions, early), "n_early": len(early),
            "late_em": _em(predictions, late), "n_late": len(late),
            "updated_em": _em(predictions, updated), "n_updated": len(updated),
            "stale_rate": len(stale) / len(updated) if updated else None}


# ----------------------------------------------------------------------------- CMT / MAC

def cmt_examples(tokenizer, s: Setting) -> list[tuple[torch.Tensor, ...]]:
    """``answer_triples`` of the ``cmt_train_seeds`` training streams."""
    return [triple for i in range(s.cmt_train_seeds) for triple in answer_triples(
        knowledge_stream(s.n_steps, seed=TRAIN_SEED_BASE + i,
                         questions_per_step=s.questions_per_step, **STREAM), tokenizer)]


def make_cmt(model, tokenizer, s: Setting) -> CMT:
    return CMT(model, tokenizer, budget=Budget("64MB"), tokens=s.cmt_tokens,
               key_dim=s.cmt_key_dim, prefix_tokens=s.cmt_prefix, bank_nbytes=s.cmt_bank,
               layer=s.cmt_layer)


def trained_cmt(kind: str, model, tokenizer, lm_info: dict, s: Setting) -> tuple[Path, dict]:
    """Train (or reuse) the CMT ("cmt") or MAC ("mac") modules; their file and training log.

    The file is named by a digest of the settings, so runs of other settings keep theirs.
    """
    settings = {"kind": kind, "lm": lm_info["settings"], **{
        k: v for k, v in asdict(s).items() if k.startswith("cmt_") and k != "cmt_bank"},
        "n_steps": s.n_steps, "questions_per_step": s.questions_per_step, "k": s.k}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(s.cache_dir) / f"{kind}-{digest}.safetensors"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        if info["settings"] == settings:
            return path, info
    agent = make_cmt(model, tokenizer, s)
    examples = cmt_examples(tokenizer, s)
    start = time.perf_counter()
    objectives, k = (("qa", "memory", "matching"), s.k) if kind == "cmt" else (("qa",), None)
    history = train_cmt(agent, examples, steps=s.cmt_train_steps, objectives=objectives, k=k,
                        lr=s.cmt_lr, batch_size=s.cmt_batch, own_steps=s.cmt_own_steps)
    agent.save(path)
    info = {"settings": settings, "examples": len(examples),
            "minutes": (time.perf_counter() - start) / 60,
            "final": {name: statistics.mean(v[-20:]) for name, v in history.items()}}
    write_text_atomic(info_path, json.dumps(info, indent=1))
    return path, info


# ----------------------------------------------------------------------------- one run

def build_agents(model, tokenizer, s: Setting, cmt_files: Mapping[str, Path], folder: Path,
                 embed) -> dict:
    agents = {"closed_book": ClosedBook(model, tokenizer),
              "online_finetune": OnlineFinetune(model, tokenizer, lr=s.finetune_lr,
                                                epochs=s.finetune_epochs),
              "retrieve": RetrieveDocuments(model, tokenizer, AgentMemory(
                  folder / "memory", embed=embed, budget=s.memory_budget), k=s.k),
              "retrieve_1": RetrieveDocuments(model, tokenizer, AgentMemory(
                  folder / "memory_1", embed=embed, budget=s.memory_budget), k=1),
              "oracle": OracleDocument(model, tokenizer)}
    for kind, path in cmt_files.items():
        cmt = make_cmt(model, tokenizer, s)
        cmt.load(path)
        agents[kind] = CompressedMemory(cmt, k=s.k if kind == "cmt" else None)
    return {name: agents[name] for name in AGENTS}


def run_seed(seed: int, model, tokenizer, s: Setting, cmt_files: Mapping[str, Path],
             embed) -> dict:
    """Per agent, per step: scores, bytes per document and ms per query."""
    stream = knowledge_stream(s.n_steps, seed=seed, questions_per_step=s.questions_per_step,
                              **STREAM)
    with tempfile.TemporaryDirectory() as folder:
        agents = build_agents(model, tokenizer, s, cmt_files, Path(folder), embed)
        out = {}
        for name, agent in agents.items():
            rows = []
            for step in stream:
                agent.observe(step)
                questions = stream.questions_up_to(step.time)
                start = time.perf_counter()
                predictions = agent.answer(questions)
                ms = 1000 * (time.perf_counter() - start) / len(questions)
                docs = stream.documents_up_to(step.time)
                rows.append({**step_scores(predictions, questions, step=step.time,
                                           history=fact_history(docs)),
                             "bytes_per_doc": agent.nbytes / len(docs), "ms_per_query": ms})
            out[name] = rows
            print(f"seed {seed} {name:16s} final EM {rows[-1]['em']:.3f}", flush=True)
        out["cmt_top_k"] = top_k_sweep(agents["cmt"].cmt, stream.questions_up_to(len(stream) - 1))
        for name in ("retrieve", "retrieve_1"):
            agents[name].memory.close()
    return out


def top_k_sweep(cmt: CMT, questions: Sequence[Question]) -> dict[str, float]:
    """EM of ``questions`` answered from CMT's bank as it is, with each k of TOP_K_SWEEP."""
    return {str(k): qa_scores(CompressedMemory(cmt, k=k).answer(questions), questions)["em"]
            for k in TOP_K_SWEEP if k is None or k <= len(cmt.bank)}


# ----------------------------------------------------------------------------- summary

def _mean_sd(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: dict[int, dict]) -> dict:
    """Per agent: the per-step mean EM curve and final-step means (sd over seeds)."""
    seeds = list(runs)
    summary = {}
    for name in AGENTS:
        curves = [[row["em"] for row in runs[seed][name]] for seed in seeds]
        final = [runs[seed][name][-1] for seed in seeds]
        summary[name] = {"em_by_step": [statistics.mean(c) for c in zip(*curves, strict=True)],
                         **{key: _mean_sd([r[key] for r in final]) for key in (
                             "em", "f1", "early_em", "late_em", "updated_em", "stale_rate",
                             "bytes_per_doc", "n_early", "n_late", "n_updated")},
                         "ms_per_query": _mean_sd([statistics.mean(r["ms_per_query"]
                                                                   for r in runs[seed][name])
                                                   for seed in seeds])}
    summary["cmt_top_k"] = {k: _mean_sd([runs[seed]["cmt_top_k"].get(k) for seed in seeds])
                            for k in runs[seeds[0]]["cmt_top_k"]}
    return summary


def shape_check(summary: dict) -> dict:
    """The shapes the issue asks about, with the numbers they rest on."""
    cmt, mac = summary["cmt"]["em_by_step"], summary["mac"]["em_by_step"]
    gaps = [a - b for a, b in zip(cmt, mac, strict=True)]
    early = {name: summary[name]["early_em"]["mean"] for name in AGENTS
             if summary[name]["early_em"]}
    return {"cmt_ge_mac_final": cmt[-1] >= mac[-1], "cmt_minus_mac_by_step": gaps,
            "gap_widens": gaps[-1] > gaps[0],
            "early_em_final": early,
            "retention_retrieve_ge_finetune": early["retrieve"] >= early["online_finetune"],
            "retention_cmt_ge_finetune": early["cmt"] >= early["online_finetune"]}


def _fmt(stat: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['sd'] * scale:.{digits}f}"


def markdown(summary: dict, check: dict, meta: dict) -> str:
    s = meta["setting"]
    lines = [f"# Knowledge stream: {len(s['seeds'])} seed(s), {s['n_steps']} steps, "
             f"{s['questions_per_step']} questions per step", "",
             "Final step (all questions asked so far, each with the answer valid at its time); "
             "mean ± sd over seeds. Questions per group at the final step (mean): early "
             f"{summary['oracle']['n_early']['mean']:.1f}, late "
             f"{summary['oracle']['n_late']['mean']:.1f}, updated "
             f"{summary['oracle']['n_updated']['mean']:.1f}.", "",
             "| agent | EM | F1 | early EM | late EM | updated EM | stale rate | bytes/doc | "
             "ms/query |", "|---|---|---|---|---|---|---|---|---|"]
    for name in AGENTS:
        r = summary[name]
        lines.append(f"| {name} | {_fmt(r['em'])} | {_fmt(r['f1'])} | {_fmt(r['early_em'])} | "
                     f"{_fmt(r['late_em'])} | {_fmt(r['updated_em'])} | "
                     f"{_fmt(r['stale_rate'])} | {_fmt(r['bytes_per_doc'], digits=0)} | "
                     f"{_fmt(r['ms_per_query'], digits=1)} |")
    lines += ["", "EM by step (mean over seeds):", "",
              "| agent | " + " | ".join(str(t) for t in range(s["n_steps"])) + " |",
              "|---|" + "---|" * s["n_steps"]]
    lines += [f"| {name} | " + " | ".join(f"{v:.2f}" for v in summary[name]["em_by_step"])
              + " |" for name in AGENTS]
    lines += ["", "CMT's bank after the last step, read with other k (None: the whole bank, "
              "unweighted), EM:", "", "| k | " + " | ".join(summary["cmt_top_k"]) + " |",
              "|---|" + "---|" * len(summary["cmt_top_k"]),
              "| EM | " + " | ".join(_fmt(v) for v in summary["cmt_top_k"].values()) + " |"]
    lines += ["", "Shape checks:", "", "```", json.dumps(check, indent=1), "```", "",
              f"QA LM: {meta['lm']}", f"CMT/MAC training: {meta['cmt_training']}",
              f"Embedder: {s['embedder']}; {meta['seconds']:.0f} s in all; one thread."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in AGENTS:
        curve = summary[name]["em_by_step"]
        ax.plot(range(len(curve)), curve, marker="o", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("EM on all questions so far")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry point

def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 5 steps, a few minutes")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--embedder", choices=("minilm", "hashing"), default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    s = QUICK if args.quick else Setting()
    if args.seeds is not None:
        s = replace(s, seeds=tuple(args.seeds))
    if args.embedder is not None:
        s = replace(s, embedder=args.embedder)
    if any(not 0 <= seed < TRAIN_SEED_BASE for seed in s.seeds):
        raise ValueError(f"--seeds: expected evaluation seeds in [0, {TRAIN_SEED_BASE}), "
                         f"disjoint from the training seeds, got {s.seeds}")
    out = args.out or HERE / "results" / ("knowledge_stream_quick" if args.quick
                                          else "knowledge_stream")
    started = time.perf_counter()
    train_qa_lm(s.lm_base, threads=1, log=True)
    train_qa_lm(s.lm_dir, init=s.lm_base, max_others=s.lm_max_others, lr=s.lm_context_lr,
                minutes=s.lm_context_minutes, threads=1, log=True)
    model, tokenizer, lm_info = load_qa_lm(s.lm_dir)
    cmt_files, cmt_info = {}, {}
    for kind in ("cmt", "mac"):
        cmt_files[kind], cmt_info[kind] = trained_cmt(kind, model, tokenizer, lm_info, s)
    embed = MiniLM() if s.embedder == "minilm" else HashingEmbedder(256, seed=0)
    runs = {seed: run_seed(seed, model, tokenizer, s, cmt_files, embed) for seed in s.seeds}
    summary = summarise(runs)
    check = shape_check(summary)
    meta = {"setting": asdict(s), "seconds": time.perf_counter() - started,
            "lm": {k: lm_info[k] for k in ("steps", "minutes", "train_loss", "held_out",
                                           "n_parameters")},
            "cmt_training": {k: {"minutes": round(v["minutes"], 2), "final": v["final"],
                                 "examples": v["examples"]} for k, v in cmt_info.items()},
            "python": platform.python_version(), "torch": torch.__version__}
    result = {"meta": meta, "summary": summary, "shape_check": check,
              "runs": {str(seed): r for seed, r in runs.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1))
    write_text_atomic(out.with_suffix(".md"), markdown(summary, check, meta))
    plot(summary, out.with_suffix(".png"))
    print(markdown(summary, check, meta))
    return result


if __name__ == "__main__":
    main()
