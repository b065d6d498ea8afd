"""DeepMind Control environments exactly as the AIME benchmark defines them.

One function, `make_env("walker-run", obs="visual")`, builds every environment the scripts use, so
that data collection and evaluation share action repeat, rewards, camera and record layout.

Every step returns a *record* holding all modalities the dataset stores (every proprioceptive
key, the 64x64 camera-0 image when rendering is on, reward, flags and the action that led to it),
so one stored dataset serves all three observation settings; the setting only selects which keys
the agent sees (`DMCEnv.obs_keys`):

    mdp     every proprioceptive key (walker 24 dims, cheetah 17)
    lpomdp  only the first-order sensors, positions without velocities (walker 15, cheetah 8)
    visual  the image only
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, Literal, Optional

# Headless rendering: must be chosen before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
from dm_control import suite

ObsSetting = Literal["mdp", "lpomdp", "visual"]
OBS_SETTINGS: tuple[str, ...] = ("mdp", "lpomdp", "visual")
Record = dict[str, np.ndarray]

# Proprioceptive keys that hold first-order (position-like) information, per domain: the
# LPOMDP setting observes only these. Splits from the AIME authors' environment configs.
FIRST_ORDER_KEYS: dict[str, tuple[str, ...]] = {
    "walker": ("orientations", "height"),
    "cheetah": ("position",),
    "cartpole": ("position",),
    "pendulum": ("orientation",),
    "point_mass": ("position",),
    "ball_in_cup": ("position",),
    "finger": ("position", "touch"),
    "hopper": ("position", "touch"),
    "reacher": ("position", "to_target"),
    "humanoid": ("joint_angles", "head_height", "extremities", "torso_vertical"),
}

# Environment steps per action where a dataset records none: the AIME authors'
# `configs/env/<domain>.yaml` (`action_repeat`); 2 for every domain not listed.
AUTHORS_ACTION_REPEAT: dict[str, int] = {"cartpole": 8, "reacher": 4, "ball_in_cup": 4}


def _cheetah_reward(scale: float, index: int) -> Callable[[Record], float]:
    """reward = clip(scale * velocity[index], 0, 1), from the observation after the repeat."""
    return lambda rec: float(np.clip(scale * rec["velocity"][index], 0.0, 1.0))


# Tasks the AIME paper adds to an embodiment: (domain, task) -> (suite task it runs on, reward).
# The reward is computed once per agent step, so an episode's maximum return is 500.
# velocity[0] is the forward speed of the torso (rootx), velocity[2] its pitch rate (rooty).
CUSTOM_TASKS: dict[tuple[str, str], tuple[str, Callable[[Record], float]]] = {
    ("cheetah", "runbackward"): ("run", _cheetah_reward(-1 / 10, 0)),
    ("cheetah", "flip"): ("run", _cheetah_reward(1 / 5, 2)),
    ("cheetah", "flipbackward"): ("run", _cheetah_reward(-1 / 5, 2)),
}

# Published expert returns (AIME Appendix D) that normalise scores: 100 * return / expert.
EXPERT_RETURNS: dict[str, float] = {
    "walker-stand": 957.87,
    "walker-walk": 943.79,
    "walker-run": 604.10,
    "cheetah-run": 888.65,
    "cheetah-runbackward": 218.50,
    "cheetah-flip": 485.79,
    "cheetah-flipbackward": 379.91,
}


class EnvError(ValueError):
    """An environment that cannot be built as asked (an unknown task or setting): the scripts
    report it in one line, as they do a bad dataset."""


def check_env(name: str, obs: str) -> None:
    """Refuse, before anything is built, a task that neither the suite nor `CUSTOM_TASKS` has, or
    a setting it cannot be observed in (`EnvError`, one line)."""
    if "-" not in name:
        raise EnvError(f"environment name {name!r} must be 'domain-task', e.g. 'walker-run'")
    domain, task = name.split("-", 1)
    if obs not in OBS_SETTINGS:
        raise EnvError(f"unknown observation setting {obs!r}; choose one of {OBS_SETTINGS}")
    suite_task = CUSTOM_TASKS.get((domain, task), (task, None))[0]
    if (domain, suite_task) not in suite.ALL_TASKS:
        domains = sorted({d for d, _ in suite.ALL_TASKS})
        tasks = sorted({t for d, t in [*suite.ALL_TASKS, *CUSTOM_TASKS] if d == domain})
        known = (
            f"{domain}'s tasks: {', '.join(tasks)}" if tasks else f"domains: {', '.join(domains)}"
        )
        raise EnvError(f"unknown environment {name!r}; {known}")
    if obs == "lpomdp" and domain not in FIRST_ORDER_KEYS:
        raise EnvError(
            f"the lpomdp setting needs a split of {domain}'s sensors into positions and "
            f"velocities, known for {', '.join(sorted(FIRST_ORDER_KEYS))}; use --obs mdp or visual"
        )


class DMCEnv:
    """The dm_control task `name` ('walker-run', 'cheetah-flip', 'cartpole-swingup', ...) in the
    observation setting `obs`, with `action_repeat`, returning full records (module docstring).

    `render`: images in every record; by default only in the visual setting (data collection
    passes True so that the stored dataset serves every setting). `seed` seeds the task's
    initial states; `reset(seed=...)` reseeds them per episode.

    A record's `reward`, `is_first`, `is_last`, `is_terminal` are scalars; `pre_action` is the
    action that led to the record (zeros after reset); every other key is a float32 vector
    (the flattened dm_control observation) or the uint8 `image` [64, 64, 3].
    """

    def __init__(
        self,
        name: str,
        obs: ObsSetting = "mdp",
        seed: int = 0,
        action_repeat: int = 2,
        render: Optional[bool] = None,
        image_size: int = 64,
        camera_id: int = 0,
    ) -> None:
        check_env(name, obs)
        domain, task = name.split("-", 1)
        if render is False and obs == "visual":
            raise ValueError("the visual setting observes images, so it needs render=True")
        self._reward_fn: Optional[Callable[[Record], float]]
        suite_task, self._reward_fn = CUSTOM_TASKS.get((domain, task), (task, None))
        self.name, self.domain, self.task, self.obs = name, domain, task, obs
        self.action_repeat, self.image_size, self.camera_id = action_repeat, image_size, camera_id
        self.render_images = obs == "visual" if render is None else render
        self._env = suite.load(domain, suite_task, task_kwargs={"random": seed})

        spec = self._env.action_spec()
        self.action_low = spec.minimum.astype(np.float32)
        self.action_high = spec.maximum.astype(np.float32)
        self.action_dim: int = int(spec.shape[0])
        self.proprio_keys: tuple[str, ...] = tuple(
            k for k, v in self._env.observation_spec().items() if int(np.prod(v.shape)) > 0
        )
        proprio_dims = {k: int(np.prod(v.shape)) for k, v in self._env.observation_spec().items()}
        # The shape of every key a record holds, for checking stored datasets against.
        self.record_shapes: dict[str, tuple[int, ...]] = {
            **{k: (proprio_dims[k],) for k in self.proprio_keys},
            "pre_action": (self.action_dim,),
            "reward": (),
            "is_first": (),
            "is_last": (),
            "is_terminal": (),
        }
        if self.render_images:
            self.record_shapes["image"] = (image_size, image_size, 3)

        if obs == "mdp":
            self.obs_keys: tuple[str, ...] = self.proprio_keys
        elif obs == "lpomdp":
            self.obs_keys = FIRST_ORDER_KEYS[domain]
        else:
            self.obs_keys = ("image",)
        # Feature size of the low-dimensional observation the agent sees (0 for visual).
        self.obs_dim: int = sum(proprio_dims[k] for k in self.obs_keys if k != "image")

    @property
    def episode_steps(self) -> int:
        """Simulator steps of one episode: the task's time limit (1,000 in every task used
        here), in whole actions of `action_repeat` steps."""
        limit = self._env._step_limit  # dm_control's Environment: time limit / control timestep
        return math.ceil(limit / self.action_repeat) * self.action_repeat

    @property
    def physics(self) -> Any:  # dm_control's Physics carries no type information
        """The MuJoCo physics of the underlying dm_control environment."""
        return self._env.physics

    def render(self) -> np.ndarray:
        """The camera image, uint8 [size, size, 3]."""
        return self._env.physics.render(self.image_size, self.image_size, camera_id=self.camera_id)

    def _record(self, time_step: Any, reward: float, pre_action: np.ndarray) -> Record:
        rec: Record = {
            k: np.asarray(v, dtype=np.float32).reshape(-1)
            for k, v in time_step.observation.items()
            if k in self.proprio_keys
        }
        if self.render_images:
            rec["image"] = self.render()
        if self._reward_fn is not None and not time_step.first():
            reward = self._reward_fn(rec)
        rec["reward"] = np.asarray(reward, dtype=np.float32)
        rec["is_first"] = np.asarray(time_step.first())
        rec["is_last"] = np.asarray(time_step.last())
        # Only a true end of the task (discount 0) is terminal; a time limit is not.
        rec["is_terminal"] = np.asarray(time_step.last() and time_step.discount == 0)
        rec["pre_action"] = pre_action.astype(np.float32)
        return rec

    def reset(self, seed: Optional[int] = None) -> Record:
        """Start an episode; `seed` reseeds the task's initial-state randomness first."""
        if seed is not None:
            self._env.task.random.seed(seed)
        time_step = self._env.reset()
        return self._record(time_step, 0.0, np.zeros(self.action_dim, np.float32))

    def step(self, action: np.ndarray) -> Record:
        """Repeat `action` `action_repeat` times; the suite's rewards are summed over the repeat."""
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(
                f"{self.name} takes actions of shape ({self.action_dim},), got {action.shape}"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(f"non-finite action {action}")
        action = np.clip(action, self.action_low, self.action_high)
        reward = 0.0
        for _ in range(self.action_repeat):
            time_step = self._env.step(action)
            reward += time_step.reward or 0.0
            if time_step.last():
                break
        return self._record(time_step, reward, action)


# The one function that builds every environment of the benchmark: make_env("walker-run", "visual").
make_env = DMCEnv
