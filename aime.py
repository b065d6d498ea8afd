"""AIME: Action Inference by Maximising Evidence (Zhang et al., NeurIPS 2023), in one file.

    python aime.py --env walker --body-data mix --demo run --obs visual

Phase 1 learns a variational world model (an RSSM) on an embodiment dataset by maximising the
ELBO, eqs. (1)-(4). Phase 2 freezes it and learns a policy from observation-only demonstrations by
maximising the same ELBO with the actions sampled from the policy, eq. (8). The policy is then
evaluated in DeepMind Control, acting on the state the frozen model filters from real observations.

Algorithm 1 of the paper, and where each line lives here:
    Phase 1  {o_1:T, a_0:T-1} ~ D_body              `phase1_step`: body.sample(...)
             s_t ~ q(s_t | s_t-1, a_t-1, f(o_t))     `phase1_step`: model.rssm.observe(...)
             J from eq. (1), update phi, theta       `elbo_loss`, Adam on the model
    Phase 2  o_1:T ~ D_demo                          `phase2_step`: demo.sample(...)
             a_t-1 ~ pi(a_t-1 | s_t-1)               `infer_actions`: policy(...).rsample()
             s_t ~ q(s_t | s_t-1, a_t-1, f(o_t))     `infer_actions`: model.rssm.obs_step(...)
             J from eq. (1), update psi only         `elbo_loss`, Adam on the policy

Implementation details (where this differs from the paper's text, following the authors' code):
 1. Learning rate 3e-4 (the authors' configs; the paper's text says 1e-3), gradient-norm clip 100.
 2. Low-dimensional decoders are Gaussians with learned std trained with beta-NLL (each
    log-likelihood term weighted by its detached std: sg(std^(2 beta)) with beta = 1/2) and the
    KL weighted by the mean detached std, so the two terms keep their balance; image decoders
    have a fixed std of 1 (weights 1).
 3. Every window starts from the zero state and filters all its records, including the first
    (whose action a_{t-1} is the dataset's `pre_action`, or in phase 2 a sample of the policy at
    the zero state).
 4. The low-dimensional observation is one vector (the setting's keys concatenated) with one
    decoder; the authors decode each key with its own network.
 5. Cheetah uses the authors' original-Dreamer layout: RSSM `DREAMER_RSSM`, MLP encoder and
    decoder 2x512 LayerNorm SiLU with fixed std, free nats 1, KL balancing 0.8 (phase 1 only),
    and KL scale 2e-4 in LPOMDP.
 6. Phase 2 always optimises the true ELBO (free nats 0, no balancing); `--rec-only` sets the KL
    scale to 0 and `--kl-only` drops the reconstruction, as the authors' flags do.
 7. Evaluation: the policy's mode tanh(mean) acts on a posterior sample, environment seeds
    seed + 100 + episode.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from common.envs import EXPERT_RETURNS, DMCEnv, make_env
from common.replay import (
    DatasetError,
    TrajectoryDataset,
    atomic_write,
    dataset_action_repeat,
    dataset_folders,
    load_trajectory,
    trajectory_files,
)
from common.rssm import AIME_RSSM, DREAMER_RSSM, RSSM, RSSMConfig, TanhNormal, kl_loss, kl_normal


@dataclass
class Args:
    exp_name: str = "aime"
    """name of this experiment, part of the run's folder name"""
    env: str = "walker"
    """embodiment (dm_control domain): walker or cheetah (or another suite domain)"""
    task: Optional[str] = None
    """task the policy is evaluated on (default: the --demo task)"""
    body_data: str = "mix"
    """embodiment dataset: random, p2e, a task (stand -> {env}-stand-buffer), mix, a+b, or a path"""
    demo: str = "run"
    """demonstration dataset: a task (run -> {env}-run-expert) or a path"""
    obs: Literal["mdp", "lpomdp", "visual"] = "visual"
    """observation setting: true state, positions only, or 64x64 images"""
    num_demos: int = 100
    """demonstration trajectories used (the first N)"""
    data_dir: str = "datasets"
    """folder that holds the datasets"""
    runs_dir: str = "runs"
    """results, TensorBoard logs and checkpoints go to {runs_dir}/{run_name}/"""
    seed: int = 1
    """seed of torch, numpy, sampling and the evaluation environments"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    phase1_epochs: int = 1000
    """world-model epochs (phase 1)"""
    phase2_epochs: int = 500
    """policy epochs (phase 2)"""
    steps_per_epoch: int = 100
    """gradient steps per epoch"""
    batch_size: int = 50
    """sequences per batch"""
    horizon: int = 50
    """records per sequence"""
    eval_episodes: int = 100
    """evaluation episodes at the end"""
    eval_every: int = 50
    """evaluate a few episodes every this many phase-2 epochs (0: never)"""
    eval_episodes_during: int = 5
    """episodes of each evaluation during phase 2"""
    world_model: Optional[str] = None
    """a phase-1 checkpoint (world_model.pt) to load instead of running phase 1"""
    action_repeat: Optional[int] = None
    """environment steps per action (default: the datasets' info.json, else the benchmark's 2)"""
    phase1_only: bool = False
    """stop after phase 1 (world_model.pt, for later runs' --world-model): no demonstrations"""
    resume: bool = False
    """continue the run in {runs_dir}/{run_name}/ from its last checkpoint"""
    capture_video: bool = False
    """save a GIF of the first episode of each evaluation to {run_dir}/videos/"""
    lr: float = 3e-4
    """Adam learning rate of both phases (the authors' configs; the paper's text says 1e-3)"""
    grad_clip: float = 100.0
    """gradient-norm clip"""
    layout: Optional[Literal["aime", "dreamer"]] = None
    """world-model layout: aime (paper) or dreamer (original Dreamer); default by embodiment"""
    free_nats: Optional[float] = None
    """phase-1 free nats (default: 0, cheetah 1)"""
    kl_balance: Optional[float] = None
    """phase-1 KL balancing alpha (default: none, cheetah 0.8)"""
    kl_scale: Optional[float] = None
    """KL scale of phase 1 (default: 1, cheetah LPOMDP 2e-4)"""
    kl_only: bool = False
    """phase 2 maximises only the KL term (paper Figure 5)"""
    rec_only: bool = False
    """phase 2 maximises only the reconstruction term (paper Figure 5)"""
    use_idm: bool = False
    """AIME with an inverse dynamics model (Appendix C)"""


def resolve(args: Args) -> Args:
    """Fill the embodiment-dependent defaults (SPEC: cheetah uses the original-Dreamer layout)."""
    cheetah = args.env == "cheetah"
    layout = args.layout or ("dreamer" if cheetah else "aime")
    return Args(
        **{
            **asdict(args),
            "task": args.task or Path(args.demo).name.removeprefix(f"{args.env}-").split("-")[0],
            "layout": layout,
            "free_nats": args.free_nats if args.free_nats is not None else float(cheetah),
            "kl_balance": args.kl_balance
            if args.kl_balance is not None
            else (0.8 if cheetah else None),
            "kl_scale": args.kl_scale
            if args.kl_scale is not None
            else (2e-4 if cheetah and args.obs == "lpomdp" else 1.0),
        }
    )


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def mlp(
    inp: int, out: int, hidden: int, layers: int, act: type[nn.Module] = nn.ELU, norm: bool = False
) -> nn.Sequential:
    """`layers` hidden layers of `hidden` units (optionally LayerNorm), then a linear head."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(inp if i == 0 else hidden, hidden)]
        mods += [nn.LayerNorm(hidden)] if norm else []
        mods += [act()]
    mods.append(nn.Linear(hidden if layers else inp, out))
    return nn.Sequential(*mods)


class ConvEncoder(nn.Module):
    """World Models / PlaNet encoder: 4 convolutions, kernel 4, stride 2, depths 32-64-128-256."""

    def __init__(self, depth: int = 32) -> None:
        super().__init__()
        d = depth
        self.net = nn.Sequential(
            nn.Conv2d(3, d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(d, 2 * d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(2 * d, 4 * d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(4 * d, 8 * d, 4, 2), nn.Flatten(),
        )  # fmt: skip
        self.out_dim = 32 * d  # 256 channels x 2 x 2

    def forward(self, image: Tensor) -> Tensor:  # [..., 3, 64, 64] -> [..., 1024]
        return self.net(image.flatten(0, -4)).unflatten(0, image.shape[:-3])


class PointDeconv(nn.ConvTranspose2d):
    """A transposed convolution of a 1 x 1 input: the same parameters, computed as one matrix
    product, which is several times faster than the general transposed convolution on a CPU."""

    def forward(self, x: Tensor, output_size: Optional[list[int]] = None) -> Tensor:
        out = x.flatten(1) @ self.weight.flatten(1)  # [N, out * k * k]
        out = out.unflatten(1, self.weight.shape[1:]) + self.bias[:, None, None]  # type: ignore[index]
        return out.contiguous(memory_format=torch.channels_last)


class ConvDecoder(nn.Module):
    """The transposed decoder: a linear layer to 1024 x 1 x 1, then kernels 5-5-6-6, stride 2."""

    def __init__(self, feature_dim: int, depth: int = 32) -> None:
        super().__init__()
        d = depth
        self.net = nn.Sequential(
            nn.Linear(feature_dim, 32 * d), nn.Unflatten(-1, (32 * d, 1, 1)),
            PointDeconv(32 * d, 4 * d, 5, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(4 * d, 2 * d, 5, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * d, d, 6, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(d, 3, 6, 2), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, features: Tensor) -> Tensor:  # [..., feature] -> [..., 3, 64, 64]
        return self.net(features.flatten(0, -2)).unflatten(0, features.shape[:-1])


class WorldModel(nn.Module):
    """Encoder f(o_t), RSSM prior p(s_t | s_t-1, a_t-1) and posterior q(s_t | s_t-1, a_t-1, f(o_t)),
    decoder p(o_t | s_t), and with `use_idm` the IDM q(a_t-1 | s_t-1, f(o_t)) of Appendix C."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        visual: bool,
        layout: str,
        use_idm: bool,
        cfg: Optional[RSSMConfig] = None,
    ) -> None:
        super().__init__()
        self.visual, self.layout = visual, layout
        self.cfg: RSSMConfig = cfg or (AIME_RSSM if layout == "aime" else DREAMER_RSSM)
        self.encoder: nn.Module
        if visual:
            self.encoder = ConvEncoder()
            embed_dim = self.encoder.out_dim
        elif layout == "aime":  # the identity encoder of Appendix B
            self.encoder, embed_dim = nn.Identity(), obs_dim
        else:  # the original Dreamer's MLP encoder, no head
            self.encoder = mlp(obs_dim, 512, 512, 1, nn.SiLU, norm=True)
            embed_dim = 512
        self.rssm = RSSM(action_dim, embed_dim, self.cfg)
        feat = self.rssm.feature_dim
        self.decoder_mean: nn.Module
        self.decoder_std: Optional[nn.Module] = None
        if visual:  # channels-last memory: the fast layout for convolutions on CPU and GPU
            cl = {"memory_format": torch.channels_last}  # accepted by Module.to, not in its stubs
            self.encoder.to(**cl)  # type: ignore[call-overload]
            self.decoder_mean = ConvDecoder(feat).to(**cl)  # type: ignore[call-overload]
        elif layout == "aime":  # mean and std MLPs, 2 x 128 ELU
            self.decoder_mean = mlp(feat, obs_dim, 128, 2)
            self.decoder_std = mlp(feat, obs_dim, 128, 2)
        else:
            self.decoder_mean = mlp(feat, obs_dim, 512, 2, nn.SiLU, norm=True)
        self.idm = Policy(feat + embed_dim, action_dim) if use_idm else None

    def decode(self, features: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """p(o_t | s_t): mean [T, B, obs_dim] or [T, B, 3, 64, 64], and std (None: fixed at 1)."""
        mean = self.decoder_mean(features)
        if self.decoder_std is None:
            return mean, None
        return mean, F.softplus(self.decoder_std(features)) + 1e-6


class Policy(nn.Module):
    """pi(a_t | s_t): a tanh-Gaussian whose mean and std come from MLPs of 2 x 128 ELU units."""

    def __init__(self, feature_dim: int, action_dim: int) -> None:
        super().__init__()
        self.mean = mlp(feature_dim, action_dim, 128, 2)
        self.std = mlp(feature_dim, action_dim, 128, 2)

    def forward(self, features: Tensor) -> TanhNormal:
        return TanhNormal(self.mean(features), F.softplus(self.std(features)) + 1e-6)


def observation(batch: dict[str, Tensor], keys: tuple[str, ...]) -> Tensor:
    """The setting's observation o_t: the image, or the low-dimensional keys concatenated."""
    return batch["image"] if keys == ("image",) else torch.cat([batch[k] for k in keys], -1)


# ---------------------------------------------------------------------------------------------
# The ELBO, eqs. (1)-(3)
# ---------------------------------------------------------------------------------------------
def elbo_loss(
    model: WorldModel,
    obs: Tensor,  # [T, B, ...]
    states: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    kl_scale: float = 1.0,
    free_nats: float = 0.0,
    balance: Optional[float] = None,
    kl_only: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss to minimise and the ELBO's terms, averaged over the batch, summed over time."""
    deter, stoch, prior_mean, prior_std, post_mean, post_std = states
    mean, std = model.decode(torch.cat([deter, stoch], -1))
    sq_err = (obs - mean) ** 2  # [T, B, ...]
    dims = tuple(range(2, sq_err.ndim))
    # eq. (3): KL[q(s_t | s_t-1, a_t-1, o_t) || p(s_t | s_t-1, a_t-1)]  [T, B]
    kl = kl_normal(post_mean, post_std, prior_mean, prior_std).sum(-1)
    kl_train = kl_loss(post_mean, post_std, prior_mean, prior_std, free_nats, balance)
    # eq. (2): log p(o_t | s_t)  [T, B]
    if std is None:  # fixed unit variance
        log_p = -0.5 * sq_err.sum(dims) - 0.5 * math.log(2 * math.pi) * sq_err[0, 0].numel()
        rec_loss, kl_loss_ = -log_p.sum(0).mean(), kl_train.sum(0).mean()
    else:  # beta-NLL (beta = 1/2): log-likelihoods weighted by their detached std, KL by the mean
        log_p_dims = -0.5 * sq_err / std**2 - std.log() - 0.5 * math.log(2 * math.pi)  # [T, B, D]
        log_p, weight = log_p_dims.sum(-1), std.detach()
        rec_loss = -(log_p_dims * weight).sum(-1).sum(0).mean()
        kl_loss_ = (kl_train * weight.mean(-1)).sum(0).mean()
    rec_term, kl_term = log_p.sum(0).mean(), -kl.sum(0).mean()  # eq. (2), eq. (3): sums over t
    # the loss: minus eq. (1), with the KL options and the beta-NLL weights above
    loss = kl_scale * kl_loss_ if kl_only else rec_loss + kl_scale * kl_loss_
    metrics = {
        "elbo": rec_term + kl_term,  # eq. (1)
        "rec_term": rec_term,
        "kl_term": kl_term,
        "obs_mse": sq_err.mean(),
        "loss": loss,
    }
    return loss, {k: v.detach() for k, v in metrics.items()}


def phase1_step(
    model: WorldModel, batch: dict[str, Tensor], keys: tuple[str, ...], args: Args
) -> tuple[Tensor, dict[str, Tensor]]:
    """eq. (4): the ELBO of embodiment windows, actions from the dataset."""
    obs, actions = observation(batch, keys), batch["pre_action"]
    embed = model.encoder(obs)  # f(o_t) for all t at once  [T, B, embed]
    states = model.rssm.observe(embed, actions)  # s_t ~ q(s_t | s_t-1, a_t-1, f(o_t))
    kl_scale = 1.0 if args.kl_scale is None else args.kl_scale
    free_nats = 0.0 if args.free_nats is None else args.free_nats
    # eq. (4): the ELBO of D_body windows under the dataset's actions, maximised in phi, theta
    loss, metrics = elbo_loss(model, obs, states, kl_scale, free_nats, args.kl_balance)
    if model.idm is not None:  # Appendix C: log q(a_t-1 | s_t-1, f(o_t)) on detached inputs
        feat = torch.cat([states.deter, states.stoch], -1)
        idm = model.idm(torch.cat([feat[:-1], embed[1:]], -1).detach())
        idm_loss = -idm.log_prob(actions[1:]).sum(0).mean()
        loss = loss + idm_loss
        metrics["idm_loss"] = idm_loss.detach()
    return loss, metrics


def infer_actions(
    model: WorldModel, policy: Policy, embed: Tensor
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor, Tensor]:
    """eqs. (6)-(8): a_t-1 ~ pi(a_t-1 | s_t-1) (or the IDM), then s_t ~ q(s_t | s_t-1, a_t-1, o_t).

    Returns the states (as `RSSM.observe`), the actions [T, B, A] and KL(IDM || pi) [T, B].
    """
    rssm = model.rssm
    T, B = embed.shape[:2]
    h, s = rssm.initial(B, embed.device)
    embed_proj = rssm.project_embed(embed)  # [T, B, width], outside the loop
    noise = torch.randn(T, B, rssm.cfg.stoch, device=embed.device)
    outs, actions, action_kl = [], [], []
    for t in range(T):
        feat = torch.cat([h, s], -1)
        pi = policy(feat)
        if model.idm is None:
            action = pi.rsample()  # eq. (6): a_t-1 ~ pi(a_t-1 | s_t-1)
        else:  # Appendix C: actions from the IDM, KL(IDM || policy) joins the loss
            q = model.idm(torch.cat([feat, embed[t]], -1))
            action = q.rsample()  # eq. (10): a_t-1 ~ q(a_t-1 | s_t-1, f(o_t))
            action_kl.append(kl_normal(q.mean, q.std, pi.mean, pi.std).sum(-1))
        # eq. (6): s_t ~ q(s_t | s_t-1, a_t-1, f(o_t)) given the action just sampled
        h, s, post_mean, post_std = rssm.obs_step(h, s, action, embed_proj[t], noise[t])
        outs.append((h, s, post_mean, post_std))
        actions.append(action)
    deter, stoch, post_mean, post_std = (torch.stack(x) for x in zip(*outs, strict=True))
    prior_mean, prior_std = rssm.prior(deter)  # eq. (7): p(s_t | s_t-1, a_t-1), the same a_t-1
    kls = torch.stack(action_kl) if action_kl else torch.zeros(T, B, device=embed.device)
    return (deter, stoch, prior_mean, prior_std, post_mean, post_std), torch.stack(actions), kls


def phase2_step(
    model: WorldModel, policy: Policy, batch: dict[str, Tensor], keys: tuple[str, ...], args: Args
) -> tuple[Tensor, dict[str, Tensor]]:
    """eq. (8): the true ELBO of demonstration windows, actions inferred; gradients reach psi."""
    obs = observation(batch, keys)
    with torch.no_grad():
        embed = model.encoder(obs)
    states, actions, action_kl = infer_actions(model, policy, embed)
    kl_scale = 0.0 if args.rec_only else 1.0
    loss, metrics = elbo_loss(model, obs, states, kl_scale, kl_only=args.kl_only)  # eq. (8)
    if model.idm is not None:  # KL(IDM || pi), summed over time like the ELBO's terms
        loss = loss + action_kl.sum(0).mean()  # eq. (5) under eq. (10): + KL(IDM || pi)
        metrics["action_kl"] = action_kl.sum(0).mean().detach()
    if "pre_action" in batch:  # analysis only (paper Figure 8): never part of the loss
        metrics["action_mse"] = ((actions.detach() - batch["pre_action"]) ** 2).mean()
    return loss, metrics


@torch.no_grad()
def open_loop_images(model: WorldModel, batch: dict[str, Tensor], context: int = 5) -> Tensor:
    """Truth above prediction for 4 sequences: the model filters `context` frames, then imagines
    the rest under the true actions. An image [3, 4 * 2 * 64, T * 64] for TensorBoard."""
    obs, actions = batch["image"][:20, :4], batch["pre_action"][:20, :4]  # [T, 4, 3, 64, 64]
    post = model.rssm.observe(model.encoder(obs[:context]), actions[:context], sample=False)
    start = (post.deter[-1], post.stoch[-1])
    prior = model.rssm.imagine(start, len(obs) - context, actions=actions[context:], sample=False)
    pred = model.decode(torch.cat([post.features(), prior.features()]))[0]
    grid = torch.stack([obs, pred], 2)  # [T, 4, 2, 3, 64, 64]
    T, n = grid.shape[:2]
    return grid.permute(3, 1, 2, 4, 0, 5).reshape(3, n * 2 * 64, T * 64).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Evaluation in the environment
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: WorldModel,
    policy: Policy,
    args: Args,
    episodes: int,
    device: torch.device,
    video: Optional[Path] = None,
) -> list[float]:
    """Episode returns of the policy acting on the posterior state the model filters from the
    real observations and the actions taken. Up to 10 episodes run in lockstep (one batch)."""
    returns: list[float] = []
    gen = torch.Generator(device).manual_seed(args.seed + 100)  # eval noise apart from training's
    repeat = args.action_repeat or 2  # main fills it from the datasets
    for first in range(0, episodes, 10):
        n = min(10, episodes - first)
        render = args.obs == "visual" or (video is not None and first == 0)
        envs: list[DMCEnv] = [
            make_env(f"{args.env}-{args.task}", args.obs, render=render, action_repeat=repeat)
            for _ in range(n)
        ]
        recs = [env.reset(seed=args.seed + 100 + first + i) for i, env in enumerate(envs)]
        keys = envs[0].obs_keys
        h, s = model.rssm.initial(n, device)
        total, frames = np.zeros(n), []
        while True:
            batch = {
                k: torch.as_tensor(np.stack([r[k] for r in recs]), device=device)[None]
                for k in keys
            }
            if "image" in batch:
                batch["image"] = batch["image"].permute(0, 1, 4, 2, 3).float() / 255
            action = torch.as_tensor(np.stack([r["pre_action"] for r in recs]), device=device)
            embed = model.encoder(observation(batch, keys))[0]
            noise = torch.randn(n, model.cfg.stoch, device=device, generator=gen)
            h, s, _, _ = model.rssm.obs_step(h, s, action, model.rssm.project_embed(embed), noise)
            if recs[0]["is_last"]:
                break
            act = policy(torch.cat([h, s], -1)).mode.cpu().numpy()
            recs = [env.step(a) for env, a in zip(envs, act, strict=True)]
            total += [r["reward"] for r in recs]
            if video is not None and first == 0:
                frames.append(recs[0]["image"])
        returns += total.tolist()
        if frames and video is not None:
            from PIL import Image

            video.parent.mkdir(parents=True, exist_ok=True)
            images = [Image.fromarray(f) for f in frames]
            images[0].save(video, save_all=True, append_images=images[1:], duration=40, loop=0)
    return returns


def expert_return(args: Args, demo_folders: list[Path]) -> tuple[float, str]:
    """The return that normalises scores: SPEC.md's published expert, else the demonstrations'."""
    name = f"{args.env}-{args.task}"
    if name in EXPERT_RETURNS:
        return EXPERT_RETURNS[name], "published expert return (AIME Appendix D)"
    files = [f for folder in demo_folders for f in trajectory_files(folder)][: args.num_demos]
    mean = float(np.mean([load_trajectory(f, ["reward"])["reward"].sum() for f in files]))
    return mean, "mean return of the demonstrations"


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
# What a phase-1 model must share with a run (models saved without action_repeat used 2).
MODEL_SETTINGS = ("env", "obs", "layout", "use_idm", "action_repeat")


def save(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_world_model(path: Path, model: WorldModel, args: Args) -> None:
    """Load a phase-1 checkpoint, refusing one trained with other settings."""
    if not path.is_file():
        raise SystemExit(f"error: --world-model {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    theirs = {"action_repeat": 2, **ckpt.get("settings", {})}
    clashes = {
        k: (theirs.get(k), getattr(args, k))
        for k in MODEL_SETTINGS
        if theirs.get(k) != getattr(args, k)
    }
    if args.use_idm is False and theirs.get("use_idm") is True:
        clashes.pop("use_idm")  # a model with an IDM serves plain AIME too
    if clashes:
        raise SystemExit(
            f"error: {path} was trained with other settings (checkpoint, this run): {clashes}"
        )
    state = {
        k: v for k, v in ckpt["model"].items() if model.idm is not None or not k.startswith("idm.")
    }
    model.load_state_dict(state)


def rng_state(data: TrajectoryDataset) -> dict[str, Any]:
    """Every random stream training draws from: torch's and the dataset's window sampler."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda, "data": data.rng.bit_generator.state}


def set_rng_state(state: dict[str, Any], data: TrajectoryDataset) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    data.rng.bit_generator.state = state["data"]


def train_epoch(
    step: Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]],
    data: TrajectoryDataset,
    params: list[nn.Parameter],
    opt: torch.optim.Optimizer,
    args: Args,
    device: torch.device,
) -> tuple[dict[str, Tensor], Tensor]:
    """One epoch: `steps_per_epoch` Adam steps on sampled windows, gradient norm clipped.

    Returns the metrics summed over the epoch and the loss of every step, both on the device
    (no host synchronisation inside the epoch).
    """
    sums: dict[str, Tensor] = {}
    losses = []
    for _ in range(args.steps_per_epoch):
        loss, metrics = step(data.sample(args.batch_size, args.horizon, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm"] = nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        losses.append(loss.detach())
        for k, v in metrics.items():
            sums[k] = v + sums[k] if k in sums else v
    return sums, torch.stack(losses)


def check_finite(losses: Tensor, phase: int, epoch: int, args: Args, ckpt: Path) -> None:
    """Stop at the first non-finite loss of the epoch (one host sync per epoch)."""
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        step = epoch * args.steps_per_epoch + int((~finite).nonzero()[0, 0])
        kept = f"the last good checkpoint {ckpt} is kept" if ckpt.exists() else "no checkpoint yet"
        raise SystemExit(
            f"error: non-finite loss at phase-{phase} gradient step {step} (epoch {epoch}); {kept}"
        )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(args: Args) -> dict[str, Any]:
    args = resolve(args)
    if args.kl_only and args.rec_only:
        raise SystemExit("error: --kl-only and --rec-only exclude each other")
    if args.phase1_only and args.world_model:
        raise SystemExit("error: --phase1-only trains the world model that --world-model loads")
    body_name = Path(args.body_data).name if Path(args.body_data).is_dir() else args.body_data
    demo_name = Path(args.demo).name if Path(args.demo).is_dir() else args.demo
    run_name = f"{args.env}-{args.task}__{args.obs}__{body_name}__{demo_name}__{args.exp_name}"
    if args.phase1_only:  # one world model serves every task: no task or demonstrations in it
        run_name = f"{args.env}__{args.obs}__{body_name}__phase1__{args.exp_name}"
    run_name += f"__{args.seed}"
    run_dir = Path(args.runs_dir) / run_name
    ckpt_path, model_path = run_dir / "checkpoint.pt", run_dir / "world_model.pt"
    if (
        run_dir.exists()
        and (ckpt_path.exists() or (run_dir / "results.json").exists())
        and not args.resume
    ):
        raise SystemExit(
            f"error: {run_dir} holds a run already; pass --resume to continue it, "
            "or another --exp-name"
        )

    # -- data: every dataset is checked before any training ----------------------------------
    env = make_env(f"{args.env}-{args.task}", args.obs)
    keys = env.obs_keys
    shapes = {k: env.record_shapes[k] for k in (*keys, "pre_action")}
    body_folders = dataset_folders(args.data_dir, args.env, args.body_data, "body")
    demo_folders = (
        [] if args.phase1_only else dataset_folders(args.data_dir, args.env, args.demo, "demo")
    )
    for folder in [] if args.world_model else body_folders:
        trajectory_files(folder)
    num_demo_files = sum(len(trajectory_files(folder)) for folder in demo_folders)
    if num_demo_files < args.num_demos and not args.phase1_only:
        raise DatasetError(f"--num-demos {args.num_demos}, but {args.demo} holds {num_demo_files}")
    expert, expert_source = (0.0, "") if args.phase1_only else expert_return(args, demo_folders)
    used = demo_folders if args.world_model else [*body_folders, *demo_folders]
    args = replace(args, action_repeat=dataset_action_repeat(used, args.action_repeat))

    # -- seeding ---------------------------------------------------------------------------------
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    model = WorldModel(
        env.obs_dim, env.action_dim, args.obs == "visual", args.layout or "aime", args.use_idm
    ).to(device)
    model_opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    policy: Optional[Policy] = None
    policy_opt: Optional[torch.optim.Adam] = None
    state: dict[str, Any] = {"phase": 1, "epoch": 0, "wall": {"phase1": 0.0, "phase2": 0.0}}
    if args.world_model:
        load_world_model(Path(args.world_model), model, args)
        state["phase"] = 2
    resumed = None
    if args.resume and ckpt_path.exists():
        resumed = torch.load(ckpt_path, map_location=device, weights_only=False)
        if {k: v for k, v in resumed["args"].items() if k != "resume"} != {
            k: v for k, v in asdict(args).items() if k != "resume"
        }:
            raise SystemExit(
                f"error: {ckpt_path} was written with other flags; resume with the same flags"
            )
        state = resumed["state"]
        model.load_state_dict(resumed["model"])
        model_opt.load_state_dict(resumed["model_opt"])
        print(f"resuming {run_dir} at phase {state['phase']}, epoch {state['epoch']}")
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(run_dir))
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()),
    )

    def checkpoint(data: TrajectoryDataset) -> None:
        save(ckpt_path, {
            "args": asdict(args), "state": state, "rng": rng_state(data),
            "model": model.state_dict(), "model_opt": model_opt.state_dict(),
            "policy": policy.state_dict() if policy else None,
            "policy_opt": policy_opt.state_dict() if policy_opt else None,
        })  # fmt: skip

    def log(prefix: str, sums: dict[str, Tensor], step: int) -> dict[str, float]:
        values = {k: float(v) / args.steps_per_epoch for k, v in sums.items()}  # one sync per epoch
        for k, v in values.items():
            writer.add_scalar(f"{prefix}/{k}", v, step)
        return values

    # -- phase 1: learn the world model on the embodiment data, eq. (4) -------------------------
    if state["phase"] == 1:
        body = TrajectoryDataset(
            body_folders, [*keys, "pre_action"], expected_shapes=shapes, seed=args.seed
        )
        if resumed:
            set_rng_state(resumed["rng"], body)
        bar = tqdm(
            range(state["epoch"], args.phase1_epochs),
            desc="phase 1 (world model)",
            initial=state["epoch"],
            total=args.phase1_epochs,
        )
        for epoch in bar:
            start = time.time()
            sums, losses = train_epoch(
                lambda b: phase1_step(model, b, keys, args),
                body, list(model.parameters()), model_opt, args, device,
            )  # fmt: skip
            check_finite(losses, 1, epoch, args, ckpt_path)
            values = log("world_model", sums, (epoch + 1) * args.steps_per_epoch)
            if model.visual and (epoch % 10 == 9 or epoch + 1 == args.phase1_epochs):
                image = open_loop_images(model, body.sample(4, 20, device))
                writer.add_image("world_model/open_loop", image, (epoch + 1) * args.steps_per_epoch)
            bar.set_postfix(elbo=f"{values['elbo']:.1f}")
            state["wall"]["phase1"] += time.time() - start
            state["epoch"] = epoch + 1
            checkpoint(body)
        settings = {k: getattr(args, k) for k in MODEL_SETTINGS}
        settings.update(body_data=args.body_data, args=asdict(args))
        save(model_path, {"settings": settings, "model": model.state_dict()})
        print(f"world model saved to {model_path}")
        state.update(phase=2, epoch=0)
        resumed = None
        if args.phase1_only:
            checkpoint(body)
    if args.phase1_only:
        writer.close()
        return {"world_model": str(model_path), "wall_time_s": state["wall"]}

    # -- phase 2: imitation by maximising the evidence of the demonstrations, eq. (8) -----------
    model.requires_grad_(False)  # eq. (8): phi*, theta* stay fixed, only psi is learned
    policy = Policy(model.rssm.feature_dim, env.action_dim).to(device)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    # The demonstrations' actions, where the files hold them, serve the analysis metric only.
    with np.load(trajectory_files(demo_folders[0])[0]) as first:
        has_actions = "pre_action" in first.files or "action" in first.files
    demo_keys = [*keys, "pre_action"] if has_actions else list(keys)
    demo = TrajectoryDataset(demo_folders, demo_keys, args.num_demos, shapes, seed=args.seed + 1)
    if resumed and resumed["policy"] is not None:
        policy.load_state_dict(resumed["policy"])
        policy_opt.load_state_dict(resumed["policy_opt"])
        set_rng_state(resumed["rng"], demo)
    if state["phase"] == 2:
        bar = tqdm(
            range(state["epoch"], args.phase2_epochs),
            desc="phase 2 (policy)",
            initial=state["epoch"],
            total=args.phase2_epochs,
        )
        for epoch in bar:
            start = time.time()
            sums, losses = train_epoch(
                lambda b: phase2_step(model, policy, b, keys, args),
                demo, list(policy.parameters()), policy_opt, args, device,
            )  # fmt: skip
            check_finite(losses, 2, epoch, args, ckpt_path)
            values = log("policy", sums, (epoch + 1) * args.steps_per_epoch)
            bar.set_postfix(
                elbo=f"{values['elbo']:.1f}",
                action_mse=f"{values.get('action_mse', float('nan')):.3f}",
            )
            state["wall"]["phase2"] += time.time() - start
            if (
                args.eval_every
                and (epoch + 1) % args.eval_every == 0
                and epoch + 1 < args.phase2_epochs
            ):
                video = run_dir / "videos" / f"epoch{epoch + 1}.gif" if args.capture_video else None
                returns = evaluate(model, policy, args, args.eval_episodes_during, device, video)
                writer.add_scalar("eval/return", np.mean(returns), epoch + 1)
                writer.add_scalar(
                    "eval/normalised_score", 100 * np.mean(returns) / expert, epoch + 1
                )
            state["epoch"] = epoch + 1
            checkpoint(demo)
        state.update(phase=3, epoch=0)
        checkpoint(demo)

    # -- final evaluation ------------------------------------------------------------------------
    start = time.time()
    video = run_dir / "videos" / "final.gif" if args.capture_video else None
    returns = evaluate(model, policy, args, args.eval_episodes, device, video)
    scores = 100 * np.asarray(returns) / expert
    results = {
        "algorithm": "aime",
        "env": args.env, "task": args.task, "obs": args.obs,
        "body_data": args.body_data, "demo": args.demo, "num_demos": args.num_demos,
        "seed": args.seed, "returns": returns,
        "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
        "normalised_score": float(scores.mean()), "normalised_score_std": float(scores.std()),
        "expert_return": expert, "expert_return_source": expert_source,
        "wall_time_s": {**state["wall"], "evaluation": time.time() - start},
        "world_model": args.world_model or str(model_path),
        "args": asdict(args),
    }  # fmt: skip
    atomic_write(
        run_dir / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2))
    )
    writer.add_scalar(
        "eval/final_normalised_score", results["normalised_score"], args.phase2_epochs
    )
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
