"""lm_memory.py's offline kNN-LM sweep equals the wrapper; examples/knn_lm.py runs."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from memkit.agents.causal_lm import CausalLM  # noqa: E402
from memkit.agents.knn_lm import KNNLM  # noqa: E402
from memkit.budget import Budget  # noqa: E402
from memkit.buffers.datastore import Datastore  # noqa: E402
from memkit.data.long_range_text import long_range_corpus  # noqa: E402
from memkit.testing import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    return load_script(ROOT / "benchmarks" / f"{name}.py")


@pytest.fixture(scope="module")
def bench():
    return load("lm_memory")


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_offline_mixtures_equal_the_wrapper_at_every_k_lambda_and_temperature(bench):
    model = tiny_gpt2()
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 40, (70,), generator=g) for _ in range(2)]
    store = Datastore(16, Budget("1MB"), nbytes="256KB", key_dtype=torch.float32)
    store.write(torch.randn(500, 16, generator=g), torch.randint(0, 40, (500,), generator=g))
    lm = CausalLM(model, window=16, stride=8)
    lm_scores = [lm.token_log_probs(ids) for ids in docs]
    recorder = bench.RecordingKNNLM(model, datastore=store, k=12, lam=0.3, temperature=2.0,
                                    window=16, stride=8)
    recorded = bench.recorded_pass(recorder, docs)
    for k, lam, temperature in [(12, 0.3, 2.0), (4, 0.5, 7.0), (1, 0.1, 1.0)]:
        wrapper = KNNLM(model, datastore=store, k=k, lam=lam, temperature=temperature,
                        window=16, stride=8)
        for ids, lp, (_, d, v) in zip(docs, lm_scores, recorded, strict=True):
            offline = bench.offline_mixture(lp, d, v, ids[1:], k, lam, temperature)
            assert torch.allclose(offline, wrapper.token_log_probs(ids), atol=1e-5)


def test_target_masks_and_perplexity_summaries(bench):
    doc = long_range_corpus(1, seed=5, split="test", gap=(200, 260))[0]
    ids = torch.arange(len(doc.text.split()) + 1)
    masks = bench.target_masks(doc, ids, 128, torch.tensor([3, 4]))
    far = [u.word for u in doc.uses if u.distance >= 128]
    assert sorted(torch.nonzero(masks["value_far"]).squeeze(1).tolist()) == sorted(far)
    assert masks["frequent"].sum() == 2 and masks["all"].all()
    scores = torch.full((len(ids) - 1,), -1.0)
    scores[masks["value_far"]] = -3.0
    summary = bench.summarise([scores], [masks])
    assert summary["value_far"]["ppl"] == pytest.approx(torch.e ** 3)
    assert summary["value_far"]["tokens"] == len(far)


def test_knn_lm_example_runs_on_a_user_model(tmp_path, monkeypatch, capsys):
    trainer = load("train_tiny_lm")
    out = trainer.train_tiny_lm(tmp_path / "lm", n_layer=2, d=16, heads=2, window=32, n_docs=12,
                                n_test_docs=2, steps=3, batch=4, warmup=2, threads=1)
    monkeypatch.setattr(sys, "argv", ["knn_lm.py", str(out)])
    runpy.run_path(str(ROOT / "examples" / "knn_lm.py"), run_name="__main__")
    text = capsys.readouterr().out
    values = [float(line.rsplit(":", 1)[1]) for line in text.splitlines()
              if line.startswith(("perplexity of", "kNN-LM over"))]
    assert len(values) == 3 and all(1.0 < v < 2000 for v in values)
    assert "| corpus |" in text and "| document cache |" in text and "| *free* |" in text
