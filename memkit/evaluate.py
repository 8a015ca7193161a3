"""Evaluators: what "evaluate" means for a stream, one score per test set seen so far.

The run loop calls ``evaluator(learner, experiences)`` after every
experience and stores the scores as a row of its matrix. Supervised streams
use ``Accuracy``; segmentation (J&F per video) and robot deployment (success
per round) streams bring their own evaluator and reuse the same loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from memkit.learner import Learner
from memkit.streams import Experience


class Evaluator(Protocol):
    metric: str

    def __call__(self, learner: Learner, experiences: Sequence[Experience]) -> list[float]: ...


class Accuracy:
    """Top-1 accuracy of ``learner.predict`` on each experience's test set."""

    metric = "accuracy"

    def __init__(self, batch_size: int = 1024):
        self.batch_size = batch_size

    def __call__(self, learner: Learner, experiences: Sequence[Experience]) -> list[float]:
        return [self._score(learner, exp) for exp in experiences]

    def _score(self, learner: Learner, experience: Experience) -> float:
        correct = 0
        for batch in experience.test.split(self.batch_size):
            with torch.no_grad():
                correct += int((learner.predict(batch.x) == batch.y).sum())
        return correct / max(len(experience.test), 1)
