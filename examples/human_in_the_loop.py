"""Human-in-the-loop learning with your own environment, human and policy learner.

Sirius (Liu et al., "Robot Learning on the Job: Human-in-the-Loop Autonomy and
Learning During Deployment", RSS 2023) on CartPole-v1. The human (a rule written
below; any object with ``act(obs)`` will do) gives two demonstrations. Then, for three
rounds, the policy balances the pole while the human watches and takes over when
the policy disagrees with them 3 steps in a row or the pole leans past 0.1 rad. After
each round the learner retrains on intervention-weighted behavioural cloning from a
100 KB memory that keeps the most-intervened trajectories, and the policy is tested
alone on ten held-out seeds.
"""

import types

import gymnasium as gym
import numpy as np
import torch

from memkit import Takeover, deploy
from memkit.agents import SiriusLearner

torch.set_num_threads(1)


def balance(obs: np.ndarray) -> int:
    """The human: push toward the side the pole leans to, and keep the cart near the centre."""
    position, velocity, angle, angular_velocity = obs
    return int(angle + 0.5 * angular_velocity + 0.05 * position + 0.2 * velocity > 0)


human = types.SimpleNamespace(act=balance)          # a human is anything with act(obs)
env = gym.make("CartPole-v1")
learner = SiriusLearner(env.observation_space.shape[0], env.action_space, "1MB",
                        weighting="sirius", memory_nbytes="100KB",
                        strategy="keep_most_intervened", hidden=(64, 64), steps=300, seed=0)
takeover = Takeover(k=3, risk=lambda obs: abs(obs[2]) > 0.1, hold=10)

result = deploy(lambda: env, learner, human, takeover, demo_episodes=2, rounds=3,
                episodes_per_round=3, eval_seeds=range(100, 110), seed=0)

print("round | success | mean return | human workload | takeovers/episode | bytes held")
for record in result.rounds:
    takeovers = record["takeovers_per_episode"]
    print(f"{record['round']:5d} | {record['success_rate']:7.2f} | {record['mean_return']:11.1f} "
          f"| {record['human_workload']:14.2f} | "
          f"{'-' if takeovers is None else f'{takeovers:.1f}':>17} | {record['bytes_held']:,}")
print(learner.budget.report())
