"""Sirius on gymnasium: BC / IWR / Sirius weighting, and memory strategies under a byte cap.

Liu, Nasiriany, Zhang, Bao and Zhu, "Robot Learning on the Job: Human-in-the-Loop
Autonomy and Learning During Deployment" (Sirius), RSS 2023, report that weighting
the steps of a deployment by who produced them (Sirius) beats plain behavioural
cloning (BC) and intervention-weighted regression (IWR), and that keeping
trajectories by how much the human intervened holds performance with a small
memory. This script checks both shapes with memkit's parts: a scripted human
(``memkit.agents.humans``) gives demonstrations and takes over by a ``Takeover``
rule (``memkit.deployment.deploy``); a ``SiriusLearner`` retrains a GMM-head BC
policy after every round on its ``TrajectoryMemory``.

For each task and seed: round 0 collects human demonstrations, then every round
rolls the current policy out under supervision and retrains. After each round the
policy acts alone on fixed held-out seeds. Recorded per round and method: success
rate, mean return, takeovers per episode and the fraction of episodes with one,
human workload (fraction of steps under human control), bytes the memory holds and
wall time. Methods:

- weighting BC (``uniform``), IWR and Sirius, each keeping every transition;
- on the main task, Sirius weighting with the memory capped at 15 %, 30 % and 50 %
  of all collected samples, under each retention strategy (``keep_newest`` = FIFO,
  ``keep_oldest`` = FILO, ``keep_least_intervened``, ``keep_most_intervened``,
  ``uniform``). The unlimited column of that comparison is the Sirius run above
  (nothing is evicted there, so every strategy is the same run).

The cap is a fixed-size memory: ``floor(f * T)`` transitions for the whole
deployment, where T = (demonstrations + rounds x episodes per round) x the task's
episode length is every sample the deployment collects. FetchPush episodes always
last their 50-step time limit, so T is exact there; for a task whose episodes can
end early T counts the time limit and is an upper bound. The memory is allotted
before round 0, so when the demonstrations alone exceed it, the strategy already
chooses among them. Default sizes (3 seeds, one torch thread per run, 2 processes):

- FetchPush-v4: 60 demos, 4 rounds x 8 episodes, 20 eval seeds, 600 Adam steps per
  round (lr 3e-3, batch 256, 256-256 MLP, 5-component GMM head); the policy sees the Fetch
  observation, the desired goal and ``desired_goal - achieved_goal`` (``GoalRelative``);
- LunarLanderContinuous-v3: 2 demos, 4 rounds x 4 episodes, 20 eval seeds, 500 steps
  per round (lr 1e-3); weighting comparison only.

    .venv/bin/python benchmarks/sirius.py                 # the default: 63 runs
    .venv/bin/python benchmarks/sirius.py --quick         # tiny sizes, one seed: 21 runs
    memkit bench sirius --tasks FetchPush-v4 --seeds 0 1

The default took about 30 minutes on two cores that other jobs were also using (its
two workers got about 40 % of a core each); ``--quick`` about 1.5 minutes. Finished
runs are kept in runs/sirius/ (keyed by their configuration) and reused.
Writes benchmarks/results/sirius.{json,md,png}; the numbers (not the wall times) are
the same for the same seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import gymnasium as gym
import matplotlib
import numpy as np
import torch

from memkit.agents.humans import human_for, make_env
from memkit.agents.sirius import SiriusLearner
from memkit.deployment import Takeover, deploy, flatten_obs
from memkit.io import write_text_atomic
from memkit.runners import run_unordered

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
WEIGHTINGS = {"BC": "uniform", "IWR": "iwr", "Sirius": "sirius"}
STRATEGIES = ("keep_newest", "keep_oldest", "keep_least_intervened", "keep_most_intervened",
              "uniform")
FRACTIONS = (0.15, 0.30, 0.50)
EVAL_SEED0 = 1_000_000
"""Held-out evaluation seeds are EVAL_SEED0, EVAL_SEED0 + 1, ..."""


class GoalRelative(gym.ObservationWrapper):
    """Appends ``desired_goal - achieved_goal`` to a goal-conditioned ``observation`` entry.

    The scripted humans read only the leading entries, so they act as before; the policy
    gets the goal-relative vector as three more inputs.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        spaces = dict(env.observation_space.spaces)
        size = spaces["observation"].shape[0] + spaces["desired_goal"].shape[0]
        spaces["observation"] = gym.spaces.Box(-np.inf, np.inf, (size,), np.float64)
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, obs: dict) -> dict:
        relative = obs["desired_goal"] - obs["achieved_goal"]
        return {**obs, "observation": np.concatenate([obs["observation"], relative])}


@dataclass(frozen=True)
class Task:
    """One environment's deployment sizes, takeover rule and learner settings."""

    env_id: str
    demo_episodes: int
    rounds: int
    episodes_per_round: int
    eval_episodes: int
    episode_steps: int
    """The environment's time limit; with the episode count it sizes the memory caps."""
    takeover: dict
    learner: dict
    goal_relative: bool = False
    memory_study: bool = False
    max_steps: int | None = None

    @property
    def total_transitions(self) -> int:
        """T: every sample the deployment collects when each episode runs to the time limit."""
        episodes = self.demo_episodes + self.rounds * self.episodes_per_round
        return episodes * (self.max_steps or self.episode_steps)

    def make_env(self) -> gym.Env:
        env = make_env(self.env_id)
        return GoalRelative(env) if self.goal_relative else env


@dataclass(frozen=True)
class Method:
    """A weighting, and for a capped memory a retention strategy and a fraction of T."""

    weighting: str
    strategy: str = "keep_newest"
    fraction: float | None = None

    @property
    def name(self) -> str:
        label = next(k for k, v in WEIGHTINGS.items() if v == self.weighting)
        return label if self.fraction is None else \
            f"{label} {self.strategy} {round(100 * self.fraction)}%"


GMM = {"head": "gmm", "hidden": (256, 256), "n_components": 5, "batch_size": 256, "lr": 1e-3}
TASKS = {
    "FetchPush-v4": Task("FetchPush-v4", demo_episodes=60, rounds=4, episodes_per_round=8,
                         eval_episodes=20, episode_steps=50,
                         takeover={"k": 3, "threshold": 0.5, "hold": 10},
                         learner={**GMM, "steps": 600, "lr": 3e-3}, goal_relative=True,
                         memory_study=True),
    "LunarLanderContinuous-v3": Task(
        "LunarLanderContinuous-v3", demo_episodes=2, rounds=4, episodes_per_round=4,
        eval_episodes=20, episode_steps=1000, takeover={"k": 5, "threshold": 0.5, "hold": 20},
        learner={**GMM, "steps": 500}),
}
QUICK = {
    "FetchPush-v4": {"demo_episodes": 10, "rounds": 2, "episodes_per_round": 4,
                     "eval_episodes": 5, "learner": {**GMM, "steps": 100, "lr": 3e-3}},
    "LunarLanderContinuous-v3": {"demo_episodes": 1, "rounds": 2, "episodes_per_round": 2,
                                 "eval_episodes": 3, "learner": {**GMM, "steps": 100}},
}


def methods(task: Task) -> list[Method]:
    """BC, IWR and Sirius with every transition kept; then, for the memory study, Sirius with
    each strategy at each cap."""
    weighted = [Method(w) for w in WEIGHTINGS.values()]
    if not task.memory_study:
        return weighted
    return weighted + [Method("sirius", s, f) for f in FRACTIONS for s in STRATEGIES]


def memory_cap(task: Task, fraction: float) -> int:
    """Transitions a memory capped at ``fraction`` of all collected samples holds."""
    return math.floor(fraction * task.total_transitions)


def build_learner(task: Task, method: Method, seed: int, obs_dim: int,
                  action_space: gym.Space) -> SiriusLearner:
    """A ``SiriusLearner`` keeping everything, or with a fixed memory of ``memory_cap``."""
    kwargs = {**task.learner, "weighting": method.weighting, "strategy": method.strategy,
              "seed": seed}
    if method.fraction is None:
        return SiriusLearner(obs_dim, action_space, "1GB", **kwargs)
    learner = SiriusLearner(obs_dim, action_space, "1GB", memory_nbytes=0, **kwargs)
    learner.memory.resize(learner.memory.nbytes_for(memory_cap(task, method.fraction)))
    return learner


def run_one(task: Task, method: Method, seed: int) -> dict:
    """One deployment: the task, method and seed, and ``deploy``'s per-round records."""
    torch.set_num_threads(1)
    probe = task.make_env()
    obs_dim = len(flatten_obs(probe.reset(seed=0)[0]))
    action_space = probe.action_space
    probe.close()
    learner = build_learner(task, method, seed, obs_dim, action_space)
    result = deploy(task.make_env, learner, human_for(task.env_id), Takeover(**task.takeover),
                    demo_episodes=task.demo_episodes, rounds=task.rounds,
                    episodes_per_round=task.episodes_per_round,
                    eval_seeds=range(EVAL_SEED0, EVAL_SEED0 + task.eval_episodes), seed=seed,
                    max_steps=task.max_steps)
    return {"task": task.env_id, "method": method.name, **dataclasses.asdict(method),
            "seed": seed, "collected": learner.memory.collected,
            "item_nbytes": learner.memory.item_nbytes, "rounds": result.rounds}


def run_key(task: Task, method: Method, seed: int) -> str:
    """A file name fixed by everything that decides a run's numbers."""
    config = json.dumps([dataclasses.asdict(task), dataclasses.asdict(method), seed],
                        sort_keys=True)
    return f"{task.env_id}-{hashlib.sha256(config.encode()).hexdigest()[:16]}.json"


def run_all(tasks: Sequence[Task], seeds: Sequence[int], jobs: int,
            runs_dir: Path | None = None) -> list[dict]:
    """Every (task, method, seed) run, on ``jobs`` processes; runs kept in ``runs_dir`` are
    reused. Returned sorted by task, method and seed."""
    grid = [(t, m, s) for t in tasks for m in methods(t) for s in seeds]
    done, todo = {}, []
    for t, m, s in grid:
        path = runs_dir / run_key(t, m, s) if runs_dir is not None else None
        if path is not None and path.exists():
            done[(t.env_id, m.name, s)] = json.loads(path.read_text())
        else:
            todo.append((t, m, s))
    for i, run in enumerate(run_unordered(_run_and_keep, [(*a, runs_dir) for a in todo],
                                          runner="serial" if jobs == 1 else "joblib",
                                          n_jobs=jobs), start=1):
        done[(run["task"], run["method"], run["seed"])] = run
        last = run["rounds"][-1]
        print(f"[{len(grid) - len(todo) + i}/{len(grid)}] {run['task']} {run['method']} "
              f"seed {run['seed']}: success {last['success_rate']:.2f}", flush=True)
    return [done[(t.env_id, m.name, s)] for t, m, s in grid]


def _run_and_keep(task: Task, method: Method, seed: int, runs_dir: Path | None) -> dict:
    run = run_one(task, method, seed)
    if runs_dir is not None:
        write_text_atomic(runs_dir / run_key(task, method, seed), json.dumps(run))
    return run


def _stat(values: Iterable[float | None]) -> dict:
    values = [v for v in values if v is not None]
    return {"mean": float(np.mean(values)), "std": float(np.std(values))} if values else \
        {"mean": None, "std": None}


def summarise(runs: Sequence[dict]) -> dict:
    """Per task and method: each metric per round as mean and std over seeds."""
    summary: dict = {}
    for run in runs:
        summary.setdefault(run["task"], {}).setdefault(run["method"], {
            "weighting": run["weighting"], "strategy": run["strategy"],
            "fraction": run["fraction"], "runs": []})["runs"].append(run)
    for methods_ in summary.values():
        for entry in methods_.values():
            group = entry.pop("runs")
            per_round = list(zip(*(r["rounds"] for r in group), strict=True))
            entry["seeds"] = [r["seed"] for r in group]
            entry["rounds"] = [{
                "round": records[0]["round"],
                **{k: _stat(rec[k] for rec in records) for k in (
                    "success_rate", "mean_return", "takeovers_per_episode",
                    "intervention_episode_fraction", "human_workload", "bytes_held")},
                "wall_s": _stat(rec["collect_s"] + rec["learn_s"] + rec["eval_s"]
                                for rec in records)} for records in per_round]
            entry["held_fraction"] = _stat(
                r["rounds"][-1]["bytes_held"] / (r["collected"] * r["item_nbytes"]) for r in group)
            entry["deployment_success"] = _stat(
                np.mean([rec["success_rate"] for rec in r["rounds"][1:]]) for r in group)
    return summary


def _cell(stat: dict, digits: int = 2) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _unlimited(entries: dict) -> dict:
    return {name: e for name, e in entries.items() if e["fraction"] is None}


def markdown(summary: dict, meta: dict) -> str:
    """Tables: success per round, workload and interventions, and the memory study."""
    lines = [f"# Sirius benchmark\n\nseeds {meta['seeds']}; mean ± std over seeds. "
             "Success: fraction of held-out seeds solved by the policy alone after the round's "
             "training. Deployment mean: success averaged over rounds 1..R (convergence).\n"]
    for task, entries in summary.items():
        size = meta["tasks"][task]
        lines.append(f"## {task}\n\n{size['demo_episodes']} demos, {size['rounds']} rounds x "
                     f"{size['episodes_per_round']} episodes, {size['eval_episodes']} eval "
                     f"seeds, {size['learner']['steps']} steps per round.\n")
        lines += _round_table(_unlimited(entries), "success_rate", "Success per round, "
                              "every transition kept", extra=True)
        lines += _round_table(_unlimited(entries), "human_workload", "Human workload (fraction "
                              "of steps under human control) per round")
        lines += _round_table(_unlimited(entries), "intervention_episode_fraction",
                              "Intervention rate (fraction of episodes with a takeover)")
        lines += _round_table(_unlimited(entries), "takeovers_per_episode",
                              "Takeovers per episode")
        if any(e["fraction"] is not None for e in entries.values()):
            lines += _memory_tables(entries)
    return "\n".join(lines)


def _round_table(entries: dict, key: str, title: str, extra: bool = False) -> list[str]:
    rounds = len(next(iter(entries.values()))["rounds"])
    head = ["method", *(f"round {r}" for r in range(rounds))]
    head += ["deployment mean", "wall s/run"] if extra else []
    lines = [f"### {title}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in entries.items():
        cells = [_cell(r[key]) for r in e["rounds"]]
        if extra:
            wall = sum(r["wall_s"]["mean"] for r in e["rounds"])
            cells += [_cell(e["deployment_success"]), f"{wall:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _memory_tables(entries: dict) -> list[str]:
    full = entries["Sirius"]
    fractions = sorted({e["fraction"] for e in entries.values() if e["fraction"] is not None})
    head = ["strategy", *(f"{round(100 * f)}%" for f in fractions), "unlimited"]
    out = []
    for key, title in (("last", "Success at the last round against the memory cap (Sirius "
                                "weighting)"),
                       ("deployment", "Deployment mean success (rounds 1..R) against the "
                                      "memory cap")):
        out += [f"### {title}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for strategy in STRATEGIES:
            row = [_memory_value(entries, strategy, f, key) for f in fractions]
            out.append(f"| {strategy} | " + " | ".join([*row, _memory_value(
                {"Sirius": full}, None, None, key)]) + " |")
        out.append("")
    out += ["### Capped memories: bytes held, share of the collected bytes, workload\n",
            "| method | bytes held (last round) | held / collected | workload (last round) |"
            " wall s/run |", "|---|---|---|---|---|"]
    for name, e in entries.items():
        last = e["rounds"][-1]
        wall = sum(r["wall_s"]["mean"] for r in e["rounds"])
        out.append(f"| {name} | {last['bytes_held']['mean']:,.0f} | {_cell(e['held_fraction'])} "
                   f"| {_cell(last['human_workload'])} | {wall:.0f} |")
    return [*out, ""]


def _memory_value(entries: dict, strategy: str | None, fraction: float | None, key: str) -> str:
    entry = next(e for e in entries.values()
                 if e["fraction"] == fraction and (strategy is None or e["strategy"] == strategy))
    return _cell(entry["rounds"][-1]["success_rate"] if key == "last"
                 else entry["deployment_success"])


def plot(summary: dict, path: Path) -> None:
    """Success per round per method (one panel per task); success at the last round against
    the memory cap, one line per strategy (one panel per task with a memory study)."""
    studies = [t for t, es in summary.items() if any(e["fraction"] for e in es.values())]
    panels = len(summary) + len(studies)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4), squeeze=False)
    for ax, (task, entries) in zip(axes[0], summary.items(), strict=False):
        for name, e in _unlimited(entries).items():
            mean = np.array([r["success_rate"]["mean"] for r in e["rounds"]])
            std = np.array([r["success_rate"]["std"] for r in e["rounds"]])
            ax.plot(range(len(mean)), mean, marker="o", label=name)
            ax.fill_between(range(len(mean)), mean - std, mean + std, alpha=0.15)
        ax.set(title=task, xlabel="round (0 = demonstrations only)", ylabel="success rate",
               ylim=(0, 1), xticks=range(len(mean)))
        ax.legend(fontsize="small")
    for ax, task in zip(axes[0][len(summary):], studies, strict=True):
        entries = summary[task]
        full = entries["Sirius"]["rounds"][-1]["success_rate"]
        for strategy in STRATEGIES:
            line = sorted((e["fraction"], e["rounds"][-1]["success_rate"]) for e in
                          entries.values() if e["strategy"] == strategy and e["fraction"])
            xs = [f for f, _ in line] + [1.0]
            ax.errorbar(xs, [s["mean"] for _, s in line] + [full["mean"]],
                        yerr=[s["std"] for _, s in line] + [full["std"]], marker="o",
                        capsize=3, label=strategy)
        ax.set(title=f"{task}: memory cap", xlabel="memory / all collected samples "
               "(1 = unlimited)", ylabel="success at the last round", ylim=(0, 1))
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def configure(names: Sequence[str], quick: bool) -> list[Task]:
    """The named tasks at the default sizes, or at the ``--quick`` sizes."""
    return [replace(TASKS[n], **QUICK[n]) if quick else TASKS[n] for n in names]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="default 0 1 2 (0 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a couple of minutes")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=Path("runs") / "sirius",
                        help="finished runs are kept here and reused")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sirius")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds if args.seeds is not None else [0] if args.quick else [0, 1, 2]
    tasks = configure(args.tasks, args.quick)
    runs = run_all(tasks, seeds, args.jobs, args.runs)
    summary = summarise(runs)
    meta = {"seeds": seeds, "quick": args.quick, "torch": torch.__version__,
            "gymnasium": gym.__version__, "python": platform.python_version(),
            "jobs": args.jobs, "tasks": {t.env_id: {**dataclasses.asdict(t),
                                                    "total_transitions": t.total_transitions}
                                         for t in tasks}}
    text = markdown(summary, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(f"{args.out}.json"),
                      json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    write_text_atomic(Path(f"{args.out}.md"), text)
    plot(summary, Path(f"{args.out}.png"))
    print(text)
    return summary


if __name__ == "__main__":
    main()
