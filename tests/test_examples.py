import runpy
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
