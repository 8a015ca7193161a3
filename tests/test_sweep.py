import csv
import io
import json

import pytest

from memkit.cli import main
from memkit.runners import run_unordered
from memkit.sweep import run_sweep
from memkit.sweep_report import (
    area_under_budget_curve,
    build_report,
    compare,
    load_records,
    render,
    summarise,
)
from tests.test_run import CONFIG

SLOW = {**CONFIG["learner"], "epochs": 1, "lr": 0.005}  # seeds give different scores
GRID = {"base": {**CONFIG, "learner": SLOW},
        "axes": {"learner.name": ["er", "finetune"], "memory": [{"name": "reservoir"}, None],
                 "budget": ["900B", "6KB", "12KB"], "seed": [0, 1]},
        "zip": [["learner.name", "memory"]]}


def record(axes, status="ok", final=0.5, budget="6KB", error=None):
    metrics = {"final_average": final, "forgetting": 0.1, "model_nbytes": 10,
               "memory_nbytes": 20, "items": 3, "wall_s": 1.0} if status == "ok" else {}
    return {"id": json.dumps(axes, sort_keys=True), "axes": axes, "status": status,
            "metrics": metrics, "config": {"budget": budget}, "error": error}


def test_summary_means_and_stds_per_cell():
    rows = [{"status": "ok", "m": "x", "final_average": a, "forgetting": 0.0} for a in (0.5, 0.7)]
    rows.append({"status": "does not fit", "m": "x"})
    (cell,) = summarise(rows, keys=["m"], metrics=["final_average"])
    assert cell["runs"] == 2 and cell["final_average"] == pytest.approx(0.6)
    assert cell["final_average_std"] == pytest.approx(0.1)


def test_auc_is_the_mean_accuracy_over_the_budget_range():
    assert area_under_budget_curve([1, 2, 4], [0.5, 0.7, 0.7]) == pytest.approx(
        ((0.5 + 0.7) / 2 * 1 + 0.7 * 2) / 3)
    assert area_under_budget_curve([3, 1], [0.9, 0.1]) == pytest.approx(0.5)
    assert area_under_budget_curve([2], [0.4]) == 0.4


def test_report_cells_auc_per_method_panels_and_failures():
    records = [record({"stream.name": s, "learner.name": m, "memory": mem, "budget": b,
                       "seed": seed}, final=f + seed * 0.1, budget=b)
               for s in ("a", "b")
               for m, mem, f in (("er", {"name": "reservoir"}, 0.6), ("ft", None, 0.2))
               for b in ("1MB", "3MB") for seed in (0, 1)]
    records.append(record({"stream.name": "a", "learner.name": "ft", "memory": None,
                           "budget": "5MB", "seed": 0}, status="failed",
                          error="Traceback ...\nValueError: broken", budget="5MB"))
    report = build_report(records)
    assert {c["panel"] for c in report["cells"]} == {"a", "b"}
    assert {c["method"] for c in report["cells"]} == {"er", "ft"}, "memory follows the learner"
    cell = next(c for c in report["cells"] if (c["panel"], c["method"], c["budget"])
                == ("a", "er", 1_000_000))
    assert cell["runs"] == 2 and cell["final_average"] == pytest.approx(0.65)
    assert cell["final_average_std"] == pytest.approx(0.05)
    auc = {(a["panel"], a["method"]): a for a in report["auc"]}
    assert auc[("b", "er")]["auc_all"] == pytest.approx(0.65)
    # panel a has budgets 1, 3, 5 MB; ft failed at 5 MB and scores 0 there; er has no 5 MB run
    assert auc[("a", "ft")]["auc_all"] == pytest.approx(((0.25 + 0.25) * 2 + (0.25 + 0) * 2)
                                                        / 2 / 4)
    assert auc[("a", "ft")]["auc_common"] == pytest.approx(0.25)
    assert auc[("a", "ft")]["common_mb"] == [1.0, 3.0]
    (failure,) = report["failures"]
    assert (failure["panel"], failure["method"], failure["budget"]) == ("a", "ft", 5_000_000)
    assert failure["status"] == "failed" and failure["reason"] == "ValueError: broken"
    text = render(report, "md")
    assert "| er | 0.650 ± 0.050 (2) | 0.650 ± 0.050 (2) |" in text
    assert "| a | ft | 5 MB | failed |" in text and "ValueError: broken" in text
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert len(rows) == 8 and float(rows[0]["final_average"]) > 0
    assert json.loads(render(report, "json"))["auc"] == report["auc"]
    with pytest.raises(ValueError, match=r"format: expected one of \['md', 'csv', 'json'\], "
                                         r"got 'xml'"):
        render(report, "xml")


def test_compare_pairs_cells_and_methods_of_two_sweeps():
    a = [record({"learner.name": "er", "budget": b, "seed": 0}, final=0.5, budget=b)
         for b in ("1MB", "2MB")]
    b = [record({"learner.name": "er", "budget": b, "seed": 0}, final=0.7, budget=b)
         for b in ("2MB", "4MB")]
    result = compare(a, b)
    (cell,) = result["cells"]
    assert cell["budget"] == 2_000_000 and cell["delta"] == pytest.approx(0.2)
    assert result["only_a"] == 1 and result["only_b"] == 1
    assert result["auc"][0]["delta"] == pytest.approx(0.2)


def test_serial_joblib_and_local_ray_give_the_same_records(tmp_path):
    pytest.importorskip("ray")
    by_runner = {runner: run_sweep(GRID, tmp_path / runner, n_jobs=2, runner=runner)
                 for runner in ("serial", "joblib", "ray")}
    serial = by_runner["serial"]
    assert [r["status"] for r in serial].count("does not fit") == 4
    assert serial[2]["metrics"]["matrix"] != serial[3]["metrics"]["matrix"], "seeds differ"
    for other in ("joblib", "ray"):
        for a, b in zip(serial, by_runner[other], strict=True):
            assert (a["id"], a["status"], a["axes"]) == (b["id"], b["status"], b["axes"])
            assert a["metrics"].get("matrix") == b["metrics"].get("matrix")
            assert [m["stores"] for m in a["memory"]] == [m["stores"] for m in b["memory"]]
    report = build_report(load_records([tmp_path / "ray"]))
    assert {c["method"] for c in report["cells"]} == {"er", "finetune"}
    assert sorted((f["method"], f["status"], len(f["runs"])) for f in report["failures"]) == [
        ("er", "does not fit", 2), ("finetune", "does not fit", 2)]


def test_runner_arguments_are_checked():
    with pytest.raises(ValueError, match=r"runner: expected one of \['serial', 'joblib', "
                                         r"'ray'\], got 'dask'"):
        run_unordered(abs, [(1,)], runner="dask")
    with pytest.raises(ValueError, match="n_jobs: expected a positive number"):
        run_unordered(abs, [(1,)], n_jobs=0)
    with pytest.raises(ValueError, match="address 'auto' is for the ray runner"):
        run_unordered(abs, [(1,)], runner="joblib", address="auto")
    assert sorted(run_unordered(abs, [(-1,), (2,)], runner="serial")) == [1, 2]


def test_cli_report_over_a_sweep_folder_and_compare(tmp_path, capsys):
    small = {**GRID, "axes": {**GRID["axes"], "budget": ["900B", "6KB"], "seed": [0]}}
    run_sweep(small, tmp_path / "a", n_jobs=1, runner="serial")
    run_sweep({**small, "axes": {**small["axes"], "seed": [1]}}, tmp_path / "b", n_jobs=1,
              runner="serial")
    assert main(["report", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    assert "| method | 0.0009 MB | 0.006 MB |" in text and "| er | — |" in text
    assert "does not fit" in text and (tmp_path / "a" / "report.md").exists()
    assert (tmp_path / "a" / "report.png").stat().st_size > 0
    assert main(["report", str(tmp_path / "a"), "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[:out.rindex("wrote")])["axes"] == ["learner.name", "memory",
                                                              "budget", "seed"]
    assert main(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "| blobs | er | 0.006 MB |" in capsys.readouterr().out
    assert main(["report", "--compare", str(tmp_path / "a"), str(tmp_path / "nope")]) == 2
    assert "no results.sqlite; expected a sweep folder" in capsys.readouterr().err
