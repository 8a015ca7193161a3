"""An episodic-control agent whose memory outlives the process: run me twice.

    .venv/bin/python examples/episodic_control.py        # run 1: learns CartPole from nothing
    .venv/bin/python examples/episodic_control.py        # run 2: continues from its memory
    .venv/bin/python examples/episodic_control.py --root /tmp/mfec --episodes 5

Model-Free Episodic Control (Blundell et al., 2016) keeps, per action, the best
return seen after each state; here those tables are ``AgentMemory`` folders under
``--root`` (default runs/episodic_control/), charged to a 1 MB budget. Each run
plays ``--episodes`` CartPole-v1 episodes (the very first run begins with 5 random
ones, to fill both actions' tables) and prints how many records the memory held
when it started and the return of its first episode: a later run starts from what
earlier ones learned.
"""

import argparse
from pathlib import Path

import faiss
import gymnasium as gym
import torch

import memkit
from memkit.agents.episodic_control import EpisodicControl, run_episodes

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
WARMUP = 5
parser = argparse.ArgumentParser()
parser.add_argument("--root", type=Path, default=Path("runs/episodic_control"))
parser.add_argument("--episodes", type=int, default=30)
args = parser.parse_args()

run = 1 + sum(1 for _ in args.root.glob("run_*"))  # one marker file per finished run
budget = memkit.Budget("1MB")
with EpisodicControl(args.root, n_actions=2, obs_dim=4, budget=budget, dim=16, seed=run) \
        as agent, gym.make("CartPole-v1") as env:
    held = len(agent)
    returns = []
    if held == 0:  # an empty memory explores first: a few episodes of random actions
        epsilon, agent.epsilon = agent.epsilon, 1.0
        returns = run_episodes(agent, env, min(WARMUP, args.episodes), seed=run)
        agent.epsilon = epsilon
    returns += run_episodes(agent, env, args.episodes - len(returns), seed=run,
                            first_episode=len(returns))
    print(f"run {run}: started with {held} records; first episode returned {returns[0]:.0f}, "
          f"mean of {len(returns)} episodes {sum(returns) / len(returns):.1f}; "
          f"now {len(agent)} records ({agent.nbytes} bytes)")
    print(budget.report())
(args.root / f"run_{run}").touch()
