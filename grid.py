"""The AIME paper's benchmark grid as one set of jobs ordered by their dependencies.

    python grid.py --envs walker --dry-run                        # the walker grid: order, cost
    python grid.py --envs walker --launcher local --workers 4     # run it here, a GPU per worker
    python grid.py --launcher slurm --slurm-partition gpu         # submit it all to SLURM
    python grid.py --figure 4 --envs walker --obs mdp --dry-run   # Figure 4's runs (mix->run)
    python grid.py --cpu                                          # the CPU benchmark, 2 cores

The grid (AIME Figures 2 and 3, `reference/aime-paper-scores.json`): for each embodiment, every
embodiment dataset -> demonstration task cell, in the MDP, LPOMDP and Visual settings, for AIME
and BCO(0), for each seed:
    walker   datasets random, p2e, stand, walk, run, mix (= random + p2e + stand + walk, read in
             place: it needs no job of its own) -> tasks stand, walk, run            18 cells
    cheetah  datasets random, p2e, run, runbackward, flip, flipbackward -> the same four tasks
                                                                                     24 cells

Jobs (name: script; what it waits for; the files whose existence marks it finished):
    data:{env}-random       dreamer_collect.py --agent random; the dataset's last trajectory file
    data:{env}-p2e          dreamer_collect.py --agent p2e; the buffer's last episode file
    data:{env}-{task}       dreamer_collect.py --agent dreamer: the task's buffer, then its expert
                            demonstrations; both folders' last files
    wm:{env}-{body}-{obs}-s{seed}
                            aime.py --phase1-only, after the body's datasets; world_model.pt.
                            One world model serves every demonstration task of its embodiment
                            dataset, setting and seed.
    aime:{env}-{body}->{task}-{obs}-s{seed}
                            aime.py --world-model <the wm job's world_model.pt>, after the wm job
                            and the task's demonstrations; results.json
    bco0:{env}-{body}->{task}-{obs}-s{seed}
                            bco0.py, after the body's datasets and the demonstrations; results.json
    vmail:{env}-{body}->{task}-{obs}-s{seed}
                            vmail_obs.py --world-model <the wm job's world_model.pt> (with
                            `--methods ... vmail`), after the wm job and the demonstrations;
                            results.json
    table                   results_table.py over every results.json, after all runs; results.md
                            (run again whenever a run finished after it)

With `--figure 4` the runs of each cell are instead AIME, BCO(0) and the BC oracle
(`bco0.py --method bc`) at each number of demonstrations of `DEMO_COUNTS` (run names
`aime-demos-N`, `bco0-demos-N`, `bc-demos-N`); with `--figure 5` AIME, `--kl-only`,
`--rec-only`, `--use-idm` (on a world model trained with the IDM head, job `wm-idm:...`), IIDM
(`bco0.py --method iidm`) and BCO(0) (`FIGURE5`); the cell defaults to `mix->run`.

Folders: datasets under `--data-dir` (the scripts' `datasets/`), and under `--grid-dir`:
`results/` (the AIME and BCO(0) runs, the table `results.md` and figure `results.png`),
`world_models/` (the phase-1 runs), `collect/` (the Dreamer and Plan2Explore agents) and `logs/`
(one log per job, its stdout and stderr, appended to on each attempt).

Running (`--launcher local`): `--workers` jobs at a time, each started when its dependencies are
finished; with GPUs, worker i runs on GPU i modulo their number (CUDA_VISIBLE_DEVICES). A job
whose markers exist is skipped and never run again, so re-running the grid continues it; a job
killed mid-way is started again with `--resume` where its script has a checkpoint to continue
(aime.py and bco0.py: the run's `checkpoint.pt`; dreamer_collect.py: the agent's `agent.pt` or
the buffer's episodes; a random dataset always adds only its missing trajectories). A failed job
fails its dependents, which are reported and not run; independent jobs go on, and the exit code
is 1. `--launcher slurm` submits every unfinished job through submitit with SLURM `afterok`
dependencies (the jobs run in the submitting directory with this Python, which the nodes must
reach). `--dry-run` prints the jobs in order with their commands and estimated cost.

Cost estimates are hours of one job on one GPU at the scripts' budgets, scaled linearly when the
budget flags below change them (see the HOURS_* constants for their sources). At the paper's
budgets AIME alone comes to about 55 GPU-days for one seed, the paper's "roughly 50 GPU days".

`--cpu` runs the CPU benchmark instead (`CPU_EMBODIMENTS`, `CPU_ARGS`: every cell, seed and
budget in one place): for each embodiment outside the paper's (cartpole; reacher), embodiment
data of random actions and each task's scripted demonstrations (cartpole-swingup; reacher-easy
and -hard), seen from positions alone (LPOMDP); for each seed (1, 2, 3) a world model per
embodiment, then on each task AIME, BCO(0), IIDM, the BC oracle and V-MAIL's learner
(`vmail_obs.py`); on the cell of `CPU_FIGURES` (cartpole-swingup), AIME, BCO(0) and BC with 1, 2,
5 and 10 demonstrations besides 20 (Figure 4) and AIME's ablations, one on a world model with the
IDM head (Figure 5); then the table and figures with each row's mean +- std over the seeds
(`results_table.py --spread seeds`). Datasets and runs go to cpu/ under --data-dir and
--grid-dir; its 105 jobs are estimated at 3.4 hours on 2 CPU cores (`--dry-run` prints each
job's cost from `CPU_SECONDS`, the quick start's measured times). quickstart.sh runs seed 1 of
the cartpole cell's five main runs with the same budgets (AIME's two phases in one run there, in
two here, so their figures differ by the draws).

`--quick` sets budgets for a CPU smoke test of the whole pipeline (tiny datasets, a tiny Dreamer,
one-epoch phases, one evaluation episode; the scores mean nothing), with its datasets and runs in
`quick/` under `--data-dir` and `--grid-dir`. Its 6 jobs take about 40 s on 2 CPU cores:

    python grid.py --quick --envs walker --cells 'random->stand' --obs mdp --collect-obs mdp \
        --no-render --grid-dir /tmp/grid --data-dir /tmp/grid/datasets --workers 2
"""

from __future__ import annotations

import glob
import importlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Annotated, Any, Literal, Optional

import tyro

from common.datasets import (
    HOURS_DREAMER_PER_MILLION,
    SECONDS_DEMO,
    SECONDS_RANDOM_TRAJECTORY,
    WALKER_MIX,
    dataset_folders,
)
from common.run import derived

ROOT = Path(__file__).resolve().parent
Env = Literal["walker", "cheetah"]
Obs = Literal["mdp", "lpomdp", "visual"]
Method = Literal["aime", "bco0", "vmail"]
SCRIPTS: dict[str, str] = {"aime": "aime.py", "bco0": "bco0.py", "vmail": "vmail_obs.py"}


@dataclass
class Args:
    """The paper's grid (datasets, world models, AIME, BCO(0), V-MAIL runs, the table) as
    dependency-ordered jobs: a dry run with costs, local GPUs, or SLURM.

    Example: python grid.py --envs walker --dry-run"""

    envs: tuple[Env, ...] = ("walker", "cheetah")
    """embodiments of the grid"""
    obs: tuple[Obs, ...] = ("mdp", "lpomdp", "visual")
    """observation settings of the grid"""
    seeds: Annotated[Optional[tuple[int, ...]], derived("1; --cpu: 1 2 3", "[INT [INT ...]]")] = (
        None
    )
    """seeds of the world models and runs (the paper pools 100 evaluation episodes of one)"""
    methods: tuple[Method, ...] = ("aime", "bco0")
    """methods of the grid (add vmail: vmail_obs.py, V-MAIL on the same world models)"""
    cells: tuple[str, ...] = ()
    """only these cells, as 'body->task', e.g. 'mix->run' 'random->runb' (none given: all)"""
    figure: Annotated[Optional[Literal[4, 5]], derived("none: the table's runs", "{4,5}")] = None
    """instead of the table's runs, a figure's for each cell (default cell: mix->run): 4, the
    demonstration counts 1..1000 of AIME, BCO(0) and the BC oracle; 5, AIME and its ablations
    (--kl-only, --rec-only, --use-idm), IIDM and BCO(0)"""
    cpu: bool = False
    """the CPU benchmark instead of the paper's grid: its own cells (CPU_EMBODIMENTS: cartpole
    swingup, reacher easy and hard, from positions alone, random embodiment data, scripted
    demonstrations), AIME, BCO(0), IIDM, the BC oracle and V-MAIL's learner, Figure 4's counts
    and Figure 5's ablations on cartpole, at budgets of minutes per job on 2 CPU cores; under
    cpu/ in --data-dir and --grid-dir"""
    dry_run: bool = False
    """print the jobs in order (dependencies, estimated cost, command) and start nothing"""
    launcher: Literal["local", "slurm"] = "local"
    """run the jobs on this machine, or submit them to SLURM (needs submitit)"""
    workers: int = 1
    """local launcher: jobs running at once (with GPUs, worker i uses GPU i modulo their number)"""
    grid_dir: str = "runs/grid"
    """logs, runs (results/), world models (world_models/), Dreamer agents (collect/)"""
    data_dir: str = "datasets"
    """folder of the datasets (made by the grid's data jobs where missing)"""

    # -- budgets (None: the scripts' defaults, the paper's budgets) --------------------------------
    quick: bool = False
    """tiny budgets for a CPU smoke test of the pipeline (flags given explicitly still win); its
    datasets and runs go to quick/ in --data-dir and --grid-dir, apart from the full grid's"""
    random_trajectories: Annotated[Optional[int], derived("1000", "INT")] = None
    """trajectories of each random dataset"""
    total_steps: Annotated[Optional[int], derived("1,000,000", "INT")] = None
    """environment steps of each Dreamer and Plan2Explore run"""
    collect_demos: Annotated[Optional[int], derived("1000", "INT")] = None
    """expert demonstrations collected per task"""
    num_demos: Annotated[Optional[int], derived("100", "INT")] = None
    """demonstrations each AIME and BCO(0) run uses"""
    phase1_epochs: Annotated[Optional[int], derived("1000", "INT")] = None
    """AIME world-model epochs, BCO(0) most IDM epochs"""
    phase2_epochs: Annotated[Optional[int], derived("500 and 1000", "INT")] = None
    """AIME policy epochs, BCO(0) most behavioural-cloning epochs"""
    steps_per_epoch: Annotated[Optional[int], derived("100", "INT")] = None
    """gradient steps per epoch of AIME and BCO(0)"""
    eval_episodes: Annotated[Optional[int], derived("100", "INT")] = None
    """final evaluation episodes of each run"""
    render: bool = True
    """datasets store images (--no-render: only for grids without the visual setting)"""
    collect_obs: Obs = "visual"
    """what the Dreamer and Plan2Explore agents observe (the authors: visual)"""
    collect_args: str = ""
    """extra flags of every dreamer_collect.py job, e.g. --collect-args='--capture-video'"""
    aime_args: str = ""
    """extra flags of every aime.py job (world models and runs), e.g. --aime-args='--use-idm'"""
    bco0_args: str = ""
    """extra flags of every bco0.py job, e.g. --bco0-args='--patience 20'"""
    vmail_args: str = ""
    """extra flags of every vmail_obs.py job, e.g. --vmail-args='--reward log_d'"""

    # -- SLURM -------------------------------------------------------------------------------------
    slurm_partition: Annotated[Optional[str], derived("the cluster's", "STR")] = None
    """SLURM partition"""
    slurm_time_min: Annotated[
        Optional[int], derived("twice its estimated cost, at least 60", "INT")
    ] = None
    """time limit of every job in minutes"""
    slurm_gpus_per_job: int = 1
    """GPUs of each SLURM job"""
    submitit_cluster: Literal["slurm", "local"] = "slurm"
    """--launcher slurm submits through submitit to: slurm, or local (each job on this machine
    through submitit's local executor, a dependency awaited before its dependents: a rehearsal
    of the submission without a cluster)"""
    slurm_cpus_per_job: int = 8
    """CPU cores of each SLURM job (rendering and the environments run on the CPU)"""
    slurm_mem_gb: Annotated[Optional[int], derived("the cluster's", "INT")] = None
    """memory of each SLURM job in GB"""


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------
# Embodiment datasets and demonstration tasks of the paper (Figures 2 and 3).
BODIES: dict[str, tuple[str, ...]] = {
    "walker": ("random", "p2e", "stand", "walk", "run", "mix"),
    "cheetah": ("random", "p2e", "run", "runbackward", "flip", "flipbackward"),
}
TASKS: dict[str, tuple[str, ...]] = {
    "walker": ("stand", "walk", "run"),
    "cheetah": ("run", "runbackward", "flip", "flipbackward"),
}
SHORT = {"runbackward": "runb", "flipbackward": "flipb"}  # the paper's cell names
# AIME Figure 4's numbers of demonstrations, and Figure 5's runs: (script's method, run name,
# its own flags) for each.
DEMO_COUNTS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
FIGURE5: tuple[tuple[Method, str, dict[str, object]], ...] = (
    ("aime", "aime", {}), ("aime", "kl-only", {"kl_only": True}),
    ("aime", "rec-only", {"rec_only": True}), ("aime", "idm", {"use_idm": True}),
    ("bco0", "iidm", {"method": "iidm"}), ("bco0", "bco0", {}),
)  # fmt: skip

# The scripts' defaults (the paper's budgets); tests/test_grid.py checks them against the scripts.
DEFAULTS = {
    "random_trajectories": 1000, "total_steps": 1_000_000, "collect_demos": 1000,
    "num_demos": 100, "aime_phase1_epochs": 1000, "aime_phase2_epochs": 500,
    "bco0_phase1_epochs": 1000, "bco0_phase2_epochs": 1000, "steps_per_epoch": 100,
}  # fmt: skip
SIM_STEPS_PER_EPISODE = 1000  # 500 agent steps at action repeat 2: a Dreamer episode's env steps

# Hours of one job on one GPU at the default budgets, scaled linearly by the budget given.
# AIME Appendix B: phase 1 about 10 h and phase 2 about 5 h on a GTX 1080Ti in MDP and LPOMDP,
# nearly double in Visual (evaluation included).
HOURS_AIME_PHASE1 = {"mdp": 10.0, "lpomdp": 10.0, "visual": 20.0}
HOURS_AIME_PHASE2 = {"mdp": 5.0, "lpomdp": 5.0, "visual": 10.0}
# BCO(0), IIDM and the BC oracle: no published figure; a guess for two small networks at the
# authors' schedule (50 epochs or more of full passes) and the same 100-episode evaluation (with
# rendering in Visual).
HOURS_BCO0 = {"mdp": 1.0, "lpomdp": 1.0, "visual": 3.0}
# Dreamer, Plan2Explore and collection: `common/datasets.py`'s HOURS_DREAMER_PER_MILLION,
# SECONDS_RANDOM_TRAJECTORY and SECONDS_DEMO.

# `--quick`: every job runs in seconds on a CPU.
QUICK = {
    "random_trajectories": 4, "total_steps": 2 * SIM_STEPS_PER_EPISODE, "collect_demos": 2,
    "num_demos": 2, "phase1_epochs": 1, "phase2_epochs": 1, "steps_per_epoch": 2,
    "eval_episodes": 1,
}  # fmt: skip
QUICK_ARGS = {
    "collect": "--prefill-episodes 1 --train-steps-per-episode 1 --deter 32 --stoch 8 --hidden 32 "
    "--batch-size 4 --horizon 10 --ensemble 2 --ensemble-hidden 32 --eval-every 0",
    "aime": "--batch-size 4 --horizon 10 --eval-every 0",
    "bco0": "--batch-size 4 --schedule fast --min-epochs 0 --min-steps 0 --val-windows 20",
    "vmail": "--batch-size 4 --horizon 10 --imag-horizon 3 --eval-every 0",
}


# The CPU benchmark (`--cpu`): embodiments outside the paper's grid at budgets of minutes per job
# on 2 CPU cores. Each has embodiment data of uniform random actions only and demonstrations of a
# scripted controller (`dreamer_collect.py --agent scripted`), seen from positions alone
# (LPOMDP), where an inverse dynamics model cannot read an action off two observations and a
# world model can filter it out of the history. quickstart.sh runs seed 1 of the cartpole cell's
# AIME, BCO(0), IIDM, BC and V-MAIL with these budgets (tests/test_grid.py checks it does).
@dataclass(frozen=True)
class CpuEmbodiment:
    body_task: str
    """the task whose initial states the random embodiment data start from"""
    tasks: tuple[str, ...]
    """demonstration tasks, each with a scripted expert"""
    action_repeat: int
    bodies: tuple[str, ...] = ("random",)
    """embodiment datasets: `random`, or `random+TASK`, the random data and TASK's scripted
    buffer (`--buffer-episodes`: more of the expert's episodes, from other initial states), a
    dataset that covers TASK (its cells in-distribution, the other tasks' transfer)"""
    obs: Obs = "lpomdp"


# Both at the AIME authors' action repeat (common/envs.py::AUTHORS_ACTION_REPEAT). Random data
# cover no task of either, so every cell is one of transfer.
CPU_EMBODIMENTS = {
    "cartpole": CpuEmbodiment("balance", ("swingup",), 8),
    "reacher": CpuEmbodiment("easy", ("easy", "hard"), 4),
}
CPU_FIGURES = ("cartpole", "random", "swingup")  # Figures 4 and 5's cell (embodiment, body, task)
CPU_SEEDS = (1, 2, 3)
CPU_DEMO_COUNTS = (1, 2, 5, 10)  # Figure 4's other counts, beside the main runs' CPU_DATA's
CPU_DATA = {"random_trajectories": 20, "collect_demos": 20, "num_demos": 20, "eval_episodes": 10}
CPU_BUFFER_EPISODES = 20  # a `random+TASK` body dataset's scripted episodes of TASK
# Each script's flags: AIME 2,000 phase-1 and 1,500 phase-2 steps at the paper's text's learning
# rate 1e-3 (the authors' 3e-4 learns too slowly in so short a phase 1); V-MAIL's learner at the
# settings under which V-MAIL imitated online (docs/vmail.md) and AIME's phase-2 budget; BCO(0),
# IIDM and BC at the authors' schedule (bco0.py's defaults).
CPU_ARGS = {
    "aime": "--phase1-epochs 20 --phase2-epochs 15 --steps-per-epoch 100 --batch-size 16 "
    "--horizon 32 --lr 1e-3 --eval-every 0",
    "vmail": "--phase2-epochs 15 --steps-per-epoch 100 --batch-size 16 --horizon 32 --hidden 64 "
    "--disc-lr 1e-3 --actor-lr 3e-4 --value-lr 3e-4 --grad-penalty inputs --imag-horizon 5 "
    "--eval-every 0",
    "bco0": "",
}
# Seconds of each kind of job on 2 CPU cores (AMD EPYC, torch 2.13.0; the quick start's cartpole
# runs of 2026-12-07, docs/benchmark.md), for --dry-run's cost (reacher's taken as the same).
CPU_SECONDS = {
    "random": 10, "scripted": 10, "wm": 306, "aime": 203, "vmail": 310, "bco0": 14, "iidm": 17,
    "bc": 7,
}  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One command of the grid."""

    name: str
    command: tuple[str, ...]
    markers: tuple[str, ...]
    """files that all exist once the job has finished"""
    deps: tuple[str, ...] = ()
    """names of the jobs that must finish first"""
    hours: float = 0.0
    """estimated cost in GPU-hours"""
    partial: tuple[str, ...] = ()
    """glob patterns: any match means a partial run exists, continued with --resume"""
    refresh: bool = False
    """finished only while its markers are newer than its dependencies' (the table)"""


def cell_name(body: str, task: str) -> str:
    return f"{SHORT.get(body, body)}->{SHORT.get(task, task)}"


def parse_cell(cell: str) -> tuple[str, str]:
    """'mix->run' or 'runb->flip' -> (body, task) with the paper's short names expanded."""
    long = {v: k for k, v in SHORT.items()}
    body, sep, task = cell.partition("->")
    if not sep:
        raise SystemExit(f"error: --cells {cell!r}: write a cell as 'body->task', e.g. 'mix->run'")
    return long.get(body, body), long.get(task, task)


def budgets(args: Args) -> Args:
    """`args` with `--quick`'s budgets and folders filled in where no budget flag was given
    (`quick` then off, so that filling twice changes nothing)."""
    if not args.quick:
        return args
    filled: dict[str, object] = {k: v for k, v in QUICK.items() if getattr(args, k) is None}
    # apart from the full grid's: its tiny datasets must never pass for full-size ones, or the
    # full grid's datasets count as the smoke test's finished jobs
    filled.update(
        data_dir=str(Path(args.data_dir) / "quick"), grid_dir=str(Path(args.grid_dir) / "quick")
    )
    extra = {
        f"{script}_args": f"{QUICK_ARGS[script]} {getattr(args, f'{script}_args')}".strip()
        for script in QUICK_ARGS
    }
    return replace(args, quick=False, **filled, **extra)  # type: ignore[arg-type]


def value(args: Args, name: str, default_key: Optional[str] = None) -> int:
    given: Optional[int] = getattr(args, name)
    return given if given is not None else DEFAULTS[default_key or name]


def flags(**values: object) -> list[str]:
    """`--flag value` for each keyword (`--flag` alone for True; None and False: left out)."""
    out: list[str] = []
    for k, v in values.items():
        if v is True:
            out.append(f"--{k.replace('_', '-')}")
        elif v is not None and v is not False:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def command(name: str, extra: str, **own: object) -> tuple[str, ...]:
    """A script's command line: the user's extra flags first, the grid's own last (the last
    occurrence of a flag wins, so the files the grid waits for are where it looks for them)."""
    return (sys.executable, str(ROOT / name), *shlex.split(extra), *flags(**own))


def random_job(args: Args, env: str) -> Job:
    n = value(args, "random_trajectories")
    folder = Path(args.data_dir) / f"{env}-random"
    return Job(
        f"data:{env}-random",
        command(
            "dreamer_collect.py", args.collect_args, agent="random", env=env,
            num_trajectories=n, data_dir=args.data_dir, no_render=not args.render,
        ),
        markers=(str(folder / f"{n - 1}.npz"),),  # trajectories are written in order
        hours=n * SECONDS_RANDOM_TRAJECTORY[args.render] / 3600,
    )  # fmt: skip


def agent_job(args: Args, env: str, task: Optional[str]) -> Job:
    """Plan2Explore's buffer (task None), or a Dreamer run: the task's buffer, then its expert
    demonstrations."""
    steps, demos = value(args, "total_steps"), value(args, "collect_demos")
    last = math.ceil(steps / SIM_STEPS_PER_EPISODE) - 1  # episodes are written in order
    agent = "p2e" if task is None else "dreamer"
    run = env if task is None else f"{env}-{task}"  # dreamer_collect.py's run folder name
    data, runs = Path(args.data_dir), Path(args.grid_dir) / "collect"
    # The p2e folder is ours, or the authors' where only theirs exists.
    buffer = dataset_folders(data, env, task or "p2e", "body")[0]
    markers = [str(buffer / f"{last}.npz")]
    hours = HOURS_DREAMER_PER_MILLION * steps / 1e6
    if task is not None:
        markers.append(str(data / f"{env}-{task}-expert" / f"{demos - 1}.npz"))
        hours += demos * SECONDS_DEMO[args.render or args.collect_obs == "visual"] / 3600
    return Job(
        f"data:{env}-{task or 'p2e'}",
        command(
            "dreamer_collect.py", args.collect_args, agent=agent, env=env, task=task,
            obs=args.collect_obs, total_steps=steps, num_demos=demos if task else None,
            data_dir=args.data_dir, runs_dir=runs, no_render=not args.render,
        ),
        markers=tuple(markers),
        hours=hours,
        partial=(str(buffer / "*.npz"), str(runs / f"{run}__{agent}__*" / "agent.pt")),
    )  # fmt: skip


def dataset_jobs(args: Args, env: str, name: str) -> list[Job]:
    """The jobs that make the datasets of a --body-data or --demo name (mix: its parts)."""
    parts = WALKER_MIX if name == "mix" else (name,)
    return [
        random_job(args, env) if p == "random" else agent_job(args, env, None if p == "p2e" else p)
        for p in parts
    ]


def world_model_job(
    args: Args, env: str, body: str, obs: str, seed: int, deps: list[Job], idm: bool = False
) -> Job:
    """AIME phase 1 only (`aime.py --phase1-only`): the world model, no demonstrations; with
    `idm` the model with the inverse dynamics head of Appendix C (Figure 5's `--use-idm`)."""
    # names the environment whose observation keys are read; nothing else
    task = TASKS[env][0] if env in TASKS else CPU_EMBODIMENTS[env].tasks[0]
    runs = Path(args.grid_dir) / "world_models"
    name = "phase1-idm" if idm else "phase1"
    run_dir = runs / f"{env}__{obs}__{body}__phase1__{name}__{seed}"
    epochs = value(args, "phase1_epochs", "aime_phase1_epochs") / DEFAULTS["aime_phase1_epochs"]
    return Job(
        f"wm{'-idm' if idm else ''}:{env}-{body}-{obs}-s{seed}",
        command(
            "aime.py", args.aime_args, env=env, task=task, body_data=body, obs=obs, seed=seed,
            data_dir=args.data_dir, runs_dir=runs, exp_name=name, phase1_only=True,
            phase1_epochs=args.phase1_epochs, steps_per_epoch=args.steps_per_epoch, use_idm=idm,
        ),
        markers=(str(run_dir / "world_model.pt"),),
        deps=tuple(j.name for j in deps),
        hours=HOURS_AIME_PHASE1[obs] * epochs * steps_scale(args),
        partial=(str(run_dir / "checkpoint.pt"),),
    )  # fmt: skip


def run_job(
    args: Args, method: Method, env: str, body: str, task: str, obs: str, seed: int,
    deps: list[Job], name: str = "", flags: Optional[dict[str, object]] = None,
) -> Job:  # fmt: skip
    """A phase-2 AIME run or a vmail_obs.py run on its world model (deps[0]), or a bco0.py run;
    all after the demonstrations (deps[-1]). `name` (default: the method) names the run and
    `flags` are its own (the figures' variants: `num_demos`, `kl_only`, `method`, ...)."""
    runs = Path(args.grid_dir) / "results"
    name, flags = name or method, flags or {}
    folder_body = "none" if flags.get("method") == "bc" else body  # the oracle reads no body data
    run_dir = runs / f"{env}-{task}__{obs}__{folder_body}__{task}__{name}__{seed}"
    own: dict[str, object] = dict(
        env=env, body_data=body, demo=task, obs=obs, seed=seed, data_dir=args.data_dir,
        runs_dir=runs, num_demos=args.num_demos, phase2_epochs=args.phase2_epochs,
        steps_per_epoch=args.steps_per_epoch, eval_episodes=args.eval_episodes,
        exp_name=name if name != method else None,
    )  # fmt: skip
    own.update(flags)  # the variant's own flags win
    if method in ("aime", "vmail"):  # both imitate with the wm job's model
        own["world_model"] = deps[0].markers[0]
        budget = value(args, "phase2_epochs", "aime_phase2_epochs") / DEFAULTS["aime_phase2_epochs"]
        hours, extra = HOURS_AIME_PHASE2[obs] * budget, args.aime_args
        if method == "vmail":  # no V-MAIL figure of ours: AIME's phase-2 hours stand in
            del own["body_data"]  # vmail_obs.py reads it from the world model
            own["task"], extra = task, args.vmail_args
    else:
        own["phase1_epochs"] = args.phase1_epochs
        epochs = value(args, "phase1_epochs", "bco0_phase1_epochs")
        epochs += value(args, "phase2_epochs", "bco0_phase2_epochs")
        budget = epochs / (DEFAULTS["bco0_phase1_epochs"] + DEFAULTS["bco0_phase2_epochs"])
        hours, extra = HOURS_BCO0[obs] * budget, args.bco0_args
    return Job(
        f"{method if name == method else f'{method}/{name}'}:{env}-{cell_name(body, task)}-{obs}"
        f"-s{seed}",
        command(SCRIPTS[method], extra, **own),
        markers=(str(run_dir / "results.json"),),
        deps=tuple(j.name for j in deps),
        hours=hours * steps_scale(args),
        partial=(str(run_dir / "checkpoint.pt"),),
    )


def steps_scale(args: Args) -> float:
    return value(args, "steps_per_epoch") / DEFAULTS["steps_per_epoch"]


def build_grid(args: Args) -> list[Job]:
    """Every job of the grid `args` selects, in an order that respects the dependencies."""
    args = budgets(args)
    if "visual" in args.obs and not args.render:
        raise SystemExit("error: --no-render makes datasets without images; drop --obs visual")
    wanted = [parse_cell(c) for c in args.cells or (("mix->run",) if args.figure else ())]
    for body, task in wanted:
        if not any(body in BODIES[e] and task in TASKS[e] for e in args.envs):
            cells = [cell_name(b, t) for e in args.envs for b in BODIES[e] for t in TASKS[e]]
            raise SystemExit(f"error: no cell {body}->{task} in {args.envs}; cells: {cells}")
    jobs: dict[str, Job] = {}  # by name: datasets and world models are shared by many cells

    def add(*new: Job) -> list[Job]:
        return [jobs.setdefault(job.name, job) for job in new]

    runs: list[Job] = []
    for env in args.envs:
        for obs in args.obs:
            for seed in args.seeds or (1,):
                for body in BODIES[env]:
                    tasks = [t for t in TASKS[env] if not wanted or (body, t) in wanted]
                    if not tasks:
                        continue
                    body_data = add(*dataset_jobs(args, env, body))
                    if {"aime", "vmail"} & set(args.methods) or args.figure:
                        (wm,) = add(world_model_job(args, env, body, obs, seed, body_data))
                    for task in tasks:
                        (demo,) = add(*dataset_jobs(args, env, task))
                        if args.figure == 4:  # AIME, BCO(0) and the BC oracle per count
                            for n in DEMO_COUNTS:
                                runs += add(
                                    run_job(args, "aime", env, body, task, obs, seed, [wm, demo],
                                            f"aime-demos-{n}", {"num_demos": n}),
                                    run_job(args, "bco0", env, body, task, obs, seed,
                                            [*body_data, demo], f"bco0-demos-{n}",
                                            {"num_demos": n}),
                                    run_job(args, "bco0", env, body, task, obs, seed, [demo],
                                            f"bc-demos-{n}", {"num_demos": n, "method": "bc"}),
                                )  # fmt: skip
                        elif args.figure == 5:  # AIME, its ablations, IIDM and BCO(0)
                            (wm_idm,) = add(
                                world_model_job(args, env, body, obs, seed, body_data, idm=True)
                            )
                            for method, name, own in FIGURE5:
                                model = wm_idm if own.get("use_idm") else wm
                                deps = [model, demo] if method == "aime" else [*body_data, demo]
                                runs += add(
                                    run_job(
                                        args, method, env, body, task, obs, seed, deps, name, own
                                    )
                                )
                        else:
                            for method in args.methods:
                                deps = [*body_data, demo] if method == "bco0" else [wm, demo]
                                runs += add(run_job(args, method, env, body, task, obs, seed, deps))
    if runs:
        add(Job(
            "table",
            command("results_table.py", "", runs_dir=Path(args.grid_dir) / "results"),
            markers=(str(Path(args.grid_dir) / "results" / "results.md"),),
            deps=tuple(j.name for j in runs),
            refresh=True,
        ))  # fmt: skip
    return topological_order(list(jobs.values()))


def cpu_setup(args: Args) -> Args:
    """`--cpu`'s folders (cpu/ in --data-dir and --grid-dir) and seeds (CPU_SEEDS unless
    --seeds); the paper grid's selections and budgets are refused in one line."""
    default = Args()
    mine = ("envs", "obs", "methods", "cells", "figure", "quick", *QUICK, "collect_obs", "render")
    given = [f"--{k.replace('_', '-')}" for k in mine if getattr(args, k) != getattr(default, k)]
    if given:
        raise SystemExit(f"error: --cpu runs its own cells and budgets (grid.py's CPU_*): drop "
                         f"{' '.join(given)}")  # fmt: skip
    return replace(
        args, seeds=args.seeds or CPU_SEEDS, data_dir=str(Path(args.data_dir) / "cpu"),
        grid_dir=str(Path(args.grid_dir) / "cpu"), **CPU_DATA,  # type: ignore[arg-type]
    )  # fmt: skip


def cpu_grid(args: Args) -> list[Job]:
    """The CPU benchmark's jobs (`args` from `cpu_setup`): for each embodiment of
    CPU_EMBODIMENTS its random data, each task's scripted demonstrations, and for each seed the
    world model, then AIME, BCO(0), IIDM, the BC oracle and V-MAIL's learner on each task;
    on CPU_FIGURES' cell also AIME, BCO(0) and BC at CPU_DEMO_COUNTS (Figure 4) and AIME's
    ablations (Figure 5); then the table over seeds."""
    extra = {f"{k}_args": f"{CPU_ARGS[k]} {getattr(args, f'{k}_args')}".strip() for k in CPU_ARGS}
    args = replace(args, **extra)  # type: ignore[arg-type]
    data, hours = Path(args.data_dir), {k: v / 3600 for k, v in CPU_SECONDS.items()}
    n, demos = CPU_DATA["random_trajectories"], CPU_DATA["collect_demos"]
    buffer = CPU_BUFFER_EPISODES
    runs: list[Job] = []
    order: list[Job] = []
    for env, e in CPU_EMBODIMENTS.items():
        repeat, covered = e.action_repeat, {b.split("+")[1] for b in e.bodies if "+" in b}
        random = Job(
            f"data:{env}-random",
            command("dreamer_collect.py", args.collect_args, agent="random", env=env,
                    task=e.body_task, action_repeat=repeat, num_trajectories=n, no_render=True,
                    data_dir=data),
            markers=(str(data / f"{env}-random" / f"{n - 1}.npz"),),
            hours=hours["random"],
        )  # fmt: skip
        experts = {  # the demonstrations and, for a task a body dataset covers, its buffer
            task: Job(
                f"data:{env}-{task}",
                command("dreamer_collect.py", args.collect_args, agent="scripted", env=env,
                        task=task, action_repeat=repeat, num_demos=demos, no_render=True,
                        buffer_episodes=buffer if task in covered else None, data_dir=data),
                markers=(str(data / f"{env}-{task}-expert" / f"{demos - 1}.npz"),
                         *([str(data / f"{env}-{task}-buffer" / f"{buffer - 1}.npz")]
                           if task in covered else [])),
                hours=hours["scripted"],
            )
            for task in e.tasks
        }  # fmt: skip
        # the data jobs each body dataset waits for: the random data, and a covered task's buffer
        bodies = {b: [random, *([experts[b.split("+")[1]]] if "+" in b else [])] for b in e.bodies}
        order += [random, *experts.values()]
        for seed in args.seeds or CPU_SEEDS:
            for body, made in bodies.items():
                wm = world_model_job(args, env, body, e.obs, seed, made)
                order.append(replace(wm, hours=hours["wm"]))
                for task in e.tasks:
                    demo = experts[task]
                    jobs: list[tuple[Method, str, dict[str, object], list[Job]]] = [
                        ("aime", "aime", {}, [wm, demo]),
                        ("bco0", "bco0", {}, [*made, demo]),
                        ("bco0", "iidm", {"method": "iidm"}, [*made, demo]),
                        ("vmail", "vmail", {}, [wm, demo]),
                    ]
                    if body == e.bodies[0]:  # the BC oracle reads no body data: once per task
                        jobs.append(("bco0", "bc", {"method": "bc"}, [demo]))
                    if (env, body, task) == CPU_FIGURES:  # Figure 4: other demonstration counts
                        for k in CPU_DEMO_COUNTS:
                            jobs += [
                                ("aime", f"aime-demos-{k}", {"num_demos": k}, [wm, demo]),
                                ("bco0", f"bco0-demos-{k}", {"num_demos": k}, [*made, demo]),
                                ("bco0", f"bc-demos-{k}", {"num_demos": k, "method": "bc"}, [demo]),
                            ]
                        # Figure 5: AIME's ablations (IIDM and BCO(0) are the main runs)
                        wm_idm = world_model_job(args, env, body, e.obs, seed, made, idm=True)
                        order.append(replace(wm_idm, hours=hours["wm"]))
                        jobs += [
                            ("aime", "kl-only", {"kl_only": True}, [wm, demo]),
                            ("aime", "rec-only", {"rec_only": True}, [wm, demo]),
                            ("aime", "idm", {"use_idm": True}, [wm_idm, demo]),
                        ]
                    for method, name, own, deps in jobs:
                        job = run_job(args, method, env, body, task, e.obs, seed, deps, name, own)
                        kind = str(own.get("method", method))  # bco0.py's --method: its own cost
                        runs.append(replace(job, hours=hours[kind]))
    order += runs
    order.append(Job(
        "table",
        command("results_table.py", "", runs_dir=Path(args.grid_dir) / "results", spread="seeds"),
        markers=(str(Path(args.grid_dir) / "results" / "results.md"),),
        deps=tuple(j.name for j in runs),
        refresh=True,
    ))  # fmt: skip
    return topological_order(order)


def topological_order(jobs: Sequence[Job]) -> list[Job]:
    """The jobs in an order where each comes after its dependencies; among the jobs whose
    dependencies are placed, the one heading the costliest chain of dependents comes first (the
    local launcher starts jobs in this order)."""
    by_name = {j.name: j for j in jobs}
    dependents: dict[str, list[str]] = {j.name: [] for j in jobs}
    for job in jobs:
        for d in job.deps:
            if d not in by_name:
                raise ValueError(f"{job.name} depends on an unknown job {d}")
            dependents[d].append(job.name)
    chain: dict[str, float] = {}  # hours of the job and its costliest chain of dependents

    def chain_hours(name: str, seen: tuple[str, ...] = ()) -> float:
        if name in seen:
            raise ValueError(f"dependency cycle: {' -> '.join((*seen, name))}")
        if name not in chain:
            after = [chain_hours(d, (*seen, name)) for d in dependents[name]]
            chain[name] = by_name[name].hours + max(after, default=0.0)
        return chain[name]

    position = {j.name: i for i, j in enumerate(jobs)}
    order: list[Job] = []
    placed: set[str] = set()
    while len(order) < len(jobs):
        ready = [j for j in jobs if j.name not in placed and all(d in placed for d in j.deps)]
        if not ready:  # every job left waits on another one left
            raise ValueError(f"dependency cycle among {sorted(set(by_name) - placed)}")
        best = min(ready, key=lambda j: (-chain_hours(j.name), position[j.name]))
        order.append(best)
        placed.add(best.name)
    return order


# ---------------------------------------------------------------------------------------------
# Finished, partial
# ---------------------------------------------------------------------------------------------
def finished(job: Job, by_name: dict[str, Job]) -> bool:
    """Whether all of the job's markers exist (and, for `refresh` jobs, none is older than a
    dependency's marker)."""
    if not all(Path(m).exists() for m in job.markers):
        return False
    if not job.refresh:
        return True
    deps = [Path(m) for d in job.deps for m in by_name[d].markers if Path(m).exists()]
    oldest = min(Path(m).stat().st_mtime for m in job.markers)
    return all(p.stat().st_mtime <= oldest for p in deps)


def launch_command(job: Job) -> list[str]:
    """The job's command, with --resume where a partial run of it exists."""
    partial = any(glob.glob(pattern) for pattern in job.partial)
    return [*job.command, "--resume"] if partial else list(job.command)


def log_path(grid_dir: str, job: Job) -> Path:
    return (
        Path(grid_dir) / "logs" / (re.sub(r"[^\w.-]", "_", job.name.replace("->", "-to-")) + ".log")
    )


def open_log(path: Path, command: Sequence[str]) -> IO[bytes]:
    """A job's log opened for appending (a failed attempt's output stays above the next one),
    headed by the time and the command of this attempt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.open("ab")
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
    log.flush()
    return log


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def dry_run(order: list[Job], unit: str = "GPU") -> None:
    """Each job in order (cost, dependencies, command), then the cost of each kind and in all, in
    `unit`-hours (GPU: one job on one GPU; CPU: on 2 CPU cores)."""
    by_name = {j.name: j for j in order}
    done = {j.name for j in order if finished(j, by_name)}
    for i, job in enumerate(order, 1):
        state = "  [finished]" if job.name in done else ""
        print(f"[{i}] {job.name}  {job.hours:.2f} {unit}-h{state}")
        deps = ", ".join(job.deps[:4]) + (f", ... ({len(job.deps)} jobs)" if job.deps[4:] else "")
        print(f"    after: {deps or '-'}")
        print(f"    {shlex.join(launch_command(job))}")
    kinds: dict[str, list[Job]] = {}
    for job in order:
        kinds.setdefault(job.name.split(":")[0], []).append(job)
    print()
    for kind, group in kinds.items():
        print(f"{kind + ':':7}{len(group):4d} jobs {sum(j.hours for j in group):9.1f} {unit}-hours")
    total = sum(j.hours for j in order)
    left = sum(j.hours for j in order if j.name not in done)
    print(
        f"total: {len(order)} jobs, {total:.1f} {unit}-hours ({total / 24:.1f} {unit}-days); "
        f"{len(done)} finished, {left:.1f} {unit}-hours left"
    )


def visible_gpus() -> list[str]:
    """The GPU ids a worker may pin with CUDA_VISIBLE_DEVICES (within the caller's own list)."""
    import torch

    count = torch.cuda.device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in given.split(",")] if given else [str(i) for i in range(count)]
    return ids[:count]


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    slot: int
    start: float
    log: IO[bytes]


def run_local(order: list[Job], args: Args) -> dict[str, str]:
    """Run the jobs, `args.workers` at a time, each once its dependencies are finished.

    Returns each job's outcome: skipped (finished before), done, failed (non-zero exit, or its
    markers missing after it), or blocked (a dependency failed or was blocked)."""
    by_name = {j.name: j for j in order}
    gpus = visible_gpus()
    status: dict[str, str] = {}
    pending = list(order)
    running: dict[str, Running] = {}
    free = list(range(args.workers))  # worker slots; slot i pins GPU i modulo their number

    def report(name: str, outcome: str, detail: str = "") -> None:
        status[name] = outcome
        print(f"{time.strftime('%H:%M:%S')} {outcome:>7} {name}{detail}", flush=True)

    def decide(job: Job) -> str:
        """skipped, blocked, waiting or ready."""
        if not job.refresh and finished(job, by_name):  # never run again, whatever its deps
            return "skipped"
        states = [status.get(d) for d in job.deps]
        if any(s in ("failed", "blocked") for s in states):
            return "blocked"
        if not all(s in ("done", "skipped") for s in states):
            return "waiting"
        return "skipped" if finished(job, by_name) else "ready"

    def start(job: Job, slot: int) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        where = ""
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}"
        command = launch_command(job)
        path = log_path(args.grid_dir, job)
        log = open_log(path, command)
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        running[job.name] = Running(proc, slot, time.time(), log)
        report(job.name, "started", f"{where} -> {path}")

    try:
        while pending or running:
            settled = False
            for name, run in list(running.items()):
                code = run.proc.poll()
                if code is None:
                    continue
                run.log.close()
                del running[name]
                free.append(run.slot)
                took = f" ({time.time() - run.start:.0f} s)"
                if code == 0 and finished(by_name[name], by_name):
                    report(name, "done", took)
                else:
                    why = f"exit code {code}" if code else "exit code 0 but its markers are missing"
                    log = log_path(args.grid_dir, by_name[name])
                    report(name, "failed", f"{took}: {why}, see {log}")
            for job in list(pending):
                outcome = decide(job)
                if outcome == "waiting" or (outcome == "ready" and not free):
                    continue
                settled = True
                pending.remove(job)
                if outcome == "ready":
                    start(job, free.pop(0))
                elif outcome == "blocked":
                    bad = [d for d in job.deps if status.get(d) in ("failed", "blocked")]
                    report(job.name, "blocked", f" (after {', '.join(bad)})")
                else:
                    report(job.name, "skipped", " (finished)")
            if running:
                time.sleep(0.2)
            elif pending and not settled:  # only possible with a dependency outside the list
                raise ValueError(f"jobs wait on jobs outside the grid: {[j.name for j in pending]}")
    except KeyboardInterrupt:  # stop the jobs this grid started, then stop
        for run in running.values():
            run.proc.terminate()
        for run in running.values():
            run.proc.wait()
        raise
    return status


def run_logged(command: list[str], log: str) -> None:
    """A SLURM job's body: run the command with its output appended to the log, fail if it fails."""
    with open_log(Path(log), command) as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True)


def submit_slurm(order: list[Job], args: Args) -> dict[str, str]:
    """Submit every unfinished job through submitit, each with an afterok dependency on its
    submitted dependencies (dependents of a failed job are cancelled: kill-on-invalid-dep)."""
    try:
        submitit: Any = importlib.import_module("submitit")
    except ImportError:
        raise SystemExit(
            "error: --launcher slurm submits through submitit, which is not installed: "
            "pip install submitit"
        ) from None
    by_name = {j.name: j for j in order}
    grid = Path(args.grid_dir)
    local = args.submitit_cluster == "local"
    executor = submitit.AutoExecutor(
        folder=str(grid / "slurm" / "%j"), cluster=args.submitit_cluster
    )
    ids: dict[str, str] = {}
    submitted: dict[str, Any] = {}
    status: dict[str, str] = {}
    succeeded: dict[str, bool] = {}  # local: each job's outcome, waited for once

    def success(name: str) -> bool:
        if name not in succeeded:
            ok = awaited(submitted[name], name) and finished(by_name[name], by_name)
            succeeded[name] = ok
        return succeeded[name]

    for job in order:
        if finished(job, by_name) and not (job.refresh and any(d in ids for d in job.deps)):
            status[job.name] = "skipped"
            print(f"skipped {job.name} (finished)")
            continue
        after = [ids[d] for d in job.deps if d in ids]
        if local:  # no scheduler holds the dependents back: wait for each dependency here
            failed = [d for d in job.deps if d in submitted and not success(d)]
            if failed or any(status.get(d) == "blocked" for d in job.deps):
                status[job.name] = "blocked"
                print(f"blocked {job.name}: a dependency failed")
                continue
        minutes = args.slurm_time_min or max(60, math.ceil(2 * job.hours * 60))
        params: dict[str, Any] = {
            "name": job.name, "timeout_min": minutes, "gpus_per_node": args.slurm_gpus_per_job,
            "cpus_per_task": args.slurm_cpus_per_job,
            "slurm_additional_parameters": (
                {"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"}
                if after else {}
            ),
        }  # fmt: skip
        if args.slurm_partition:
            params["slurm_partition"] = args.slurm_partition
        if args.slurm_mem_gb:
            params["mem_gb"] = args.slurm_mem_gb
        executor.update_parameters(**params)
        log = log_path(args.grid_dir, job)
        submitted[job.name] = executor.submit(run_logged, launch_command(job), str(log.resolve()))
        ids[job.name] = str(submitted[job.name].job_id)
        status[job.name] = "submitted"
        print(f"submitted {job.name}: job {ids[job.name]}" + (f" after {after}" if after else ""))
    if local:  # the last jobs too, so that the grid is done when this returns
        for name in submitted:
            status[name] = "done" if success(name) else "failed"
    return status


def awaited(job: Any, name: str) -> bool:
    """Wait for a submitit job; whether it succeeded (its error printed where it did not)."""
    try:
        job.result()
    except Exception as e:  # a failed command: submitit re-raises its error here
        print(f"failed {name}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}")
        return False
    return True


def launch(order: list[Job], args: Args) -> int:
    """Print, submit or run the jobs, each one's outcome in {grid_dir}/report.json; the exit
    code: 1 if a job failed or was blocked."""
    if args.workers < 1:
        raise SystemExit("error: --workers must be at least 1")
    if args.dry_run:
        dry_run(order, "CPU" if args.cpu else "GPU")
        return 0
    status = submit_slurm(order, args) if args.launcher == "slurm" else run_local(order, args)
    outcomes = ("submitted", "done", "skipped", "failed", "blocked")
    counts = {s: sum(v == s for v in status.values()) for s in outcomes}
    told = [f"{n} {s}" for s, n in counts.items() if n or s != "submitted"]
    print(f"grid: {len(order)} jobs: " + ", ".join(told))
    report = Path(args.grid_dir) / "report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(status, indent=2))
    return 1 if counts["failed"] or counts["blocked"] else 0


def main(args: Args) -> int:
    if args.cpu:
        args = cpu_setup(args)
        order = cpu_grid(args)
    else:
        args = budgets(args)
        order = build_grid(args)
    if not order:
        raise SystemExit("error: the filters select no job")
    return launch(order, args)


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
