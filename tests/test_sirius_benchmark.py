import json
import runpy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from memkit.testing import load_script

pytestmark = pytest.mark.filterwarnings("ignore:builtin type swig:DeprecationWarning")
pytest.importorskip("gymnasium_robotics")

ROOT = Path(__file__).resolve().parents[1]


bench = load_script(ROOT / "benchmarks" / "sirius.py", "sirius_benchmark")
TINY_FETCH = replace(bench.TASKS["FetchPush-v4"], demo_episodes=2, rounds=1,
                     episodes_per_round=2, eval_episodes=2,
                     learner={**bench.GMM, "hidden": (16, 16), "steps": 3})
TINY_LANDER = replace(bench.TASKS["LunarLanderContinuous-v3"], demo_episodes=1, rounds=1,
                      episodes_per_round=1, eval_episodes=1, max_steps=40,
                      learner={**bench.GMM, "hidden": (16, 16), "steps": 3})


def numbers(run: dict) -> list[dict]:
    """A run's records without the wall times."""
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in run["rounds"]]


def test_the_method_grid_and_the_memory_caps():
    fetch, lander = bench.TASKS["FetchPush-v4"], bench.TASKS["LunarLanderContinuous-v3"]
    names = [m.name for m in bench.methods(fetch)]
    assert names[:3] == ["BC", "IWR", "Sirius"] and len(set(names)) == len(names) == 3 + 15
    assert "Sirius keep_least_intervened 15%" in names
    assert [m.name for m in bench.methods(lander)] == ["BC", "IWR", "Sirius"]
    assert fetch.total_transitions == (60 + 4 * 8) * 50 == 4600  # Fetch episodes: 50 steps
    assert [bench.memory_cap(fetch, f) for f in bench.FRACTIONS] == [690, 1380, 2300]
    assert TINY_LANDER.total_transitions == 2 * 40  # max_steps shortens the episodes


def test_goal_relative_features_leave_the_human_unchanged():
    from memkit.agents.humans import human_for, make_env
    from memkit.deployment import flatten_obs

    env, wrapped = make_env("FetchPush-v4"), bench.GoalRelative(make_env("FetchPush-v4"))
    raw, obs = env.reset(seed=3)[0], wrapped.reset(seed=3)[0]
    assert wrapped.observation_space["observation"].shape == (28,)
    assert np.allclose(obs["observation"][25:], raw["desired_goal"] - raw["achieved_goal"])
    assert np.array_equal(obs["observation"][:25], raw["observation"])
    assert len(flatten_obs(obs)) == 31
    human = human_for("FetchPush-v4")
    assert np.array_equal(human.act(obs), human.act(raw))
    env.close()
    wrapped.close()


def test_a_capped_run_holds_its_cap_and_the_same_seed_gives_the_same_numbers():
    method = bench.Method("sirius", "keep_most_intervened", 0.5)
    first, again = (bench.run_one(TINY_FETCH, method, seed=0) for _ in range(2))
    cap = bench.memory_cap(TINY_FETCH, 0.5)
    assert cap == 100 and first["collected"] == 200  # 4 episodes of 50 steps
    assert [r["bytes_held"] for r in first["rounds"]] == [cap * first["item_nbytes"]] * 2
    assert numbers(first) == numbers(again)
    assert first["rounds"][0]["label_counts"]["DEMO"] == 100
    assert first["rounds"][1]["human_workload"] < 1.0


def test_runs_are_kept_and_reused(tmp_path, monkeypatch):
    runs = bench.run_all([TINY_LANDER], [0], jobs=1, runs_dir=tmp_path)
    assert [(r["method"], r["seed"]) for r in runs] == [("BC", 0), ("IWR", 0), ("Sirius", 0)]
    assert len(list(tmp_path.glob("LunarLanderContinuous-v3-*.json"))) == 3

    def fail(*args):
        raise AssertionError("a kept run was run again")

    monkeypatch.setattr(bench, "run_one", fail)
    assert bench.run_all([TINY_LANDER], [0], jobs=1, runs_dir=tmp_path) == runs
    other = replace(TINY_LANDER, episodes_per_round=2)
    assert bench.run_key(other, bench.Method("iwr"), 0) != \
        bench.run_key(TINY_LANDER, bench.Method("iwr"), 0)


def test_main_writes_the_tables_and_the_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "QUICK", {"FetchPush-v4": {
        k: getattr(TINY_FETCH, k) for k in ("demo_episodes", "rounds", "episodes_per_round",
                                            "eval_episodes", "learner")}})
    monkeypatch.setattr(bench, "FRACTIONS", (0.5,))
    summary = bench.main(["--quick", "--tasks", "FetchPush-v4", "--jobs", "1",
                          "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "sirius")])
    text = (tmp_path / "sirius.md").read_text()
    assert capsys.readouterr().out.endswith(text + "\n")  # progress lines, then the tables
    assert "| Sirius keep_oldest 50% |" in text and "| keep_least_intervened |" in text
    assert "Success at the last round against the memory cap" in text
    saved = json.loads((tmp_path / "sirius.json").read_text())
    assert saved["meta"]["seeds"] == [0] and len(saved["runs"]) == 3 + 5
    entry = summary["FetchPush-v4"]["Sirius uniform 50%"]
    assert entry["held_fraction"]["mean"] == pytest.approx(0.5)
    assert len(entry["rounds"]) == 2 and 0 <= entry["rounds"][1]["success_rate"]["mean"] <= 1
    assert (tmp_path / "sirius.png").stat().st_size > 10_000


def test_the_example_deploys_a_users_own_human_and_prints_each_round(monkeypatch, capsys):
    runpy.run_path(str(ROOT / "examples" / "human_in_the_loop.py"), run_name="__main__")
    out = capsys.readouterr().out
    rows = [line.split("|") for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[0][3]) == 1.0 and all(float(r[3]) < 1.0 for r in rows[1:])
    assert all(int(r[5].replace(",", "")) <= 100_000 for r in rows)  # the 100 KB memory
    assert float(rows[-1][1]) > float(rows[0][1])  # deployment rounds improved the policy
