"""Bounded memory stores, each charged in bytes to a budget."""

from memkit.buffers.reservoir import Reservoir

__all__ = ["Reservoir"]
