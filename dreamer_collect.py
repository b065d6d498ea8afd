"""Collect the embodiment datasets of the AIME benchmark.

    python dreamer_collect.py --agent random --env walker --num-trajectories 1000

`--agent random` acts uniformly at random and writes `{data-dir}/{env}-random/` (AIME section 4:
the *random* embodiment dataset). Every record stores every modality (all proprioceptive keys and,
unless `--no-render`, the 64x64 image), so the dataset serves the MDP, LPOMDP and Visual settings.
Re-running adds only the trajectories that are missing, so a killed collection resumes; each
trajectory i depends only on (seed, i), so a resumed dataset equals an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import tyro
from tqdm import tqdm

from common.envs import make_env
from common.replay import (
    DatasetError,
    atomic_write,
    load_trajectory,
    save_trajectory,
    stack_records,
    trajectory_files,
)

# The task whose reward a task-free dataset (random, p2e) records, per embodiment.
DEFAULT_TASK = {"walker": "walk", "cheetah": "run"}


@dataclass
class Args:
    agent: Literal["random"] = "random"
    """the agent that acts: `random` samples actions uniformly from the action space"""
    env: str = "walker"
    """the embodiment (dm_control domain): walker, cheetah, or another suite domain"""
    task: Optional[str] = None
    """the task whose reward is recorded (default: walk for walker, run for cheetah)"""
    num_trajectories: int = 1000
    """how many trajectories the dataset should hold (existing ones count)"""
    seed: int = 0
    """seed of the environment and the actions (trajectory i uses (seed, i))"""
    data_dir: str = "datasets"
    """folder that holds the datasets"""
    render: bool = True
    """store the 64x64 image of every record (--no-render for low-dimensional settings only)"""
    action_repeat: int = 2
    """simulator steps per agent step"""


def dataset_info(folder: Path) -> dict[str, object]:
    """The settings a dataset was collected with (`info.json`), or {} for a new folder."""
    path = folder / "info.json"
    return json.loads(path.read_text()) if path.exists() else {}


def episode_return(path: Path) -> float:
    return float(load_trajectory(path, ["reward"])["reward"].sum())


def collect_random(args: Args) -> Path:
    """Fill `{data_dir}/{env}-random/` up to `num_trajectories` random-action trajectories."""
    task = args.task or DEFAULT_TASK.get(args.env)
    if task is None:
        raise SystemExit(f"--task is needed for the embodiment {args.env!r}")
    folder = Path(args.data_dir) / f"{args.env}-random"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a collection that was killed mid-write
        stale.unlink()

    # A dataset is extended only with the settings it was started with.
    settings = {
        "agent": "random",
        "env": f"{args.env}-{task}",
        "render": args.render,
        "action_repeat": args.action_repeat,
        "seed": args.seed,
    }
    previous = dataset_info(folder)
    clashes = {
        k: (previous[k], v) for k, v in settings.items() if k in previous and previous[k] != v
    }
    if clashes:
        raise SystemExit(
            f"{folder} was collected with other settings (existing, asked): {clashes}; "
            f"use the same flags or another --data-dir"
        )

    done = {int(p.stem) for p in folder.glob("*.npz") if p.stem.isdigit()}
    todo = [i for i in range(args.num_trajectories) if i not in done]
    print(f"{folder}: {len(done)} trajectories present, collecting {len(todo)}")
    if todo:
        env = make_env(
            f"{args.env}-{task}", obs="mdp", seed=args.seed,
            action_repeat=args.action_repeat, render=args.render,
        )  # fmt: skip
        bar = tqdm(todo, desc=f"random {args.env}-{task}", unit="traj")
        for i in bar:
            seed_i = np.random.SeedSequence([args.seed, i])
            env_seed, action_seed = seed_i.generate_state(2)
            rng = np.random.default_rng(action_seed)
            records = [env.reset(seed=int(env_seed))]
            while not records[-1]["is_last"]:
                action = rng.uniform(env.action_low, env.action_high).astype(np.float32)
                records.append(env.step(action))
            trajectory = stack_records(records)
            save_trajectory(folder / f"{i}.npz", trajectory)
            bar.set_postfix(ret=f"{trajectory['reward'].sum():.1f}")

    files = trajectory_files(folder)
    returns = [episode_return(p) for p in files]
    info = {
        **settings,
        "num_trajectories": len(files),
        "records_per_trajectory": len(load_trajectory(files[0], ["reward"])["reward"]),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write(folder / "info.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    print(
        f"{folder}: {len(files)} trajectories, return {info['mean_return']:.1f} "
        f"+- {info['std_return']:.1f}"
    )
    return folder


def main(args: Args) -> None:
    print(json.dumps(asdict(args)))
    try:
        collect_random(args)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main(tyro.cli(Args))
