"""V-MAIL: Variational Model-Based Adversarial Imitation Learning (Rafailov et al., NeurIPS 2021).

    python vmail.py --env walker --task walk --obs visual --demo walk          # Algorithm 1
    python vmail.py --zero-shot --source-tasks stand run --task walk          # Algorithm 2
    python vmail.py --obs-only --env walker --body-data mix --demo run --obs visual   # AIME's

A variational world model (an RSSM) learns the environment from the policy's experience and the
demonstrations (the ELBO, eq. 21); a discriminator learns to tell the latent states and actions
the model infers from the demonstrations from those of on-policy rollouts inside the model
(eq. 23); the policy climbs a K-step value expansion of log D through the learned dynamics
(eq. 22). The policy acts on the state the model filters from real observations.

Algorithm 1 of the paper, and where each line lives here:
    collect T steps: z_t ~ q(.|x_t, z_t-1, a_t-1),
      a_t ~ pi(a_t | z_t), step the environment          `run_episodes`
    add the episode to B_pi                               `train_online`: buffer.add(...)
    per training iteration:
      sample {x_1:T, a_1:T-1} ~ B_E u B_pi                `sample_union`
      optimise the model with eq. (7) = eq. (21)          `model_step`, `elbo_loss`
      sample {x^E, a^E} ~ B_E; z^E ~ q(.|x^E, a^E)        `expert_latents`
      latent rollouts z^pi_1:H of pi in the model         `imagine`
      update D with z^E, z^pi (eq. 6 = eq. 23)            `discriminator_loss`
      update pi to improve eq. (8) = eq. (22)             `policy_losses`, `value_expansion`
Algorithm 2 (`--zero-shot`): line 3 runs Algorithm 1 on the `--source-tasks` with one shared model
and one aggregated buffer (`train_online`); lines 4-8 fine-tune the model on the target task's
demonstrations and that buffer and train a new discriminator and policy in the model only
(`imitate_offline`), with no environment step until the evaluation.

Observation-only mode (`--obs-only`, AIME's benchmark: demonstrations without actions, no
environment interaction). The world model is AIME's own: `aime.py`'s network and phase 1 on the
embodiment dataset (`--body-data`), or the phase-1 checkpoint `--world-model`, frozen, so V-MAIL
and AIME imitate with the very same model. The discriminator reads latent states only, D(z).
Expert latents without actions: the frozen model filters each demonstration window,
z_t ~ q(z_t | x_t, z_t-1, a_t-1), with a_t-1 drawn from the current policy at z_t-1 (no gradient),
the way AIME's phase 2 fills in the missing actions; each observation corrects the state. The
imagined rollouts start from these expert latents; their states z_1..z_H (the ones the policy's
actions reach) are the policy's samples, and the reward of a step is log D of the state reached.

Implementation details (where the paper is silent: the authors' V-MAIL configuration):
 1. Dreamer-v1 base: RSSM `VMAIL_RSSM` (GRU 200, s of 30 dims, one ELU layer of 200 before the
    GRU and in the prior and posterior, std = softplus + 0.1); the 4-layer convolutional encoder
    and transposed decoder for images, MLPs 2x400 ELU for low-dimensional observations;
    unit-variance Gaussian decoders; free nats 3 on the batch-mean KL; Adam, learning rates 6e-4
    (model) and 8e-5 (discriminator, actor, value), gradient-norm clip 100.
 2. Actor: tanh-Gaussian from an MLP 4x400 ELU, mean 5 tanh(x / 5), std softplus(x + 4.99) + 1e-4
    (std 5 before the tanh where the net outputs 0: `--actor-init-std`); value: MLP 3x400 ELU;
    discriminator: MLP 3x400 ELU with a sigmoid output. The actor reads detached states in
    imagination (gradients reach it through the dynamics and the discriminator, never into them).
 3. Imagination starts from every posterior state of the model's batch (every expert latent in
    `--obs-only`) and runs K = `--imag-horizon` = 15 steps; gamma 0.99. The actor maximises
    eq. (22) at the start states; the value net regresses V(z_tau) to the K - tau step expansion
    of every imagined state tau, its target detached.
 4. Expert pairs (z_t, a_t) take a_t from the record after z_t (records store a_t-1 as
    `pre_action`); the policy's pairs are (z_tau, a_tau) of the rollouts, tau = 0..K-1.
 5. Data collection samples the policy and adds Gaussian noise of std 0.3 (`--expl-noise`),
    clipped to [-1, 1]; evaluation acts with the mode tanh(mean). 5 random episodes start each
    task's buffer; after each collected episode, 100 training iterations.
 6. Model batches are drawn from B_E u B_pi in proportion to the trajectories each holds (the
    authors copy the demonstrations into the model's data folder).
Where the authors' code and the paper differ, this follows the paper; a flag gives the code's
(the paper names no gradient penalty: the default is the usual one on the inputs):
 7. Reward: log D (eq. 22) by default; `--reward d` uses D's probability (the authors' code).
 8. Bootstrap: eq. (22) adds gamma^K V(z_K); `--no-value-bootstrap` drops it (the authors' DMC
    runs: discounted sums of rewards over the horizon, lambda = 1, no bootstrap).
 9. Gradient penalty (weight `--gp-weight` 1): `--grad-penalty inputs` (default) penalises
    (|grad_x logit D(x)| - 1)^2 at points between expert and policy inputs (Gulrajani et al.);
    `params` takes that norm over the discriminator's parameters (the authors' code); `none`.
10. Algorithm 2's source policies and discriminators are one per source task; the target task's
    are new (Alg. 2 line 2). The paper's walker walk/run use target speeds 2-4 and > 8; this uses
    DeepMind Control's walk and run tasks as they are.
On the small point mass of tests/systems.py the defaults' game does not settle (the actor
overshoots the expert's actions to the bound); a faster discriminator, a narrower initial actor
and no bootstrap imitate there (docs/vmail.md, "On a small system").
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import aime
from common.envs import EXPERT_RETURNS, DMCEnv, make_env
from common.replay import (
    DatasetError,
    ReplayBuffer,
    TrajectoryDataset,
    WindowSampler,
    atomic_write,
    dataset_action_repeat,
    dataset_folders,
    load_trajectory,
    stack_records,
    to_torch_batch,
    trajectory_files,
)
from common.rssm import RSSM, RSSMConfig, TanhNormal, kl_normal


@dataclass
class Args:
    exp_name: str = "vmail"
    """name of this experiment, part of the run's folder name"""
    env: str = "walker"
    """embodiment (dm_control domain): walker or cheetah (or another suite domain)"""
    task: Optional[str] = None
    """task to imitate and evaluate (default: the --demo task, else walk; cheetah run)"""
    demo: Optional[str] = None
    """demonstrations of the task: a task name (walk -> {env}-walk-expert) or a path"""
    obs: Literal["mdp", "lpomdp", "visual"] = "visual"
    """observation setting: true state, positions only, or 64x64 images (the paper's)"""
    num_demos: Optional[int] = None
    """demonstration trajectories used, the first N (default 10, the paper's; --obs-only 100)"""
    zero_shot: bool = False
    """Algorithm 2: train on --source-tasks, then transfer to --task without environment steps"""
    source_tasks: tuple[str, ...] = ("stand", "run")
    """--zero-shot: the source tasks (their demonstrations are {env}-{task}-expert)"""
    obs_only: bool = False
    """AIME's setting: demonstrations without actions, AIME's world model, no interaction"""
    body_data: str = "mix"
    """--obs-only: embodiment dataset of AIME's phase 1 (random, p2e, stand, mix, a+b, a path)"""
    world_model: Optional[str] = None
    """--obs-only: an aime.py phase-1 checkpoint (world_model.pt) instead of training one"""
    phase1_epochs: int = 1000
    """--obs-only: world-model epochs of AIME's phase 1 (when no --world-model is found)"""
    phase2_epochs: int = 500
    """imitation epochs without environment steps (--obs-only, and --zero-shot's transfer)"""
    steps_per_epoch: int = 100
    """gradient steps per epoch (--obs-only, --zero-shot's transfer)"""
    total_steps: int = 500_000
    """Algorithm 1: environment (simulator) steps per task, the random prefill included"""
    prefill_episodes: int = 5
    """Algorithm 1: random-action episodes that start each task's buffer"""
    train_steps_per_episode: int = 100
    """Algorithm 1: training iterations after each collected episode"""
    batch_size: int = 50
    """sequences per batch (model data and demonstrations)"""
    horizon: int = 50
    """records per sequence"""
    imag_horizon: int = 15
    """K: steps of the latent rollouts and of the value expansion, eq. (22)"""
    gamma: float = 0.99
    """discount of eq. (22)"""
    reward: Literal["log_d", "d"] = "log_d"
    """the policy's reward: log D (the paper, eq. 22) or D (the authors' code)"""
    value_bootstrap: bool = True
    """add gamma^K V(z_K) to the expansion (eq. 22); --no-value-bootstrap: the authors' DMC runs"""
    grad_penalty: Literal["inputs", "params", "none"] = "inputs"
    """discriminator gradient penalty: over its inputs, over its parameters (the code's), none"""
    gp_weight: float = 1.0
    """weight of the gradient penalty"""
    actor_init_std: float = 5.0
    """the actor's std before the tanh where its net outputs 0 (Dreamer-v1's and the authors' 5)"""
    expl_noise: float = 0.3
    """std of the Gaussian noise added to the policy's sampled actions during collection"""
    model_lr: float = 6e-4
    """Adam learning rate of the world model"""
    disc_lr: float = 8e-5
    """Adam learning rate of the discriminator"""
    actor_lr: float = 8e-5
    """Adam learning rate of the actor"""
    value_lr: float = 8e-5
    """Adam learning rate of the value net"""
    grad_clip: float = 100.0
    """gradient-norm clip of every optimiser"""
    free_nats: float = 3.0
    """free nats of the batch-mean KL of eq. (21)"""
    deter: int = 200
    """size of the RSSM's deterministic state h"""
    stoch: int = 30
    """size of the RSSM's stochastic state s"""
    hidden: int = 400
    """width of the dense layers (actor, value, discriminator, low-dimensional encoder/decoder)"""
    action_repeat: Optional[int] = None
    """simulator steps per action (default: the demonstrations' info.json, else 2)"""
    eval_episodes: Optional[int] = None
    """evaluation episodes at the end (default 10; --obs-only 100, as aime.py)"""
    eval_every: int = 10
    """evaluate every this many episodes of a task (transfer, --obs-only: epochs); 0: never"""
    eval_episodes_during: int = 5
    """episodes of each evaluation during training"""
    data_dir: str = "datasets"
    """folder that holds the datasets"""
    runs_dir: str = "runs"
    """results, TensorBoard logs, buffers and checkpoints go to {runs_dir}/{run_name}/"""
    seed: int = 1
    """seed of torch, numpy, sampling and the environments"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    resume: bool = False
    """continue the run in {runs_dir}/{run_name}/ from its last checkpoint"""
    capture_video: bool = False
    """save a GIF of the first episode of each evaluation to {run_dir}/videos/"""


def resolve(args: Args) -> Args:
    """Fill the mode-dependent defaults: task, demonstrations, their number, evaluation."""
    if args.zero_shot and args.obs_only:
        raise SystemExit("error: --zero-shot and --obs-only exclude each other")
    demo_task = (
        Path(args.demo).name.removeprefix(f"{args.env}-").split("-")[0] if args.demo else None
    )
    task = args.task or demo_task or ("run" if args.env == "cheetah" else "walk")
    if args.zero_shot and task in args.source_tasks:
        raise SystemExit(f"error: the target task {task} is one of --source-tasks")
    if args.actor_init_std <= 0:
        raise SystemExit(f"error: --actor-init-std must be positive, got {args.actor_init_std}")
    return replace(
        args,
        task=task,
        demo=args.demo or task,
        num_demos=args.num_demos or (100 if args.obs_only else 10),
        eval_episodes=args.eval_episodes or (100 if args.obs_only else 10),
    )


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
VMAIL_RSSM = RSSMConfig(
    deter=200, stoch=30, hidden=200, layers=1, act="elu", pre_gru=True,
    separate_std=False, std_act="softplus", min_std=0.1,
)  # fmt: skip


# The observation-only mode uses aime.py's world model; both carry `encoder` and `rssm`.
AnyWorldModel = Union["WorldModel", aime.WorldModel]


def mlp(inp: int, out: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` hidden ELU layers of `hidden` units, then a linear head."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(inp if i == 0 else hidden, hidden), nn.ELU()]
    mods.append(nn.Linear(hidden if layers else inp, out))
    return nn.Sequential(*mods)


class ConvEncoder(nn.Module):
    """64x64 image -> 1024: convolutions of kernel 4, stride 2, 32-64-128-256 channels."""

    def __init__(self, depth: int = 32) -> None:
        super().__init__()
        d = depth
        self.net = nn.Sequential(
            nn.Conv2d(3, d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(d, 2 * d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(2 * d, 4 * d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(4 * d, 8 * d, 4, 2), nn.Flatten(),
        )  # fmt: skip
        self.out_dim = 32 * d

    def forward(self, image: Tensor) -> Tensor:  # [..., 3, 64, 64] -> [..., 1024]
        return self.net(image.flatten(0, -4)).unflatten(0, image.shape[:-3])


class ConvDecoder(nn.Module):
    """features -> 64x64 image mean: a linear layer to 1024 x 1 x 1, transposed convolutions of
    kernels 5-5-6-6, stride 2."""

    def __init__(self, feature_dim: int, depth: int = 32) -> None:
        super().__init__()
        d = depth
        self.net = nn.Sequential(
            nn.Linear(feature_dim, 32 * d), nn.Unflatten(-1, (32 * d, 1, 1)),
            nn.ConvTranspose2d(32 * d, 4 * d, 5, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(4 * d, 2 * d, 5, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * d, d, 6, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(d, 3, 6, 2), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, features: Tensor) -> Tensor:  # [..., feature] -> [..., 3, 64, 64]
        return self.net(features.flatten(0, -2)).unflatten(0, features.shape[:-1])


class WorldModel(nn.Module):
    """The variational model of eq. (21): encoder, belief q(z_t | x_t, z_t-1, a_t-1) and forward
    model T(z_t | z_t-1, a_t-1) (the RSSM), observation model U(x_t | z_t)."""

    def __init__(self, obs_dim: int, action_dim: int, visual: bool, args: Args) -> None:
        super().__init__()
        self.cfg = replace(VMAIL_RSSM, deter=args.deter, stoch=args.stoch)
        self.encoder: nn.Module
        self.decoder: nn.Module
        if visual:
            self.encoder = ConvEncoder()
            embed_dim = self.encoder.out_dim
        else:
            self.encoder = nn.Sequential(mlp(obs_dim, args.hidden, args.hidden, 1), nn.ELU())
            embed_dim = args.hidden
        self.rssm = RSSM(action_dim, embed_dim, self.cfg)
        feat = self.rssm.feature_dim
        self.decoder = ConvDecoder(feat) if visual else mlp(feat, obs_dim, args.hidden, 2)


class Actor(nn.Module):
    """pi(a_t | z_t): a tanh-Gaussian from an MLP of 4 x hidden ELU units (Dreamer-v1's)."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: int, init_std: float) -> None:
        super().__init__()
        self.net = mlp(feature_dim, 2 * action_dim, hidden, 4)
        self.raw_init_std = math.log(math.expm1(init_std))  # softplus(x + this) = init_std at 0

    def forward(self, features: Tensor) -> TanhNormal:
        mean, std = self.net(features).chunk(2, -1)
        mean = 5 * torch.tanh(mean / 5)
        return TanhNormal(mean, F.softplus(std + self.raw_init_std) + 1e-4)


class Learner(NamedTuple):
    """One task's imitation learner: policy pi, value V, discriminator D and their optimisers."""

    actor: Actor
    value: nn.Module
    disc: nn.Module
    actor_opt: torch.optim.Adam
    value_opt: torch.optim.Adam
    disc_opt: torch.optim.Adam


def make_learner(feature_dim: int, action_dim: int, with_actions: bool, args: Args) -> Learner:
    device = torch.device(args.device)
    actor = Actor(feature_dim, action_dim, args.hidden, args.actor_init_std).to(device)
    value = mlp(feature_dim, 1, args.hidden, 3).to(device)
    disc = mlp(feature_dim + (action_dim if with_actions else 0), 1, args.hidden, 3).to(device)
    return Learner(
        actor, value, disc,
        torch.optim.Adam(actor.parameters(), lr=args.actor_lr),
        torch.optim.Adam(value.parameters(), lr=args.value_lr),
        torch.optim.Adam(disc.parameters(), lr=args.disc_lr),
    )  # fmt: skip


def observation(batch: dict[str, Tensor], keys: tuple[str, ...]) -> Tensor:
    """The setting's observation x_t: the image, or the low-dimensional keys concatenated."""
    return batch["image"] if keys == ("image",) else torch.cat([batch[k] for k in keys], -1)


# ---------------------------------------------------------------------------------------------
# Dynamics learning, eq. (21)
# ---------------------------------------------------------------------------------------------
def elbo_loss(
    model: WorldModel, batch: dict[str, Tensor], keys: tuple[str, ...], free_nats: float
) -> tuple[Tensor, tuple[Tensor, Tensor], dict[str, Tensor]]:
    """Minus eq. (21), averaged over batch and time, and the posterior states (h, s) [T, B, .]
    (detached) that the latent rollouts start from."""
    obs, actions = observation(batch, keys), batch["pre_action"]  # [T, B, ...], [T, B, A]
    post = model.rssm.observe(model.encoder(obs), actions)  # z_t ~ q(z_t | x_t, z_t-1, a_t-1)
    dims = tuple(range(2, obs.ndim))
    # eq. (7) = eq. (21), reconstruction: log U(x_t | z_t), unit-variance Gaussian, no constant
    log_u = -0.5 * (model.decoder(post.features()) - obs).square().sum(dims)  # [T, B]
    # eq. (21), forward model: KL(q(z_t | x_t, z_t-1, a_t-1) || T(z_t | z_t-1, a_t-1))  [T, B]
    kl = kl_normal(post.post_mean, post.post_std, post.prior_mean, post.prior_std).sum(-1)
    loss = -log_u.mean() + kl.mean().clamp(min=free_nats)  # free nats on the batch-mean KL
    metrics = {"elbo": (log_u - kl).mean(), "rec_term": log_u.mean(), "kl": kl.mean(), "loss": loss}
    return (
        loss,
        (post.deter.detach(), post.stoch.detach()),
        {k: v.detach() for k, v in metrics.items()},
    )


def model_step(
    model: WorldModel,
    opt: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    keys: tuple[str, ...],
    args: Args,
) -> tuple[tuple[Tensor, Tensor], dict[str, Tensor]]:
    """Algorithm 1 lines 12-13: one Adam step on eq. (21)."""
    loss, start, metrics = elbo_loss(model, batch, keys, args.free_nats)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    metrics["model_grad_norm"] = nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    opt.step()
    return start, metrics


def sample_union(
    samplers: list[WindowSampler],
    batch_size: int,
    horizon: int,
    device: torch.device,
    keys: list[str],
) -> dict[str, Tensor]:
    """A batch from the union of the samplers (B_E u B_pi): each window's source is drawn in
    proportion to the trajectories the sources hold, then a window of it uniformly."""
    rng = samplers[0].rng
    sizes = np.array([len(s) for s in samplers], dtype=np.float64)
    counts = rng.multinomial(batch_size, sizes / sizes.sum())
    parts = []
    for sampler, n in zip(samplers, counts, strict=True):
        if n:
            traj, start = sampler.sample_windows(int(n), horizon)
            parts.append(sampler.gather(traj, start, horizon, keys))
    batch = {k: np.concatenate([p[k] for p in parts], axis=1) for k in keys}
    return to_torch_batch(batch, device)


# ---------------------------------------------------------------------------------------------
# Adversarial policy learning, eqs. (22) and (23)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def expert_latents(
    model: AnyWorldModel, batch: dict[str, Tensor], keys: tuple[str, ...], actor: Optional[Actor]
) -> tuple[Tensor, Optional[Tensor]]:
    """z^E_1:T ~ q(.|x^E, a^E) (Algorithm 1 line 16): features [T, B, F] and the expert's actions
    a_t [T - 1, B, A] taken at z_t (from the next record). Without actions (`batch` lacks
    `pre_action`) a_t-1 is drawn from `actor` at z_t-1, and the actions returned are None."""
    embed = model.encoder(observation(batch, keys))  # [T, B, embed]
    rssm = model.rssm
    if "pre_action" in batch:
        feat = rssm.observe(embed, batch["pre_action"]).features()
        return feat, batch["pre_action"][1:]
    assert actor is not None
    T, B = embed.shape[:2]
    h, s = rssm.initial(B, embed.device)
    proj = rssm.project_embed(embed)
    feats = []
    for t in range(T):
        action = actor(torch.cat([h, s], -1)).rsample()  # a_t-1 ~ pi(a_t-1 | z_t-1)
        h, s, _, _ = rssm.obs_step(h, s, action, proj[t])  # z_t ~ q(z_t | x_t, z_t-1, a_t-1)
        feats.append(torch.cat([h, s], -1))
    return torch.stack(feats), None


class Imagination(NamedTuple):
    features: Tensor  # [K + 1, N, deter + stoch]: z_0 (the start) .. z_K
    actions: Tensor  # [K, N, A]: a_tau ~ pi(a | z_tau)
    action_std: Tensor  # the policy's mean pre-tanh std over the rollouts (a metric)


def imagine(model: AnyWorldModel, actor: Actor, h: Tensor, s: Tensor, horizon: int) -> Imagination:
    """Algorithm 1 line 17: roll the forward model T `horizon` steps from (h, s) [N, .] with
    a_tau ~ pi(a | z_tau) (reparameterised; the actor reads the state detached)."""
    features, actions, stds = [torch.cat([h, s], -1)], [], []
    for _ in range(horizon):
        pi = actor(features[-1].detach())
        action = pi.rsample()
        h, s, _, _ = model.rssm.img_step(h, s, action)  # z_tau+1 ~ T(z | z_tau, a_tau)
        features.append(torch.cat([h, s], -1))
        actions.append(action)
        stds.append(pi.std.detach().mean())
    return Imagination(torch.stack(features), torch.stack(actions), torch.stack(stds).mean())


def gradient_penalty(
    disc: nn.Module, expert_in: Tensor, policy_in: Tensor, over: Literal["inputs", "params"]
) -> Tensor:
    """(|grad logit D(x_hat)| - 1)^2 at x_hat between expert and policy inputs [N, D] (paired at
    random), the gradient taken over the inputs (per point, then averaged) or the parameters."""
    n = min(len(expert_in), len(policy_in))
    pick_e = torch.randperm(len(expert_in), device=expert_in.device)[:n]
    pick_p = torch.randperm(len(policy_in), device=policy_in.device)[:n]
    alpha = torch.rand(n, 1, device=expert_in.device)
    x_hat = (alpha * expert_in[pick_e] + (1 - alpha) * policy_in[pick_p]).requires_grad_(True)
    logits = disc(x_hat)
    if over == "inputs":
        (grad,) = torch.autograd.grad(logits.sum(), x_hat, create_graph=True)
        return (grad.norm(dim=-1) - 1).square().mean()
    params = [p for p in disc.parameters() if p.requires_grad]
    grads = torch.autograd.grad(logits.mean(), params, create_graph=True)
    return (torch.stack([g.square().sum() for g in grads]).sum().sqrt() - 1).square()


def discriminator_loss(
    disc: nn.Module, expert_in: Tensor, policy_in: Tensor, args: Args
) -> tuple[Tensor, dict[str, Tensor]]:
    """eq. (23): -log D(z^E, a^E) - log(1 - D(z^pi, a^pi)), averaged, plus the gradient penalty.
    Inputs [N, D] are detached: only D learns from this loss."""
    expert_in, policy_in = expert_in.detach(), policy_in.detach()
    logit_e, logit_p = disc(expert_in).squeeze(-1), disc(policy_in).squeeze(-1)
    # eq. (6) = eq. (23), with log D = logsigmoid(logit) and log(1 - D) = logsigmoid(-logit)
    loss = -F.logsigmoid(logit_e).mean() - F.logsigmoid(-logit_p).mean()
    metrics = {
        "disc_loss": loss,
        "expert_d": torch.sigmoid(logit_e).mean(),
        "policy_d": torch.sigmoid(logit_p).mean(),
    }
    if args.grad_penalty != "none" and args.gp_weight > 0:
        penalty = gradient_penalty(disc, expert_in, policy_in, args.grad_penalty)
        loss = loss + args.gp_weight * penalty
        metrics["grad_penalty"] = penalty
    return loss, {k: v.detach() for k, v in metrics.items()}


def value_expansion(reward: Tensor, bootstrap: Optional[Tensor], gamma: float) -> Tensor:
    """The K - tau step expansions of eq. (22) from every imagined state tau = 0..K-1: [K, N],

        V^(K-tau)(z_tau) = sum_{j=tau}^{K-1} gamma^(j - tau) r_j + gamma^(K - tau) V(z_K),

    reward [K, N] holds r_j (log D of step j), bootstrap [N] V(z_K) (None: no bootstrap). Row 0
    is eq. (22), V^K(z_0)."""
    last = bootstrap if bootstrap is not None else torch.zeros_like(reward[0])
    returns = []
    for t in reversed(range(reward.shape[0])):
        last = reward[t] + gamma * last  # eq. (22), one step at a time from the end
        returns.append(last)
    return torch.stack(returns[::-1])


def policy_losses(
    model: AnyWorldModel,
    learner: Learner,
    start: tuple[Tensor, Tensor],
    expert_feat: Tensor,
    expert_actions: Optional[Tensor],
    args: Args,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """Algorithm 1 lines 17-19: the discriminator, actor and value losses of one iteration.

    start: states (h, s) [T, B, .] the rollouts begin at; expert_feat [T, B, F] the expert
    latents and expert_actions [T - 1, B, A] their actions (None: D reads states only)."""
    h, s = (x.flatten(0, 1) for x in start)  # [T * B, .]
    imag = imagine(model, learner.actor, h, s, args.imag_horizon)
    if expert_actions is not None:  # pairs (z_tau, a_tau), tau = 0..K-1
        expert_in = torch.cat([expert_feat[:-1], expert_actions], -1).flatten(0, 1)
        policy_in = torch.cat([imag.features[:-1], imag.actions], -1)  # [K, N, F + A]
    else:  # states only: z_1..z_K, the states the policy's actions reach
        expert_in, policy_in = expert_feat.flatten(0, 1), imag.features[1:]
    disc_loss, metrics = discriminator_loss(learner.disc, expert_in, policy_in.flatten(0, 1), args)
    logit = learner.disc(policy_in).squeeze(-1)  # [K, N], through the model and the actions
    reward = F.logsigmoid(logit) if args.reward == "log_d" else torch.sigmoid(logit)
    v = learner.value(imag.features).squeeze(-1)  # V(z_tau)  [K + 1, N]
    returns = value_expansion(reward, v[-1] if args.value_bootstrap else None, args.gamma)
    actor_loss = -returns[0].mean()  # eq. (8) = eq. (22): maximise V^K at the start states
    value_loss = 0.5 * (v[:-1] - returns.detach()).square().mean()  # fit V to eq. (22)'s targets
    metrics.update(
        actor_loss=actor_loss.detach(), value_loss=value_loss.detach(),
        imagined_reward=reward.detach().mean(), imagined_return=returns[0].detach().mean(),
        action_std=imag.action_std,
    )  # fmt: skip
    return disc_loss, actor_loss, value_loss, metrics


def imitation_step(
    model: AnyWorldModel,
    learner: Learner,
    start: tuple[Tensor, Tensor],
    expert_feat: Tensor,
    expert_actions: Optional[Tensor],
    args: Args,
) -> dict[str, Tensor]:
    """Algorithm 1 lines 17-19: one Adam step each of D (eq. 23), pi (eq. 22) and V; each loss
    reaches only its own network's parameters."""
    disc_loss, actor_loss, value_loss, metrics = policy_losses(
        model, learner, start, expert_feat, expert_actions, args
    )
    for loss, net, opt, name in (
        (actor_loss, learner.actor, learner.actor_opt, "actor"),
        (value_loss, learner.value, learner.value_opt, "value"),
        (disc_loss, learner.disc, learner.disc_opt, "disc"),
    ):
        params = list(net.parameters())
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params, retain_graph=name != "disc")
        metrics[f"{name}_grad_norm"] = nn.utils.clip_grad_norm_(params, args.grad_clip).detach()
    for opt in (learner.actor_opt, learner.value_opt, learner.disc_opt):
        opt.step()  # after all three backward passes: every loss saw the same parameters
    return metrics


# ---------------------------------------------------------------------------------------------
# Acting in the environment
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def run_episodes(
    envs: list[DMCEnv],
    seeds: list[int],
    model: Optional[AnyWorldModel],
    actor: Optional[Actor],
    mode: Literal["random", "sample", "mode"],
    expl_noise: float,
    device: torch.device,
) -> list[dict[str, np.ndarray]]:
    """One episode in each environment, in lockstep (Algorithm 1 lines 5-8); each episode's
    records stacked. The model filters z_t ~ q(z_t | x_t, z_t-1, a_t-1) from the real
    observations and the actions taken; the actor samples (plus `expl_noise`) or takes its mode;
    `random` draws uniform actions."""
    n, keys = len(envs), envs[0].obs_keys
    rngs = [np.random.default_rng([s, 1]) for s in seeds]
    records = [[env.reset(seed=s)] for env, s in zip(envs, seeds, strict=True)]
    if model is not None:
        h, s = model.rssm.initial(n, device)
    while not records[0][-1]["is_last"]:
        last = [r[-1] for r in records]
        if mode == "random" or model is None or actor is None:
            actions = np.stack(
                [rng.uniform(envs[0].action_low, envs[0].action_high) for rng in rngs]
            )
        else:
            batch = {
                k: torch.as_tensor(np.stack([r[k] for r in last]), device=device) for k in keys
            }
            if "image" in batch:
                batch["image"] = batch["image"].permute(0, 3, 1, 2).float() / 255
            pre_action = torch.as_tensor(np.stack([r["pre_action"] for r in last]), device=device)
            embed = model.encoder(observation(batch, keys))  # [n, embed]
            h, s, _, _ = model.rssm.obs_step(h, s, pre_action, model.rssm.project_embed(embed))
            pi = actor(torch.cat([h, s], -1))
            action = pi.mode if mode == "mode" else pi.rsample()
            if mode == "sample" and expl_noise > 0:
                action = (action + expl_noise * torch.randn_like(action)).clamp(-1, 1)
            actions = action.cpu().numpy()
        for env, rec, a in zip(envs, records, actions, strict=True):
            rec.append(env.step(a.astype(np.float32)))
    return [stack_records(r) for r in records]


def episode_seed(seed: int, stream: int, index: int) -> int:
    """The seed of episode `index` of a stream (0: collection, 1: evaluation)."""
    return int(np.random.SeedSequence(seed, spawn_key=(stream, index)).generate_state(1)[0])


def evaluate(
    model: AnyWorldModel,
    actor: Actor,
    args: Args,
    task: str,
    episodes: int,
    first_seed: int,
    video: Optional[Path] = None,
) -> list[float]:
    """Returns of `episodes` episodes acting with the policy's mode, up to 10 in lockstep."""
    returns: list[float] = []
    repeat = args.action_repeat or 2
    for first in range(0, episodes, 10):
        n = min(10, episodes - first)
        render = args.obs == "visual" or (video is not None and first == 0)
        envs = [
            make_env(f"{args.env}-{task}", args.obs, render=render, action_repeat=repeat)
            for _ in range(n)
        ]
        seeds = [episode_seed(args.seed, 1, first_seed + first + i) for i in range(n)]
        model.eval()
        eps = run_episodes(envs, seeds, model, actor, "mode", 0.0, torch.device(args.device))
        model.train()
        returns += [float(ep["reward"].sum()) for ep in eps]
        if video is not None and first == 0:
            save_gif(video, eps[0]["image"])
    return returns


def save_gif(path: Path, frames: np.ndarray) -> None:
    """frames [T, H, W, 3] uint8 -> an animated GIF (25 frames/s)."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path,
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=40, loop=0
        ),
    )


def expert_return(args: Args, task: str, demo_folders: list[Path]) -> tuple[float, str]:
    """The return that normalises scores: SPEC.md's published expert, else the demonstrations'."""
    name = f"{args.env}-{task}"
    if name in EXPERT_RETURNS:
        return EXPERT_RETURNS[name], "published expert return (AIME Appendix D)"
    files = [f for folder in demo_folders for f in trajectory_files(folder)][: args.num_demos]
    mean = float(np.mean([load_trajectory(f, ["reward"])["reward"].sum() for f in files]))
    return mean, "mean return of the demonstrations"


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def save(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def modules_state(
    model: AnyWorldModel, opt: Optional[torch.optim.Optimizer], learners: dict[str, Learner]
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "model_opt": opt.state_dict() if opt is not None else None,
        "learners": {
            t: {f: getattr(l_, f).state_dict() for f in Learner._fields}
            for t, l_ in learners.items()
        },
    }


def load_modules(
    ckpt: dict[str, Any],
    model: AnyWorldModel,
    opt: Optional[torch.optim.Optimizer],
    learners: dict[str, Learner],
) -> None:
    model.load_state_dict(ckpt["model"])
    if opt is not None and ckpt["model_opt"] is not None:
        opt.load_state_dict(ckpt["model_opt"])
    for task, learner in learners.items():
        if task in ckpt["learners"]:
            for f in Learner._fields:
                getattr(learner, f).load_state_dict(ckpt["learners"][task][f])


def rng_state(samplers: list[WindowSampler]) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "samplers": [s.rng.bit_generator.state for s in samplers],
    }


def set_rng_state(state: dict[str, Any], samplers: list[WindowSampler]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for sampler, s in zip(samplers, state["samplers"], strict=True):
        sampler.rng.bit_generator.state = s


class Run(NamedTuple):
    """What every stage of a run shares."""

    args: Args
    run_dir: Path
    keys: tuple[str, ...]
    device: torch.device
    writer: SummaryWriter
    state: dict[str, Any]


def check_finite(metrics: dict[str, float], what: str, ckpt: Path) -> None:
    """Stop at non-finite losses, keeping the last good checkpoint."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        kept = f"the last good checkpoint {ckpt} is kept" if ckpt.exists() else "no checkpoint yet"
        raise SystemExit(f"error: non-finite {sorted(bad)} {what}; {kept}")


def log_means(
    run: Run, sums: dict[str, Tensor], n: int, prefix: str, step: int
) -> dict[str, float]:
    """Average summed metrics (one host sync), write them to TensorBoard."""
    means = {k: float(v) / n for k, v in sums.items()}
    for k, v in means.items():
        run.writer.add_scalar(f"{prefix}/{k}", v, step)
    return means


def add_to(sums: dict[str, Tensor], metrics: dict[str, Tensor]) -> None:
    for k, v in metrics.items():
        sums[k] = v + sums[k] if k in sums else v


# ---------------------------------------------------------------------------------------------
# Algorithm 1 (and Algorithm 2 line 3): online V-MAIL on one or several tasks
# ---------------------------------------------------------------------------------------------
def train_online(
    run: Run,
    tasks: tuple[str, ...],
    demos: dict[str, TrajectoryDataset],
    model: WorldModel,
    model_opt: torch.optim.Adam,
    learners: dict[str, Learner],
    checkpoint: Callable[[list[WindowSampler]], None],
    restore_rng: Callable[[list[WindowSampler]], None],
) -> dict[str, ReplayBuffer]:
    """Alternate collecting an episode of each task with its policy and training the shared
    model (on all demonstrations and buffers) and that task's D, pi and V. Returns the buffers."""
    args, state, device = run.args, run.state, run.device
    repeat = args.action_repeat or 2
    mem_keys = [*run.keys, "pre_action"]
    buffers = {
        t: ReplayBuffer(run.run_dir / "buffer" / t, seed=args.seed + 10 + i, keys=mem_keys)
        for i, t in enumerate(tasks)
    }
    envs = {
        t: make_env(f"{args.env}-{t}", args.obs, seed=args.seed, action_repeat=repeat,
                    render=args.obs == "visual")
        for t in tasks
    }  # fmt: skip
    sources: list[WindowSampler] = [*demos.values(), *buffers.values()]  # B_E u B_pi
    restore_rng(sources)  # a resumed run draws what the uninterrupted one would have

    def env_steps(task: str) -> int:
        return int((buffers[task].lengths - 1).sum()) * repeat

    def update(task: str, episode: int) -> None:
        """The training iterations after `episode` of `task` (none during its prefill)."""
        if episode >= args.prefill_episodes - 1:
            sums: dict[str, Tensor] = {}
            for _ in range(args.train_steps_per_episode):
                batch = sample_union(sources, args.batch_size, args.horizon, device, mem_keys)
                start, metrics = model_step(model, model_opt, batch, run.keys, args)
                expert = demos[task].sample(args.batch_size, args.horizon, device)
                feat, actions = expert_latents(model, expert, run.keys, None)
                metrics.update(imitation_step(model, learners[task], start, feat, actions, args))
                add_to(sums, metrics)
            step = sum(env_steps(t) for t in tasks)
            means = log_means(run, sums, args.train_steps_per_episode, f"train/{task}", step)
            check_finite(means, f"after {task} episode {episode}", run.run_dir / "checkpoint.pt")
            state["updates"] += args.train_steps_per_episode
        state["episodes"][task] = episode + 1
        checkpoint(sources)

    # Episodes saved after the last checkpoint (a kill between saving and updating) are trained
    # on now, so that none is lost and none is collected twice.
    for task in tasks:
        for episode in range(state["episodes"].get(task, 0), len(buffers[task])):
            update(task, episode)
    total = args.total_steps * len(tasks)
    bar = tqdm(
        total=total, initial=sum(env_steps(t) for t in tasks), desc="V-MAIL online", unit="step"
    )
    while any(env_steps(t) < args.total_steps for t in tasks):
        for i, task in enumerate(tasks):
            if env_steps(task) >= args.total_steps:
                continue
            episode = len(buffers[task])
            mode: Literal["random", "sample"] = (
                "random" if episode < args.prefill_episodes else "sample"
            )
            model.eval()
            (trajectory,) = run_episodes(
                [envs[task]], [episode_seed(args.seed, 10 + i, episode)], model,
                learners[task].actor, mode, args.expl_noise, device,
            )  # fmt: skip
            model.train()
            buffers[task].add(trajectory)  # Algorithm 1 line 9: the episode joins B_pi
            steps = (len(trajectory["reward"]) - 1) * repeat
            bar.update(steps)
            ret = float(trajectory["reward"].sum())
            run.writer.add_scalar(f"train/{task}/return", ret, env_steps(task))
            bar.set_postfix(task=task, episode=episode, ret=f"{ret:.1f}")
            update(task, episode)
            if args.eval_every and (episode + 1) % args.eval_every == 0:
                returns = evaluate(
                    model, learners[task].actor, args, task, args.eval_episodes_during,
                    first_seed=1000 * (episode + 1),
                )  # fmt: skip
                run.writer.add_scalar(f"eval/{task}/return", np.mean(returns), env_steps(task))
    bar.close()
    state["env_steps"] = {t: env_steps(t) for t in tasks}
    return buffers


# ---------------------------------------------------------------------------------------------
# Imitation without environment steps: Algorithm 2 lines 4-8, and the observation-only mode
# ---------------------------------------------------------------------------------------------
def imitate_offline(
    run: Run,
    demo: TrajectoryDataset,
    model: AnyWorldModel,
    model_opt: Optional[torch.optim.Adam],
    learner: Learner,
    model_data: list[WindowSampler],
    checkpoint: Callable[[list[WindowSampler]], None],
) -> None:
    """`phase2_epochs` x `steps_per_epoch` iterations in the model only. With `model_opt`
    (Algorithm 2 line 6) each iteration first fine-tunes the model on `model_data` (B_E u B_pi);
    without it (`--obs-only`) the model stays frozen and the demonstrations carry no actions."""
    args, state, device = run.args, run.state, run.device
    task = args.task or ""
    deter = model.rssm.cfg.deter
    bar = tqdm(
        range(state["epoch"], args.phase2_epochs), initial=state["epoch"],
        total=args.phase2_epochs, desc="V-MAIL in the model",
    )  # fmt: skip
    for epoch in bar:
        start_time = time.time()
        sums: dict[str, Tensor] = {}
        for _ in range(args.steps_per_epoch):
            metrics: dict[str, Tensor] = {}
            expert = demo.sample(args.batch_size, args.horizon, device)
            if model_opt is not None:  # Algorithm 2 line 6: fine-tune with eq. (21) on B_E u B_pi
                assert isinstance(model, WorldModel)
                keys = [*run.keys, "pre_action"]
                batch = sample_union(model_data, args.batch_size, args.horizon, device, keys)
                start, metrics = model_step(model, model_opt, batch, run.keys, args)
                # line 8: D, pi on the target's expert latents, rollouts from the batch's states
                feat, actions = expert_latents(model, expert, run.keys, None)
            else:  # --obs-only: latents filtered with the policy's actions; rollouts start there
                feat, actions = expert_latents(model, expert, run.keys, learner.actor)
                start = (feat[..., :deter], feat[..., deter:])
            metrics.update(imitation_step(model, learner, start, feat, actions, args))
            add_to(sums, metrics)
        means = log_means(
            run, sums, args.steps_per_epoch, "imitation", (epoch + 1) * args.steps_per_epoch
        )
        check_finite(means, f"in epoch {epoch}", run.run_dir / "checkpoint.pt")
        bar.set_postfix(expert_d=f"{means['expert_d']:.2f}", policy_d=f"{means['policy_d']:.2f}")
        state["wall"]["imitation"] = state["wall"].get("imitation", 0.0) + time.time() - start_time
        if (
            args.eval_every
            and (epoch + 1) % args.eval_every == 0
            and epoch + 1 < args.phase2_epochs
        ):
            returns = evaluate(
                model, learner.actor, args, task, args.eval_episodes_during, 1000 * (epoch + 1)
            )
            run.writer.add_scalar("eval/return", np.mean(returns), epoch + 1)
        state["epoch"] = epoch + 1
        checkpoint(model_data or [demo])  # zero-shot: model_data[0] is `demo`


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def aime_world_model(args: Args, env: DMCEnv, device: torch.device) -> tuple[aime.WorldModel, str]:
    """--obs-only: AIME's phase-1 world model, frozen: --world-model, else the phase-1 run that
    `aime.py --phase1-only --exp-name phase1` makes (made here by aime.py's own code if absent)."""
    settings = aime.resolve(
        aime.Args(
            env=args.env, obs=args.obs, demo=args.demo or "", action_repeat=args.action_repeat
        )
    )
    if args.world_model:
        path = Path(args.world_model)
    else:
        body = Path(args.body_data).name if Path(args.body_data).is_dir() else args.body_data
        path = (
            Path(args.runs_dir)
            / f"{args.env}__{args.obs}__{body}__phase1__phase1__{args.seed}"
            / "world_model.pt"
        )
        if not path.is_file():
            print(f"no AIME world model at {path}: running aime.py's phase 1")
            aime.main(replace(
                settings, exp_name="phase1", body_data=args.body_data, data_dir=args.data_dir,
                runs_dir=args.runs_dir, seed=args.seed, device=args.device, phase1_only=True,
                phase1_epochs=args.phase1_epochs, steps_per_epoch=args.steps_per_epoch,
                batch_size=args.batch_size, horizon=args.horizon, resume=True,
            ))  # fmt: skip
    model = aime.WorldModel(
        env.obs_dim, env.action_dim, args.obs == "visual", settings.layout or "aime", False
    )
    aime.load_world_model(path, model, settings)
    model.to(device).requires_grad_(False)
    return model, str(path)


def main(args: Args) -> dict[str, Any]:
    args = resolve(args)
    task = args.task or ""
    demo_name = Path(args.demo).name if args.demo and Path(args.demo).is_dir() else args.demo
    if args.obs_only:
        body = Path(args.body_data).name if Path(args.body_data).is_dir() else args.body_data
    elif args.zero_shot:
        body = "zeroshot-" + "+".join(args.source_tasks)
    else:
        body = "online"
    run_name = f"{args.env}-{task}__{args.obs}__{body}__{demo_name}__{args.exp_name}__{args.seed}"
    run_dir = Path(args.runs_dir) / run_name
    ckpt_path = run_dir / "checkpoint.pt"
    if (ckpt_path.exists() or (run_dir / "results.json").exists()) and not args.resume:
        raise SystemExit(
            f"error: {run_dir} holds a run already; pass --resume to continue it, "
            "or another --exp-name"
        )

    # -- data: every dataset is checked before any training --------------------------------------
    env = make_env(f"{args.env}-{task}", args.obs)
    keys = env.obs_keys
    shapes = {k: env.record_shapes[k] for k in (*keys, "pre_action")}
    source_tasks = args.source_tasks if args.zero_shot else ()
    demo_folders = {t: dataset_folders(args.data_dir, args.env, t, "demo") for t in source_tasks}
    demo_folders[task] = dataset_folders(args.data_dir, args.env, args.demo or task, "demo")
    for t, folders in demo_folders.items():
        held = sum(len(trajectory_files(f)) for f in folders)
        if held < (args.num_demos or 0):
            raise DatasetError(
                f"--num-demos {args.num_demos}, but the {t} demonstrations hold {held}"
            )
    used = [f for folders in demo_folders.values() for f in folders]
    args = replace(args, action_repeat=dataset_action_repeat(used, args.action_repeat))
    expert, expert_source = expert_return(args, task, demo_folders[task])
    demo_keys = list(keys) if args.obs_only else [*keys, "pre_action"]  # --obs-only: never actions
    demos = {
        t: TrajectoryDataset(folders, demo_keys, args.num_demos, shapes, seed=args.seed + 1 + i)
        for i, (t, folders) in enumerate(demo_folders.items())
    }

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model: AnyWorldModel
    model_opt: Optional[torch.optim.Adam] = None
    world_model = None
    if args.obs_only:
        model, world_model = aime_world_model(args, env, device)
    else:
        model = WorldModel(env.obs_dim, env.action_dim, args.obs == "visual", args).to(device)
        model_opt = torch.optim.Adam(model.parameters(), lr=args.model_lr)
    feat_dim = model.rssm.feature_dim
    learners = {t: make_learner(feat_dim, env.action_dim, not args.obs_only, args) for t in demos}
    first_stage = "online" if not args.obs_only else "imitation"
    state: dict[str, Any] = {
        "stage": first_stage,
        "episodes": {},
        "epoch": 0,
        "updates": 0,
        "env_steps": {},
        "wall": {},
    }
    resumed: Optional[dict[str, Any]] = None
    if args.resume and ckpt_path.exists():
        resumed = torch.load(ckpt_path, map_location=device, weights_only=False)
        if {k: v for k, v in resumed["args"].items() if k != "resume"} != {
            k: v for k, v in asdict(args).items() if k != "resume"
        }:
            raise SystemExit(
                f"error: {ckpt_path} was written with other flags; resume with the same flags"
            )
        state = resumed["state"]
        load_modules(resumed["modules"], model, model_opt, learners)
        print(f"resuming {run_dir} at stage {state['stage']}")
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(run_dir))
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()),
    )
    run = Run(args, run_dir, keys, device, writer, state)

    def checkpoint(samplers: list[WindowSampler]) -> None:
        save(ckpt_path, {
            "args": asdict(args), "state": state, "rng": rng_state(samplers),
            "modules": modules_state(model, model_opt, learners),
        })  # fmt: skip

    def restore_rng(samplers: list[WindowSampler]) -> None:
        if resumed is not None and len(resumed["rng"]["samplers"]) == len(samplers):
            set_rng_state(resumed["rng"], samplers)

    # -- Algorithm 1 (on the task, or on the source tasks of Algorithm 2) ---------------------
    buffers: dict[str, ReplayBuffer] = {}
    if not args.obs_only:
        assert isinstance(model, WorldModel) and model_opt is not None
        online_tasks = source_tasks or (task,)
        if state["stage"] == "online":
            start = time.time()
            online_demos = {t: demos[t] for t in online_tasks}
            buffers = train_online(
                run, online_tasks, online_demos, model, model_opt, learners, checkpoint, restore_rng
            )
            state["wall"]["online"] = state["wall"].get("online", 0.0) + time.time() - start
            state["stage"] = "transfer" if args.zero_shot else "final"
            # the samplers the next stage draws from, so that a resume restores their streams
            checkpoint([demos[task], *buffers.values()])
        else:
            buffers = {
                t: ReplayBuffer(run_dir / "buffer" / t, keys=[*keys, "pre_action"])
                for t in online_tasks
            }

    # -- Algorithm 2 lines 4-8, or the observation-only mode: no environment step ------------
    if state["stage"] in ("transfer", "imitation"):
        model_data: list[WindowSampler] = [demos[task], *buffers.values()] if args.zero_shot else []
        restore_rng(model_data or [demos[task]])
        imitate_offline(run, demos[task], model, model_opt, learners[task], model_data, checkpoint)
        state["stage"] = "final"
        checkpoint(model_data or [demos[task]])

    # -- final evaluation ----------------------------------------------------------------------
    start = time.time()
    video = run_dir / "videos" / "final.gif" if args.capture_video else None
    returns = evaluate(model, learners[task].actor, args, task, args.eval_episodes or 10, 0, video)
    scores = 100 * np.asarray(returns) / expert
    results = {
        "algorithm": "vmail",
        "mode": "obs_only" if args.obs_only else "zero_shot" if args.zero_shot else "online",
        "env": args.env, "task": task, "obs": args.obs,
        "body_data": args.body_data if args.obs_only else body,
        "demo": args.demo, "num_demos": args.num_demos, "seed": args.seed, "returns": returns,
        "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
        "normalised_score": float(scores.mean()), "normalised_score_std": float(scores.std()),
        "expert_return": expert, "expert_return_source": expert_source,
        "env_steps": state["env_steps"],  # per task, collected by Algorithm 1 (none after it)
        "wall_time_s": {**state["wall"], "evaluation": time.time() - start},
        "world_model": world_model, "args": asdict(args),
    }  # fmt: skip
    atomic_write(
        run_dir / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2))
    )
    writer.add_scalar("eval/final_normalised_score", results["normalised_score"], 0)
    writer.close()
    print(
        f"return {results['mean_return']:.1f} +- {results['std_return']:.1f} over "
        f"{len(returns)} episodes; results in {run_dir}"
    )
    print(f"normalised score: {results['normalised_score']:.2f}")
    return results


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except DatasetError as e:  # a missing or malformed dataset: the file and the problem, no trace
        raise SystemExit(f"error: {e}") from e
