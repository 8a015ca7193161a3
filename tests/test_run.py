import numpy as np
import pytest
import torch

from memkit import RunResult, run
from memkit.agents import ExperienceReplay
from memkit.config import build
from memkit.metrics import average_accuracy, backward_transfer, forgetting
from memkit.run import CHECKPOINT
from memkit.testing import check_resume

CONFIG = {"name": "tiny", "seed": 3, "budget": "12KB",
          "stream": {"name": "blobs", "n_classes": 6, "n_experiences": 3, "n_per_class": 60},
          "model": {"name": "mlp", "hidden": [16]}, "memory": {"name": "reservoir"},
          "learner": {"name": "er", "epochs": 2, "lr": 0.05, "batch_size": 16}}

NAN = float("nan")
MATRIX = np.array([[0.9, NAN, NAN], [0.6, 0.8, NAN], [0.5, 0.7, 1.0]])


def test_metrics_match_their_definitions():
    assert average_accuracy(MATRIX) == pytest.approx([0.9, 0.7, (0.5 + 0.7 + 1.0) / 3])
    assert forgetting(MATRIX) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert backward_transfer(MATRIX) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert forgetting(MATRIX[:1, :1]) == 0.0 == backward_transfer(MATRIX[:1, :1])
    peak = np.array([[0.5, NAN, NAN], [0.9, 0.5, NAN], [0.4, 0.5, 0.5]])
    assert forgetting(peak) == pytest.approx(((0.9 - 0.4) + 0.0) / 2), "uses the best earlier"


def test_run_records_matrix_memory_timeline_and_timings():
    setup = build(CONFIG)
    result = run(setup.stream, setup.learner, progress=False)
    assert len(result.matrix) == 3
    for i, row in enumerate(result.matrix):
        assert all(v is not None and 0 <= v <= 1 for v in row[: i + 1])
        assert all(v is None for v in row[i + 1 :])
    memory = setup.learner.memory
    for snap in result.memory:
        assert snap["stores"]["memory"]["nbytes"] == memory.nbytes
        assert snap["budget"]["used"] <= snap["budget"]["capacity"] == 12_000
        assert set(snap["budget"]["owners"]) == {"model", "reservoir"}
    seen = np.cumsum([len(e.train) for e in setup.stream])
    items = [m["stores"]["memory"]["items"] for m in result.memory]
    assert items == [min(int(n), memory.capacity) for n in seen]
    assert all(t["train_s"] >= 0 and t["eval_s"] >= 0 for t in result.timings)
    assert result.final_average > 0.6, "ER on separable blobs should keep old classes"
    again = RunResult.from_json(result.to_json())
    assert again.matrix == result.matrix and again.final_average == result.final_average


def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path):
    full, resumed = check_resume(CONFIG, tmp_path, crash_at=2)
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == [CHECKPOINT]
    assert len(full.learner.memory) == len(resumed.learner.memory) > 0


def test_check_resume_catches_a_learner_that_forgets_its_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(ExperienceReplay, "load_state_dict", lambda self, state: None)
    with pytest.raises(AssertionError, match="resumed scores differ"):
        check_resume(CONFIG, tmp_path, crash_at=2)


def test_resume_refuses_a_missing_or_foreign_checkpoint(tmp_path):
    setup = build(CONFIG)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(setup.stream, setup.learner, checkpoint_dir=tmp_path, resume=True, progress=False)
    run(setup.stream, setup.learner, checkpoint_dir=tmp_path, progress=False)
    other = build({**CONFIG, "stream": {**CONFIG["stream"], "n_experiences": 2}})
    with pytest.raises(ValueError, match="cannot resume"):
        run(other.stream, other.learner, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_evaluator_must_score_every_experience_seen():
    class Short:
        metric = "accuracy"

        def __call__(self, learner, experiences):
            return [0.5]

    setup = build(CONFIG)
    with pytest.raises(ValueError, match="expected 2 scores"):
        run(setup.stream, setup.learner, evaluator=Short(), progress=False)


def test_a_custom_evaluator_fills_the_matrix_through_the_same_loop():
    class Size:
        metric = "items"

        def __call__(self, learner, experiences):
            return [float(len(e.test)) for e in experiences]

    setup = build(CONFIG)
    result = run(setup.stream, setup.learner, evaluator=Size(), progress=False)
    assert result.metric == "items"
    assert result.matrix[-1] == [float(len(e.test)) for e in setup.stream]


def test_replay_beats_finetuning_at_the_same_budget():
    hard = {**CONFIG, "stream": {**CONFIG["stream"], "n_features": 4, "cluster_std": 2.0}}
    er = build(hard)
    finetune = build({k: v for k, v in hard.items() if k != "memory"})
    assert finetune.learner.stores == {}
    a = run(er.stream, er.learner, progress=False).final_average
    b = run(finetune.stream, finetune.learner, progress=False).final_average
    assert a > b + 0.2


def test_charge_growth_shrinks_the_memory_to_pay_for_new_parameters():
    from torch import nn

    from memkit.agents.base import charge_growth

    setup = build(CONFIG)
    model, memory, budget = setup.learner.model, setup.learner.memory, setup.budget
    memory.add(setup.stream[0].train.select("x", "y"))
    before, capacity = len(memory), memory.capacity
    grown = nn.ModuleList([model, nn.Linear(16, 16)])  # 272 new float32 parameters
    evicted = charge_growth(budget, grown, memory)
    assert budget.charged("model") == sum(p.numel() * 4 for p in grown.parameters())
    assert budget.used <= budget.capacity and memory.capacity < capacity
    assert len(memory) + len(evicted) == before
    assert charge_growth(budget, grown, memory) is None, "no growth, no eviction"


def test_labels_without_a_logit_are_refused_before_training():
    from memkit import Batch, Experience, Stream

    setup = build(CONFIG)
    good = setup.stream[0]
    bad_train = good.train.replace(y=torch.full((len(good.train),), 6, dtype=torch.int64))
    stream = Stream([Experience(0, bad_train, good.test, (6,))], name="bad", n_classes=7)
    weights = {k: v.clone() for k, v in setup.learner.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"labels in \[6, 6\], expected 0\.\.5 \(the model has 6"):
        setup.learner.learn(stream[0])
    assert all(torch.equal(v, setup.learner.model.state_dict()[k]) for k, v in weights.items())
    assert len(setup.learner.memory) == 0
    negative = Batch(x=good.train.x[:2], y=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"labels in \[-1, 0\]"):
        setup.learner.learn(Experience(0, negative, good.test))
