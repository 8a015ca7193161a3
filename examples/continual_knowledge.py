"""Continual knowledge with a frozen LM: compress each new document into CMT's bank, answer from it.

    .venv/bin/python benchmarks/train_qa_lm.py                      # the reader, 8 minutes
    .venv/bin/python benchmarks/train_qa_lm.py --init runs/lm/qa --max-others 2 --lr 1e-3 \\
        --minutes 12 --out runs/lm/qa_context                        # reading among others
    .venv/bin/python examples/continual_knowledge.py                # CMT: 3,000 steps, ~7 min

CMT (Li et al., "CMT: A Memory Compression Method for Continual Knowledge
Learning of Large Language Models", AAAI 2025): the compressor and aggregator
are trained on knowledge streams of training seeds while the LM stays frozen
(``memkit.agents.train_cmt`` with its three objectives); then one stream of an
evaluation seed arrives step by step. After each step's documents are
compressed into the bank, every question asked so far is answered from the top
3 memories, and, beside it, by retrieving the raw documents (hashing embedder)
into the context. EM per step and the bytes each memory holds are printed; the
trained modules are saved to ``--out`` (safetensors) and reused when present.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import memkit
from memkit.agents import CMT, AgentMemory, HashingEmbedder, train_cmt
from memkit.agents.qa import CompressedMemory, RetrieveDocuments, answer_triples
from memkit.data.knowledge import knowledge_stream
from memkit.qa_metrics import qa_scores

torch.set_num_threads(1)
STREAM = {"entities": 12, "new_entities": 1, "docs_per_step": 6, "update_rate": 0.1,
          "distractors": 2, "questions_per_step": 8}
TRAIN_SEEDS = 1000
"""Training streams take seeds from here on, the evaluation stream one below: no shared facts."""


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", type=Path, default=Path("runs/lm/qa_context"))
    parser.add_argument("--out", type=Path,
                        default=Path("runs/continual_knowledge/cmt.safetensors"))
    parser.add_argument("--steps", type=int, default=3000, help="CMT training steps")
    parser.add_argument("--own-steps", type=int, default=1000, help="warm-up on own entries")
    parser.add_argument("--train-seeds", type=int, default=60)
    parser.add_argument("--n-steps", type=int, default=10, help="steps of each stream")
    parser.add_argument("--seed", type=int, default=0, help="the evaluation stream")
    return parser.parse_args()


def load_reader(folder: Path):
    if not (folder / "config.json").is_file():
        sys.exit(f"{folder}: no trained reader here; train one with the commands in this "
                 f"script's docstring, or pass --lm DIR (any local causal LM with its tokenizer)")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    return model.eval(), PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)


def trained_cmt(model, tokenizer, args) -> CMT:
    cmt = CMT(model, tokenizer, budget=memkit.Budget("64MB"), tokens=4, key_dim=64,
              prefix_tokens=8, bank_nbytes="256KB")
    if args.out.exists():
        cmt.load(args.out)
        print(f"loaded CMT's modules from {args.out}")
        return cmt
    examples = [t for i in range(args.train_seeds) for t in answer_triples(
        knowledge_stream(args.n_steps, seed=TRAIN_SEEDS + i, **STREAM), tokenizer)]
    losses = train_cmt(cmt, examples, steps=args.steps, k=3, batch_size=16,
                       own_steps=args.own_steps)
    print(f"trained CMT on {len(examples)} questions: answer loss {losses['qa'][0]:.2f} -> "
          f"{losses['qa'][-1]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cmt.save(args.out)
    return cmt


def main() -> None:
    args = arguments()
    model, tokenizer = load_reader(args.lm)
    cmt = trained_cmt(model, tokenizer, args)
    stream = knowledge_stream(args.n_steps, seed=args.seed, **STREAM)
    with tempfile.TemporaryDirectory() as folder, AgentMemory(
            Path(folder) / "documents", embed=HashingEmbedder(256, seed=0),
            budget="1MB") as documents:
        agents = {"CMT top 3": CompressedMemory(cmt, k=3),
                  "retrieve top 1": RetrieveDocuments(model, tokenizer, documents, k=1)}
        for step in stream:
            questions = stream.questions_up_to(step.time)
            scores = []
            for name, agent in agents.items():
                agent.observe(step)
                em = qa_scores(agent.answer(questions), questions)["em"]
                scores.append(f"{name} EM {em:.2f} ({agent.nbytes:,} bytes)")
            print(f"step {step.time}: {len(questions)} questions; " + "; ".join(scores))


if __name__ == "__main__":
    main()
