"""An Avalanche script that gains a byte-budgeted memkit replay buffer.

Everything but the lines marked ``# memkit`` is a plain Avalanche script: a
benchmark, a model, a strategy with an evaluator, the train/eval loop. The
marked lines give the strategy a reservoir charged, together with the model,
to one 100 KB budget, replay 32 of its items in every minibatch, and log the
budget's ledger through Avalanche's loggers.

    .venv/bin/python examples/avalanche_plugin.py
"""

import sys

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TextLogger
from avalanche.models import SimpleMLP
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

import memkit  # memkit
from memkit.buffers.reservoir import Reservoir  # memkit
from memkit.data import split_digits
from memkit.integrations.avalanche import (  # memkit
    MemkitReplayPlugin,
    MemoryLedgerMetric,
    item_spec,
    to_avalanche,
)

torch.set_num_threads(1)
torch.manual_seed(0)

# Any Avalanche benchmark works here (SplitMNIST, ...); this one needs no download:
# scikit-learn's 8x8 digits, 5 experiences of 2 classes.
benchmark = to_avalanche(split_digits(n_experiences=5, seed=0))
model = SimpleMLP(num_classes=10, input_size=64, hidden_size=100, drop_rate=0)

budget = memkit.Budget("100KB")  # memkit
memory = Reservoir(item_spec(benchmark.train_stream[0].dataset), budget)  # memkit
replay = MemkitReplayPlugin(memory, batch_size_mem=32, charge_model=True)  # memkit

strategy = Naive(
    model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
    train_mb_size=32, train_epochs=5, eval_mb_size=256,
    plugins=[replay],  # memkit
    evaluator=EvaluationPlugin(
        accuracy_metrics(stream=True),
        MemoryLedgerMetric(budget),  # memkit
        loggers=[TextLogger(sys.stdout)]),
)
for experience in benchmark.train_stream:
    strategy.train(experience, eval_streams=[])
    results = strategy.eval(benchmark.test_stream)

print(f"final accuracy {results['Top1_Acc_Stream/eval_phase/test_stream/Task000']:.3f} "
      f"with {len(memory)} replayed items")
print(budget.report())
