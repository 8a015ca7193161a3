"""Avalanche interoperability: memkit's byte-budgeted stores inside Avalanche strategies.

Avalanche (Carta, Pellegrini, Cossu, Hemati and Lomonaco, "Avalanche: A PyTorch
Library for Deep Continual Learning", JMLR 24(363), 2023) keeps replay memory in
*storage policies* (``ExemplarsBuffer``) sized in samples, and lets *plugins*
hook every step of a strategy's training loop. This module maps memkit onto
that vocabulary (written against avalanche-lib 0.6.0):

- ``MemkitStoragePolicy``: any memkit ``SampleMemory`` as an ``ExemplarsBuffer``,
  for ``ReplayPlugin(storage_policy=...)`` and for the strategies that keep a
  ``storage_policy`` attribute (DER, ER-ACE: assign it after construction).
  ``max_size`` is the store's capacity in items, derived from its bytes;
  ``post_adapt`` offers the whole experience to the store in one ``add``;
  ``buffer`` is the store's contents as an ``AvalancheDataset``, rebuilt only
  after the store changed; ``resize`` gives the store the bytes of ``new_size`` items.
- ``MemkitReplayPlugin``: a ``SupervisedPlugin`` that appends ``batch_size_mem``
  items sampled from a store to every training minibatch (experience replay as in
  Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019) and
  offers the store each experience, or each minibatch with ``online=True``.
- ``MemoryLedgerMetric``: the budget's ledger (bytes per owner) as metric values
  for Avalanche's ``EvaluationPlugin`` and its loggers.
- ``from_avalanche`` / ``to_avalanche``: benchmarks to memkit streams and back,
  keeping the order of experiences, their classes and task labels.

Avalanche datasets are read once, through a ``DataLoader``, in their eval
transform group: replayed items carry eval transforms, not train-time
augmentations. A store without a task-label field ``t`` holds task 0 only (the
class-incremental case); give it a ``t`` field for task-aware streams.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import (
    AvalancheDataset,
    DataAttribute,
    FlatData,
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.core import SupervisedPlugin
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.models import avalanche_forward
from avalanche.training.storage_policy import ExemplarsBuffer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from memkit.agents.base import charge_growth
from memkit.batch import Batch
from memkit.budget import Budget
from memkit.seeding import derive_generator
from memkit.store import SampleMemory
from memkit.streams import Experience, Stream

FIELDS = ("x", "y", "t")
"""What an Avalanche classification item is: input, class label, task label."""


def item_spec(dataset: AvalancheDataset, *, task_labels: bool = False,
              logits: int | None = None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The spec of a memory for ``dataset``'s items: ``x`` as its first item's, ``y`` int64.

    ``task_labels=True`` adds a task-label field ``t``; ``logits=n`` a float32
    field of ``n`` logits (for DER).
    """
    _check_dataset(dataset, "item_spec")
    x = torch.as_tensor(dataset.eval()[0][0])
    spec = {"x": (tuple(x.shape), x.dtype), "y": ((), torch.int64)}
    if task_labels:
        spec["t"] = ((), torch.int64)
    if logits is not None:
        spec["logits"] = ((_positive(logits, "logits", "item_spec"),), torch.float32)
    return spec


def read_dataset(dataset: AvalancheDataset, *, batch_size: int = 256,
                 model: nn.Module | None = None, device: torch.device | str = "cpu") -> Batch:
    """Every item of ``dataset`` (eval transforms, in order) as a ``Batch`` of ``x``, ``y``, ``t``.

    With ``model``, also its ``logits`` for every item, computed in eval mode
    without gradients, as Avalanche's DER stores them.
    """
    _check_dataset(dataset, "read_dataset")
    loader = DataLoader(dataset.eval(), batch_size=_positive(batch_size, "batch_size",
                                                             "read_dataset"),
                        shuffle=False, collate_fn=dataset.collate_fn)
    batch = Batch.cat([_as_batch(mbatch, "read_dataset") for mbatch in loader])
    if model is not None:
        batch = batch.replace(logits=_logits(model, batch, batch_size, device))
    return batch


def to_dataset(batch: Batch,
               extras: Sequence[str] = ()) -> TaskAwareSupervisedClassificationDataset:
    """An Avalanche classification dataset over ``batch``'s tensors, sharing their memory.

    Items are ``(x, y, t)`` (task 0 without a ``t`` field), then each field in
    ``extras`` in order, as Avalanche's DER reads ``(x, y, t, logits)``.
    """
    t = batch.t if "t" in batch else torch.zeros(len(batch), dtype=torch.int64)
    y = batch.y.to(torch.int64)
    attributes = [DataAttribute(y.tolist(), "targets"),
                  DataAttribute(t.tolist(), "targets_task_labels", use_in_getitem=True)]
    attributes += [DataAttribute(FlatData([batch[name]]), name, use_in_getitem=True)
                   for name in extras]
    return TaskAwareSupervisedClassificationDataset([TensorDataset(batch.x, y)],
                                                    data_attributes=attributes)


class MemkitStoragePolicy(ExemplarsBuffer):
    """A memkit sample memory as an Avalanche storage policy, sized by its bytes.

    >>> policy = MemkitStoragePolicy(Reservoir(spec, Budget("2MB")))
    >>> replay = ReplayPlugin(mem_size=policy.max_size, storage_policy=policy)

    A store with a ``logits`` field (see ``item_spec``) serves Avalanche's DER:
    ``post_adapt`` stores the model's logits with every item. The ``buffer``
    dataset shares the store's memory: it is valid until the store next changes,
    and ``buffer`` gives a new one after every change.
    """

    def __init__(self, store: SampleMemory, *, batch_size: int = 256):
        _check_store(store, ("t", "logits"), "MemkitStoragePolicy")
        self.store = store
        self.batch_size = _positive(batch_size, "batch_size", "MemkitStoragePolicy")
        self._dataset: AvalancheDataset | None = None
        super().__init__(store.capacity)

    @property
    def max_size(self) -> int:
        """Items the store holds at most: its bytes over the bytes of one item."""
        return self.store.capacity

    @max_size.setter
    def max_size(self, value: int) -> None:
        if value != self.store.capacity:
            raise ValueError(f"MemkitStoragePolicy: max_size follows the store's bytes "
                             f"({self.store.capacity} items); change it with "
                             f"resize(strategy, new_size), got {value}")

    @property
    def buffer(self) -> AvalancheDataset:
        """The store's items as ``(x, y, t[, logits])``; rebuilt only after the store changed."""
        if self._dataset is None:
            extras = [name for name in self.store.spec if name not in FIELDS]
            self._dataset = to_dataset(self.store.contents(), extras)
        return self._dataset

    def update(self, strategy, **kwargs) -> None:
        """What ReplayPlugin and DER call after an experience: ``post_adapt`` on it."""
        self.post_adapt(strategy, strategy.experience)

    def post_adapt(self, agent_state, exp) -> None:
        """Offer all of ``exp``'s data to the store in one ``add``."""
        model = None
        if "logits" in self.store.spec:
            model = getattr(agent_state, "model", None)
            if model is None:
                raise ValueError("MemkitStoragePolicy.post_adapt: the store keeps logits, "
                                 "expected a strategy with a model, got none")
        batch = read_dataset(exp.dataset, batch_size=self.batch_size, model=model,
                             device=getattr(agent_state, "device", "cpu"))
        self.store.add(_rows_for(self.store, batch, "MemkitStoragePolicy.post_adapt"))
        self._dataset = None

    def resize(self, strategy, new_size: int) -> None:
        """Give the store the bytes of ``new_size`` items; it evicts by its own rule."""
        size = _positive(new_size, "new_size", "MemkitStoragePolicy.resize")
        self.store.resize(self.store.nbytes_for(size))
        self._dataset = None

    def __getstate__(self) -> dict:
        """Pickle (Avalanche checkpoints) the store, not the dataset view over it."""
        return {**self.__dict__, "_dataset": None}


class MemkitReplayPlugin(SupervisedPlugin):
    """Replay ``batch_size_mem`` items of a memkit store in every training minibatch.

    ``before_forward`` appends the sampled items to ``strategy.mbatch`` (``x``,
    ``y`` and the task labels, after the current rows); the draws of training
    iteration ``i`` come from ``derive_generator(seed, "replay", i)``. The store is
    offered each experience's data after training on it, or, with
    ``online=True``, the current rows of each minibatch after its update (once
    per epoch). ``charge_model=True`` charges the model to the store's budget
    before each experience, shrinking the store if the model grew.
    """

    def __init__(self, store: SampleMemory, *, batch_size_mem: int = 10, online: bool = False,
                 charge_model: bool = False, seed: int = 0, batch_size: int = 256):
        super().__init__()
        _check_store(store, ("t",), "MemkitReplayPlugin")
        self.store = store
        self.batch_size_mem = _positive(batch_size_mem, "batch_size_mem", "MemkitReplayPlugin")
        self.batch_size = _positive(batch_size, "batch_size", "MemkitReplayPlugin")
        self.online, self.charge_model, self.seed = online, charge_model, seed
        self._current = 0

    def before_training_exp(self, strategy, *args, **kwargs) -> None:
        if self.charge_model:
            charge_growth(self.store.budget, strategy.model, self.store)

    def before_forward(self, strategy, *args, **kwargs) -> None:
        mbatch = strategy.mbatch
        _check_arity(mbatch, "MemkitReplayPlugin.before_forward")
        self._current = len(mbatch[0])
        if len(self.store) == 0:
            return
        generator = derive_generator(self.seed, "replay", strategy.clock.train_iterations)
        replay = self.store.sample(self.batch_size_mem, generator)
        t = replay.t if "t" in replay else torch.zeros(len(replay), dtype=torch.int64)
        for i, value in enumerate((replay.x, replay.y, t)[: len(mbatch)]):
            mbatch[i] = torch.cat([mbatch[i], value.to(mbatch[i].device, mbatch[i].dtype)])

    def after_training_iteration(self, strategy, *args, **kwargs) -> None:
        if self.online:
            current = [field[: self._current] for field in strategy.mbatch]
            rows = _as_batch(current, "MemkitReplayPlugin.after_training_iteration")
            self.store.add(_rows_for(self.store, rows, "MemkitReplayPlugin"))

    def after_training_exp(self, strategy, *args, **kwargs) -> None:
        if not self.online:
            batch = read_dataset(strategy.experience.dataset, batch_size=self.batch_size)
            self.store.add(_rows_for(self.store, batch, "MemkitReplayPlugin.after_training_exp"))


class MemoryLedgerMetric(PluginMetric[dict]):
    """The bytes charged to each owner of a memkit ``Budget``, after every training experience.

    Emits ``MemoryBytes/owner/<owner>`` for each owner, ``MemoryBytes/used`` and
    ``MemoryBytes/capacity``, at the strategy's training iteration count; use it
    as ``EvaluationPlugin(MemoryLedgerMetric(budget), ...)``.
    """

    def __init__(self, budget: Budget):
        super().__init__()
        if not isinstance(budget, Budget):
            raise TypeError(f"MemoryLedgerMetric: expected a memkit Budget, "
                            f"got {type(budget).__name__}")
        self.budget = budget
        self._last: dict[str, int] = {}

    def result(self) -> dict[str, int]:
        """Metric name -> bytes, as last emitted."""
        return dict(self._last)

    def reset(self) -> None:
        self._last = {}

    def after_training_exp(self, strategy) -> list[MetricValue]:
        ledger = {f"{self}/owner/{owner}": n for owner, n in self.budget.owners.items()}
        self._last = {**ledger, f"{self}/used": self.budget.used,
                      f"{self}/capacity": self.budget.capacity}
        x = strategy.clock.train_iterations
        return [MetricValue(self, name, n, x) for name, n in self._last.items()]

    def __str__(self) -> str:
        return "MemoryBytes"


def to_avalanche(stream: Stream) -> CLScenario:
    """An Avalanche benchmark (``train_stream``, ``test_stream``) with ``stream``'s experiences.

    Items are ``(x, y, t)`` (task 0 where the stream has no ``t``); every
    experience keeps its classes in the stream's order as
    ``classes_in_this_experience``, and the benchmark its ``n_classes`` and
    ``classes_order``.
    """
    if not isinstance(stream, Stream):
        raise TypeError(f"to_avalanche: expected a memkit Stream, got {type(stream).__name__}")
    train = [to_dataset(_plain(exp.train, f"experience {exp.index} train")) for exp in stream]
    test = [to_dataset(_plain(exp.test, f"experience {exp.index} test")) for exp in stream]
    benchmark = with_task_labels(with_classes_timeline(benchmark_from_datasets(train=train,
                                                                               test=test)))
    for exps in (benchmark.train_stream, benchmark.test_stream):
        for exp, source in zip(exps, stream, strict=True):
            if source.classes:
                exp.classes_in_this_experience = list(source.classes)
    benchmark.n_classes = stream.n_classes
    benchmark.classes_order = [c for exp in stream for c in exp.classes]
    return benchmark


def from_avalanche(benchmark, *, name: str = "avalanche", task_labels: bool | None = None,
                   batch_size: int = 256) -> Stream:
    """A memkit ``Stream`` with the experiences of ``benchmark``'s train and test streams.

    Experience ``i`` trains on the ``i``-th train experience and unlocks the
    ``i``-th test experience. Its ``classes`` are the experience's
    ``classes_in_this_experience`` (sorted when Avalanche gives a set; the
    distinct training labels when it gives none). Batches carry a task-label
    field ``t`` when ``task_labels`` is True, or, by default, when any task
    label is not 0.
    """
    train, test = list(benchmark.train_stream), list(benchmark.test_stream)
    if len(train) != len(test):
        raise ValueError(f"from_avalanche: expected as many test as train experiences, "
                         f"got {len(train)} train and {len(test)} test")
    data = [(read_dataset(a.dataset, batch_size=batch_size),
             read_dataset(b.dataset, batch_size=batch_size))
            for a, b in zip(train, test, strict=True)]
    if task_labels is None:
        task_labels = any(bool(part.t.any()) for pair in data for part in pair)
    keep = FIELDS if task_labels else ("x", "y")
    experiences = [Experience(i, tr.select(*keep), te.select(*keep), _classes(exp, tr),
                              {"task_labels": tuple(sorted(set(tr.t.tolist())))})
                   for i, (exp, (tr, te)) in enumerate(zip(train, data, strict=True))]
    return Stream(experiences, name=name, n_classes=getattr(benchmark, "n_classes", None))


def _classes(exp, train: Batch) -> tuple[int, ...]:
    declared = getattr(exp, "classes_in_this_experience", None)
    if declared is None:
        return tuple(torch.unique(train.y).tolist())
    if isinstance(declared, (set, frozenset)):
        declared = sorted(declared)
    return tuple(int(c) for c in declared)


def _plain(batch: Batch, where: str) -> Batch:
    extra = [name for name in batch if name not in FIELDS]
    if extra:
        raise ValueError(f"to_avalanche: {where} has field(s) {extra}; an Avalanche "
                         f"classification item holds only {list(FIELDS)}")
    return batch


def _as_batch(mbatch: Sequence[torch.Tensor], where: str) -> Batch:
    """An Avalanche minibatch ``[x, y(, t)]`` as a CPU ``Batch`` of ``x``, ``y``, ``t``."""
    _check_arity(mbatch, where)
    y = torch.as_tensor(mbatch[1])
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{where}: expected integer class labels, got dtype {y.dtype}")
    t = torch.as_tensor(mbatch[2]) if len(mbatch) == 3 else torch.zeros(len(y), dtype=torch.int64)
    return Batch(x=mbatch[0].detach().cpu(), y=y.cpu().to(torch.int64),
                 t=t.cpu().to(torch.int64))


def _rows_for(store: SampleMemory, batch: Batch, where: str) -> Batch:
    """The fields of ``batch`` that ``store`` keeps; task labels other than 0 need a ``t`` field."""
    if "t" not in store.spec and bool(batch.t.any()):
        raise ValueError(f"{where}: the data has task labels {sorted(set(batch.t.tolist()))} "
                         f"but the store keeps none; give its spec a 't' field "
                         f"(item_spec(dataset, task_labels=True))")
    return batch.select(*store.spec)


def _logits(model: nn.Module, batch: Batch, batch_size: int,
            device: torch.device | str) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = [avalanche_forward(model, part.x.to(device), part.t.to(device)).cpu()
               for part in batch.split(batch_size)]
    model.train(was_training)
    return torch.cat(out)


def _check_arity(mbatch: Sequence, where: str) -> None:
    if len(mbatch) not in (2, 3):
        raise ValueError(f"{where}: expected minibatches of (x, y) or (x, y, task label), "
                         f"got {len(mbatch)} fields")


def _check_dataset(dataset, where: str) -> None:
    if not isinstance(dataset, AvalancheDataset):
        raise TypeError(f"{where}: expected an AvalancheDataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"{where}: the dataset is empty")


def _check_store(store, optional: tuple[str, ...], where: str) -> None:
    if not isinstance(store, SampleMemory):
        raise TypeError(f"{where}: expected a memkit SampleMemory, got {type(store).__name__}")
    fields = list(store.spec)
    if "y" not in fields or any(name not in ("x", "y", *optional) for name in fields):
        raise ValueError(f"{where}: expected a store with fields x, y and optionally "
                         f"{', '.join(optional)}, got {fields}")


def _positive(value: int, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: expected {name} a positive int, got {value!r}")
    return value
