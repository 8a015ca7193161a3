"""Learners and agents that use memkit's stores."""

from memkit.agents.backbones import mlp, split_head
from memkit.agents.derpp import DERpp
from memkit.agents.er import ExperienceReplay
from memkit.agents.ewc import EWC
from memkit.agents.finetune import Finetune
from memkit.agents.joint import Joint
from memkit.agents.lwf import LwF

__all__ = ["EWC", "DERpp", "ExperienceReplay", "Finetune", "Joint", "LwF", "mlp", "split_head"]
