import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml

from memkit.config import build

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_runs_and_replay_keeps_old_classes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    final = float(out.split("final average ")[1].split(",")[0])
    assert final > 0.6 and "| reservoir | 69960 |" in out
    assert (tmp_path / "runs" / "quickstart" / "checkpoint.safetensors").exists()


RUN_CONFIGS = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != "sweep.yaml")


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=lambda p: p.name)
def test_example_configs_build(config):
    setup = build(yaml.safe_load(config.read_text()))
    assert setup.budget.used <= setup.budget.capacity and len(setup.stream) == 5


def test_episodic_control_continues_from_its_memory(tmp_path, monkeypatch, capsys):
    argv = ["episodic_control.py", "--root", str(tmp_path / "mfec"), "--episodes", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "episodic_control.py"), run_name="__main__")
    assert "run 1: started with 0 records" in capsys.readouterr().out
    runpy.run_path(str(EXAMPLES / "episodic_control.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert int(out.split("run 2: started with ")[1].split(" records")[0]) > 0


def test_continual_knowledge_trains_cmt_then_answers_step_by_step(tmp_path, monkeypatch, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from memkit.data.knowledge import knowledge_tokenizer

    tokenizer = knowledge_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32,
                                       n_layer=2, n_head=4, bos_token_id=2, eos_token_id=3,
                                       pad_token_id=0))
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    out = tmp_path / "cmt.safetensors"
    argv = ["continual_knowledge.py", "--lm", str(tmp_path / "lm"), "--out", str(out),
            "--steps", "2", "--own-steps", "1", "--train-seeds", "1", "--n-steps", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "continual_knowledge.py"), run_name="__main__")
    first = capsys.readouterr().out
    assert "trained CMT on 16 questions" in first and out.exists()
    steps = [line for line in first.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == ["step 0", "step 1"]
    assert all("CMT top 3 EM" in line and "retrieve top 1 EM" in line for line in steps)
    runpy.run_path(str(EXAMPLES / "continual_knowledge.py"), run_name="__main__")
    second = capsys.readouterr().out
    assert f"loaded CMT's modules from {out}" in second
    assert [line for line in second.splitlines() if line.startswith("step ")] == steps
    monkeypatch.setattr(sys, "argv", [*argv[:2], str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="no trained reader here"):
        runpy.run_path(str(EXAMPLES / "continual_knowledge.py"), run_name="__main__")
