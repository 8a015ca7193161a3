"""Hot numeric routines: pure functions on tensors, each beside a plain reference."""

from memkit.kernels.herding import herding_select, herding_select_reference
from memkit.kernels.interpolation import interpolate, knn_log_probs, knn_log_probs_reference
from memkit.kernels.knn_targets import (
    knn_targets,
    knn_targets_reference,
    mlp_memory_loss,
    mlp_memory_loss_reference,
)
from memkit.kernels.memory_attention import joint_attention, joint_attention_reference
from memkit.kernels.reservoir import reservoir_slots, reservoir_slots_reference
from memkit.kernels.sampling import sample_distinct, sample_distinct_reference
from memkit.kernels.segmentation import (
    boundary_f,
    boundary_f_reference,
    j_and_f,
    jaccard,
    jaccard_reference,
)
from memkit.kernels.sparse import (
    leave_one_out_residuals,
    leave_one_out_residuals_reference,
    nonneg_lasso,
    nonneg_lasso_reference,
)
from memkit.kernels.topk import (
    topk_rerank,
    topk_rerank_reference,
    topk_search,
    topk_search_reference,
)

__all__ = [
    "boundary_f",
    "boundary_f_reference",
    "herding_select",
    "herding_select_reference",
    "interpolate",
    "j_and_f",
    "jaccard",
    "jaccard_reference",
    "joint_attention",
    "joint_attention_reference",
    "knn_log_probs",
    "knn_log_probs_reference",
    "knn_targets",
    "knn_targets_reference",
    "leave_one_out_residuals",
    "leave_one_out_residuals_reference",
    "mlp_memory_loss",
    "mlp_memory_loss_reference",
    "nonneg_lasso",
    "nonneg_lasso_reference",
    "reservoir_slots",
    "reservoir_slots_reference",
    "sample_distinct",
    "sample_distinct_reference",
    "topk_rerank",
    "topk_rerank_reference",
    "topk_search",
    "topk_search_reference",
]
