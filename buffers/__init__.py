"""Bounded memory stores, each charged in bytes to a budget."""

from memkit.buffers.class_balanced import ClassBalanced
from memkit.buffers.cmt import CMTBank, CMTEntries, cmt_bank_nbytes
from memkit.buffers.datastore import Datastore, Entries, Hits, datastore_nbytes
from memkit.buffers.ewc import EWCMemory
from memkit.buffers.gdumb import GDumb
from memkit.buffers.grcl import GatedRegularizer
from memkit.buffers.herding import Herding
from memkit.buffers.longmem import LongMemBank, longmem_bank_nbytes
from memkit.buffers.lwl import LWLMemory
from memkit.buffers.mlp_memory import MLPMemory, mlp_memory_nbytes
from memkit.buffers.reservoir import Reservoir
from memkit.buffers.ring import Ring
from memkit.buffers.rmscl import RMSCLMemory
from memkit.buffers.trajectory import TrajectoryMemory
from memkit.buffers.usage import UsageMemory

__all__ = [
           "CMTBank",
           "CMTEntries",
           "ClassBalanced",
           "Datastore",
           "EWCMemory",
           "Entries",
           "GDumb",
           "GatedRegularizer",
           "Herding",
           "Hits",
           "LWLMemory",
           "LongMemBank",
           "MLPMemory",
           "RMSCLMemory",
           "Reservoir",
           "Ring",
           "TrajectoryMemory",
           "UsageMemory",
           "cmt_bank_nbytes",
           "datastore_nbytes",
           "longmem_bank_nbytes",
           "mlp_memory_nbytes",
]
