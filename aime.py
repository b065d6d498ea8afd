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
 4. Each observation key has its own decoder (aime layout: a mean and a std MLP per key;
    dreamer: one MLP per key, std 1); the encoder reads the keys concatenated in sensor order
    (aime: the identity). The IDM's loss is averaged over time and summed over the batch, and its
    tanh-Gaussian log-density clips actions to +-0.999, as the authors' code.
 5. Layouts as the authors' configs: walker the paper's (`aime`, rssm.yaml), every other domain
    the original Dreamer's (`dreamer`, rssmo.yaml, their configs' default): RSSM `DREAMER_RSSM`,
    an encoder of two Linear-LayerNorm-SiLU blocks of 512 without head, decoders 2x512 LayerNorm
    SiLU with std 1, free nats 1 (the KL's value reported, the clamped KL's gradient), KL
    balancing 0.8; KL scale 2e-4 in cheetah LPOMDP (the paper's; no config of theirs holds it).
 6. Phase 2 optimises the true ELBO (KL scale 1, no free nats, no balancing): the paper's text
    and the authors' README command (`world_model.free_nats=0.0 world_model.kl_rebalance=null`);
    `--phase2-kl-balance` keeps the layout's balancing, as their config without those overrides.
    `--rec-only` sets the KL scale to 0 and `--kl-only` drops the reconstruction, as theirs.
 7. Evaluation: the policy's mode tanh(mean) acts on a posterior sample, environment seeds
    seed + 100 + episode. Scores are normalised by the demonstrations' mean return, with the
    published expert return (Appendix D) beside it in results.json.
 8. `--world-model` also takes a folder of the authors' published form (model.pt + config.yaml);
    tests/test_authors_parity.py checks this file against their code on their own weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn

from common import datasets, replay
from common.envs import EnvError, check_env, make_env
from common.evaluation import evaluate, expert_return, scores
from common.model_files import (
    ModelSettings,
    layout_of,
    read_world_model,
    save_world_model,
    trained_on,
)
from common.nets import (
    LAYOUT_WIDTH,
    ConvDecoder,
    TanhNormal,
    aime_encoder,
    kl_loss,
    kl_normal,
    mlp,
    observation,
)
from common.rssm import LAYOUT_RSSM, RSSM, Filtered, FilteringActor, RSSMConfig
from common.run import POSITIVE, Run, RunArgs, add_to, check_flags, derived, label, seed_everything

Layout = Literal["aime", "dreamer"]


@dataclass
class Args(RunArgs):
    """AIME: phase 1 learns a world model on an embodiment dataset, phase 2 a policy from
    observation-only demonstrations under it, then the policy is evaluated in DeepMind Control.

    Example: python aime.py --env walker --body-data mix --demo run --obs visual"""

    exp_name: str = "aime"
    """name of this experiment, part of the run's folder name"""
    env: str = "walker"
    """embodiment (dm_control domain): walker or cheetah (or another suite domain)"""
    task: Annotated[Optional[str], derived("the --demo task", "STR")] = None
    """task the policy is evaluated on"""
    body_data: Annotated[Optional[str], derived("mix; the --world-model's own", "STR")] = None
    """embodiment dataset: random, p2e, a task (stand -> {env}-stand-buffer), mix, a+b, or a path"""
    demo: str = "run"
    """demonstration dataset: a task (run -> {env}-run-expert) or a path"""
    obs: Literal["mdp", "lpomdp", "visual"] = "visual"
    """observation setting: true state, positions only, or 64x64 images"""
    num_demos: Annotated[int, POSITIVE] = 100
    """demonstration trajectories used (the first N)"""
    phase1_epochs: Annotated[int, POSITIVE] = 1000
    """world-model epochs (phase 1)"""
    phase2_epochs: Annotated[int, POSITIVE] = 500
    """policy epochs (phase 2)"""
    steps_per_epoch: Annotated[int, POSITIVE] = 100
    """gradient steps per epoch"""
    batch_size: Annotated[int, POSITIVE] = 50
    """sequences per batch"""
    horizon: Annotated[int, POSITIVE] = 50
    """records per sequence"""
    eval_episodes: Annotated[int, POSITIVE] = 100
    """evaluation episodes at the end"""
    eval_every: int = 50
    """evaluate a few episodes every this many phase-2 epochs (0: never)"""
    eval_episodes_during: Annotated[int, POSITIVE] = 5
    """episodes of each evaluation during phase 2"""
    world_model: Annotated[Optional[str], derived("none: phase 1 trains one", "PATH")] = None
    """a world model to use instead of running phase 1: a world_model.pt of this script, or a
    folder with the authors' published model.pt and config.yaml"""
    action_repeat: Annotated[
        Optional[int], derived("the data's; else per domain", "INT"), POSITIVE
    ] = None
    """environment steps per action (no info.json: the authors' configs/env, cartpole 8, reacher
    and ball_in_cup 4, others 2)"""
    phase1_only: bool = False
    """stop after phase 1 (world_model.pt, for later runs' --world-model): no demonstrations"""
    lr: float = 3e-4
    """Adam learning rate of both phases (the authors' configs; the paper's text says 1e-3)"""
    grad_clip: float = 100.0
    """gradient-norm clip"""
    layout: Annotated[Optional[Layout], derived("by domain", "{aime,dreamer}")] = None
    """world-model layout (--world-model: its own): aime (the paper's, the authors' rssm.yaml;
    walker's) or dreamer (the original Dreamer's, their rssmo.yaml; every other domain's)"""
    free_nats: Annotated[Optional[float], derived("0; dreamer layout 1", "FLOAT")] = None
    """phase-1 free nats (phase 2 uses none)"""
    kl_balance: Annotated[Optional[float], derived("none; dreamer layout 0.8", "FLOAT")] = None
    """phase-1 KL balancing alpha (phase 2 too with --phase2-kl-balance)"""
    kl_scale: Annotated[Optional[float], derived("1; cheetah LPOMDP 2e-4", "FLOAT")] = None
    """KL scale of phase 1"""
    phase2_kl_balance: bool = False
    """phase 2 keeps --kl-balance (the authors' config default; their README's command drops it)"""
    kl_only: bool = False
    """phase 2 maximises only the KL term (paper Figure 5)"""
    rec_only: bool = False
    """phase 2 maximises only the reconstruction term (paper Figure 5)"""
    use_idm: bool = False
    """AIME with an inverse dynamics model (Appendix C)"""


@dataclass
class Config(Args):
    """The flags after `resolve`: every default that depends on others filled in."""

    task: str = ""
    body_data: str = "mix"
    layout: Layout = "aime"
    free_nats: float = 0.0
    kl_balance: Optional[float] = None  # None: no KL balancing
    kl_scale: float = 1.0
    action_repeat: int = 2


def resolve(args: Args) -> Config:
    """Fill the defaults that depend on other flags, and refuse flags that exclude each other.

    The layout (detail 5) is the --world-model's, else walker's `aime` and every other domain's
    `dreamer`; free nats 1 and KL balancing 0.8 come with `dreamer` (rssmo.yaml), none with
    `aime`. Without info.json the action repeat is `common/envs.py::AUTHORS_ACTION_REPEAT`'s.
    """
    check_flags(args)  # every flag's range (its annotation), learning rates, --device
    if args.horizon < 2:  # a window of one record holds no step from one state to the next
        raise SystemExit(f"error: --horizon must be at least 2, not {args.horizon}")
    if args.kl_only and args.rec_only:
        raise SystemExit("error: --kl-only and --rec-only exclude each other")
    if args.phase1_only and args.world_model:
        raise SystemExit("error: --phase1-only trains the world model that --world-model loads")
    task = args.task or datasets.dataset_task(args.env, args.demo)
    check_env(f"{args.env}-{task}", args.obs)
    env = args.env
    kl_scale = 2e-4 if env == "cheetah" and args.obs == "lpomdp" else 1.0
    # a world model's run is named and scored by the embodiment data the model was trained on
    model = Path(args.world_model) if args.world_model else None
    made_on = trained_on(model, env) if model else None
    if args.body_data and made_on and args.body_data != made_on:
        raise SystemExit(f"error: --body-data {args.body_data}, but --world-model was trained on "
                         f"{made_on}; leave --body-data out")  # fmt: skip
    own = ("aime" if env == "walker" else "dreamer") if model is None else layout_of(model)
    layout = args.layout or own or "aime"
    dreamer = layout == "dreamer"
    derived = {
        "body_data": made_on or args.body_data or "mix",
        "task": task,
        "layout": layout,
        "free_nats": float(dreamer) if args.free_nats is None else args.free_nats,
        "kl_balance": (0.8 if dreamer else None) if args.kl_balance is None else args.kl_balance,
        "kl_scale": kl_scale if args.kl_scale is None else args.kl_scale,
        # the action repeat the datasets this run reads were recorded at (their info.json)
        "action_repeat": datasets.dataset_action_repeat(
            data_folders(args), args.action_repeat, env
        ),
    }
    return Config(**{**asdict(args), **derived})


def data_folders(args: Args) -> list[Path]:
    """The dataset folders a run reads: D_body (none with --world-model), then D_demo (none with
    --phase1-only)."""
    data, env, body_data = args.data_dir, args.env, args.body_data or "mix"
    body = [] if args.world_model else datasets.dataset_folders(data, env, body_data, "body")
    demo = [] if args.phase1_only else datasets.dataset_folders(data, env, args.demo, "demo")
    return [*body, *demo]


def open_datasets(
    cfg: Config, keys: tuple[str, ...], shapes: dict[str, tuple[int, ...]]
) -> tuple[Optional[datasets.Dataset], Optional[datasets.Dataset]]:
    """D_body, observations and the actions that led to them (none with --world-model), and
    D_demo, observations (actions, where held, for analysis only; none with --phase1-only),
    every file read and checked, every missing folder named at once."""
    datasets.require_datasets(data_folders(cfg))
    body = demo = None
    if not cfg.world_model:
        body = datasets.open_dataset(cfg.data_dir, cfg.env, cfg.body_data, "body", keys, shapes,
                                     seed=cfg.seed, cache_dir=cfg.cache_dir)  # fmt: skip
    if not cfg.phase1_only:
        demo = datasets.open_dataset(cfg.data_dir, cfg.env, cfg.demo, "demo", keys, shapes,
                                     cfg.num_demos, None, cfg.seed + 1,
                                     cache_dir=cfg.cache_dir)  # fmt: skip
    return body, demo


# == Networks =====================================================================================
class WorldModel(nn.Module):
    """Encoder f(o_t), RSSM prior p(s_t | s_t-1, a_t-1) and posterior q(s_t | s_t-1, a_t-1, f(o_t)),
    one decoder p(o^k_t | s_t) per observation key k, and with `use_idm` the IDM
    q(a_t-1 | s_t-1, f(o_t)) of Appendix C. `dims` holds the keys (sensor order) and their sizes;
    `width` is the tabular decoders' (and the Dreamer encoder's) width, `depth` the conv width."""

    def __init__(
        self,
        dims: dict[str, int],
        action_dim: int,
        layout: Layout,
        use_idm: bool,
        cfg: Optional[RSSMConfig] = None,
        width: Optional[int] = None,
        depth: int = 32,
    ) -> None:
        super().__init__()
        self.visual, self.layout = "image" in dims, layout
        self.cfg: RSSMConfig = cfg or LAYOUT_RSSM[layout]
        width = width or LAYOUT_WIDTH[layout]
        self.encoder, embed_dim = aime_encoder(dims, layout, width, depth)
        self.rssm = RSSM(action_dim, embed_dim, self.cfg)
        feat = self.rssm.feature_dim
        self.decoder_mean, self.decoder_std = nn.ModuleDict(), nn.ModuleDict()  # no std: 1
        for key, dim in dims.items():
            if key == "image":  # channels-last memory: the fast layout for convolutions
                cl = {"memory_format": torch.channels_last}  # accepted by Module.to
                self.decoder_mean[key] = ConvDecoder(feat, depth).to(**cl)  # type: ignore[call-overload]
            elif layout == "aime":  # a mean and a std MLP per key, 2 x 128 ELU
                self.decoder_mean[key] = mlp(feat, dim, width, 2)
                self.decoder_std[key] = mlp(feat, dim, width, 2)
            else:  # an MLP per key, 2 x 512 LayerNorm SiLU, std 1
                self.decoder_mean[key] = mlp(feat, dim, width, 2, nn.SiLU, norm=True)
        self.idm = Policy(feat + embed_dim, action_dim, self.cfg.hidden) if use_idm else None

    def decode(self, features: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """p(o_t | s_t) = prod_k p(o^k_t | s_t): the keys' means concatenated in sensor order
        [T, B, obs_dim] (or the image [T, B, 3, 64, 64]), and their stds (None: fixed at 1)."""
        means = [net(features) for net in self.decoder_mean.values()]
        mean = means[0] if len(means) == 1 else torch.cat(means, -1)
        if not self.decoder_std:
            return mean, None
        std = torch.cat([F.softplus(net(features)) for net in self.decoder_std.values()], -1)
        return mean, std + 1e-6


class Policy(nn.Module):
    """pi(a_t | s_t): a tanh-Gaussian whose mean and std come from MLPs of 2 x `hidden` ELU."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.mean = mlp(feature_dim, action_dim, hidden, 2)
        self.std = mlp(feature_dim, action_dim, hidden, 2)

    def forward(self, features: Tensor) -> TanhNormal:
        return TanhNormal(self.mean(features), F.softplus(self.std(features)) + 1e-6)


# == The ELBO, eqs. (1)-(3) =======================================================================
def elbo_loss(
    model: WorldModel,
    obs: Tensor,  # [T, B, ...]
    states: Filtered,
    kl_scale: float = 1.0,
    free_nats: float = 0.0,
    balance: Optional[float] = None,
    kl_only: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss to minimise and the ELBO's terms, averaged over the batch, summed over time."""
    mean, std = model.decode(states.features())
    sq_err = (obs - mean) ** 2  # [T, B, ...]
    dims = tuple(range(2, sq_err.ndim))
    # eq. (3): KL[q(s_t | s_t-1, a_t-1, o_t) || p(s_t | s_t-1, a_t-1)]  [T, B]
    q, p = (states.post_mean, states.post_std), (states.prior_mean, states.prior_std)
    kl = kl_normal(*q, *p).sum(-1)
    kl_train = kl_loss(*q, *p, free_nats, balance)
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
        "rec_loss": rec_loss,
        "kl_loss": kl_loss_,
        "loss": loss,
    }
    return loss, {k: v.detach() for k, v in metrics.items()}


def phase1_step(
    model: WorldModel,
    batch: dict[str, Tensor],
    keys: tuple[str, ...],
    args: Config,
    sample: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """eq. (4): the ELBO of embodiment windows, actions from the dataset (`sample=False`: every
    state the posterior's mean, as the parity test with the authors' code runs it)."""
    obs, actions = observation(batch, keys), batch["pre_action"]
    embed = model.encoder(obs)  # f(o_t) for all t at once  [T, B, embed]
    states = model.rssm.observe(embed, actions, sample=sample)  # s_t ~ q(s_t | s_t-1, a_t-1, o_t)
    # eq. (4): the ELBO of D_body windows under the dataset's actions, maximised in phi, theta
    loss, metrics = elbo_loss(model, obs, states, args.kl_scale, args.free_nats, args.kl_balance)
    if model.idm is not None:  # Appendix C: log q(a_t-1 | s_t-1, f(o_t)) on detached inputs
        feat = torch.cat([states.deter, states.stoch], -1)
        idm = model.idm(torch.cat([feat[:-1], embed[1:]], -1).detach())
        idm_loss = -idm.log_prob(actions[1:]).mean(0).sum()  # the authors': mean t, sum batch
        loss = loss + idm_loss
        metrics["idm_loss"] = idm_loss.detach()
    return loss, metrics


def infer_actions(
    model: WorldModel, policy: Policy, embed: Tensor, noise: Optional[tuple[Tensor, Tensor]] = None
) -> tuple[Filtered, Tensor, Tensor]:
    """eqs. (6)-(8): a_t-1 ~ pi(a_t-1 | s_t-1) (or the IDM), then s_t ~ q(s_t | s_t-1, a_t-1, o_t).

    `noise` = (action noise [T, B, A], state noise [T, B, S]), standard normal, replaces the draws
    (zeros: the policy's mode tanh(mean) and the posterior's mean); drawn where None. Returns the
    states (as `RSSM.observe`), the actions [T, B, A] and KL(IDM || pi) [T, B].
    """
    rssm = model.rssm
    T, B = embed.shape[:2]
    h, s = rssm.initial(B, embed.device)
    embed_proj = rssm.project_embed(embed)  # [T, B, width], outside the loop
    if noise is None:  # the state's noise at once, the action's at each step
        action_noise, state_noise = None, torch.randn(T, B, rssm.cfg.stoch, device=embed.device)
    else:
        action_noise, state_noise = noise
    outs, actions, action_kl = [], [], []
    for t in range(T):
        feat = torch.cat([h, s], -1)
        pi = policy(feat)
        eps = None if action_noise is None else action_noise[t]
        if model.idm is None:
            action = pi.rsample(eps)  # eq. (6): a_t-1 ~ pi(a_t-1 | s_t-1)
        else:  # Appendix C: actions from the IDM, KL(IDM || policy) joins the loss
            q = model.idm(torch.cat([feat, embed[t]], -1))
            action = q.rsample(eps)  # eq. (10): a_t-1 ~ q(a_t-1 | s_t-1, f(o_t))
            action_kl.append(kl_normal(q.mean, q.std, pi.mean, pi.std).sum(-1))
        # eq. (6): s_t ~ q(s_t | s_t-1, a_t-1, f(o_t)) given the action just sampled
        h, s, post_mean, post_std = rssm.obs_step(h, s, action, embed_proj[t], state_noise[t])
        outs.append((h, s, post_mean, post_std))
        actions.append(action)
    deter, stoch, post_mean, post_std = (torch.stack(x) for x in zip(*outs, strict=True))
    prior_mean, prior_std = rssm.prior(deter)  # eq. (7): p(s_t | s_t-1, a_t-1), the same a_t-1
    kls = torch.stack(action_kl) if action_kl else torch.zeros(T, B, device=embed.device)
    return (
        Filtered(deter, stoch, prior_mean, prior_std, post_mean, post_std),
        torch.stack(actions),
        kls,
    )


def phase2_step(
    model: WorldModel, policy: Policy, batch: dict[str, Tensor], keys: tuple[str, ...],
    args: Config, noise: Optional[tuple[Tensor, Tensor]] = None,
) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """eq. (8): the ELBO of demonstration windows, actions inferred; gradients reach psi only. No
    free nats, no KL balancing (detail 6); `noise` as `infer_actions`'."""
    obs = observation(batch, keys)
    with torch.no_grad():
        embed = model.encoder(obs)
    states, actions, action_kl = infer_actions(model, policy, embed, noise)
    kl_scale = 0.0 if args.rec_only else 1.0
    balance = args.kl_balance if args.phase2_kl_balance else None
    loss, metrics = elbo_loss(model, obs, states, kl_scale, 0.0, balance, args.kl_only)  # eq. (8)
    if model.idm is not None:  # KL(IDM || pi), summed over time like the ELBO's terms
        # eq. (5) under eq. (10): + KL(IDM || pi), scaled as the KL term (the authors' code)
        loss = loss + kl_scale * action_kl.sum(0).mean()
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


# == Evaluation in the environment ================================================================
def evaluate_policy(
    model: WorldModel, policy: Policy, keys: tuple[str, ...], cfg: Config, episodes: int,
    device: torch.device, video: Optional[Path] = None,
) -> list[float]:  # fmt: skip
    """Episode returns of the policy's mode tanh(mean) acting on the posterior state the model
    filters from the real observations (implementation detail 7), on the task's shared initial
    states (`common/evaluation.py::evaluate`); the filter's noise has a generator of its own."""
    noise = torch.Generator(device).manual_seed(cfg.seed + 100)
    actor = partial(FilteringActor, model.encoder, model.rssm, policy, keys, device, noise=noise)
    name = f"{cfg.env}-{cfg.task}"
    return evaluate(name, cfg.obs, cfg.action_repeat, cfg.seed, episodes, actor, video)


# == Checkpoints and training epochs ==============================================================
def model_settings(cfg: Config) -> ModelSettings:
    """What a phase-1 model must share with a run (models saved without action_repeat used 2)."""
    return ModelSettings(cfg.env, cfg.obs, cfg.action_repeat, cfg.layout, cfg.use_idm)


def run_name(cfg: Config) -> str:
    """{env}-{task}__{obs}__{body}__{demo}__{exp}__{seed}; a phase-1 model, which serves every
    task, is {env}__{obs}__{body}__phase1__{exp}__{seed}."""
    if cfg.phase1_only:
        return f"{cfg.env}__{cfg.obs}__{label(cfg.body_data)}__phase1__{cfg.exp_name}__{cfg.seed}"
    return (
        f"{cfg.env}-{cfg.task}__{cfg.obs}__{label(cfg.body_data)}__{label(cfg.demo)}"
        f"__{cfg.exp_name}__{cfg.seed}"
    )


def load_world_model(path: Path, dims: dict[str, int], action_dim: int, cfg: Config) -> WorldModel:
    """The frozen world model of --world-model, a world_model.pt of aime.py or a folder in the
    authors' published form, with its sizes (`common/model_files.py::read_world_model`); refused
    if made for other settings or another observation."""
    saved = read_world_model(path, model_settings(cfg))
    model = WorldModel(dims, action_dim, cfg.layout, cfg.use_idm, saved.rssm, saved.width,
                       saved.depth)  # fmt: skip
    saved.load_into(model)
    return model


def train_epoch(
    step: Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]],
    data: datasets.TrajectoryDataset,
    opt: torch.optim.Optimizer,
    cfg: Config,
    device: torch.device,
    run: Run,
    phase: Literal[1, 2],
    epoch: int,
) -> dict[str, float]:
    """One epoch of `phase`: `steps_per_epoch` Adam steps on sampled windows, gradient norm
    clipped; the run stops at a non-finite loss. Returns the metrics' means, also logged.

    Metrics and losses stay on the device until the epoch ends (one host synchronisation)."""
    params = [p for group in opt.param_groups for p in group["params"]]  # the phase's parameters
    sums: dict[str, Tensor] = {}
    losses = []
    for _ in range(cfg.steps_per_epoch):
        batch = data.sample(cfg.batch_size, cfg.horizon, device)
        with run.autocast():  # --precision bf16: matrix products in bfloat16
            loss, metrics = step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm"] = nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        losses.append(loss.detach())
        add_to(sums, metrics)
    n = cfg.steps_per_epoch
    run.check_finite(torch.stack(losses), f"phase-{phase}", epoch * n)
    return run.log(("world_model", "policy")[phase - 1], sums, n, (epoch + 1) * n)


# == Main: Algorithm 1 ============================================================================
def main(args: Args) -> dict[str, Any]:
    cfg = resolve(args)
    env = make_env(f"{cfg.env}-{cfg.task}", cfg.obs)
    keys, action_dim = env.obs_keys, env.action_dim
    dims = {k: math.prod(env.record_shapes[k]) for k in keys}  # the observation's keys and sizes
    shapes = {k: env.record_shapes[k] for k in (*keys, "pre_action")}

    body, demo = open_datasets(cfg, keys, shapes)  # every file checked before any training
    expert = expert_return(cfg.env, cfg.task, demo) if demo else (0.0, "", None)
    run = Run(cfg.runs_dir, run_name(cfg), cfg, cfg.resume)
    model_path, n_steps = run.dir / "world_model.pt", cfg.steps_per_epoch

    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    if cfg.world_model:
        model = load_world_model(Path(cfg.world_model), dims, action_dim, cfg).to(device)
    else:
        model = WorldModel(dims, action_dim, cfg.layout, cfg.use_idm).to(device)
    model_opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    parts: dict[str, Any] = {"model": model, "model_opt": model_opt}  # what a checkpoint holds

    # -- phase 1: learn the world model on the embodiment data, eq. (4) -------------------------
    if body is not None:
        step = partial(phase1_step, model, keys=keys, args=cfg)
        for epoch in run.epochs("phase1", cfg.phase1_epochs, parts, [body.data],
                                "phase 1 (world model)"):  # fmt: skip
            values = train_epoch(step, body.data, model_opt, cfg, device, run, 1, epoch)
            if model.visual and (epoch % 10 == 9 or epoch + 1 == cfg.phase1_epochs):
                image = open_loop_images(model, body.data.sample(4, 20, device))
                run.writer.add_image("world_model/open_loop", image, (epoch + 1) * n_steps)
            run.show(elbo=f"{values['elbo']:.1f}")
        if not model_path.exists():  # (a resumed run that had saved it leaves it as it is)
            save_world_model(model_path, model, model_settings(cfg), cfg.body_data, cfg)
    if cfg.phase1_only:
        run.close()
        return {"world_model": str(model_path), "wall_time_s": run.wall}

    # -- phase 2: imitation by maximising the evidence of the demonstrations, eq. (8) -----------
    assert demo is not None
    model.requires_grad_(False)  # eq. (8): phi*, theta* stay fixed, only psi is learned
    policy = Policy(model.rssm.feature_dim, action_dim).to(device)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    parts.update(policy=policy, policy_opt=policy_opt)
    step = partial(phase2_step, model, policy, keys=keys, args=cfg)
    for epoch in run.epochs("phase2", cfg.phase2_epochs, parts, [demo.data], "phase 2 (policy)"):
        values = train_epoch(step, demo.data, policy_opt, cfg, device, run, 2, epoch)
        mse = values.get("action_mse", float("nan"))
        run.show(elbo=f"{values['elbo']:.1f}", action_mse=f"{mse:.3f}")
        last = epoch + 1 == cfg.phase2_epochs  # the final evaluation follows
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and not last:
            video, n = run.video(f"epoch{epoch + 1}"), cfg.eval_episodes_during
            returns = evaluate_policy(model, policy, keys, cfg, n, device, video)
            run.log_returns(returns, epoch + 1, expert[0])

    # -- final evaluation ------------------------------------------------------------------------
    start = time.time()
    video = run.video("final")
    returns = evaluate_policy(model, policy, keys, cfg, cfg.eval_episodes, device, video)
    results = {
        "algorithm": "aime", "env": cfg.env, "task": cfg.task, "obs": cfg.obs,
        "body_data": cfg.body_data, "demo": cfg.demo, "num_demos": cfg.num_demos, "seed": cfg.seed,
        **scores(returns, expert, f"{cfg.env}-{cfg.task}", cfg.action_repeat, cfg.seed),
        "wall_time_s": {"phase1": 0.0, **run.wall, "evaluation": time.time() - start},  # 0: none
        "world_model": cfg.world_model or str(model_path),
    }  # fmt: skip
    return run.finish(results, cfg.phase2_epochs)


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (replay.DatasetError, EnvError) as e:  # bad data or task: the file or name, the problem
        raise SystemExit(f"error: {e}") from e
