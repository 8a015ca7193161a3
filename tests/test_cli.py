import json

import pytest
import yaml

from memkit.cli import main
from memkit.config import ConfigError, build
from tests.test_run import CONFIG


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_run_writes_result_report_and_checkpoint(config_file, capsys):
    assert main(["run", str(config_file), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| after \\ on | e0 | e1 | e2 | average |" in out and "| reservoir |" in out
    run_dir = config_file.parent / "runs" / "tiny"
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["checkpoint.safetensors", "config.yaml", "report.md", "report.png",
                     "result.json"]
    result = json.loads((run_dir / "result.json").read_text())
    assert len(result["matrix"]) == 3 and 0 <= result["summary"]["final_average"] <= 1
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_from_the_cli_reproduces_the_run(config_file, capsys):
    assert main(["run", str(config_file), "--quiet", "--out", "a"]) == 0
    assert main(["run", str(config_file), "--quiet", "--resume", "a"]) == 0
    first = json.loads((config_file.parent / "a" / "result.json").read_text())
    assert main(["run", str(config_file), "--quiet", "--out", "b"]) == 0
    second = json.loads((config_file.parent / "b" / "result.json").read_text())
    assert first["matrix"] == second["matrix"]
    changed = config_file.parent / "changed.yaml"
    changed.write_text(yaml.safe_dump({**CONFIG, "seed": 4}))
    assert main(["run", str(changed), "--quiet", "--resume", "a"]) == 2
    assert "config differs" in capsys.readouterr().err


def test_report_over_several_runs(config_file, capsys):
    main(["run", str(config_file), "--quiet", "--out", "a"])
    finetune = config_file.parent / "ft.yaml"
    finetune.write_text(yaml.safe_dump({k: v for k, v in CONFIG.items() if k != "memory"}))
    main(["run", str(finetune), "--quiet", "--out", "b"])
    capsys.readouterr()
    assert main(["report", "a", "b", "--out", "both"]) == 0
    table = (config_file.parent / "both" / "report.md").read_text()
    assert "| a | blobs | ExperienceReplay |" in table and "| b | blobs |" in table
    assert main(["report", "nowhere"]) == 2
    assert "no result.json" in capsys.readouterr().err


def test_inspect_shows_manifest_and_bytes(config_file, capsys, tmp_path):
    setup = build(CONFIG)
    setup.learner.memory.save(tmp_path / "memory.safetensors")
    assert main(["inspect", str(tmp_path / "memory.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "store: reservoir" in out and f"| x | ({setup.learner.memory.capacity}, 8) |" in out
    assert f"total {setup.learner.memory.nbytes} bytes" in out
    main(["run", str(config_file), "--quiet"])
    capsys.readouterr()
    assert main(["inspect", "runs/tiny/checkpoint.safetensors"]) == 0
    assert "experiences done: 3 of 3" in capsys.readouterr().out
    (tmp_path / "junk").write_bytes(b"not a file")
    assert main(["inspect", str(tmp_path / "junk")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_list_names_registered_parts(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert "reservoir" in lines["store"].split(", ") and "er" in lines["learner"].split(", ")
    assert "split_digits" in lines["stream"] and "mlp" in lines["model"]


@pytest.mark.parametrize(("change", "message"), [
    ({"learner": {"name": "er", "epochs": "five"}}, "config.learner.epochs: expected int"),
    ({"learner": {"name": "er", "epoch": 2}}, "config.learner.epoch: unknown key"),
    ({"learner": {"name": "sgd"}}, "config.learner.name: no learner named 'sgd'"),
    ({"memory": {"name": "reservoir", "nbytes": [1]}}, "config.memory.nbytes: expected"),
    ({"stream": {"n_experiences": 2}}, "config.stream: expected a mapping with a 'name'"),
    ({"budget": "lots"}, "config.budget: size"),
    ({"budget": "100B"}, r"config\.budget: too small for the model alone"),
    ({"budget": "1000B"}, r"config\.memory \(reservoir\): budget exceeded: 'reservoir' asked"),
    ({"seed": "zero"}, "config.seed: expected an int"),
    ({"extra": 1}, r"unknown key\(s\) \['extra'\]"),
    ({"model": {"name": "mlp", "hidden": [0]}}, r"config\.model \(mlp\): mlp: expected positive"),
])
def test_bad_configs_name_the_key_path(change, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        build({**CONFIG, **change})


def test_cli_reports_config_errors_and_exit_code(config_file, capsys):
    config_file.write_text(yaml.safe_dump({**CONFIG, "learner": {"name": "er", "lr": "x"}}))
    assert main(["run", str(config_file)]) == 2
    assert "config.learner.lr: expected float" in capsys.readouterr().err
    config_file.write_text("budget: [unclosed")
    assert main(["run", str(config_file)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_bench_runs_a_checkout_script_and_explains_a_missing_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "echo_args.py").write_text(
        "import sys\nprint('args', sys.argv[1:])\n")
    assert main(["bench", "echo-args", "--quick", "7"]) == 0
    assert "args ['--quick', '7']" in capsys.readouterr().out
    assert main(["bench", "budget-sweep"]) == 2
    err = capsys.readouterr().err
    assert "no benchmarks/budget_sweep.py here" in err and "['echo-args']" in err
    assert main(["bench", "vos"]) == 2
    assert "no benchmarks/vos_long_video.py here" in capsys.readouterr().err
