"""The run loop: train on each experience, evaluate on every test set seen so far.

After every experience it records a row of the score matrix, the memory
timeline (bytes per store and per budget owner) and timings, and writes one
checkpoint (learner tensors, store tensors, the torch RNG state and the
results so far) atomically. ``resume=True`` continues from that checkpoint
and gives the same final scores and memory timeline as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from memkit.budget import Budget
from memkit.evaluate import Accuracy, Evaluator
from memkit.io import load_tensors, save_tensors
from memkit.learner import Learner
from memkit.metrics import average_accuracy, backward_transfer, forgetting
from memkit.streams import Stream

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class RunResult:
    """Everything a run measured; ``to_json`` / ``from_json`` round-trip it."""

    stream: str
    learner: str
    metric: str
    matrix: list[list[float | None]] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)

    @property
    def scores(self) -> np.ndarray:
        return np.array([[np.nan if v is None else v for v in row] for row in self.matrix])

    @property
    def average(self) -> list[float]:
        return average_accuracy(self.scores).tolist() if self.matrix else []

    @property
    def final_average(self) -> float:
        return self.average[-1] if self.matrix else float("nan")

    @property
    def forgetting(self) -> float:
        return forgetting(self.scores)

    @property
    def backward_transfer(self) -> float:
        return backward_transfer(self.scores)

    def summary(self) -> dict:
        return {"final_average": self.final_average, "forgetting": self.forgetting,
                "backward_transfer": self.backward_transfer, "average": self.average}

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "summary": self.summary()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        data = json.loads(text)
        data.pop("summary", None)
        return cls(**data)

    def table(self) -> str:
        """The score matrix as Markdown: one row per trained experience, then the summary."""
        n = len(self.matrix)
        head = "| after \\ on | " + " | ".join(f"e{j}" for j in range(n)) + " | average |"
        lines = [head, "|---" * (n + 2) + "|"]
        for i, row in enumerate(self.matrix):
            cells = " | ".join("" if v is None else f"{v:.3f}" for v in row)
            lines.append(f"| e{i} | {cells} | {self.average[i]:.3f} |")
        lines.append(f"\n{self.metric}: final average {self.final_average:.3f}, "
                     f"forgetting {self.forgetting:.3f}, "
                     f"backward transfer {self.backward_transfer:+.3f}")
        return "\n".join(lines)


def run(stream: Stream, learner: Learner, *, evaluator: Evaluator | None = None,
        budget: Budget | None = None, checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False, progress: bool = True) -> RunResult:
    """Train ``learner`` on each experience of ``stream`` and evaluate it after each one.

    ``budget`` defaults to the learner's ``budget`` attribute, if it has one.
    With ``checkpoint_dir`` a checkpoint is written after every experience;
    with ``resume=True`` the run continues from the checkpoint found there.
    """
    evaluator = evaluator or Accuracy()
    budget = budget if budget is not None else getattr(learner, "budget", None)
    result = RunResult(stream.name, type(learner).__name__, evaluator.metric)
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    if resume:
        if path is None or not path.exists():
            raise FileNotFoundError(f"resume: no checkpoint at {path}; run without resume first")
        result = _restore(path, stream, learner)
    bar = tqdm(total=len(stream), initial=len(result.matrix), disable=not progress,
               desc=f"{result.learner} on {stream.name}", unit="exp")
    for experience in stream[len(result.matrix):]:
        started = time.perf_counter()
        learner.learn(experience)
        trained = time.perf_counter()
        scores = evaluator(learner, stream[: experience.index + 1])
        _check_scores(scores, experience.index)
        result.matrix.append(list(scores) + [None] * (len(stream) - len(scores)))
        result.memory.append(_memory_snapshot(experience.index, learner, budget))
        result.timings.append({"step": experience.index, "train_s": trained - started,
                               "eval_s": time.perf_counter() - trained})
        if path is not None:
            _checkpoint(path, stream, learner, result)
        bar.set_postfix({"avg": f"{result.final_average:.3f}"})
        bar.update()
    bar.close()
    return result


def _check_scores(scores, index: int) -> None:
    if len(scores) != index + 1:
        raise ValueError(f"evaluator: expected {index + 1} scores (one per experience seen), "
                         f"got {len(scores)}")


def _memory_snapshot(step: int, learner: Learner, budget: Budget | None) -> dict:
    stores = {name: {"nbytes": store.nbytes, "filled_nbytes": store.filled_nbytes,
                     "items": len(store) if hasattr(store, "__len__") else None}
              for name, store in learner.stores.items()}
    snapshot = {"step": step, "stores": stores}
    if budget is not None:
        snapshot["budget"] = {"capacity": budget.capacity, "used": budget.used,
                              "owners": dict(budget.owners)}
    return snapshot


def _checkpoint(path: Path, stream: Stream, learner: Learner, result: RunResult) -> None:
    tensors = {f"learner/{k}": v for k, v in learner.state_dict().items()}
    extras = {}
    for name, store in learner.stores.items():
        state = store.state_dict()
        tensors.update({f"stores/{name}/{k}": v for k, v in state["tensors"].items()})
        extras[name] = state["extra"]
    tensors["rng/torch"] = torch.get_rng_state()
    manifest = {"kind": "checkpoint", "stream": stream.name, "experiences": len(stream),
                "learner": type(learner).__name__, "store_extra": extras,
                "result": json.loads(result.to_json())}
    save_tensors(path, tensors, manifest)


def _restore(path: Path, stream: Stream, learner: Learner) -> RunResult:
    tensors, manifest = load_tensors(path)
    if manifest.get("kind") != "checkpoint":
        raise ValueError(f"{path}: not a run checkpoint (kind {manifest.get('kind')!r})")
    expected = (stream.name, len(stream), type(learner).__name__)
    found = (manifest["stream"], manifest["experiences"], manifest["learner"])
    if expected != found:
        raise ValueError(f"{path}: checkpoint of (stream, experiences, learner) {found}, "
                         f"cannot resume {expected}")
    for name, store in learner.stores.items():  # stores first: a shrunk memory frees bytes
        store.load_state_dict({"tensors": _prefixed(tensors, f"stores/{name}/"),
                               "extra": manifest["store_extra"][name]})
    learner.load_state_dict(_prefixed(tensors, "learner/"))
    torch.set_rng_state(tensors["rng/torch"])
    result = manifest["result"]
    result.pop("summary", None)
    return RunResult(**result)


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
