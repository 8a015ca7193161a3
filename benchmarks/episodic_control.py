"""Model-Free Episodic Control on CartPole-v1 with a persistent AgentMemory: fresh, second life,
byte budgets.

Blundell et al., "Model-Free Episodic Control" (arXiv 2016) act from per-action tables
of the best return seen after each embedded state. ``memkit.agents.episodic_control``
keeps those tables in ``AgentMemory`` folders, so they outlive the process. For each
seed this script runs, on gymnasium's CartPole-v1 (episodes end at 500 steps):

- ``random``: a uniformly random policy;
- ``MFEC fresh``: an agent on an empty memory (a budget it never fills);
- ``MFEC second life``: a NEW PROCESS (subprocess) that reopens the memory the fresh
  run left and plays the next episodes (new reset seeds, its own exploration draws);
- ``MFEC <budget>``: a fresh agent whose memory is capped at a byte budget, its
  least recently used records evicted (the paper's rule).

The agent uses k = 11, epsilon = 0.005, gamma = 0.99 (its defaults) and phi a Gaussian
random projection of the 4 observation numbers onto 16 dimensions (a projection onto 4 is a
random square matrix that distorts distances: on seeds outside those reported, it learned
more slowly than 16 or 64; 16 takes a quarter of 64's bytes). A fresh agent first plays
``WARMUP`` = 5 episodes with epsilon = 1 (the paper anneals epsilon from 1): without them some
seeds lock into pushing one way, about 11 steps an episode, as the few records of the other
action come from late, low-return states. The second life does not explore again.

Recorded: the return of every episode, the mean of the first 10 and of the last ``--last``
episodes (mean +- std over seeds), records and bytes held at the end, and milliseconds per
step spent in ``act`` (recalling the k nearest records of each action) and in
``end_episode`` (the exact-match check and the writes), on the memory folder's file system
(``--root``; tmpfs /dev/shm by default) and, for one short run, on the repository's disk
(``runs/``), where each recall's LRU update is an fsync'd SQLite commit.

    .venv/bin/python benchmarks/episodic_control.py            # 3 seeds, 100 + 25 episodes
    .venv/bin/python benchmarks/episodic_control.py --quick    # 1 seed, 20 + 5 episodes
    memkit bench episodic-control --seeds 0 1

Writes benchmarks/results/episodic_control.{json,md,png} (``--quick``:
episodic_control_quick.*). The returns are the same for the same seeds; the timings are not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import gymnasium as gym
import matplotlib
import numpy as np
import torch

from memkit.agents.episodic_control import EpisodicControl, run_episodes
from memkit.budget import parse_size
from memkit.io import write_text_atomic
from memkit.seeding import derive_generator

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
ENV = "CartPole-v1"
UNLIMITED = "64MB"
"""The fresh agent's budget: more than 100 CartPole episodes fill."""
DIM, WARMUP = 16, 5
SECOND_LIFE_SEED = 10_000
"""The second life's agent draws its exploration from seed + SECOND_LIFE_SEED."""
FIRST = 10


class Timed:
    """Forwards ``act`` and ``end_episode`` to an agent and adds up the seconds each takes."""

    def __init__(self, agent):
        self.agent, self.act_s, self.write_s, self.steps = agent, 0.0, 0.0, 0

    def act(self, observation) -> int:
        start = time.perf_counter()
        action = self.agent.act(observation)
        self.act_s += time.perf_counter() - start
        self.steps += 1
        return action

    def end_episode(self, observations, actions, rewards) -> None:
        start = time.perf_counter()
        self.agent.end_episode(observations, actions, rewards)
        self.write_s += time.perf_counter() - start

    def timings(self) -> dict:
        steps = max(self.steps, 1)
        return {"steps": self.steps, "act_ms_per_step": 1e3 * self.act_s / steps,
                "write_ms_per_step": 1e3 * self.write_s / steps}


class RandomPolicy:
    """Uniform actions from a seeded generator; learns nothing."""

    def __init__(self, n_actions: int, seed: int):
        self.n_actions, self.generator = n_actions, derive_generator(seed, "random policy")

    def act(self, observation) -> int:
        return int(torch.randint(self.n_actions, (1,), generator=self.generator))

    def end_episode(self, observations, actions, rewards) -> None:
        pass


def play(agent, episodes: int, seed: int, warmup: int = 0, first_episode: int = 0) -> dict:
    """Run ``episodes`` CartPole episodes, the first ``warmup`` of them with epsilon = 1;
    the returns, and the timings and memory held when ``agent`` learns."""
    timed = Timed(agent)
    with gym.make(ENV) as env:
        returns = []
        if warmup:
            epsilon, agent.epsilon = agent.epsilon, 1.0
            returns += run_episodes(timed, env, warmup, seed, first_episode)
            agent.epsilon = epsilon
        returns += run_episodes(timed, env, episodes - warmup, seed, first_episode + warmup)
    row = {"returns": returns, **timed.timings()}
    if isinstance(agent, EpisodicControl):
        row.update(records=len(agent), bytes=agent.nbytes)
    return row


def mfec(root: Path, budget: str, episodes: int, seed: int, warmup: int = WARMUP) -> dict:
    with EpisodicControl(root, 2, 4, budget=budget, dim=DIM, seed=seed) as agent:
        return play(agent, episodes, seed, warmup=warmup)


def second_life(root: Path, episodes: int, seed: int, first_episode: int) -> dict:
    """Reopen ``root`` in a new Python process and continue there from ``first_episode``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--continue",
                           str(root), "--second", str(episodes), "--seeds", str(seed),
                           "--episodes", str(first_episode)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"second life (seed {seed}) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_seed(seed: int, args, root: Path) -> dict:
    runs = {"random": play(RandomPolicy(2, seed), args.episodes, seed)}
    runs["MFEC fresh"] = mfec(root / f"seed{seed}_fresh", UNLIMITED, args.episodes, seed)
    runs["MFEC second life"] = second_life(root / f"seed{seed}_fresh", args.second, seed,
                                           args.episodes)
    for budget in args.budgets:
        runs[f"MFEC {budget}"] = mfec(root / f"seed{seed}_{budget}", budget, args.episodes, seed)
    for name, run in runs.items():
        print(f"seed {seed} {name}: first {FIRST} {np.mean(run['returns'][:FIRST]):.1f}, "
              f"last {args.last} {np.mean(run['returns'][-args.last:]):.1f}", flush=True)
    return runs


def disk_latency(episodes: int) -> dict:
    """One fresh agent with its memory on the repository's disk rather than ``--root``
    (no warm-up, so that every step recalls)."""
    (HERE.parent / "runs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HERE.parent / "runs") as folder:
        return mfec(Path(folder) / "memory", UNLIMITED, episodes, 0, warmup=0)


def summarise(per_seed: list[dict], last: int) -> list[dict]:
    rows = []
    for name in per_seed[0]:
        runs = [runs[name] for runs in per_seed]
        first = [np.mean(r["returns"][:FIRST]) for r in runs]
        final = [np.mean(r["returns"][-last:]) for r in runs]
        row = {"method": name, "first": float(np.mean(first)), "first_std": float(np.std(first)),
               "last": float(np.mean(final)), "last_std": float(np.std(final)),
               "episodes": len(runs[0]["returns"])}
        for key in ("records", "bytes", "act_ms_per_step", "write_ms_per_step"):
            if key in runs[0]:
                row[key] = float(np.mean([r[key] for r in runs]))
        rows.append(row)
    return rows


def markdown(rows: list[dict], last: int, disk: dict | None) -> str:
    lines = [f"| method | episodes | return, first {FIRST} | return, last {last} | records | "
             "bytes | act ms/step | write ms/step |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        held = (f"{r['records']:,.0f} | {r['bytes']:,.0f} | {r['act_ms_per_step']:.2f} | "
                f"{r['write_ms_per_step']:.2f}") if "records" in r else "- | - | - | -"
        lines.append(f"| {r['method']} | {r['episodes']} | {r['first']:.1f} ± {r['first_std']:.1f}"
                     f" | {r['last']:.1f} ± {r['last_std']:.1f} | {held} |")
    if disk is not None:
        lines += ["", f"On disk (runs/, seed 0, {len(disk['returns'])} fresh episodes without "
                  "warm-up, "
                  f"{disk['steps']} steps): act {disk['act_ms_per_step']:.2f} ms/step, write "
                  f"{disk['write_ms_per_step']:.2f} ms/step."]
    return "\n".join(lines) + "\n"


def plot(per_seed: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in per_seed[0]:
        curve = np.mean([runs[name]["returns"] for runs in per_seed], axis=0)
        start = len(per_seed[0]["MFEC fresh"]["returns"]) if name == "MFEC second life" else 0
        ax.plot(np.arange(start, start + len(curve)), curve, label=name,
                lw=2 if name in ("MFEC fresh", "MFEC second life") else 1)
    ax.set(xlabel="episode (the second life continues after the first)",
           ylabel=f"return (mean of {len(per_seed)} seeds)", title=f"MFEC on {ENV}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def continue_run(args) -> None:
    """The second life: reopen ``args.continue_root`` and play ``args.second`` episodes from
    episode ``args.episodes`` on, in this (new) process."""
    seed = args.seeds[0]
    with EpisodicControl(args.continue_root, 2, 4, budget=UNLIMITED,
                         seed=seed + SECOND_LIFE_SEED) as agent:
        before = len(agent)
        row = play(agent, args.second, seed, first_episode=args.episodes)
    print(json.dumps({**row, "records_at_start": before}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--second", type=int, default=25, help="episodes of the second life")
    parser.add_argument("--budgets", nargs="+", default=["64KB", "256KB", "1MB"])
    parser.add_argument("--last", type=int, default=20, help="episodes in the final mean")
    parser.add_argument("--disk-episodes", type=int, default=10)
    parser.add_argument("--root", type=Path, default=Path("/dev/shm") if Path(
        "/dev/shm").is_dir() else HERE.parent / "runs", help="where the memories are made")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 + 5 episodes")
    parser.add_argument("--continue", dest="continue_root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    if args.continue_root is not None:
        continue_run(args)
        return
    if args.quick:
        args.seeds, args.episodes, args.second, args.last = args.seeds[:1], 20, 5, 5
        args.budgets, args.disk_episodes = args.budgets[:2], 3
    for budget in args.budgets:
        parse_size(budget)
    start = time.perf_counter()
    args.root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="episodic_control.", dir=args.root))
    try:
        per_seed = [run_seed(seed, args, root) for seed in args.seeds]
    finally:
        shutil.rmtree(root)
    disk = disk_latency(args.disk_episodes) if args.disk_episodes else None
    rows = summarise(per_seed, args.last)
    meta = {"env": ENV, "gymnasium": gym.__version__, "torch": torch.__version__,
            "faiss": faiss.__version__, "python": platform.python_version(), "threads": 1,
            "seeds": args.seeds, "episodes": args.episodes, "second_life": args.second,
            "budgets": args.budgets, "last": args.last, "root": str(args.root),
            "seconds": time.perf_counter() - start}
    name = "episodic_control_quick" if args.quick else "episodic_control"
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / f"{name}.json", json.dumps(
        {"meta": meta, "rows": rows, "disk": disk, "runs": per_seed}, indent=1))
    table = markdown(rows, args.last, disk)
    write_text_atomic(args.out / f"{name}.md", table)
    plot(per_seed, args.out / f"{name}.png")
    print(table)
    print(f"{meta['seconds']:.0f} s; wrote {args.out / name}.{{json,md,png}}")


if __name__ == "__main__":
    main()
