"""DER: dynamically expandable representation, paid for from the exemplars' byte budget.

Yan, Xie and He, "DER: Dynamically Expandable Representation for Class
Incremental Learning", CVPR 2021. Not to be confused with dark experience
replay (Buzzega et al., 2020): this learner is registered as
``der_expandable``. Each experience adds a whole new feature extractor; the
old ones are frozen, so what they learned cannot be overwritten, and the
classifier reads all of them. How the code maps to the paper (and PyCIL's
``DER``, which its authors' comparisons use):

- feature extractors: the model's backbone for the first experience
  (``shallow`` + ``deep`` of ``mlp_blocks``, or everything but the last
  linear layer of an ``nn.Sequential`` such as ``mlp``), then per experience
  a copy of the newest one; older ones are frozen;
- features: the concatenation of all extractors' outputs; one linear head
  over them covers every class seen and grows with the old weights copied in;
- loss: cross-entropy over all logits plus ``aux_weight`` (the paper's
  lambda_a) times the cross-entropy of the auxiliary classifier over the
  newest extractor, whose labels are the new classes (1..k) and one class
  (0) for all old ones;
- after each experience the new classes' rows of the head are rescaled to
  the old rows' mean norm (weight aligning, Zhao et al., CVPR 2020, as PyCIL
  does in place of the paper's classifier re-training on balanced data);
  aligning corrects the head's bias towards new classes, whose data
  outnumber the exemplars (``weight_aligning=False`` turns it off);
- the paper's optional mask-based pruning of each new extractor is left
  out: every new extractor is kept whole and charged whole;
- exemplars: any ``SampleMemory`` (the paper uses herding, a fixed number
  per class); as in PyCIL, every epoch runs over the union of the
  experience's data and all exemplars, and the memory is offered the
  experience's data after training.

Every parameter a new extractor adds is charged to the budget line ``model``
before training on the experience (MEMO's accounting, Zhou et al., ICLR
2023); the memory shrinks, evicting by its own rule, to make room.

What this file holds is the first bullet: the whole backbone is the grown
block and nothing is shared (``initial_network``: an empty trunk). The rest
is shared with MEMO and lives in ``agents/expandable.py``: growth, freezing,
the auxiliary classifier, weight aligning and the budget charge in
``ExpandableNet`` and ``expand``; the loss, the training data, the memory
updates and the checkpointed state in ``ExpandableLearner``.
"""

from __future__ import annotations

from torch import nn

from memkit.agents.backbones import split_blocks, split_head
from memkit.agents.expandable import ExpandableLearner, ExpandableNet
from memkit.registry import register


@register("learner", "der_expandable")
class DynamicallyExpandableRepresentation(ExpandableLearner):
    """One frozen feature extractor per experience, a head over all of them, replay.

    ``model`` is ``mlp_blocks``-like (``shallow``, ``deep``, ``head``) or an
    ``nn.Sequential`` ending in ``nn.Linear``. ``self.model`` is the grown
    ``ExpandableNet`` (its trunk is empty); the budget defaults to the
    memory's and is required, since every added extractor is charged to it.
    """

    @staticmethod
    def initial_network(model: nn.Module) -> ExpandableNet:
        """An empty trunk; the first feature extractor: the whole backbone."""
        if isinstance(model, nn.Sequential):
            backbone, head = split_head(model)
        else:
            shallow, deep, head = split_blocks(model)
            backbone = nn.Sequential(shallow, deep)
        return ExpandableNet(nn.Identity(), [backbone], head)
