import runpy
import sys
from pathlib import Path

import pytest
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
