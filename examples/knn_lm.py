"""Give a Hugging Face causal LM a kNN-LM datastore, charged to a byte budget, in a few lines.

    .venv/bin/python benchmarks/train_tiny_lm.py     # once: a tiny GPT-2 in runs/lm/tiny
    .venv/bin/python examples/knn_lm.py [MODEL_DIR]

Any local causal LM directory works (``AutoModelForCausalLM``); the documents
here come from memkit's generated long-range corpus.
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import memkit
from memkit.agents import KNNLM, CausalLM, build_datastore
from memkit.buffers import Datastore
from memkit.data.long_range_text import long_range_corpus

torch.set_num_threads(1)
model_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/lm/tiny"
model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
dim = model.config.hidden_size

budget = memkit.Budget("24MB")
corpus = Datastore(dim, budget, nbytes="20MB", owner="corpus")   # Flat: exact search
cache = Datastore(dim, budget, owner="document cache")            # the rest of the budget
lm = CausalLM(model, tokenizer)
build_datastore(lm, [lm.encode(d.text) for d in long_range_corpus(30, seed=0)], corpus)

test = [d.text for d in long_range_corpus(3, seed=1, split="test")]
print(f"perplexity of the LM alone: {lm.perplexity(test):.2f}")
for name, memory in [("training corpus", {"datastore": corpus}),
                     ("the document's own earlier tokens", {"cache": cache})]:
    knn = KNNLM(model, tokenizer, **memory, k=32, lam=0.25, temperature=16.0)
    print(f"kNN-LM over {name}: {knn.perplexity(test):.2f}")
print(budget.report())
