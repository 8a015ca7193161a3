"""memkit inside real Avalanche strategies: the plugin, the storage-policy adapter, conversions."""

import pickle
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("avalanche")

from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.training import DER, ER_ACE, Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin

from memkit import Batch, Budget
from memkit.budget import module_nbytes
from memkit.buffers.class_balanced import ClassBalanced
from memkit.buffers.reservoir import Reservoir
from memkit.data import blobs
from memkit.integrations.avalanche import (
    MemkitReplayPlugin,
    MemkitStoragePolicy,
    MemoryLedgerMetric,
    from_avalanche,
    item_spec,
    to_avalanche,
    to_dataset,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "avalanche_plugin.py"
ITEM = 40  # bytes of one blobs item: 8 float32 features and an int64 label
BATCH, REPLAY = 16, 8


@pytest.fixture(scope="module")
def stream():
    return blobs(seed=0)  # 3 experiences of 2 classes, 150 training items each


@pytest.fixture(scope="module")
def benchmark(stream):
    return to_avalanche(stream)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6))


def strategy(cls, model, *metrics, **kwargs):
    return cls(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
               train_mb_size=BATCH, train_epochs=1, eval_mb_size=64,
               evaluator=EvaluationPlugin(*metrics, loggers=[]), **kwargs)


def train(avalanche_strategy, benchmark):
    for exp in benchmark.train_stream:
        avalanche_strategy.train(exp)


def fed_directly(store, stream):
    """The same store offered each experience's training data, without Avalanche."""
    for exp in stream:
        store.add(exp.train.select(*store.spec))
    return store


class Probe(SupervisedPlugin):
    """Records each training minibatch before and after the replay plugin touched it."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def before_training_iteration(self, strategy, **kwargs):
        self.current = len(strategy.mbatch[0])

    def after_forward(self, strategy, **kwargs):
        exp = strategy.experience.current_experience
        self.rows.append((exp, self.current, strategy.mb_y[self.current:].tolist(),
                          len(strategy.mbatch[2])))


def test_plugin_replays_memory_items_in_every_minibatch_and_fills_the_store(stream, benchmark):
    store = Reservoir(stream.spec, Budget(30 * ITEM))
    probe = Probe()
    train(strategy(Naive, mlp(), plugins=[MemkitReplayPlugin(store, batch_size_mem=REPLAY),
                                          probe]), benchmark)
    for exp, current, replayed, with_tasks in probe.rows:
        assert len(replayed) == (0 if exp == 0 else REPLAY)
        assert with_tasks == current + len(replayed), "task labels are replayed too"
        earlier = {c for e in stream[:exp] for c in e.classes}
        assert set(replayed) <= earlier, "only what earlier experiences left in the memory"
    assert sum(current for _, current, _, _ in probe.rows) == 450
    assert store.seen == 450 and len(store) == 30
    assert store.budget.charged("reservoir") == store.nbytes == 30 * ITEM
    reference = fed_directly(Reservoir(stream.spec, Budget(30 * ITEM)), stream)
    assert store.contents().equal(reference.contents())


def test_online_plugin_offers_each_training_item_once(stream, benchmark):
    store = Reservoir(stream.spec, Budget(30 * ITEM))
    train(strategy(Naive, mlp(), plugins=[MemkitReplayPlugin(store, online=True)]), benchmark)
    assert store.seen == 450, "the current rows only, not the replayed ones"
    seen = {tuple(row) for exp in stream for row in exp.train.x.tolist()}
    assert {tuple(row) for row in store.contents().x.tolist()} <= seen


def test_replay_plugin_with_the_adapter_keeps_what_the_memkit_store_keeps(stream, benchmark):
    store = ClassBalanced(stream.spec, Budget(30 * ITEM))
    policy = MemkitStoragePolicy(store)
    with pytest.raises(AssertionError):  # Avalanche's own check of the sample count
        ReplayPlugin(mem_size=policy.max_size + 1, storage_policy=policy)
    replay = ReplayPlugin(mem_size=policy.max_size, storage_policy=policy)
    train(strategy(Naive, mlp(), plugins=[replay]), benchmark)
    reference = fed_directly(ClassBalanced(stream.spec, Budget(30 * ITEM)), stream)
    assert store.contents().equal(reference.contents())
    buffer = policy.buffer
    assert buffer is policy.buffer, "rebuilt only when the store changed"
    assert len(buffer) == 30 and list(buffer.targets) == store.contents().y.tolist()
    assert torch.equal(torch.stack([buffer[i][0] for i in range(30)]), store.contents().x)
    assert sorted(store.contents().y.bincount().tolist()) == [5] * 6
    copy = pickle.loads(pickle.dumps(policy))
    assert copy._dataset is None and copy.store.contents().equal(store.contents())


def test_der_with_the_adapter_stores_the_logits_of_the_model(stream, benchmark):
    spec = item_spec(benchmark.train_stream[0].dataset, logits=6)
    assert spec == {**stream.spec, "logits": ((6,), torch.float32)}
    store = Reservoir(spec, Budget(30 * (ITEM + 24)))
    policy = MemkitStoragePolicy(store)
    model = mlp()
    der = strategy(DER, model, mem_size=policy.max_size, batch_size_mem=REPLAY)
    der.storage_policy = policy  # DER builds its own; 0.6.0 takes none as an argument
    train(der, benchmark)
    assert store.item_nbytes == ITEM + 24 and store.nbytes == store.budget.used == 30 * 64
    held = store.contents()
    last = torch.isin(held.y, torch.tensor(stream[-1].classes))
    assert 0 < int(last.sum()) < 30
    model.eval()
    with torch.no_grad():  # stored after the last experience: the final model's logits
        torch.testing.assert_close(held.logits[last], model(held.x[last]))
    _, y, t, logits = policy.buffer[0]
    assert torch.equal(logits, held.logits[0]) and y == held.y[0] and t == 0


def test_er_ace_with_the_adapter_updates_before_each_experience(stream, benchmark):
    store = ClassBalanced(stream.spec, Budget(30 * ITEM))
    policy = MemkitStoragePolicy(store)
    er_ace = strategy(ER_ACE, mlp(), mem_size=policy.max_size, batch_size_mem=REPLAY)
    er_ace.storage_policy = policy  # ER-ACE, too, builds its own and takes none
    er_ace.train(benchmark.train_stream[0])
    assert set(store.contents().y.tolist()) == set(stream[0].classes), "before training on it"
    er_ace.train(benchmark.train_stream[1])
    replayed = er_ace.mb_buffer_y.tolist()  # its last replay minibatch, from the adapter
    assert len(replayed) == REPLAY and set(replayed) <= {*stream[0].classes, *stream[1].classes}
    er_ace.train(benchmark.train_stream[2])
    reference = fed_directly(ClassBalanced(stream.spec, Budget(30 * ITEM)), stream)
    assert store.contents().equal(reference.contents())


def test_resize_gives_the_store_the_bytes_of_the_new_size(stream, benchmark):
    store = ClassBalanced(stream.spec, Budget(30 * ITEM))
    policy = MemkitStoragePolicy(store)
    for exp in benchmark.train_stream:
        policy.post_adapt(None, exp)
    before = policy.buffer
    policy.resize(None, 12)
    assert policy.max_size == store.capacity == 12 and len(policy.buffer) == 12
    assert policy.buffer is not before
    assert store.budget.charged("class_balanced") == 12 * ITEM
    assert sorted(store.contents().y.bincount().tolist()) == [2] * 6
    with pytest.raises(ValueError, match="new_size"):
        policy.resize(None, 0)
    with pytest.raises(ValueError, match="resize"):
        policy.max_size = 20
    assert store.capacity == 12


@pytest.mark.parametrize("task_labels", [False, True])
def test_stream_to_avalanche_and_back_is_the_same_stream(task_labels):
    stream = blobs(seed=1, task_labels=task_labels, class_order=[4, 0, 5, 1, 3, 2])
    benchmark = to_avalanche(stream)
    for i, exp in enumerate(benchmark.train_stream):
        assert exp.classes_in_this_experience == list(stream[i].classes)
        assert exp.task_labels == [i if task_labels else 0]
    assert benchmark.classes_order == [4, 0, 5, 1, 3, 2]
    back = from_avalanche(benchmark, name="blobs")
    assert (back.name, back.n_classes, len(back)) == ("blobs", 6, 3)
    for ours, theirs in zip(stream, back, strict=True):
        assert ours.index == theirs.index and ours.classes == theirs.classes
        assert ours.train.equal(theirs.train) and ours.test.equal(theirs.test)


def test_an_avalanche_benchmark_becomes_a_stream_with_its_classes_in_order():
    generator = torch.Generator().manual_seed(0)
    data = Batch(x=torch.randn(120, 5, generator=generator), y=torch.arange(120) % 6)
    order = [4, 0, 5, 1, 3, 2]
    benchmark = class_incremental_benchmark({"train": to_dataset(data[:90]),
                                             "test": to_dataset(data[90:])},
                                            class_order=order, num_experiences=3)
    stream = from_avalanche(benchmark)
    assert list(stream[0].train) == ["x", "y"], "no task labels: all are 0"
    for i, exp in enumerate(stream):
        classes = order[2 * i : 2 * i + 2]
        assert exp.classes == tuple(sorted(classes))  # Avalanche gives a set
        for part, rows in ((exp.train, data[:90]), (exp.test, data[90:])):
            mine = rows[torch.isin(rows.y, torch.tensor(classes))]
            assert sorted(map(tuple, part.x.tolist())) == sorted(map(tuple, mine.x.tolist()))
            assert sorted(part.y.tolist()) == sorted(mine.y.tolist())


def test_ledger_metric_reports_the_bytes_of_every_owner(stream, benchmark):
    budget = Budget(10_000)
    store = Reservoir(stream.spec, budget)  # takes the whole budget ...
    model = mlp()
    plugin = MemkitReplayPlugin(store, charge_model=True)  # ... and pays for the model
    naive = strategy(Naive, model, MemoryLedgerMetric(budget), plugins=[plugin])
    naive.train(benchmark.train_stream[0])
    model_bytes = module_nbytes(model)
    assert model_bytes == (8 * 16 + 16 + 16 * 6 + 6) * 4
    assert store.capacity == (10_000 - model_bytes) // ITEM
    last = naive.evaluator.get_last_metrics()
    assert last["MemoryBytes/owner/model"] == model_bytes
    assert last["MemoryBytes/owner/reservoir"] == store.nbytes == store.capacity * ITEM
    assert last["MemoryBytes/used"] == model_bytes + store.nbytes
    assert last["MemoryBytes/capacity"] == 10_000
    x, values = naive.evaluator.get_all_metrics()["MemoryBytes/owner/model"]
    assert values == [model_bytes] and x == [naive.clock.train_iterations]


def test_clear_errors_before_anything_changes(stream, benchmark):
    odd = Reservoir({**stream.spec, "w": ((), torch.float32)}, Budget(10 * 44))
    with pytest.raises(ValueError, match="fields x, y and optionally t"):
        MemkitReplayPlugin(odd)
    tasks = to_avalanche(blobs(seed=0, task_labels=True))
    store = Reservoir(stream.spec, Budget(30 * ITEM))
    policy = MemkitStoragePolicy(store)
    with pytest.raises(ValueError, match="give its spec a 't' field"):
        policy.post_adapt(None, tasks.train_stream[1])
    assert len(store) == 0
    with_task = Reservoir(item_spec(tasks.train_stream[1].dataset, task_labels=True),
                          Budget(30 * (ITEM + 8)))
    MemkitStoragePolicy(with_task).post_adapt(None, tasks.train_stream[1])
    assert set(with_task.contents().t.tolist()) == {1}
    extra = blobs(seed=0)
    extra.experiences[0] = type(extra[0])(0, extra[0].train.replace(w=torch.zeros(150)),
                                          extra[0].test, extra[0].classes)
    with pytest.raises(ValueError, match=r"field\(s\) \['w'\]"):
        to_avalanche(extra)


def test_the_example_script_replays_from_a_budgeted_memory(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    final = float(out.split("final accuracy ")[1].split()[0])
    assert final > 0.6, "plain fine-tuning ends near 0.2 on Split-Digits"
    assert "MemoryBytes/owner/model = 30040" in out and "| reservoir | 69960 |" in out
