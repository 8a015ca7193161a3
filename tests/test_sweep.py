import pytest

from memkit.sweep import area_under_budget_curve, run_grid, summarise
from tests.test_run import CONFIG


def grid():
    jobs = []
    for budget in ("6KB", "12KB"):
        for seed in (0, 1):
            config = {**CONFIG, "budget": budget, "seed": seed}
            jobs.append((config, {"dataset": "blobs", "method": "er", "seed": seed}))
    jobs.append(({**CONFIG, "budget": "900B"}, {"dataset": "blobs", "method": "er", "seed": 9}))
    return jobs


def test_parallel_runs_give_the_serial_numbers_and_misfits_are_recorded():
    serial, parallel = run_grid(grid(), n_jobs=1), run_grid(grid(), n_jobs=2)
    assert [r["status"] for r in serial] == ["ok"] * 4 + ["does not fit"]
    assert "too small for the model alone" in serial[-1]["reason"]
    for a, b in zip(serial, parallel, strict=True):
        assert a["status"] == b["status"]
        if a["status"] == "ok":
            assert a["matrix"] == b["matrix"] and a["memory_nbytes"] == b["memory_nbytes"]
            assert a["model_nbytes"] + a["memory_nbytes"] <= a["budget"]
    small, large = serial[0], serial[2]
    assert small["items"] < large["items"], "a larger budget holds more exemplars"


def test_a_failing_run_is_recorded_with_its_traceback():
    broken = {**CONFIG, "learner": {"name": "er", "epochs": 1, "lr": 0.05,
                                    "replay_batch_size": -3}}
    rows = run_grid([(broken, {"method": "er"}), (CONFIG, {"method": "er"})], n_jobs=1)
    assert rows[0]["status"] == "failed" and "Traceback" in rows[0]["reason"]
    assert rows[1]["status"] == "ok"


def test_summary_means_and_stds_per_cell():
    rows = [{"status": "ok", "dataset": "d", "method": "m", "budget": 1, "final_average": a,
             "forgetting": 0.0, "model_nbytes": 1, "memory_nbytes": 2, "items": 3, "wall_s": 1}
            for a in (0.5, 0.7)] + [{"status": "does not fit", "dataset": "d", "method": "m",
                                     "budget": 1}]
    (cell,) = summarise(rows)
    assert cell["runs"] == 2 and cell["final_average"] == pytest.approx(0.6)
    assert cell["final_average_std"] == pytest.approx(0.1)


def test_auc_is_the_mean_accuracy_over_the_budget_range():
    assert area_under_budget_curve([1, 2, 4], [0.5, 0.7, 0.7]) == pytest.approx(
        ((0.5 + 0.7) / 2 * 1 + 0.7 * 2) / 3)
    assert area_under_budget_curve([3, 1], [0.9, 0.1]) == pytest.approx(0.5)
    assert area_under_budget_curve([2], [0.4]) == 0.4
