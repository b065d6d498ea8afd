"""Small systems with known answers, for behavioural tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from common.replay import ReplayBuffer

Policy = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def point_mass(rng: np.random.Generator, act: Policy, T: int = 60) -> dict[str, np.ndarray]:
    """A 2-D point mass, v' = 0.8 v + 0.5 a, x' = x + 0.1 v', observed as (position, velocity):
    the action a_t-1 is visible in (o_t-1, o_t). One trajectory of T steps (T + 1 records)."""
    x, v = rng.uniform(-1, 1, 2), np.zeros(2)
    pos, vel, pre = [x.copy()], [v.copy()], [np.zeros(2)]
    for _ in range(T):
        a = act(x, v, rng)
        v = 0.8 * v + 0.5 * a
        x = x + 0.1 * v
        pos.append(x.copy())
        vel.append(v.copy())
        pre.append(a)
    f32 = np.float32
    return {
        "position": np.array(pos, f32),
        "velocity": np.array(vel, f32),
        "pre_action": np.array(pre, f32),
    }


def random_actions(x: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1, 1, 2)


def drive_to_origin(x: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An expert for the point mass: brings it to the origin and holds it there."""
    return np.tanh(-2 * x - v)


def point_mass_data(seed: int = 0) -> tuple[ReplayBuffer, ReplayBuffer]:
    """60 random-action trajectories (the embodiment data) and 20 demonstrations of
    `drive_to_origin`, with actions, in buffers seeded `seed` and `seed + 1`."""
    rng = np.random.default_rng(seed)
    body, demos = ReplayBuffer(seed=seed), ReplayBuffer(seed=seed + 1)
    for _ in range(60):
        body.add(point_mass(rng, random_actions))
    for _ in range(20):
        demos.add(point_mass(rng, drive_to_origin))
    return body, demos
