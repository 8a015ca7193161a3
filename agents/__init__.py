"""Learners and agents that use memkit's stores."""

from memkit.agents.backbones import BlockMLP, mlp, mlp_blocks, split_blocks, split_head
from memkit.agents.causal_lm import CausalLM, LMOutput, decoder_layers
from memkit.agents.cmt import CMT, memory_aware_loss, qa_loss, self_matching_loss, train_cmt
from memkit.agents.der_expandable import DynamicallyExpandableRepresentation
from memkit.agents.derpp import DERpp
from memkit.agents.embedders import HashingEmbedder, MiniLM
from memkit.agents.episodic_control import EpisodicControl, discounted_returns, run_episodes
from memkit.agents.er import ExperienceReplay
from memkit.agents.ewc import EWC
from memkit.agents.finetune import Finetune
from memkit.agents.gdumb import GDumbLearner
from memkit.agents.humans import human_for, make_env
from memkit.agents.icarl import ICaRL
from memkit.agents.joint import Joint
from memkit.agents.knn_lm import KNNLM, build_datastore
from memkit.agents.longmem import LongMem, SideNetwork, train_side_network
from memkit.agents.lwf import LwF
from memkit.agents.memo import MEMO
from memkit.agents.memory_api import AgentMemory, Recalled
from memkit.agents.mlp_memory import MLPMemoryLM, train_mlp_memory
from memkit.agents.qa import (
    ClosedBook,
    CompressedMemory,
    OnlineFinetune,
    OracleDocument,
    RetrieveDocuments,
    answer_triples,
    greedy_answer,
    qa_prompt,
)
from memkit.agents.sirius import (
    BCPolicy,
    SiriusLearner,
    iwr_weights,
    sirius_weights,
    uniform_weights,
)
from memkit.agents.vos import (
    FrameEncoder,
    OnlineVOSLearner,
    train_frame_encoder,
    trained_encoder,
    vos_method,
)

__all__ = [
    "CMT",
    "EWC",
    "KNNLM",
    "MEMO",
    "AgentMemory",
    "BCPolicy",
    "BlockMLP",
    "CausalLM",
    "ClosedBook",
    "CompressedMemory",
    "DERpp",
    "DynamicallyExpandableRepresentation",
    "EpisodicControl",
    "ExperienceReplay",
    "Finetune",
    "FrameEncoder",
    "GDumbLearner",
    "HashingEmbedder",
    "ICaRL",
    "Joint",
    "LMOutput",
    "LongMem",
    "LwF",
    "MLPMemoryLM",
    "MiniLM",
    "OnlineFinetune",
    "OnlineVOSLearner",
    "OracleDocument",
    "Recalled",
    "RetrieveDocuments",
    "SideNetwork",
    "SiriusLearner",
    "answer_triples",
    "build_datastore",
    "decoder_layers",
    "discounted_returns",
    "greedy_answer",
    "human_for",
    "iwr_weights",
    "make_env",
    "memory_aware_loss",
    "mlp",
    "mlp_blocks",
    "qa_loss",
    "qa_prompt",
    "run_episodes",
    "self_matching_loss",
    "sirius_weights",
    "split_blocks",
    "split_head",
    "train_cmt",
    "train_frame_encoder",
    "train_mlp_memory",
    "train_side_network",
    "trained_encoder",
    "uniform_weights",
    "vos_method",
]
