"""V-MAIL: Variational Model-Based Adversarial Imitation Learning (Rafailov et al., NeurIPS 2021).

    python vmail.py --env walker --task walk --obs visual --demo walk          # Algorithm 1
    python vmail.py --zero-shot --source-tasks stand run --task walk          # Algorithm 2

A variational world model (an RSSM) learns the environment from the policy's experience and the
demonstrations (the ELBO, eq. 21); a discriminator learns to tell the latent states and actions
the model infers from the demonstrations from those of on-policy rollouts inside the model
(eq. 23); the policy climbs the discounted sum of the discriminator's rewards along its rollouts
through the learned dynamics (eq. 22), and acts on the state the model filters from real
observations. Equations carry the numbers of the paper's Appendix B, (21)-(23).

Algorithm 1 of the paper, and where each line lives here:
    collect T steps: z_t ~ q(.|x_t, z_t-1, a_t-1),
      a_t ~ pi(a_t | z_t), step the environment          `train_online`: FilteringActor(...)
    add the episode to B_pi                               `train_online`: buffer.add(...)
    per training iteration:                               `train_online`: train(...), `iteration`
      sample {x_1:T, a_1:T-1} ~ B_E u B_pi                `replay.sample_union`
      optimise the model with eq. (21)                    `elbo_loss`
      sample {x^E, a^E} ~ B_E; z^E ~ q(.|x^E, a^E)        `expert_latents`
      latent rollouts z^pi_1:H of pi in the model         `imagine`
      update D with z^E, z^pi (eq. 23)                    `discriminator_loss`
      update pi to improve eq. (22)                       `policy_losses`, `value_expansion`
Algorithm 2 (`--zero-shot`): line 3 runs Algorithm 1 on the `--source-tasks` with one shared model
and one aggregated buffer (`train_online`); lines 4-8 fine-tune the model on the target task's
demonstrations and that buffer and train a new discriminator and policy in the model only
(`transfer`), with no environment step until the evaluation.

Implementation details (docs/vmail.md has more). The defaults are the authors' DeepMind Control
code (github rmrafailov/VMAIL, `dm_control/`: `vmail.py`, `models.py`, `tools.py`), which made the
paper's figures; where it departs from the paper's text a flag gives the text's variant (7-10).
 1. Dreamer-v1 base: RSSM `VMAIL_RSSM` with hidden layers as wide as --deter, the conv encoder
    (images - 0.5, a ReLU after every layer) and linear decoder or MLPs 2x400 ELU, unit-variance
    decoders with their log 2pi constants, Keras' initialisation (`keras_init`), free nats 3 on
    the batch-mean KL; Adam 6e-4 (model) and 8e-5 (D, pi, V), gradient-norm clip 100.
 2. Actor: tanh-Gaussian from an MLP 4x400 ELU, mean 5 tanh(x / 5), std softplus(x + c) + 1e-4
    (5 where the net outputs 0: `--actor-init-std`), reading detached states in imagination; V:
    MLP 3x400 ELU; D: MLP 2x400 ELU, sigmoid.
 3. An iteration computes every loss first, then steps each network once on its own loss.
 4. Rollouts of K = `--imag-horizon` = 15 steps from every posterior state of the model's batch
    but each window's last; gamma 0.99. Expert pairs (z_t, a_t) take a_t from the next record.
 5. Schedule: empty buffers (`--prefill-episodes 0`), 100 iterations before the first episode,
    200 after each; batches 128 x 50. Collection: a sample plus noise 0.3 (`--expl-noise`);
    evaluation: the most likely of 100 samples (`--eval-samples`), episode i from seed + 100 + i.
 6. Model batches are drawn from B_E u B_pi in proportion to the trajectories each holds; B_E is
    the first --num-demos (the paper's 10; 0: every file, the authors' loader).
 7. Reward: D's probability (the code: `reward = policy_d.mean()`); `--reward log_d` is eq. (22).
 8. Returns: discounted sums of the first K - 1 rewards, no bootstrap; V(z_tau+1) is fit to the
    return from z_tau, unused by pi. `--value-bootstrap` is eq. (22): plus gamma^(K - tau) V(z_K).
 9. Actor loss: the gamma^tau-weighted mean of every imagined step's return (the code);
    `--actor-loss start` maximises eq. (22) at the start states only (Algorithm 1 line 19).
10. Gradient penalty (|grad logit D| - 1)^2 at interpolated inputs, weight 1 (`--gp-weight`; the
    paper names none), over D's parameters (the code's); `--grad-penalty inputs`, `none`.
11. Algorithm 2: one pi, V and D per source task, new ones for the target (line 2); DeepMind
    Control's walk and run as they are (the paper's target speeds are 2-4 and over 8).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn

from common import datasets, replay
from common.envs import EnvError, check_env, make_env
from common.evaluation import collect_episodes, episode_seed, evaluate, expert_return, scores
from common.nets import ConvDecoder, ConvEncoder, TanhNormal, kl_normal, mlp, observation
from common.rssm import RSSM, VMAIL_RSSM, FilteringActor, keras_init
from common.run import (  # flags' ranges
    FREE_ON_RESUME,
    NONNEGATIVE,
    POSITIVE,
    Run,
    RunArgs,
    add_to,
    autocast,
    check_flags,
    derived,
    label,
    seed_everything,
)


@dataclass
class LearnerArgs(RunArgs):
    """The flags of the imitation learner (pi, V, D), shared with vmail_obs.py."""

    imag_horizon: Annotated[int, POSITIVE] = 15
    """K: steps of the latent rollouts and of the value expansion, eq. (22)"""
    gamma: float = 0.99
    """discount of eq. (22)"""
    reward: Literal["d", "log_d"] = "d"
    """the policy's reward: D's probability (the authors' code) or log D (the paper, eq. 22)"""
    value_bootstrap: bool = False
    """eq. (22): add gamma^(K - tau) V(z_K) to the returns, fit V(z_tau) to them (the paper's)"""
    actor_loss: Literal["every-step", "start"] = "every-step"
    """pi maximises every imagined step's return (the authors') or eq. (22) at the start states"""
    grad_penalty: Literal["params", "inputs", "none"] = "params"
    """D's gradient penalty: over its parameters (the authors'), its inputs (Gulrajani's), none"""
    gp_weight: float = 1.0
    """weight of the gradient penalty"""
    actor_init_std: float = 5.0
    """the actor's std before the tanh where its net outputs 0 (Dreamer-v1's and the authors' 5)"""
    eval_samples: Annotated[int, NONNEGATIVE] = 100
    """evaluation acts with the most likely of this many samples of pi (0: with tanh(mean))"""
    disc_lr: float = 8e-5
    """Adam learning rate of the discriminator"""
    actor_lr: float = 8e-5
    """Adam learning rate of the actor"""
    value_lr: float = 8e-5
    """Adam learning rate of the value net"""
    grad_clip: float = 100.0
    """gradient-norm clip of every optimiser"""
    hidden: int = 400
    """width of pi's, V's and D's layers (vmail.py: also of the tabular encoder and decoder)"""


@dataclass
class Args(LearnerArgs):
    """V-MAIL: adversarial imitation in a variational model's latent space, online (Algorithm 1)
    or by zero-shot transfer from source tasks (Algorithm 2, --zero-shot).

    Example: python vmail.py --env walker --task walk --obs visual"""

    exp_name: str = "vmail"
    """name of this experiment, part of the run's folder name"""
    env: str = "walker"
    """embodiment (dm_control domain): walker or cheetah (or another suite domain)"""
    task: Annotated[Optional[str], derived("the --demo task, else walk; cheetah run", "STR")] = None
    """task to imitate and evaluate"""
    demo: Annotated[Optional[str], derived("the task's", "STR")] = None
    """demonstrations of the task: a task name (walk -> {env}-walk-expert) or a path"""
    obs: Literal["mdp", "lpomdp", "visual"] = "visual"
    """observation setting: true state, positions only, or 64x64 images (the paper's)"""
    num_demos: Annotated[int, NONNEGATIVE] = 10
    """demonstration trajectories used per task, the first N (the paper's 10); 0: every file of
    the folder (the authors' loader, whose folder held the paper's 10)"""
    zero_shot: bool = False
    """Algorithm 2: train on --source-tasks, then transfer to --task without environment steps"""
    source_tasks: tuple[str, ...] = ("stand", "run")
    """--zero-shot: the source tasks (their demonstrations are {env}-{task}-expert)"""
    phase2_epochs: int = 500
    """--zero-shot: epochs of the transfer, in the model without environment steps"""
    steps_per_epoch: Annotated[int, POSITIVE] = 100
    """--zero-shot: iterations per transfer epoch"""
    total_steps: Annotated[int, POSITIVE, FREE_ON_RESUME] = 500_000
    """Algorithm 1: simulator steps per task, the random prefill included; --resume may raise it"""
    prefill_episodes: Annotated[int, NONNEGATIVE] = 0
    """Algorithm 1: random-action episodes that start each task's buffer (the authors' 1,000
    random steps are made up by the demonstrations they copy into the model's data: none)"""
    pretrain_steps: Annotated[int, NONNEGATIVE] = 100
    """Algorithm 1: training iterations before the first episode of the policy"""
    train_steps_per_episode: Annotated[int, POSITIVE] = 200
    """Algorithm 1: training iterations after each collected episode (the authors' 200 per 1,000
    simulator steps)"""
    batch_size: Annotated[int, POSITIVE] = 128
    """sequences per batch (model data and demonstrations)"""
    horizon: Annotated[int, POSITIVE] = 50
    """records per sequence"""
    expl_noise: float = 0.3
    """std of the Gaussian noise added to the policy's sampled actions during collection"""
    model_lr: float = 6e-4
    """Adam learning rate of the world model"""
    free_nats: float = 3.0
    """free nats of the batch-mean KL of eq. (21)"""
    deter: int = 200
    """size of the RSSM's deterministic state h"""
    stoch: int = 30
    """size of the RSSM's stochastic state s"""
    action_repeat: Annotated[
        Optional[int], derived("the data's info.json, else 2", "INT"), POSITIVE
    ] = None
    """simulator steps per action"""
    eval_episodes: Annotated[int, POSITIVE] = 10
    """evaluation episodes at the end"""
    eval_every: int = 10
    """evaluate every this many episodes of a task (--zero-shot's transfer: epochs); 0: never"""
    eval_episodes_during: Annotated[int, POSITIVE] = 5
    """episodes of each evaluation during training"""


@dataclass
class Config(Args):
    """The flags with every default filled in (`resolve`)."""

    task: str = ""
    demo: str = ""
    action_repeat: int = 2


def resolve(args: Args) -> Config:
    """Check the flags; fill in the task, its demonstrations and the action repeat (the data's)."""
    check_flags(args)  # every flag's range (its annotation), learning rates, --device
    demo_task = datasets.dataset_task(args.env, args.demo) if args.demo else None
    task = args.task or demo_task or ("run" if args.env == "cheetah" else "walk")
    for t in (*(args.source_tasks if args.zero_shot else ()), task):
        check_env(f"{args.env}-{t}", args.obs)
    if args.zero_shot and task in args.source_tasks:
        raise SystemExit(f"error: the target task {task} is one of --source-tasks")
    check_learner(args)
    cfg = Config(**{**asdict(args), "task": task, "demo": args.demo or task})
    repeat = datasets.dataset_action_repeat(data_folders(cfg), args.action_repeat)
    return replace(cfg, action_repeat=repeat)


def check_learner(args: LearnerArgs) -> None:
    """The learner's flags beyond `check_flags`' ranges (vmail_obs.py's too)."""
    if args.actor_init_std <= 0:
        raise SystemExit(f"error: --actor-init-std must be positive, got {args.actor_init_std}")
    if args.imag_horizon < 2 and not args.value_bootstrap:
        why = "without --value-bootstrap (the returns leave out the last step's reward)"
        raise SystemExit(f"error: --imag-horizon must be at least 2 {why}, not {args.imag_horizon}")


def demonstrations(cfg: Config) -> dict[str, str]:
    """Each task's demonstration dataset: the source tasks' (Algorithm 2), then the task's."""
    return {**{t: t for t in (cfg.source_tasks if cfg.zero_shot else ())}, cfg.task: cfg.demo}


def data_folders(cfg: Config) -> list[Path]:
    """The dataset folders a run reads: every task's demonstrations."""
    names, data = demonstrations(cfg).values(), cfg.data_dir
    return [f for name in names for f in datasets.dataset_folders(data, cfg.env, name, "demo")]


def open_demonstrations(
    cfg: Config, keys: tuple[str, ...], shapes: dict[str, tuple[int, ...]]
) -> dict[str, datasets.Dataset]:
    """B_E of every task, with the actions, each file checked before any training: the first
    `--num-demos` trajectories of each (0: every file, as the authors' loader)."""
    datasets.require_datasets(data_folders(cfg))  # every missing one named at once
    return {
        t: datasets.open_dataset(cfg.data_dir, cfg.env, name, "demo", keys, shapes,
                                 cfg.num_demos or None, seed=cfg.seed + 1 + i,
                                 cache_dir=cfg.cache_dir)
        for i, (t, name) in enumerate(demonstrations(cfg).items())
    }  # fmt: skip


# -- Networks ----------------------------------------------------------------------------------
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)  # a unit-variance Gaussian's -log density at its mean


class WorldModel(nn.Module):
    """The variational model of eq. (21): encoder, belief q(z_t | x_t, z_t-1, a_t-1) and forward
    model T(z_t | z_t-1, a_t-1) (the RSSM), observation model U(x_t | z_t). Images are centred
    (x - 0.5) on the way in and decoded in that space (detail 1); `depth`: the convolutions'."""

    def __init__(
        self, obs_dim: int, action_dim: int, visual: bool, cfg: Config, depth: int = 32
    ) -> None:
        super().__init__()
        # the authors' RSSM has hidden layers as wide as its GRU (`deter_size`)
        self.cfg = replace(VMAIL_RSSM, deter=cfg.deter, stoch=cfg.stoch, hidden=cfg.deter)
        self.centre = 0.5 if visual else 0.0  # the authors' images: uint8 / 255 - 0.5
        self.encoder: nn.Module
        self.decoder: nn.Module
        if visual:  # a ReLU after every convolution; the decoder's last one linear (the mean)
            self.encoder = ConvEncoder(depth, centre=self.centre, last_relu=True)
            embed_dim = self.encoder.out_dim
        else:  # one ELU layer, the Dreamer-v1 MLP without its head
            self.encoder = nn.Sequential(mlp(obs_dim, cfg.hidden, cfg.hidden, 1), nn.ELU())
            embed_dim = cfg.hidden
        self.rssm = RSSM(action_dim, embed_dim, self.cfg)
        feat = self.rssm.feature_dim
        self.decoder = (
            ConvDecoder(feat, depth, sigmoid=False) if visual else mlp(feat, obs_dim, cfg.hidden, 2)
        )
        keras_init(self)


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


class LearnerLosses(NamedTuple):
    """One iteration's losses of D (eq. 23), pi (eq. 22) and V, and their metrics."""

    disc: Tensor
    actor: Tensor
    value: Tensor
    metrics: dict[str, Tensor]


Step = tuple[Tensor, nn.Module, torch.optim.Optimizer]  # a loss, its network, its Adam


class Learner(NamedTuple):
    """One task's imitation learner: policy pi, value V, discriminator D and their optimisers."""

    actor: Actor
    value: nn.Module
    disc: nn.Module
    actor_opt: torch.optim.Adam
    value_opt: torch.optim.Adam
    disc_opt: torch.optim.Adam

    def parts(self, task: str) -> dict[str, Any]:
        """Its networks and optimisers, as checkpoint parts named `{task}/{field}`."""
        return {f"{task}/{f}": getattr(self, f) for f in self._fields}

    def steps(self, losses: LearnerLosses) -> dict[str, Step]:
        """Each network's loss and Adam for `adam_steps`, in the authors' order: pi, V, D."""
        return {
            "actor": (losses.actor, self.actor, self.actor_opt),
            "value": (losses.value, self.value, self.value_opt),
            "disc": (losses.disc, self.disc, self.disc_opt),
        }


def make_learner(
    feature_dim: int, action_dim: int, with_actions: bool, cfg: LearnerArgs
) -> Learner:
    """pi, V and D (reading (z, a), or z alone without `with_actions`), each with its Adam."""
    device = torch.device(cfg.device)
    actor = keras_init(Actor(feature_dim, action_dim, cfg.hidden, cfg.actor_init_std)).to(device)
    value = keras_init(mlp(feature_dim, 1, cfg.hidden, 3)).to(device)
    d_in = feature_dim + (action_dim if with_actions else 0)
    disc = keras_init(mlp(d_in, 1, cfg.hidden, 2)).to(device)
    return Learner(
        actor, value, disc,
        torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr),
        torch.optim.Adam(value.parameters(), lr=cfg.value_lr),
        torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr),
    )  # fmt: skip


class Nets(NamedTuple):
    """What learns: the shared world model and its Adam, and each task's learner."""

    model: WorldModel
    model_opt: torch.optim.Adam
    learners: dict[str, Learner]

    def parts(self) -> dict[str, Any]:
        """What a checkpoint holds of them: the model, its Adam, each learner's `parts`."""
        learners = {k: v for t, lr in self.learners.items() for k, v in lr.parts(t).items()}
        return {"model": self.model, "model_opt": self.model_opt, **learners}


# -- Dynamics learning, eq. (21) ---------------------------------------------------------------
def elbo_loss(
    model: WorldModel, batch: dict[str, Tensor], keys: tuple[str, ...], free_nats: float
) -> tuple[Tensor, tuple[Tensor, Tensor], dict[str, Tensor]]:
    """Minus eq. (21), averaged over batch and time, and the posterior states (h, s) [T, B, .]
    (detached) that the latent rollouts start from."""
    obs, actions = observation(batch, keys), batch["pre_action"]  # [T, B, ...], [T, B, A]
    post = model.rssm.observe(model.encoder(obs), actions)  # z_t ~ q(z_t | x_t, z_t-1, a_t-1)
    dims = tuple(range(2, obs.ndim))
    # eq. (21), reconstruction: log U(x_t | z_t), a unit-variance Gaussian around the decoded
    # mean, in the encoder's centred space (images - 0.5)
    error = model.decoder(post.features()) - (obs - model.centre)
    log_u = -(0.5 * error.square() + HALF_LOG_2PI).sum(dims)  # [T, B]
    # eq. (21), forward model: KL(q(z_t | x_t, z_t-1, a_t-1) || T(z_t | z_t-1, a_t-1))  [T, B]
    kl = kl_normal(post.post_mean, post.post_std, post.prior_mean, post.prior_std).sum(-1)
    loss = -log_u.mean() + kl.mean().clamp(min=free_nats)  # free nats on the batch-mean KL
    metrics = {"elbo": (log_u - kl).mean(), "rec_term": log_u.mean(), "kl": kl.mean(), "loss": loss}
    start = (post.deter.detach(), post.stoch.detach())
    return loss, start, {k: v.detach() for k, v in metrics.items()}


# -- Adversarial policy learning, eqs. (22) and (23) -------------------------------------------
@torch.no_grad()
def expert_latents(
    encoder: nn.Module, rssm: RSSM, batch: dict[str, Tensor], keys: tuple[str, ...]
) -> tuple[Tensor, Tensor]:
    """z^E_1:T ~ q(.|x^E, a^E) (Algorithm 1 line 16): features [T, B, F] and the expert's actions
    a_t [T - 1, B, A] taken at z_t (from the next record)."""
    feat = rssm.observe(encoder(observation(batch, keys)), batch["pre_action"]).features()
    return feat, batch["pre_action"][1:]


class Imagination(NamedTuple):
    features: Tensor  # [K + 1, N, deter + stoch]: z_0 (the start) .. z_K
    actions: Tensor  # [K, N, A]: a_tau ~ pi(a | z_tau)
    action_std: Tensor  # the policy's mean pre-tanh std over the rollouts (a metric)


def imagine(rssm: RSSM, actor: Actor, h: Tensor, s: Tensor, horizon: int) -> Imagination:
    """Algorithm 1 line 17: roll the forward model T `horizon` steps from (h, s) [N, .] with
    a_tau ~ pi(a | z_tau) (reparameterised; the actor reads the state detached)."""
    features, actions, stds = [torch.cat([h, s], -1)], [], []
    for _ in range(horizon):
        pi = actor(features[-1].detach())
        action = pi.rsample()
        h, s, _, _ = rssm.img_step(h, s, action)  # z_tau+1 ~ T(z | z_tau, a_tau)
        features.append(torch.cat([h, s], -1))
        actions.append(action)
        stds.append(pi.std.detach().mean())
    return Imagination(torch.stack(features), torch.stack(actions), torch.stack(stds).mean())


def gradient_penalty(
    disc: nn.Module, expert_in: Tensor, policy_in: Tensor, over: Literal["inputs", "params"]
) -> Tensor:
    """(|grad logit D(x_hat)| - 1)^2 at x_hat = alpha x^pi + (1 - alpha) x^E, alpha ~ U(0, 1) per
    point, between each policy input [K, N, D] and the expert input [M, D] of its index n (mod
    M; the authors tile the expert's inputs over the K steps, M = N). The gradient is taken over
    the inputs (per point, then averaged) or over D's parameters (of the mean logit, one norm)."""
    expert = expert_in[torch.arange(policy_in.shape[1], device=expert_in.device) % len(expert_in)]
    alpha = torch.rand(*policy_in.shape[:2], 1, device=policy_in.device)
    x_hat = (alpha * policy_in + (1 - alpha) * expert).flatten(0, 1).requires_grad_(True)
    logits = disc(x_hat)
    if over == "inputs":
        (grad,) = torch.autograd.grad(logits.sum(), x_hat, create_graph=True)
        return (grad.norm(dim=-1) - 1).square().mean()
    params = [p for p in disc.parameters() if p.requires_grad]
    grads = torch.autograd.grad(logits.mean(), params, create_graph=True)
    return (torch.stack([g.square().sum() for g in grads]).sum().sqrt() - 1).square()


def discriminator_loss(
    disc: nn.Module, expert_in: Tensor, policy_in: Tensor, cfg: LearnerArgs
) -> tuple[Tensor, dict[str, Tensor]]:
    """eq. (23): -log D(z^E, a^E) - log(1 - D(z^pi, a^pi)), averaged, plus the gradient penalty.
    Inputs, expert [M, D] and policy [K, N, D], are detached: only D learns from this loss."""
    expert_in, policy_in = expert_in.detach(), policy_in.detach()
    logit_e, logit_p = disc(expert_in).squeeze(-1), disc(policy_in).squeeze(-1)
    # eq. (23), with log D = logsigmoid(logit) and log(1 - D) = logsigmoid(-logit)
    loss = -F.logsigmoid(logit_e).mean() - F.logsigmoid(-logit_p).mean()
    metrics = {
        "disc_loss": loss,
        "expert_d": torch.sigmoid(logit_e).mean(),
        "policy_d": torch.sigmoid(logit_p).mean(),
    }
    if cfg.grad_penalty != "none" and cfg.gp_weight > 0:
        penalty = gradient_penalty(disc, expert_in, policy_in, cfg.grad_penalty)
        loss = loss + cfg.gp_weight * penalty
        metrics["grad_penalty"] = penalty
    return loss, {k: v.detach() for k, v in metrics.items()}


def value_expansion(reward: Tensor, bootstrap: Optional[Tensor], gamma: float) -> Tensor:
    """The K - tau step expansions of eq. (22) from every imagined state tau = 0..K-1: [K, N],

        V^(K-tau)(z_tau) = sum_{j=tau}^{K-1} gamma^(j - tau) r_j + gamma^(K - tau) V(z_K),

    reward [K, N] holds r_j (step j's reward, detail 7), bootstrap [N] V(z_K) (None: no
    bootstrap). Row 0 is eq. (22), V^K(z_0)."""
    last = bootstrap if bootstrap is not None else torch.zeros_like(reward[0])
    returns = []
    for t in reversed(range(reward.shape[0])):
        last = reward[t] + gamma * last  # eq. (22), one step at a time from the end
        returns.append(last)
    return torch.stack(returns[::-1])


def policy_losses(
    rssm: RSSM, learner: Learner, start: tuple[Tensor, Tensor], expert_feat: Tensor,
    expert_actions: Optional[Tensor], cfg: LearnerArgs,
) -> LearnerLosses:  # fmt: skip
    """Algorithm 1 lines 17-19: the discriminator, actor and value losses of one iteration.

    start: posterior states (h, s) [T, B, .]; the rollouts begin at every one but the last of
    each sequence (as the authors'). expert_feat [T, B, F]: the expert latents, expert_actions
    [T - 1, B, A] their actions (None, in vmail_obs.py: D reads states only)."""
    h, s = (x[:-1].flatten(0, 1) for x in start)  # [N, .], N = (T - 1) B
    imag = imagine(rssm, learner.actor, h, s, cfg.imag_horizon)
    if expert_actions is not None:  # pairs (z_tau, a_tau), tau = 0..K-1
        expert_in = torch.cat([expert_feat[:-1], expert_actions], -1).flatten(0, 1)
        policy_in = torch.cat([imag.features[:-1], imag.actions], -1)  # [K, N, F + A]
    else:  # states only: z_1..z_K, the states the policy's actions reach
        expert_in, policy_in = expert_feat.flatten(0, 1), imag.features[1:]
    disc_loss, metrics = discriminator_loss(learner.disc, expert_in, policy_in, cfg)
    logit = learner.disc(policy_in).squeeze(-1)  # [K, N], through the model and the actions
    reward = torch.sigmoid(logit) if cfg.reward == "d" else F.logsigmoid(logit)
    if cfg.value_bootstrap:  # eq. (22): K rewards, then gamma^(K - tau) V(z_K); V(z_tau) fit
        v = learner.value(imag.features).squeeze(-1)  # V(z_0) .. V(z_K)  [K + 1, N]
        returns = value_expansion(reward, v[-1], cfg.gamma)  # [K, N]
        v_fit = v[:-1]
    else:  # the authors' DMC code: lambda-returns at lambda = 1 with no bootstrap over the
        # first K - 1 rewards, and V(z_tau+1) fit to the return from z_tau (V never reaches pi)
        returns = value_expansion(reward[:-1], None, cfg.gamma)  # [K - 1, N]
        v_fit = learner.value(imag.features[1:-1]).squeeze(-1)
    weight = cfg.gamma ** torch.arange(len(returns), device=returns.device)[:, None]  # gamma^tau
    if cfg.actor_loss == "every-step":  # the authors': every imagined step's return
        actor_loss = -(weight * returns).mean()
    else:  # eq. (22) and Algorithm 1 line 19: maximise V^K at the start states
        actor_loss = -returns[0].mean()
    # -log N(return; V, 1), the gamma^tau-weighted mean (the authors' value loss)
    value_loss = (weight * (0.5 * (v_fit - returns.detach()).square() + HALF_LOG_2PI)).mean()
    metrics.update(actor_loss=actor_loss.detach(), value_loss=value_loss.detach(),
                   imagined_reward=reward.detach().mean(), action_std=imag.action_std,
                   imagined_return=returns[0].detach().mean())  # fmt: skip
    return LearnerLosses(disc_loss, actor_loss, value_loss, metrics)


def adam_steps(steps: dict[str, Step], grad_clip: float) -> dict[str, Tensor]:
    """One Adam step of each named network on its own loss (gradient norm clipped), in order:
    every gradient is computed before any parameter moves (detail 3), and each loss reaches
    only its own network. Returns each network's gradient norm."""
    metrics: dict[str, Tensor] = {}
    for i, (name, (loss, net, opt)) in enumerate(steps.items()):
        params = list(net.parameters())
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params, retain_graph=i < len(steps) - 1)
        metrics[f"{name}_grad_norm"] = nn.utils.clip_grad_norm_(params, grad_clip).detach()
    for _, _, opt in steps.values():
        opt.step()
    return metrics


def iteration(
    nets: Nets, task: str, batch: dict[str, Tensor], expert: dict[str, Tensor],
    keys: tuple[str, ...], cfg: Config,
) -> dict[str, Tensor]:  # fmt: skip
    """Algorithm 1 lines 12-19, one iteration in the authors' order: every loss is computed with
    the networks as they are (eq. (21) on the batch of B_E u B_pi, the expert latents of line 16
    from `expert`, the rollouts, eqs. (22)-(23)), then the model and `task`'s D, pi and V each
    take one Adam step on their own loss."""
    model, learner = nets.model, nets.learners[task]
    with autocast(cfg.precision, batch["pre_action"].device):  # bf16: see --precision
        # lines 12-13: eq. (21) on the batch; its posterior states (h, s) start the rollouts
        model_loss, start, metrics = elbo_loss(model, batch, keys, cfg.free_nats)
        # line 16: z^E ~ q(z | x^E, a^E) and the expert's actions a^E
        expert_feat, expert_actions = expert_latents(model.encoder, model.rssm, expert, keys)
        # lines 17-19: rollouts of pi from `start`; the losses of D (eq. 23), pi (eq. 22), V
        losses = policy_losses(model.rssm, learner, start, expert_feat, expert_actions, cfg)
    # every gradient with the networks as they are, then one Adam step each (detail 3)
    steps = {"model": (model_loss, model, nets.model_opt), **learner.steps(losses)}
    return {**metrics, **losses.metrics, **adam_steps(steps, cfg.grad_clip)}


def mode_actor(
    encoder: nn.Module, rssm: RSSM, actor: Actor, keys: tuple[str, ...], cfg: LearnerArgs
) -> Callable[[int], FilteringActor]:
    """The evaluation's actor: pi's mode (`--eval-samples`) on z_t ~ q(z_t | x_t, z_t-1, a_t-1)."""
    device = torch.device(cfg.device)
    return partial(FilteringActor, encoder, rssm, actor, keys, device, samples=cfg.eval_samples)


# -- Algorithm 1 (and Algorithm 2 line 3): online V-MAIL on one or several tasks ---------------
def train_online(
    run: Run, cfg: Config, demos: dict[str, datasets.TrajectoryDataset],
    buffers: dict[str, replay.ReplayBuffer], nets: Nets, keys: tuple[str, ...],
) -> None:  # fmt: skip
    """Each task's episodes, `total_steps` simulator steps of them: `prefill_episodes` of random
    actions, `pretrain_steps` iterations (the authors pretrain at their agent's first call), then
    an episode of the policy and `train_steps_per_episode` iterations, task after task. Every
    iteration trains the shared model on every task's demonstrations and buffer (B_E u B_pi) and
    that task's D, pi and V."""
    tasks, device, repeat = tuple(buffers), torch.device(cfg.device), cfg.action_repeat
    encoder, rssm, parts = nets.model.encoder, nets.model.rssm, nets.parts()
    render = cfg.obs == "visual"  # (seed: the environments' own random streams)
    envs = {t: make_env(f"{cfg.env}-{t}", cfg.obs, cfg.seed, repeat, render) for t in tasks}
    sources: list[replay.WindowSampler] = [*demos.values(), *buffers.values()]  # B_E u B_pi
    fields = [*keys, "pre_action"]
    episodes = math.ceil(cfg.total_steps / envs[tasks[0]].episode_steps)  # per task
    prefill = min(cfg.prefill_episodes, episodes)

    def collect(task: str, episode: int, act: Optional[FilteringActor]) -> None:
        """Algorithm 1 lines 5-9: one episode of `act` (None: random actions) joins B_pi."""
        buffers[task].keep(episode)  # (one a killed run saved after its checkpoint: again)
        seed = episode_seed(cfg.seed, 10 + tasks.index(task), episode)
        (trajectory,) = collect_episodes([envs[task]], [seed], act)
        buffers[task].add(trajectory)
        ret, step = float(trajectory["reward"].sum()), buffers[task].transitions * repeat
        run.writer.add_scalar(f"train/{task}/return", ret, step)
        run.show(task=task, episode=episode, ret=f"{ret:.1f}")

    def train(task: str, n: int) -> None:
        """Algorithm 1 lines 10-19, `n` times, on `task`'s D, pi and V."""
        sums: dict[str, Tensor] = {}
        for _ in range(n):
            # line 10: {x_1:T, a_1:T-1} ~ B_E u B_pi
            batch = replay.sample_union(sources, cfg.batch_size, cfg.horizon, device, fields)
            expert = demos[task].sample(cfg.batch_size, cfg.horizon, device)  # line 15
            add_to(sums, iteration(nets, task, batch, expert, keys, cfg))
        step = sum(b.transitions for b in buffers.values()) * repeat
        means = run.log(f"train/{task}", sums, n, step)
        run.check_finite(means, f"after {len(buffers[task])} episodes of {task}")

    for episode in run.epochs("prefill", prefill, parts, sources, "random prefill (episodes)"):
        for task in tasks:
            collect(task, episode, None)
    for _ in run.epochs("pretraining", 1 if cfg.pretrain_steps and episodes > prefill else 0,
                        parts, sources, "pretraining"):  # fmt: skip
        for task in tasks:
            train(task, cfg.pretrain_steps)
    for k in run.epochs("online", episodes - prefill, parts, sources, "V-MAIL online (episodes)"):
        episode = prefill + k
        for task in tasks:
            # lines 5-8: z_t ~ q(z_t | x_t, z_t-1, a_t-1), a_t ~ pi(a_t | z_t) plus noise, step
            actor = nets.learners[task].actor
            collect(task, episode, FilteringActor(encoder, rssm, actor, keys, device, 1,
                                                  cfg.expl_noise))  # fmt: skip
            train(task, cfg.train_steps_per_episode)
            if cfg.eval_every and (episode + 1) % cfg.eval_every == 0:
                mode = mode_actor(encoder, rssm, actor, keys, cfg)
                n, step = cfg.eval_episodes_during, buffers[task].transitions * repeat
                returns = evaluate(f"{cfg.env}-{task}", cfg.obs, repeat, cfg.seed, n, mode)
                run.writer.add_scalar(f"eval/{task}/return", np.mean(returns), step)


# -- Algorithm 2 lines 4-8: the target task in the model, without environment steps ------------
def transfer(
    run: Run, cfg: Config, model_data: list[replay.WindowSampler], nets: Nets,
    keys: tuple[str, ...],
) -> None:  # fmt: skip
    """`phase2_epochs` x `steps_per_epoch` iterations in the model only, each fine-tuning it on
    B_E u B_pi (`model_data`) and training the target task's D, pi and V."""
    device, demo, learner = torch.device(cfg.device), model_data[0], nets.learners[cfg.task]
    fields, task_env = [*keys, "pre_action"], f"{cfg.env}-{cfg.task}"
    mode = mode_actor(nets.model.encoder, nets.model.rssm, learner.actor, keys, cfg)  # pi's mode
    for epoch in run.epochs("transfer", cfg.phase2_epochs, nets.parts(), model_data,
                            "V-MAIL transfer, in the model"):  # fmt: skip
        sums: dict[str, Tensor] = {}
        for _ in range(cfg.steps_per_epoch):
            expert = demo.sample(cfg.batch_size, cfg.horizon, device)
            # line 6: fine-tune the model with eq. (21) on B_E u B_pi
            batch = replay.sample_union(model_data, cfg.batch_size, cfg.horizon, device, fields)
            # line 8: D, pi on the target's expert latents, rollouts from the batch's states
            add_to(sums, iteration(nets, cfg.task, batch, expert, keys, cfg))
        n = cfg.steps_per_epoch
        means = run.log("imitation", sums, n, (epoch + 1) * n)
        run.check_finite(means, f"in epoch {epoch}")
        run.show(expert_d=f"{means['expert_d']:.2f}", policy_d=f"{means['policy_d']:.2f}")
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.phase2_epochs:
            during = cfg.eval_episodes_during
            returns = evaluate(task_env, cfg.obs, cfg.action_repeat, cfg.seed, during, mode)
            run.log_returns(returns, epoch + 1)


# -- Main --------------------------------------------------------------------------------------
def main(args: Args) -> dict[str, Any]:
    cfg = resolve(args)
    env = make_env(f"{cfg.env}-{cfg.task}", cfg.obs)
    keys, shapes = env.obs_keys, {k: env.record_shapes[k] for k in (*env.obs_keys, "pre_action")}
    opened = open_demonstrations(cfg, keys, shapes)
    demos = {t: d.data for t, d in opened.items()}
    for demo in demos.values():  # a --horizon longer than every demonstration: before the prefill
        demo.require_windows(cfg.horizon)
    expert = expert_return(cfg.env, cfg.task, opened[cfg.task])
    body = f"zeroshot-{'+'.join(cfg.source_tasks)}" if cfg.zero_shot else "online"
    name = f"{cfg.env}-{cfg.task}__{cfg.obs}__{body}__{label(cfg.demo)}__{cfg.exp_name}"
    run = Run(cfg.runs_dir, f"{name}__{cfg.seed}", cfg, cfg.resume)

    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    # Algorithm 1 line 2 (Algorithm 2 line 2): the model; pi, V and D of each task
    model = WorldModel(env.obs_dim, env.action_dim, cfg.obs == "visual", cfg).to(device)
    learners = {t: make_learner(model.rssm.feature_dim, env.action_dim, True, cfg) for t in demos}
    nets = Nets(model, torch.optim.Adam(model.parameters(), lr=cfg.model_lr), learners)
    online = cfg.source_tasks if cfg.zero_shot else (cfg.task,)
    fields = [*keys, "pre_action"]  # B_pi of each task, saved to {run_dir}/buffer/{task}/
    buffers = {
        t: replay.ReplayBuffer(run.dir / "buffer" / t, seed=cfg.seed + 10 + i, keys=fields)
        for i, t in enumerate(online)
    }

    # -- Algorithm 1 (Algorithm 2 line 3: on the source tasks, one model) ---------------------
    train_online(run, cfg, {t: demos[t] for t in online}, buffers, nets, keys)

    # -- Algorithm 2 lines 4-8: the target task in the model, no environment step --------------
    if cfg.zero_shot:
        transfer(run, cfg, [demos[cfg.task], *buffers.values()], nets, keys)

    # -- evaluation: the policy's mode on the state filtered from real observations ------------
    start = time.time()
    video = run.video("final")
    mode = mode_actor(model.encoder, model.rssm, learners[cfg.task].actor, keys, cfg)
    task_env, n = f"{cfg.env}-{cfg.task}", cfg.eval_episodes
    returns = evaluate(task_env, cfg.obs, cfg.action_repeat, cfg.seed, n, mode, video)
    return run.finish({
        "algorithm": "vmail", "mode": "zero_shot" if cfg.zero_shot else "online",
        "env": cfg.env, "task": cfg.task, "obs": cfg.obs, "body_data": body, "demo": cfg.demo,
        "num_demos": len(opened[cfg.task].files), "seed": cfg.seed,
        **scores(returns, expert, task_env, cfg.action_repeat, cfg.seed),
        # per task, collected by Algorithm 1 (none after it)
        "env_steps": {t: b.transitions * cfg.action_repeat for t, b in buffers.items()},
        "wall_time_s": {**run.wall, "evaluation": time.time() - start},
    })  # fmt: skip


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (replay.DatasetError, EnvError) as e:  # bad data or task: the file or name, the problem
        raise SystemExit(f"error: {e}") from e
