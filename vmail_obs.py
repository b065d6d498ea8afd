"""V-MAIL on AIME's benchmark: demonstrations without actions, AIME's frozen world model.

    python aime.py --env walker --body-data mix --obs visual --phase1-only --exp-name phase1
    python vmail_obs.py --env walker --demo run --obs visual \
        --world-model runs/walker__visual__mix__phase1__phase1__1/world_model.pt

AIME's benchmark gives demonstrations of observations alone and allows no interaction before the
evaluation; V-MAIL's Algorithm 1 (vmail.py) needs both, and the V-MAIL paper leaves this setting to
future work (sections 5 and 6). Here V-MAIL's learner (vmail.py: the discriminator of eq. (23),
the policy's value expansion of eq. (22)) learns inside the world model that `aime.py
--phase1-only` trained on an embodiment dataset, frozen: V-MAIL and AIME imitate with the very same
model, and are evaluated on the same initial states (seed + 100 + i), so their scores are paired.

Per iteration, and where each step lives:
    sample x^E_0:T-1 from the demonstrations               `imitate`: demo.sample(...)
    for t: a_t-1 ~ pi(. | z^E_t-1),
           z^E_t ~ q(z_t | x^E_t, z^E_t-1, a_t-1)          `expert_latents`
    latent rollouts of pi from every z^E_t                 `vmail.imagine`
    update D(z) with z^E and the rollouts' z^pi_1:K        `vmail.discriminator_loss`, eq. (23)
    update pi with the reward D(z^pi_tau+1)                `vmail.policy_losses`, eq. (22)

Choices (vmail.py's implementation details 2-4 and 7-9 hold here too):
 1. Expert latents without actions: the frozen model filters each demonstration window from the
    zero state with a_t-1 drawn from the current policy at z_t-1 (no gradient), the way AIME's
    phase 2 fills in the missing actions; each observation corrects the state.
 2. The discriminator reads states only, D(z). The rollouts start from the expert latents; their
    states z_1..z_K (the ones the policy's actions reach) are the policy's samples, and the reward
    of a step is D (log D with --reward log_d) of the state it reaches.
 3. The world model is `--world-model`, required and never trained here; aime.py refuses one
    trained for another embodiment, setting or action repeat. The embodiment dataset it records
    names the run and the results' cell (`results_table.py`: V-MAIL-MDP, V-MAIL-Visual, ...).
 4. Budgets are AIME's phase 2: 500 epochs of 100 iterations, 100 demonstrations, 100 evaluation
    episodes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import torch
import tyro
from torch import Tensor, nn

import vmail
from common import datasets, replay
from common.envs import EnvError, check_env, make_env
from common.evaluation import evaluate, expert_return, scores
from common.model_files import Filter, ModelSettings, check_folder_form, read_filter, trained_on
from common.nets import observation
from common.rssm import RSSM
from common.run import (
    POSITIVE,  # flags' ranges
    Run,
    add_to,
    autocast,
    check_flags,
    derived,
    label,
    seed_everything,
)


@dataclass
class Args(vmail.LearnerArgs):
    """V-MAIL's learner on AIME's benchmark: observation-only demonstrations, AIME's frozen
    world model (made by `aime.py --phase1-only`), no interaction before the evaluation.

    Example: python vmail_obs.py --env walker --demo run --obs visual --world-model WM"""

    exp_name: str = "vmail"
    """name of this experiment, part of the run's folder name"""
    env: str = "walker"
    """embodiment (dm_control domain): walker or cheetah (or another suite domain)"""
    task: Annotated[Optional[str], derived("the --demo task, else walk; cheetah run", "STR")] = None
    """task to imitate and evaluate"""
    demo: Annotated[Optional[str], derived("the task's", "STR")] = None
    """demonstrations: a task name (run -> {env}-run-expert) or a path; their
    actions, where held, are never read"""
    obs: Literal["mdp", "lpomdp", "visual"] = "visual"
    """observation setting: true state, positions only, or 64x64 images"""
    num_demos: Annotated[int, POSITIVE] = 100
    """demonstration trajectories used, the first N (AIME's 100)"""
    world_model: Annotated[Optional[str], derived("none; required", "PATH")] = None
    """required: the frozen world model, a world_model.pt of `aime.py --phase1-only` or a folder
    in the AIME authors' published form (model.pt + config.yaml)"""
    phase2_epochs: Annotated[int, POSITIVE] = 500
    """imitation epochs, in the model (AIME's phase-2 budget)"""
    steps_per_epoch: Annotated[int, POSITIVE] = 100
    """iterations per epoch"""
    batch_size: Annotated[int, POSITIVE] = 50
    """demonstration sequences per batch"""
    horizon: Annotated[int, POSITIVE] = 50
    """records per sequence"""
    action_repeat: Annotated[
        Optional[int], derived("the demonstrations' info.json, else the authors'", "INT"), POSITIVE
    ] = None
    """simulator steps per action; without info.json the AIME authors' configs/env/*.yaml give it
    (cartpole 8, reacher and ball_in_cup 4, every other domain 2)"""
    eval_episodes: Annotated[int, POSITIVE] = 100
    """evaluation episodes at the end (as aime.py)"""
    eval_every: int = 10
    """evaluate every this many epochs (0: never)"""
    eval_episodes_during: Annotated[int, POSITIVE] = 5
    """episodes of each evaluation during training"""


@dataclass
class Config(Args):
    """The flags with every default filled in (`resolve`)."""

    task: str = ""
    demo: str = ""
    world_model: str = ""
    action_repeat: int = 2


def resolve(args: Args) -> Config:
    """Check the flags and fill the defaults: the task, its demonstrations, and the action repeat
    (the demonstrations' info.json)."""
    check_flags(args)  # every flag's range (its annotation), learning rates, --device
    if not args.world_model:
        raise SystemExit(
            "error: --world-model is required: a world_model.pt made by `aime.py --phase1-only`"
        )
    model = Path(args.world_model)
    if not model.exists():
        raise SystemExit(f"error: --world-model {model} does not exist")
    check_folder_form(model)  # before any dataset is read
    vmail.check_learner(args)
    demo_task = datasets.dataset_task(args.env, args.demo) if args.demo else None
    task = args.task or demo_task or ("run" if args.env == "cheetah" else "walk")
    check_env(f"{args.env}-{task}", args.obs)
    folders = datasets.dataset_folders(args.data_dir, args.env, args.demo or task, "demo")
    repeat = datasets.dataset_action_repeat(folders, args.action_repeat, args.env)
    return Config(
        **{**asdict(args), "task": task, "demo": args.demo or task, "action_repeat": repeat}
    )


@torch.no_grad()
def expert_latents(
    encoder: nn.Module,
    rssm: RSSM,
    batch: dict[str, Tensor],
    keys: tuple[str, ...],
    actor: nn.Module,
) -> Tensor:
    """z^E_0:T-1 without the expert's actions (choice 1): from the zero state,
    a_t-1 ~ pi(a_t-1 | z_t-1), then z_t ~ q(z_t | x_t, z_t-1, a_t-1). Features [T, B, F]."""
    embed = encoder(observation(batch, keys))  # [T, B, embed]
    h, s = rssm.initial(embed.shape[1], embed.device)
    proj = rssm.project_embed(embed)
    feats = []
    for t in range(len(embed)):
        action = actor(torch.cat([h, s], -1)).rsample()  # a_t-1 ~ pi(a_t-1 | z_t-1)
        h, s, _, _ = rssm.obs_step(h, s, action, proj[t])  # z_t ~ q(z_t | x_t, z_t-1, a_t-1)
        feats.append(torch.cat([h, s], -1))
    return torch.stack(feats)


def imitation_step(
    rssm: RSSM, learner: vmail.Learner, start: tuple[Tensor, Tensor], expert_feat: Tensor,
    cfg: vmail.LearnerArgs,
) -> dict[str, Tensor]:  # fmt: skip
    """V-MAIL's lines 17-19 in the frozen model: one Adam step each of D(z) (eq. 23), pi (eq. 22)
    and V, from the expert latents `expert_feat` and rollouts from `start`."""
    with autocast(cfg.precision, expert_feat.device):  # --precision bf16: products in bfloat16
        losses = vmail.policy_losses(rssm, learner, start, expert_feat, None, cfg)
    return {**losses.metrics, **vmail.adam_steps(learner.steps(losses), cfg.grad_clip)}


def imitate(
    run: Run, cfg: Config, demo: datasets.TrajectoryDataset, model: Filter,
    learner: vmail.Learner, keys: tuple[str, ...],
) -> None:  # fmt: skip
    """`phase2_epochs` x `steps_per_epoch` iterations in the frozen model, a checkpoint after
    each epoch."""
    device, deter = torch.device(cfg.device), model.rssm.cfg.deter
    parts = {"model": model, **learner.parts(cfg.task)}
    for epoch in run.epochs(
        "imitation", cfg.phase2_epochs, parts, [demo], "V-MAIL in AIME's model"
    ):
        sums: dict[str, Tensor] = {}
        for _ in range(cfg.steps_per_epoch):
            expert = demo.sample(cfg.batch_size, cfg.horizon, device)
            with run.autocast():
                feat = expert_latents(model.encoder, model.rssm, expert, keys, learner.actor)
            start = (feat[..., :deter], feat[..., deter:])  # rollouts from every expert latent
            add_to(sums, imitation_step(model.rssm, learner, start, feat, cfg))
        n = cfg.steps_per_epoch
        means = run.log("imitation", sums, n, (epoch + 1) * n)
        run.check_finite(means, f"in epoch {epoch}")
        run.show(expert_d=f"{means['expert_d']:.2f}", policy_d=f"{means['policy_d']:.2f}")
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.phase2_epochs:
            returns = evaluate(
                f"{cfg.env}-{cfg.task}", cfg.obs, cfg.action_repeat, cfg.seed,
                cfg.eval_episodes_during,
                vmail.mode_actor(model.encoder, model.rssm, learner.actor, keys, cfg),
            )  # fmt: skip
            run.log_returns(returns, epoch + 1)


def main(args: Args) -> dict[str, Any]:
    cfg = resolve(args)
    env = make_env(f"{cfg.env}-{cfg.task}", cfg.obs)
    keys = env.obs_keys
    shapes = {k: env.record_shapes[k] for k in (*keys, "pre_action")}
    # the demonstrations' observations, every file checked before any training; never actions
    datasets.require_datasets(datasets.dataset_folders(cfg.data_dir, cfg.env, cfg.demo, "demo"))
    demo = datasets.open_dataset(
        cfg.data_dir, cfg.env, cfg.demo, "demo", keys, shapes, cfg.num_demos, False, cfg.seed + 1,
        cache_dir=cfg.cache_dir,
    )  # fmt: skip
    expert = expert_return(cfg.env, cfg.task, demo)
    body = trained_on(Path(cfg.world_model), cfg.env)  # names the run and its cell
    if body is None:
        raise SystemExit(
            f"error: {cfg.world_model} records no embodiment dataset; is it aime.py's?"
        )
    name = f"{cfg.env}-{cfg.task}__{cfg.obs}__{label(body)}__{label(cfg.demo)}__{cfg.exp_name}"
    run = Run(cfg.runs_dir, f"{name}__{cfg.seed}", cfg, cfg.resume)

    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    # AIME's encoder and RSSM, made by `aime.py --phase1-only` (refused if made for another
    # embodiment, setting or action repeat), frozen
    dims = {k: math.prod(env.record_shapes[k]) for k in keys}
    wanted = ModelSettings(cfg.env, cfg.obs, cfg.action_repeat)  # any layout
    model = read_filter(Path(cfg.world_model), wanted, dims, env.action_dim)
    model = model.to(device).requires_grad_(False)
    learner = vmail.make_learner(model.rssm.feature_dim, env.action_dim, False, cfg)  # D(z)
    imitate(run, cfg, demo.data, model, learner, keys)

    start = time.time()
    video = run.video("final")
    returns = evaluate(
        f"{cfg.env}-{cfg.task}", cfg.obs, cfg.action_repeat, cfg.seed, cfg.eval_episodes,
        vmail.mode_actor(model.encoder, model.rssm, learner.actor, keys, cfg), video,
    )  # fmt: skip
    return run.finish({
        "algorithm": "vmail", "mode": "obs_only", "env": cfg.env, "task": cfg.task,
        "obs": cfg.obs, "body_data": body, "demo": cfg.demo, "num_demos": cfg.num_demos,
        "seed": cfg.seed,
        **scores(returns, expert, f"{cfg.env}-{cfg.task}", cfg.action_repeat, cfg.seed),
        "env_steps": {},  # no interaction
        "wall_time_s": {**run.wall, "evaluation": time.time() - start},
        "world_model": cfg.world_model,
    })  # fmt: skip


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (replay.DatasetError, EnvError) as e:  # bad data or task: the file or name, the problem
        raise SystemExit(f"error: {e}") from e
