"""MEMO: memory-efficient expandable model, paid for from the exemplars' byte budget.

Zhou, Wang, Ye and Zhan, "A Model or 603 Exemplars: Towards Memory-Efficient
Class-Incremental Learning", ICLR 2023. The paper's point is that a model's
parameters are memory too: methods must be compared at equal total bytes
(parameters x 4 bytes + exemplars x their stored bytes). Its method, MEMO,
finds that shallow layers of a network generalise across tasks while deep
layers specialise, so it shares the shallow ("generalised") blocks and adds
only a deep ("specialised") block per experience. How the code maps to it:

- generalised blocks: the model's ``shallow`` part (``split_blocks``), the
  trunk of an ``ExpandableNet``, shared by all experiences and trained
  throughout (the public code's default ``train_base=True``);
- specialised blocks: the model's ``deep`` part for the first experience,
  then per experience a copy of the newest one; older ones are frozen
  (``train_adaptive=False``);
- features: the concatenation of all specialised blocks' outputs; one linear
  head over them covers every class seen and grows with the old weights
  copied in;
- loss: cross-entropy over all logits plus ``aux_weight`` times the
  cross-entropy of an auxiliary head over the newest block, whose labels are
  the new classes (1..k) and one "old" class (0) for all earlier ones;
- after each experience the new classes' rows of the head are rescaled to
  the old rows' mean norm (weight aligning, Zhao et al., CVPR 2020);
  aligning corrects the head's bias towards new classes, whose data
  outnumber the exemplars (``weight_aligning=False`` turns it off);
- exemplars: any ``SampleMemory`` (the paper uses herding, a fixed number
  per class); as in PyCIL, every epoch runs over the union of the
  experience's data and all exemplars, and the memory is offered the
  experience's data after training.

Every parameter a new block adds is charged to the budget line ``model``
before training on the experience; the memory shrinks (evicting by its own
rule) to make room, so a growing model leaves fewer exemplars.

What this file holds is the first bullet: which parts of the model are
shared and which are grown (``initial_network``). The rest is shared with
DER and lives in ``agents/expandable.py``: growth, freezing, the auxiliary
head, weight aligning and the budget charge in ``ExpandableNet`` and
``expand``; the loss, the training data, the memory updates and the
checkpointed state in ``ExpandableLearner``.
"""

from __future__ import annotations

from torch import nn

from memkit.agents.backbones import split_blocks
from memkit.agents.expandable import ExpandableLearner, ExpandableNet
from memkit.registry import register


@register("learner", "memo")
class MEMO(ExpandableLearner):
    """Shared generalised blocks, one frozen specialised block per experience, exemplars.

    ``model`` must have ``shallow``, ``deep`` and ``head`` parts (``mlp_blocks``).
    ``self.model`` is the grown ``ExpandableNet``; the budget defaults to the
    memory's and is required, since every added block is charged to it.
    """

    @staticmethod
    def initial_network(model: nn.Module) -> ExpandableNet:
        """Trunk: the generalised ``shallow`` blocks; first specialised block: ``deep``."""
        shallow, deep, head = split_blocks(model)
        return ExpandableNet(shallow, [deep], head)
