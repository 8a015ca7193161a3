"""Experience replay on Split-Digits under one 100 KB budget shared by model and memory."""

import torch

import memkit
from memkit.agents import ExperienceReplay, mlp
from memkit.buffers import Reservoir
from memkit.data import split_digits

torch.set_num_threads(1)
torch.manual_seed(0)

stream = split_digits(n_experiences=5, seed=0)      # 5 experiences of 2 digit classes
budget = memkit.Budget("100KB")                     # SI (KB = 1000) and IEC (KiB = 1024)
model = mlp(stream.input_shape, stream.n_classes)
budget.charge_model(model)                          # 30,040 bytes of float32 weights
memory = Reservoir(stream.spec, budget)             # takes what is left: 265 items
learner = ExperienceReplay(model, memory, epochs=5, lr=0.1)

result = memkit.run(stream, learner, checkpoint_dir="runs/quickstart")
print(result.table())
print(budget.report())
