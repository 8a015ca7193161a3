"""Learners and agents that use memkit's stores."""

from memkit.agents.backbones import mlp
from memkit.agents.er import ExperienceReplay

__all__ = ["ExperienceReplay", "mlp"]
