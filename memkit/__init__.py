"""memkit: bounded memory stores, charged in bytes to one budget, for continual learning.

Everything that remembers is a ``Store`` charged to a ``Budget``; learners
consume a ``Stream`` of experiences in ``run``, which records scores, the
memory timeline and checkpoints.
"""

from memkit.batch import Batch
from memkit.budget import Budget, BudgetExceeded, format_size, module_nbytes, parse_size
from memkit.deployment import DeploymentResult, StepLabel, Takeover, deploy
from memkit.evaluate import Accuracy, Evaluator
from memkit.io import StoreFormatError
from memkit.learner import Learner
from memkit.registry import available, create, register
from memkit.run import RunResult, run
from memkit.store import SampleMemory, Store
from memkit.streams import Experience, Stream, class_incremental
from memkit.video import Video

__version__ = "0.1.0"

__all__ = [
    "Accuracy", "Batch", "Budget", "BudgetExceeded", "DeploymentResult", "Evaluator",
    "Experience", "Learner", "RunResult", "SampleMemory", "StepLabel", "Store",
    "StoreFormatError", "Stream", "Takeover", "Video", "available", "class_incremental", "create",
    "deploy", "format_size", "module_nbytes", "parse_size", "register", "run",
]
