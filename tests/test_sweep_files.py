import json
import sqlite3

import pytest
import yaml

from memkit.cli import main
from memkit.config import ConfigError
from memkit.results import DATABASE, ResultStore
from memkit.sweep import expand_sweep, run_id, run_sweep
from tests.test_run import CONFIG

SWEEP = {"base": CONFIG, "axes": {"budget": ["6KB", "12KB"], "seed": [0, 1]}}


def reversed_keys(value):
    if isinstance(value, dict):
        return {k: reversed_keys(value[k]) for k in reversed(list(value))}
    return value


def test_expansion_takes_products_zips_and_nested_keys_in_a_stable_order():
    sweep = {"base": CONFIG, "axes": {
        "learner.name": ["finetune", "er"], "memory": [None, {"name": "reservoir"}],
        "budget": ["6KB", "12KB"], "learner.replay_batch_size": [4],
        "stream.options.noise": [0.1, 0.2]}, "zip": [["learner.name", "memory"]]}
    runs = expand_sweep(sweep)
    assert len(runs) == 2 * 2 * 1 * 2
    assert [(r.axes["learner.name"], r.axes["budget"], r.axes["stream.options.noise"])
            for r in runs[:4]] == [("finetune", "6KB", 0.1), ("finetune", "6KB", 0.2),
                                   ("finetune", "12KB", 0.1), ("finetune", "12KB", 0.2)]
    first, last = runs[0].config, runs[-1].config
    assert first["memory"] is None and last["memory"] == {"name": "reservoir"}
    assert last["learner"] == {**CONFIG["learner"], "name": "er", "replay_batch_size": 4}
    assert last["stream"]["options"] == {"noise": 0.2}, "missing mappings are created"
    assert CONFIG["learner"]["name"] == "er" and "options" not in CONFIG["stream"], "base kept"
    assert [r.id for r in expand_sweep(sweep)] == [r.id for r in runs]
    assert len({r.id for r in runs}) == len(runs)
    assert run_id(reversed_keys(first)) == run_id(first) == runs[0].id
    assert run_id({**first, "seed": 4}) != run_id(first)
    assert len(runs[0].id) == 12 and int(runs[0].id, 16) >= 0


@pytest.mark.parametrize(("sweep", "message"), [
    ({**SWEEP, "axes": {"budget": "2MB"}}, "sweep.axes.budget: expected a non-empty list, "
                                             "got '2MB'"),
    ({**SWEEP, "axes": {"seed": []}}, r"sweep.axes.seed: expected a non-empty list, got \[\]"),
    ({**SWEEP, "axis": {}}, r"sweep: unknown key\(s\) \['axis'\]"),
    ({"axes": {"seed": [0]}}, "sweep.base: expected a run config"),
    ({**SWEEP, "zip": [["budget", "seed", "learner.lr"]]},
     r"sweep.zip\[0\]: 'learner.lr' is not an axis"),
    ({"base": CONFIG, "axes": {"budget": ["6KB"], "seed": [0, 1]}, "zip": [["budget", "seed"]]},
     r"sweep.zip\[0\]: zipped axes need lists of equal length, got budget \(1\), seed \(2\)"),
    ({"base": CONFIG, "axes": {"memory": [None], "memory.codec": ["uint8"]}},
     "sweep.axes.memory.codec: expected a mapping at base.memory, got None"),
    ({"base": CONFIG, "axes": {"learner.name.x": [1]}},
     "sweep.axes.learner.name.x: expected a mapping at base.learner.name, got 'er'"),
    ({"base": CONFIG, "axes": {"seed": [1, 1]}}, "have the same config"),
    ({"base": CONFIG, "axes": {"budget": ["lots"]}}, "config.budget"),
])
def test_bad_sweep_files_name_the_key_path_and_what_was_expected(sweep, message):
    with pytest.raises(ConfigError, match=message):
        expand_sweep(sweep)


def test_an_interrupted_sweep_resumes_without_repeating_or_losing_runs(tmp_path):
    seen = []

    def killed_after_two(record):
        seen.append(record["id"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # the driver dies between runs

    with pytest.raises(KeyboardInterrupt):
        run_sweep(SWEEP, tmp_path, n_jobs=1, on_result=killed_after_two)
    with ResultStore(tmp_path) as store:
        before = {r["id"]: r["finished"] for r in store.get()}
    assert sorted(before) == sorted(seen)
    again = []
    records = run_sweep(SWEEP, tmp_path, n_jobs=1, on_result=lambda r: again.append(r["id"]))
    ids = [r.id for r in expand_sweep(SWEEP)]
    assert sorted(seen + again) == sorted(ids), "every run exactly once"
    assert [r["id"] for r in records] == ids and {r["status"] for r in records} == {"ok"}
    assert {r["id"]: r["finished"] for r in records if r["id"] in before} == before
    rerun = []
    run_sweep(SWEEP, tmp_path, n_jobs=1, on_result=rerun.append)
    assert rerun == []


def test_a_failing_run_is_recorded_with_its_traceback_and_the_others_finish(tmp_path):
    sweep = {"base": CONFIG, "axes": {"learner.replay_batch_size": [-3, 8]}}
    records = run_sweep(sweep, tmp_path, n_jobs=1)
    failed, ok = records
    assert failed["status"] == "failed" and "Traceback" in failed["error"]
    assert ok["status"] == "ok" and ok["error"] is None and ok["metrics"]["final_average"] > 0.5
    assert len(ok["memory"]) == len(ok["timings"]) == 3 and failed["memory"] == []
    again = []
    run_sweep(sweep, tmp_path, n_jobs=1, on_result=again.append)
    assert again == []
    run_sweep(sweep, tmp_path, n_jobs=1, on_result=again.append, retry_failed=True)
    assert [r["id"] for r in again] == [failed["id"]]


def test_sqlite_rows_match_the_json_files_and_serial_equals_joblib(tmp_path):
    slow = {**CONFIG["learner"], "epochs": 1, "lr": 0.005}  # seeds give different scores
    sweep = {"base": {**CONFIG, "learner": slow},
             "axes": {"budget": ["900B", "6KB", "12KB"], "seed": [0, 1]}}
    serial = run_sweep(sweep, tmp_path / "serial", n_jobs=1)
    parallel = run_sweep(sweep, tmp_path / "joblib", n_jobs=2)
    assert [r["status"] for r in serial] == ["does not fit"] * 2 + ["ok"] * 4
    assert "too small for the model alone" in serial[0]["error"]
    assert serial[2]["metrics"]["matrix"] != serial[3]["metrics"]["matrix"], "seeds differ"
    for a, b in zip(serial, parallel, strict=True):
        assert a["id"] == b["id"] and a["status"] == b["status"]
        assert a["metrics"].get("matrix") == b["metrics"].get("matrix")
        assert [m["stores"] for m in a["memory"]] == [m["stores"] for m in b["memory"]]
    db = sqlite3.connect(tmp_path / "joblib" / DATABASE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = db.execute("SELECT id, config, status, metrics, memory, timings, error FROM runs")
    rows = rows.fetchall()
    assert len(rows) == 6
    for identity, config, status, metrics, memory, timings, error in rows:
        saved = json.loads((tmp_path / "joblib" / "runs" / f"{identity}.json").read_text())
        assert saved["config"] == json.loads(config) and run_id(saved["config"]) == identity
        assert (saved["status"], saved["error"]) == (status, error)
        assert saved["metrics"] == json.loads(metrics)
        assert (saved["memory"], saved["timings"]) == (json.loads(memory), json.loads(timings))


def test_cli_sweep_runs_resumes_and_summarises(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "4 runs, 0 already recorded" in text
    assert "| method | 0.006 MB | 0.012 MB |" in text and "| all | 1.000 ± 0.000 (2) |" in text
    assert len(list((out / "runs").glob("*.json"))) == 4
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "1"]) == 0
    assert "4 runs, 4 already recorded" in capsys.readouterr().out
    path.write_text(yaml.safe_dump({**SWEEP, "axes": {"budget": "2MB"}}))
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    assert "sweep.axes.budget: expected a non-empty list, got '2MB'" in capsys.readouterr().err


@pytest.mark.parametrize("stream", ["split_digits", "split_mnist5k", "split_mnist1d"])
def test_budget_sweep_files_give_nine_learners_at_multiples_of_the_model(stream):
    from pathlib import Path

    from memkit.agents.backbones import mlp
    from memkit.budget import module_nbytes
    from memkit.sweep import load_sweep

    runs = expand_sweep(load_sweep(Path("benchmarks/sweeps") / f"budget_sweep_{stream}.yaml"))
    assert len(runs) == 9 * 5 * 3
    assert {r.config["stream"]["name"] for r in runs} == {stream}
    shape = {"split_digits": (64,), "split_mnist5k": (784,), "split_mnist1d": (40,)}[stream]
    model = module_nbytes(mlp(shape, 10))
    assert sorted({r.config["budget"] for r in runs}) == [int(model * m)
                                                          for m in (1.25, 2.5, 5, 10, 20)]
    derpp = next(r.config for r in runs if r.config["learner"]["name"] == "derpp")
    assert derpp["learner"]["alpha"] == 0.3 and derpp["memory"]["name"] == "reservoir"
    memo = next(r.config for r in runs if r.config["learner"]["name"] == "memo")
    assert memo["model"]["name"] == "mlp_blocks"
