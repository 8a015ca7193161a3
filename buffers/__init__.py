"""Bounded memory stores, each charged in bytes to a budget."""

from memkit.buffers.class_balanced import ClassBalanced
from memkit.buffers.ewc import EWCMemory
from memkit.buffers.gdumb import GDumb
from memkit.buffers.herding import Herding
from memkit.buffers.reservoir import Reservoir
from memkit.buffers.ring import Ring
from memkit.buffers.trajectory import TrajectoryMemory

__all__ = ["ClassBalanced", "EWCMemory", "GDumb", "Herding", "Reservoir", "Ring",
           "TrajectoryMemory"]
