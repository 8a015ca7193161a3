"""The learner protocol: what the run loop needs from anything that learns from a stream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from memkit.store import Store
from memkit.streams import Experience


@runtime_checkable
class Learner(Protocol):
    """Learns from one experience at a time and predicts; its stores are named.

    ``state_dict`` holds the learner's own tensors (model weights, optimiser
    moments it keeps across experiences); its ``stores`` are checkpointed by
    the run loop on their own, so they are not repeated there.
    """

    stores: Mapping[str, Store]

    def learn(self, experience: Experience) -> None: ...

    def predict(self, x: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> Mapping[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...
