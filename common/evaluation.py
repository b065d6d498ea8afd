"""Episodes in the environments: the collection's, and the evaluation every script shares, so
that their scores are paired and comparable.

Episode i of a final evaluation starts from the initial state of seed + 100 + i (`eval_seed`) in
every script, and the random policy is scored on those very episodes. Scores are normalised as
in the AIME paper (section 4.1): 100 * return / the expert's return, the mean return of the
demonstrations used, with the published expert returns of its Appendix D beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from common.datasets import Dataset
from common.envs import EXPERT_RETURNS, DMCEnv, ObsSetting, Record, make_env
from common.replay import Trajectory, stack_records
from common.run import save_gif

# An actor for a batch of episodes: the current record of each environment -> actions [n, A].
# It is called on every record, the last one too (whose actions are not taken), so that a
# stateful actor (one filtering a latent state) sees each observation exactly once.
BatchActor = Callable[[list[Record]], np.ndarray]


def eval_seed(seed: int, episode: int) -> int:
    """The initial-state seed of evaluation episode `episode`, the same in every script, so that
    the scores of the algorithms run with one `--seed` are paired episode by episode."""
    return seed + 100 + episode


def episode_seed(seed: int, stream: int, index: int) -> int:
    """The initial-state (and random-action) seed of episode `index` of a collection stream:
    episodes of different streams, and of different indices, never share a seed."""
    return int(np.random.SeedSequence(seed, spawn_key=(stream, index)).generate_state(1)[0])


def collect_episodes(
    envs: Sequence[DMCEnv], seeds: Sequence[int], act: Optional[BatchActor] = None
) -> list[Trajectory]:
    """One episode in each environment, in lockstep, from the initial state of its seed; returns
    each episode's stacked records. Actions come from `act` (called on every record but the
    last), or where it is None uniformly at random from a generator of (seed, 1) per episode."""
    rngs = [np.random.default_rng([s, 1]) for s in seeds]  # random actions, apart from the env
    records = [[env.reset(seed=s)] for env, s in zip(envs, seeds, strict=True)]
    while not records[0][-1]["is_last"]:
        if act is None:
            actions = np.stack(
                [rng.uniform(envs[0].action_low, envs[0].action_high) for rng in rngs]
            )
        else:
            actions = act([r[-1] for r in records])
        for env, rec, a in zip(envs, records, actions, strict=True):
            rec.append(env.step(a.astype(np.float32)))
    return [stack_records(r) for r in records]


def evaluate(
    env: str,
    obs: ObsSetting,
    action_repeat: int,
    seed: int,
    episodes: int,
    new_actor: Callable[[int], BatchActor],
    video: Optional[Path] = None,
    lockstep: int = 10,
) -> list[float]:
    """The returns of `episodes` episodes of the task `env` ('walker-run'), episode i starting
    from `eval_seed(seed, i)`; up to `lockstep` run side by side, acting through one call of
    the actor `new_actor(n)` per step. With `video`, the first episode is saved as a GIF."""
    returns: list[float] = []
    for first in range(0, episodes, lockstep):
        n = min(lockstep, episodes - first)
        render = obs == "visual" or (video is not None and first == 0)
        envs = [make_env(env, obs, render=render, action_repeat=action_repeat) for _ in range(n)]
        recs = [e.reset(seed=eval_seed(seed, first + i)) for i, e in enumerate(envs)]
        act, total, frames = new_actor(n), np.zeros(n), []
        while True:
            actions = act(recs)
            if recs[0]["is_last"]:
                break
            recs = [e.step(a) for e, a in zip(envs, actions, strict=True)]
            total += [r["reward"] for r in recs]
            if video is not None and first == 0:
                frames.append(recs[0]["image"])
        returns += total.tolist()
        if video is not None and frames:
            save_gif(video, frames)
    return returns


def random_returns(env: str, action_repeat: int, seed: int, episodes: int) -> list[float]:
    """The random policy on the evaluation's very episodes (`eval_seed`): each episode's return
    under uniform actions."""
    world = make_env(env, "mdp", action_repeat=action_repeat)  # no images: nothing observes
    returns = []
    for i in range(episodes):
        rng = np.random.default_rng(eval_seed(seed, i))  # its own stream: training's untouched
        rec, total = world.reset(seed=eval_seed(seed, i)), 0.0
        while not rec["is_last"]:
            rec = world.step(rng.uniform(world.action_low, world.action_high).astype(np.float32))
            total += float(rec["reward"])
        returns.append(total)
    return returns


def random_scores(
    env: str, action_repeat: int, seed: int, episodes: int, expert: float
) -> dict[str, float]:
    """The mean return and normalised score of `random_returns` that results.json records
    beside the policy's, and results_table.py's figure draws as the bottom reference line."""
    mean = float(np.mean(random_returns(env, action_repeat, seed, episodes)))
    return {"random_return": mean, "random_normalised_score": 100 * mean / expert}


def expert_return(env: str, task: str, demo: Dataset) -> tuple[float, str, Optional[float]]:
    """The return that normalises scores, where it comes from, and the published expert return
    (AIME Appendix D; None for tasks without one).

    The normaliser is the mean return of the demonstrations used, as in the authors' code (their
    experts' datasets reproduce Appendix D's returns); a warning says when it differs from the
    published return by more than 10% (the demonstrations are then not the paper's expert). Only
    where the demonstrations hold no positive return does the published one normalise instead.
    """
    published = EXPERT_RETURNS.get(f"{env}-{task}")
    used = demo.mean_return()
    if used <= 0 and published is not None:
        print(f"warning: the demonstrations' mean return is {used:.1f}; scores are normalised by "
              f"the published expert return {published:.1f}")  # fmt: skip
        return published, "published expert return (AIME Appendix D)", published
    if used <= 0:
        raise SystemExit(f"error: the demonstrations' mean return is {used:.1f}: no normaliser")
    if published is not None and abs(used - published) > 0.1 * published:
        print(f"warning: the demonstrations' mean return {used:.1f} differs from the published "
              f"expert return {published:.1f} by over 10%: not the paper's expert")  # fmt: skip
    return used, "mean return of the demonstrations used", published


def scores(
    returns: Sequence[float],
    expert: tuple[float, str, Optional[float]],
    env: str,
    action_repeat: int,
    seed: int,
) -> dict[str, Any]:
    """The evaluation's part of results.json: returns and normalised scores (mean and std), the
    normaliser, where it comes from and the published expert return (`expert_return`), and the
    random policy's mean return and score on the same episodes of the task `env`."""
    normaliser, source, published = expert
    normalised = 100 * np.asarray(returns) / normaliser
    return {
        "returns": list(returns),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "normalised_score": float(normalised.mean()),
        "normalised_score_std": float(normalised.std()),
        "expert_return": normaliser,
        "expert_return_source": source,
        "published_expert_return": published,
        **random_scores(env, action_repeat, seed, len(returns), normaliser),
    }
