"""The expandable network that MEMO and DER grow, and its charge to the byte budget.

Both Yan et al., "DER: Dynamically Expandable Representation for Class
Incremental Learning" (CVPR 2021) and Zhou et al., "A Model or 603 Exemplars:
Towards Memory-Efficient Class-Incremental Learning" (ICLR 2023) train one
network that gains a block per experience:

    x -> trunk -> [block_1, ..., block_t] -> concatenated features -> head

Blocks of earlier experiences are frozen; the head is one linear classifier
over the concatenated features and every class seen so far; an auxiliary
head over the newest block separates the new classes (outputs 1..k) from all
old ones (output 0). DER's trunk is empty and its blocks are whole backbones
(``agents/der_expandable.py``); MEMO's trunk is the shared generalised blocks
and its blocks the specialised ones (``agents/memo.py``).

Growth follows PyCIL's networks (the papers' public code): the new block
starts as a copy of the newest one; the new head's rows and the auxiliary
head are drawn as ``nn.Linear`` draws them, from a generator the learner
derives from its seed. One change: the old classes' weights on the new
block's features start at zero (PyCIL draws them too), so growth leaves old
logits unchanged. Weight aligning is Zhao et al., "Maintaining
Discrimination and Fairness in Class Incremental Learning" (CVPR 2020),
applied to the head's weights (biases stay as trained, as in PyCIL).

A grown network is charged to the budget line ``model`` before it replaces
the old one (``charge_network``): MEMO's point is that parameters are memory,
so the memory shrinks to pay for them. At the first experience the model's
head, sized for every class of the stream, gives way to one over that
experience's classes; the bytes this frees stay free until growth uses them.
The class ids that label the head's rows are bookkeeping, like the label
order of a plain classifier, and are not charged.

``ExpandableLearner`` is the learner both papers share (PyCIL's training
loop): grow and charge the network before each experience, train on the
experience's data and every exemplar with cross-entropy plus ``aux_weight``
times the auxiliary head's cross-entropy, align the weights and offer the
experience to the memory afterwards; its state is the grown network. MEMO
and DER subclass it and say only how the given model becomes the first
network (``initial_network``).
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from memkit.agents.base import SupervisedLearner, charge_growth
from memkit.batch import Batch
from memkit.budget import Budget
from memkit.seeding import derive_generator
from memkit.store import SampleMemory
from memkit.streams import Experience

OWNER = "model"
"""The budget line the network is charged to (``memkit.config.build`` charges the model there)."""


ARCHITECTURE = ("classes", "block_classes")
"""State-dict keys beside the weights that say how far the network has grown."""


class ExpandableNet(nn.Module):
    """``head(cat(block(trunk(x)) for block in blocks))`` with the classes of the head's rows.

    ``classes`` holds the class ids of the head's rows in the order they came;
    ``block_classes[i]`` how many of them experience ``i`` brought. Before the
    first experience ``classes`` is empty and ``head`` is the model's own.
    Every block but the newest is frozen (``freeze_old``) and stays in eval
    mode when the network trains.
    """

    def __init__(self, trunk: nn.Module, blocks: Sequence[nn.Module], head: nn.Linear,
                 aux_head: nn.Linear | None = None, classes: torch.Tensor | None = None,
                 block_classes: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(head, nn.Linear) or head.in_features % len(blocks):
            raise TypeError(f"ExpandableNet: expected an nn.Linear head over {len(blocks)} "
                            f"equal blocks, got {head!r}")
        self.trunk, self.blocks = trunk, nn.ModuleList(blocks)
        self.head, self.aux_head = head, aux_head
        empty = torch.empty(0, dtype=torch.int64)
        self.classes = empty if classes is None else classes
        self.block_classes = empty if block_classes is None else block_classes

    @property
    def block_dim(self) -> int:
        """Features each block outputs."""
        return self.head.in_features // len(self.blocks)

    def block_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        shared = self.trunk(x)
        return [block(shared) for block in self.blocks]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated features of every block: ``len(blocks) * block_dim`` columns."""
        return torch.cat(self.block_features(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head logits over all seen classes, and the auxiliary head's over the newest block."""
        features = self.block_features(x)
        aux = None if self.aux_head is None else self.aux_head(features[-1])
        return self.head(torch.cat(features, dim=1)), aux

    def columns(self, y: torch.Tensor) -> torch.Tensor:
        """The head row (logit column) of each class label in ``y``."""
        match = y.unsqueeze(1) == self.classes.unsqueeze(0)
        known = match.any(dim=1)
        if not bool(known.all()):
            raise ValueError(f"labels {torch.unique(y[~known]).tolist()} are not among the "
                             f"classes learned so far {self.classes.tolist()}")
        return torch.nonzero(match)[:, 1]

    def aux_targets(self, columns: torch.Tensor) -> torch.Tensor:
        """Auxiliary labels: the newest experience's classes are 1..k, every older class is 0."""
        n_old = len(self.classes) - int(self.block_classes[-1])
        return torch.where(columns >= n_old, columns - n_old + 1, 0)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class ids of the largest logits (no gradients; the caller sets the mode)."""
        if len(self.classes) == 0:
            raise RuntimeError("ExpandableNet.predict: no experience learned yet")
        with torch.no_grad():
            return self.classes[self(x).argmax(dim=1)]

    def grown(self, new_classes: torch.Tensor, generator: torch.Generator) -> ExpandableNet:
        """The network for an experience bringing ``new_classes``; this one is left unchanged.

        The first experience keeps the one block and replaces the model's head by
        a fresh one over the experience's classes. Each later one appends a copy
        of the newest block (shared trunk and old blocks are the same modules),
        widens the head by the new block's features (zero weights for the old
        rows) and lengthens it by fresh rows for the new classes, and attaches a
        fresh auxiliary head over the new block: one "old" output and one per
        new class. Fresh weights are drawn from ``generator``.
        """
        new_classes = self._checked_new(new_classes)
        n_old = len(self.classes)
        blocks = [*self.blocks, copy.deepcopy(self.blocks[-1])] if n_old else [*self.blocks]
        head = _fresh_linear(self.block_dim * len(blocks), n_old + len(new_classes), self.head,
                             generator)
        aux = None
        if n_old:
            aux = _fresh_linear(self.block_dim, len(new_classes) + 1, self.head, generator)
            with torch.no_grad():
                head.weight[:n_old] = F.pad(self.head.weight, (0, self.block_dim))
                if head.bias is not None:
                    head.bias[:n_old] = self.head.bias
        counts = torch.cat([self.block_classes, torch.tensor([len(new_classes)])])
        return ExpandableNet(self.trunk, blocks, head, aux,
                             torch.cat([self.classes, new_classes]), counts)

    def freeze_old(self) -> None:
        """Stop training every block but the newest."""
        for block in self.blocks[:-1]:
            block.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ExpandableNet:
        super().train(mode)
        for block in self.blocks[:-1]:
            block.eval()  # frozen blocks keep their statistics (BatchNorm, dropout)
        return self

    def align_weights(self) -> None:
        """Weight aligning: scale the newest classes' rows to the old rows' mean norm."""
        n_new = int(self.block_classes[-1])
        n_old = len(self.classes) - n_new
        if n_old == 0:
            return
        with torch.no_grad():
            norms = self.head.weight.norm(dim=1)
            self.head.weight[n_old:] *= norms[:n_old].mean() / norms[n_old:].mean()

    def _checked_new(self, new_classes: torch.Tensor) -> torch.Tensor:
        new_classes = torch.as_tensor(new_classes, dtype=torch.int64)
        if (new_classes.dim() != 1 or len(new_classes) == 0
                or len(torch.unique(new_classes)) != len(new_classes)):
            raise ValueError(f"ExpandableNet.grown: expected a non-empty list of distinct class "
                             f"ids, got {new_classes.tolist()}")
        seen = new_classes[torch.isin(new_classes, self.classes)]
        if len(seen):
            raise ValueError(f"ExpandableNet.grown: expected classes not learned before "
                             f"(class-incremental), got {seen.tolist()} again")
        return new_classes


def experience_classes(experience: Experience) -> torch.Tensor:
    """The classes ``experience`` brings, in its order (its labels' if it does not say)."""
    classes = experience.classes or torch.unique(experience.train.y).tolist()
    return torch.tensor(classes, dtype=torch.int64)


def growth_generator(seed: int, experience: Experience) -> torch.Generator:
    """The generator fresh weights for ``experience`` are drawn from (purpose "growth")."""
    return derive_generator(seed, "growth", experience.index)


def expand(net: ExpandableNet, new_classes: torch.Tensor, budget: Budget,
           memory: SampleMemory | None, generator: torch.Generator) -> ExpandableNet:
    """``net`` grown for ``new_classes``, charged to ``budget`` and with old blocks frozen."""
    grown = net.grown(new_classes, generator)
    charge_network(grown, budget, memory)
    grown.freeze_old()
    return grown


def charge_network(net: nn.Module, budget: Budget, memory: SampleMemory | None) -> None:
    """Set the ``model`` line to ``net``'s bytes, shrinking ``memory`` if the budget is short.

    Raises ``BudgetExceeded`` for owner ``model`` before anything changes when
    the growth does not fit even with the memory shrunk to one item.
    """
    charge_growth(budget, net, memory, OWNER)


def network_state(net: ExpandableNet) -> dict[str, torch.Tensor]:
    """The weights plus how far the network has grown (``ARCHITECTURE``), all tensors."""
    return {**net.state_dict(), "classes": net.classes.clone(),
            "block_classes": net.block_classes.clone()}


def load_network_state(net: ExpandableNet, state: Mapping[str, torch.Tensor], budget: Budget,
                       memory: SampleMemory | None) -> ExpandableNet:
    """``net`` regrown to the architecture ``state`` was saved from, charged, weights loaded.

    The saved growth must extend ``net``'s (a fresh learner's network extends
    nothing). Raises before anything changes on a mismatch or a short budget.
    """
    missing = [key for key in ARCHITECTURE if key not in state]
    if missing:
        raise ValueError(f"expandable network state: missing {missing}; expected the keys of "
                         f"network_state")
    classes, counts = state["classes"].to(torch.int64), state["block_classes"].to(torch.int64)
    done = len(net.block_classes)
    if (int(counts.sum()) != len(classes) or len(counts) < done
            or not torch.equal(counts[:done], net.block_classes)
            or not torch.equal(classes[: len(net.classes)], net.classes)):
        raise ValueError(f"expandable network state: grown over classes {classes.tolist()} in "
                         f"steps {counts.tolist()}, which does not extend this network's "
                         f"{net.classes.tolist()} in steps {net.block_classes.tolist()}")
    grown = net
    for new in torch.split(classes, counts.tolist())[done:]:
        grown = grown.grown(new, torch.Generator())  # its draws are overwritten by the load
    weights = {k: v for k, v in state.items() if k not in ARCHITECTURE}
    _check_shapes(grown, weights)
    charge_network(grown, budget, memory)
    grown.freeze_old()
    grown.load_state_dict(weights)
    return grown


class ExpandableLearner(SupervisedLearner, abc.ABC):
    """Grow an ``ExpandableNet`` per experience, pay for it from the memory, replay exemplars.

    ``self.model`` is the grown ``ExpandableNet``; the budget defaults to the
    memory's and is required, since every growth is charged to it. A subclass
    implements ``initial_network``.
    """

    def __init__(self, model: nn.Module, memory: SampleMemory | None = None, *,
                 lr: float = 0.1, momentum: float = 0.0, epochs: int = 1,
                 batch_size: int = 32,
                 aux_weight: float = 1.0, weight_aligning: bool = True, seed: int = 0,
                 budget: Budget | None = None):
        budget = budget if budget is not None else getattr(memory, "budget", None)
        if budget is None or aux_weight < 0:
            raise ValueError(f"{type(self).__name__}: expected the budget its model is charged "
                             f"to and aux_weight >= 0, got budget={budget} and "
                             f"aux_weight={aux_weight}")
        super().__init__(self.initial_network(model), lr=lr, momentum=momentum, epochs=epochs,
                         batch_size=batch_size, seed=seed, budget=budget)
        self.memory = memory
        self.aux_weight, self.weight_aligning = aux_weight, weight_aligning

    @staticmethod
    @abc.abstractmethod
    def initial_network(model: nn.Module) -> ExpandableNet:
        """The network before the first experience, sharing ``model``'s parameters."""

    @property
    def stores(self) -> Mapping[str, SampleMemory]:
        return {} if self.memory is None else {"memory": self.memory}

    def check_labels(self, experience: Experience) -> None:
        """Any class id is welcome: the head grows a row per new class (``grown`` checks)."""

    def before_experience(self, experience: Experience) -> None:
        """Add a block for the new classes and pay for it from the memory."""
        self.model = expand(self.model, experience_classes(experience), self.budget,
                            self.memory, growth_generator(self.seed, experience))

    def training_data(self, experience: Experience) -> Batch:
        """The experience's data and every exemplar, as one set the epochs shuffle."""
        data = experience.train.select("x", "y")
        if self.memory is None or len(self.memory) == 0:
            return data
        return Batch.cat([data, self.memory.contents().select("x", "y")])

    def loss(self, batch: Batch, experience: Experience,
             generator: torch.Generator) -> torch.Tensor:
        logits, aux_logits = self.model.logits(batch.x)
        columns = self.model.columns(batch.y)
        loss = F.cross_entropy(logits, columns)
        if aux_logits is None:  # the first experience has no old classes
            return loss
        return loss + self.aux_weight * F.cross_entropy(aux_logits,
                                                        self.model.aux_targets(columns))

    def after_experience(self, experience: Experience) -> None:
        if self.weight_aligning:
            self.model.align_weights()
        if self.memory is not None:
            self.memory.add(experience.train.select("x", "y"))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model.predict(x)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return network_state(self.model)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Regrow to the saved number of blocks, charge them, then load the weights."""
        self.model = load_network_state(self.model, state, self.budget, self.memory)


def _check_shapes(net: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != got:
        wrong = sorted(k for k in {*expected, *got} if expected.get(k) != got.get(k))
        raise ValueError(f"expandable network state: tensors {wrong} do not match the regrown "
                         f"network (expected {[expected.get(k) for k in wrong]}, "
                         f"got {[got.get(k) for k in wrong]})")


def _fresh_linear(in_features: int, out_features: int, like: nn.Linear,
                  generator: torch.Generator) -> nn.Linear:
    """An ``nn.Linear`` with ``like``'s dtype, device and bias choice, drawn as torch draws one.

    ``nn.Linear``'s default initialisation is uniform in +-1/sqrt(in_features)
    for weights and biases; here the draws come from ``generator``.
    """
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features,
                               bias=like.bias is not None, dtype=like.weight.dtype,
                               device=like.weight.device)
    bound = 1 / math.sqrt(in_features)
    for parameter in layer.parameters():
        nn.init.uniform_(parameter, -bound, bound, generator=generator)
    return layer
