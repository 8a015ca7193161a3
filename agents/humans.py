"""Scripted humans for human-in-the-loop deployment on gymnasium environments.

Liu et al., "Robot Learning on the Job: Human-in-the-Loop Autonomy and
Learning During Deployment" (Sirius), RSS 2023, relies on a human who gives
demonstrations and takes over from the robot during deployment. Here a
scripted controller plays that role. It is a ``memkit.deployment.Human``:
``act(obs)`` takes the environment's raw observation and has no memory, so it
can take over at any step.

* LunarLander: gymnasium's own ``heuristic`` (a PD controller on the angle and hover height).
* CartPole: discrete LQR. The cart-pole dynamics are linearised about upright with
  gymnasium's constants and its Euler step. The discrete Riccati equation gives the
  gain K; the controller pushes right when ``-K x > 0``.
* Pendulum: energy pumping far from upright (the torque follows ``(E* - E) * thetadot``),
  then PD near upright.
* FetchPush: rise above the object and move to a point behind it, on the far side from the
  goal. Descend there, then push along the object-to-goal line. The line is recomputed every
  step, so the gripper stays centred behind the object. Stop within 1.5 cm of the goal.
* FetchPickAndPlace: reach above the object with the gripper open, descend, grasp, then
  carry it to the goal and hold it there.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import numpy as np

from memkit.deployment import Human


class LunarLanderHuman:
    """gymnasium's ``heuristic`` lander controller: an int action (discrete) or a 2-vector."""

    def __init__(self, continuous: bool):
        self.continuous = bool(continuous)
        self._env = types.SimpleNamespace(unwrapped=types.SimpleNamespace(
            continuous=self.continuous))

    def act(self, obs: np.ndarray) -> int | np.ndarray:
        from gymnasium.envs.box2d.lunar_lander import heuristic

        action = heuristic(self._env, obs)
        return np.asarray(action, np.float32) if self.continuous else int(action)


class CartPoleLQR:
    """Bang-bang pushes by the sign of the discrete LQR control ``-K x``."""

    def __init__(self, q: tuple[float, ...] = (1.0, 1.0, 10.0, 1.0), r: float = 1.0):
        from scipy.linalg import solve_discrete_are

        a, b = cartpole_linearisation()
        q_matrix, r_matrix = np.diag(np.asarray(q, np.float64)), np.array([[float(r)]])
        p = solve_discrete_are(a, b, q_matrix, r_matrix)
        self.gain = np.linalg.solve(r_matrix + b.T @ p @ b, b.T @ p @ a)

    def act(self, obs: np.ndarray) -> int:
        return int(float(-(self.gain @ np.asarray(obs, np.float64))[0]) > 0.0)


def cartpole_linearisation() -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` with ``x' = A x + B F`` about upright; x is (position, velocity, angle, angular
    velocity) and F the force in newtons, per gymnasium's constants and Euler step."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    env = CartPoleEnv()
    m, total, half = env.masspole, env.total_mass, env.length
    tau, g = env.tau, env.gravity
    denominator = half * (4.0 / 3.0 - m / total)
    theta_acc = np.array([g / denominator, -1.0 / (total * denominator)])  # per (angle, F)
    x_acc = np.array([0.0, 1.0 / total]) - m * half / total * theta_acc
    continuous_a = np.zeros((4, 4))
    continuous_a[0, 1] = continuous_a[2, 3] = 1.0
    continuous_a[1, 2], continuous_a[3, 2] = x_acc[0], theta_acc[0]
    continuous_b = np.array([[0.0], [x_acc[1]], [0.0], [theta_acc[1]]])
    return np.eye(4) + tau * continuous_a, tau * continuous_b * env.force_mag


class PendulumHuman:
    """Energy pumping to the upright energy, then PD once near upright and slow."""

    def __init__(self, pump_gain: float = 1.0, kp: float = 10.0, kd: float = 2.0,
                 capture_angle: float = 0.4):
        from gymnasium.envs.classic_control.pendulum import PendulumEnv

        env = PendulumEnv()
        self.a = 3.0 * env.g / (2.0 * env.l)  # angular acceleration per sin(angle)
        self.max_torque = float(env.max_torque)
        self.pump_gain, self.kp, self.kd = pump_gain, kp, kd
        self.capture_angle = capture_angle

    def act(self, obs: np.ndarray) -> np.ndarray:
        cos, sin, velocity = (float(v) for v in obs)
        angle = np.arctan2(sin, cos)
        if abs(angle) < self.capture_angle:
            torque = -self.kp * angle - self.kd * velocity
        else:
            energy = 0.5 * velocity ** 2 + self.a * cos
            torque = self.pump_gain * (self.a - energy) * velocity
        return np.array([np.clip(torque, -self.max_torque, self.max_torque)], np.float32)


def _fetch_parts(obs: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    o = np.asarray(obs["observation"], np.float64)
    return o[0:3], o[3:6], o[9:11], np.asarray(obs["desired_goal"], np.float64)


def _move(grip: np.ndarray, target: np.ndarray, gripper: float, gain: float = 15.0):
    """The Fetch action moving the gripper toward ``target`` (a position step of 5 cm at most)."""
    step = np.clip(gain * (target - grip), -1.0, 1.0)
    return np.append(step, gripper).astype(np.float32)


class FetchPushHuman:
    """Go behind the object (the far side from the goal) above it, descend, push it to the goal."""

    def __init__(self, contact: float = 0.045, approach: float = 0.07, clearance: float = 0.08,
                 push_step: float = 0.05, tolerance: float = 0.015):
        self.contact, self.approach, self.clearance = contact, approach, clearance
        self.push_step, self.tolerance = push_step, tolerance

    def act(self, obs: Mapping) -> np.ndarray:
        grip, obj, _, goal = _fetch_parts(obs)
        to_goal = goal[:2] - obj[:2]
        distance = float(np.linalg.norm(to_goal))
        if distance < self.tolerance:
            return _move(grip, grip, -1.0)
        direction = to_goal / distance
        rel = grip[:2] - obj[:2]
        along = float(rel @ direction)
        lateral = float(np.linalg.norm(rel - along * direction))
        low = grip[2] < obj[2] + 0.02
        if low and -self.approach - 0.03 < along < -0.02 and lateral < 0.02:
            step = min(distance, self.push_step)
            target = obj[:2] + (step - self.contact) * direction
            return _move(grip, np.array([*target, obj[2]]), -1.0)
        start = obj[:2] - self.approach * direction
        if np.linalg.norm(grip[:2] - start) < self.tolerance:
            return _move(grip, np.array([*start, obj[2]]), -1.0)
        high = obj[2] + self.clearance
        if grip[2] < high - 0.02:
            return _move(grip, np.array([*grip[:2], high]), -1.0)
        return _move(grip, np.array([*start, high]), -1.0)


class FetchPickAndPlaceHuman:
    """Reach above the object with the gripper open, descend, grasp, carry to the goal."""

    def __init__(self, clearance: float = 0.05, reach_tolerance: float = 0.01,
                 grasp_width: float = 0.06):
        self.clearance, self.reach_tolerance = clearance, reach_tolerance
        self.grasp_width = grasp_width

    def act(self, obs: Mapping) -> np.ndarray:
        grip, obj, fingers, goal = _fetch_parts(obs)
        offset = obj - grip
        width = float(fingers.sum())
        at_object = np.linalg.norm(offset) < 0.02
        if at_object and width < self.grasp_width:
            return _move(grip, goal, -1.0)
        if at_object:
            return _move(grip, obj, -1.0)
        if np.linalg.norm(offset[:2]) > self.reach_tolerance:
            above = np.array([*obj[:2], max(obj[2] + self.clearance, grip[2])])
            return _move(grip, above, 1.0)
        return _move(grip, obj, 1.0)


HUMANS = {
    "LunarLander-v3": lambda: LunarLanderHuman(continuous=False),
    "LunarLanderContinuous-v3": lambda: LunarLanderHuman(continuous=True),
    "CartPole-v1": CartPoleLQR,
    "Pendulum-v1": PendulumHuman,
    "FetchPush-v4": FetchPushHuman,
    "FetchPickAndPlace-v4": FetchPickAndPlaceHuman,
}


def human_for(env_id: str) -> Human:
    """The scripted human for ``env_id`` (one of ``HUMANS``)."""
    if env_id not in HUMANS:
        raise ValueError(f"human_for: no scripted human for {env_id!r}; "
                         f"expected one of {sorted(HUMANS)}")
    return HUMANS[env_id]()


def make_env(env_id: str, **kwargs):
    """``gymnasium.make(env_id, **kwargs)``; gymnasium-robotics is registered first if needed."""
    import gymnasium as gym

    if env_id not in gym.registry:
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
    return gym.make(env_id, **kwargs)
