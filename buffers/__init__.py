"""Bounded memory stores, each charged in bytes to a budget."""

from memkit.buffers.ewc import EWCMemory
from memkit.buffers.reservoir import Reservoir

__all__ = ["EWCMemory", "Reservoir"]
