"""The agents that make the AIME benchmark's datasets (random, Dreamer, Plan2Explore) in one file.

    python dreamer_collect.py --agent dreamer --env walker --task walk --obs visual
    python dreamer_collect.py --agent p2e --env walker --obs visual
    python dreamer_collect.py --agent random --env walker --num-trajectories 1000
    python dreamer_collect.py --agent scripted --env cartpole --task swingup --action-repeat 8

What each agent writes under `--data-dir` (AIME section 4 and Appendix D):
    random    {env}-random/           uniform random actions, `--num-trajectories` of them
    dreamer   {env}-{task}-buffer/    the whole replay buffer of a Dreamer agent on the task
              {env}-{task}-expert/    `--num-demos` trajectories of the converged policy
    p2e       {env}-p2e/              the replay buffer of Plan2Explore (no task reward is used)
    scripted  {env}-{task}-expert/    `--num-demos` trajectories of a hand-written controller
                                      (cartpole-swingup, reacher-easy and -hard: `SCRIPTED`)
              {env}-{task}-buffer/    `--buffer-episodes` more, from other initial states
Every record stores every modality (all proprioceptive keys and, unless `--no-render`, the 64x64
image), so one dataset serves the MDP, LPOMDP and Visual settings; `--obs` only chooses what the
agent itself observes. Each folder's `info.json` tells how it was made and its mean return.

Dreamer (Hafner et al., ICLR 2020, "Dream to Control", Algorithm 1) and where each line lives:
    initialise the buffer with S random episodes          `train`: first `--prefill-episodes`
    while not converged, per collected episode:
      C update steps (`update`), each:                    `train_step`
        draw B sequences {(o_t, a_t, r_t)} ~ D            buffer.sample(...)
        dynamics learning: s_t ~ q(s_t | s_t-1, a_t-1, o_t),
          loss = reconstruction + reward + KL, eq. (10)   `world_model_loss`
        behaviour learning: imagine {(s_tau, a_tau)}
          from every s_t with a_tau ~ q(a_tau | s_tau)    `imagine`
        lambda-returns V_lambda(s_tau), eq. (6)           `lambda_return`
        actor: maximise sum V_lambda (through the model)  `actor_critic_loss`, eq. (7)
        value: regress v(s_tau) to V_lambda               `actor_critic_loss`, eq. (8)
      environment interaction: act on the filtered state  `run_episodes`
Plan2Explore (Sekar et al., ICML 2020) replaces the task reward in imagination by the
disagreement (variance) of an ensemble of one-step predictors of the next embedding
(`intrinsic_reward`); the ensemble is trained with the world model (`world_model_loss`).

Implementation details (the AIME authors' data-collection configs dreamer.yaml, plan2explore.yaml
and world_model/rssmo.yaml, in aime/configs/ of github.com/argmax-ai/aime; docs/dreamer_collect.md
sets each beside the papers' choice):
 1. RSSM `DREAMER_RSSM` (GRU 512, s of 30 dims, LayerNorm SiLU layers of 512, std = 2 sigmoid
    (x/2) + 0.1), free nats 1 and KL balancing 0.8; images: the 4-layer convolutional encoder and
    transposed decoder (their `cnn_ha`); low-dimensional observations: MLP encoder and decoder
    2x512 LayerNorm SiLU; unit-variance Gaussian decoders for observations and reward. Losses are
    averaged over time and batch (summed over a record's dimensions).
 2. Actor: tanh-Gaussian, mean and std from MLPs 2x128 ELU, std = softplus + 1e-6. Value: MLP
    2x128 ELU predicting (1 - gamma) v, i.e. the value in units of a per-step reward.
 3. Imagination starts from every posterior state of the batch (50 x 50), 15 steps; the reward
    of step tau + 1 is the reward head at s_tau+1; actor loss -sum_tau gamma^tau V_lambda -
    entropy_scale * H (H estimated by -log pi of the sampled action); only the actor's
    parameters take the actor's gradient, which reaches them through the learned dynamics.
 4. Training episodes sample the policy (`--expl-noise` adds Gaussian noise on top, 0 by default
    as their `epsilon: 0.0`); expert episodes act with the mode. An episode is 1000 simulator
    steps; after each from the last prefill episode on, C = 100 updates.
 5. Plan2Explore: 5 predictors, MLPs 2x1024 ELU from [s_t, a_t] to the next embedding (on
    detached inputs and targets); its reward is the mean log-variance across the ensemble."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn
from tqdm import tqdm

from common import datasets, replay
from common.envs import DMCEnv, EnvError, Record, check_env, make_env
from common.evaluation import collect_episodes, episode_seed
from common.nets import ConvDecoder, ConvEncoder, TanhNormal, kl_loss, mlp, observation
from common.rssm import DREAMER_RSSM, RSSM, FilteringActor
from common.run import (
    FREE_ON_RESUME,  # flags a resumed run may change
    POSITIVE,  # flags' ranges
    Run,
    RunArgs,
    add_to,
    autocast,
    check_flags,
    derived,
    load_state,
    read_checkpoint,
    save_gif,
    seed_everything,
    set_torch_rng_state,
)

# Equation tags `# eq. (N)` number the equations of Dreamer (Hafner et al., ICLR 2020).

# The task whose reward a task-free dataset (random, p2e) records, per embodiment.
DEFAULT_TASK = {"walker": "walk", "cheetah": "run"}
# Streams of environment seeds: episode i of a stream starts from SeedSequence(seed, (stream, i)).
BUFFER, EXPERT, EVAL = 0, 1, 2


@dataclass
class Args(RunArgs):
    """The datasets: uniform random actions, a Dreamer agent's replay buffer and its expert
    demonstrations, or Plan2Explore's replay buffer.

    Example: python dreamer_collect.py --agent dreamer --env walker --task walk"""

    agent: Literal["random", "dreamer", "p2e", "scripted"] = "random"
    """the agent: `random` (uniform actions), `dreamer` (task reward), `p2e` (Plan2Explore) or
    `scripted` (a hand-written expert: `SCRIPTED`)"""
    env: str = "walker"
    """the embodiment (dm_control domain): walker, cheetah, or another suite domain"""
    task: Annotated[Optional[str], derived("walk for walker, run for cheetah", "STR")] = None
    """the task whose reward is learned and recorded"""
    obs: Literal["visual", "mdp", "lpomdp"] = "visual"
    """what the agent observes (datasets store every modality whatever this is)"""
    num_trajectories: Annotated[int, POSITIVE] = 1000
    """random agent: how many trajectories the dataset should hold (existing ones count)"""
    total_steps: Annotated[int, POSITIVE, FREE_ON_RESUME] = 1_000_000
    """environment (simulator) steps of training; 1000 per episode, prefill included"""
    prefill_episodes: Annotated[int, POSITIVE] = 5
    """random-action episodes that start the replay buffer"""
    train_steps_per_episode: int = 100
    """gradient steps after each collected episode"""
    num_demos: Annotated[int, FREE_ON_RESUME] = 1000
    """dreamer, scripted: expert trajectories the policy collects (dreamer: 0 for none)"""
    buffer_episodes: int = 0
    """scripted: episodes from other initial states, a body dataset that covers the task"""
    batch_size: Annotated[int, POSITIVE] = 50
    """sequences per batch"""
    horizon: Annotated[int, POSITIVE] = 50
    """records per training sequence"""
    imag_horizon: Annotated[int, POSITIVE] = 15
    """imagination steps of behaviour learning"""
    gamma: float = 0.99
    """discount of the imagined returns"""
    return_lambda: float = 0.95
    """lambda of the lambda-returns"""
    entropy_scale: float = 1e-4
    """weight of the actor's entropy bonus"""
    expl_noise: float = 0.0
    """std of Gaussian noise added to training actions (the sampled policy already explores)"""
    model_lr: float = 3e-4
    """Adam learning rate of the world model (and the Plan2Explore ensemble)"""
    actor_lr: float = 8e-5
    """Adam learning rate of the actor"""
    value_lr: float = 8e-5
    """Adam learning rate of the value net"""
    grad_clip: float = 100.0
    """gradient-norm clip of every optimiser"""
    free_nats: float = 1.0
    """free nats of the KL term"""
    kl_balance: float = 0.8
    """KL balancing: weight of the prior's side of the KL"""
    deter: int = 512
    """size of the RSSM's deterministic state"""
    stoch: int = 30
    """size of the RSSM's stochastic state"""
    hidden: int = 512
    """width of the RSSM's layers and the low-dimensional encoder, decoder and reward MLPs"""
    ensemble: int = 5
    """p2e: predictors in the disagreement ensemble"""
    ensemble_hidden: int = 1024
    """p2e: width of each predictor's two hidden layers"""
    eval_every: Annotated[int, FREE_ON_RESUME] = 10
    """evaluate the policy's mode for one episode every this many episodes (0: never)"""
    load_agent: Annotated[Optional[str], derived("none: train an agent", "PATH")] = None
    """expert-only mode: load this saved agent (agent.pt) and collect --num-demos again"""
    seed: int = 0
    """seed of torch, numpy and the environments (episode i uses (seed, i))"""
    render: bool = True
    """store the 64x64 image of every record (--no-render: low-dimensional settings only)"""
    action_repeat: Annotated[int, POSITIVE] = 2
    """simulator steps per agent step"""


@dataclass
class Config(Args):
    """The flags after `resolve`: the task filled in."""

    task: str = ""


def resolve(args: Args) -> Config:
    """Fill the task whose reward the records hold (`DEFAULT_TASK` for a task-free agent)."""
    check_flags(args)  # every flag's range (its annotation), learning rates, --device
    task = args.task or DEFAULT_TASK.get(args.env)
    if task is None:
        raise SystemExit(f"error: --task is needed for the embodiment {args.env!r}")
    check_env(f"{args.env}-{task}", args.obs)
    if args.agent == "scripted" and f"{args.env}-{task}" not in SCRIPTED:
        raise SystemExit(f"error: --agent scripted: no scripted expert for {args.env}-{task}; "
                         f"scripted experts: {', '.join(SCRIPTED)}")  # fmt: skip
    return Config(**{**asdict(args), "task": task})


# == Networks =====================================================================================
class WorldModel(nn.Module):
    """Encoder f(o_t), RSSM, observation decoder p(o_t | s_t), reward head p(r_t | s_t) and, for
    Plan2Explore, the ensemble of one-step embedding predictors."""

    def __init__(self, obs_dim: int, action_dim: int, visual: bool, args: Config) -> None:
        super().__init__()
        self.visual = visual
        self.cfg = replace(DREAMER_RSSM, deter=args.deter, stoch=args.stoch, hidden=args.hidden)
        self.encoder: nn.Module
        self.decoder: nn.Module
        if visual:
            self.encoder = ConvEncoder()
            embed_dim = self.encoder.out_dim
        else:  # 2 x hidden, LayerNorm, SiLU; no linear head
            self.encoder = mlp(obs_dim, args.hidden, args.hidden, 1, nn.SiLU, norm=True)
            self.encoder.append(nn.LayerNorm(args.hidden)).append(nn.SiLU())
            embed_dim = args.hidden
        self.rssm = RSSM(action_dim, embed_dim, self.cfg)
        feat = self.rssm.feature_dim
        if visual:
            self.decoder = ConvDecoder(feat)
            cl = {"memory_format": torch.channels_last}  # accepted by Module.to, not in its stubs
            self.to(**cl)  # type: ignore[call-overload]
        else:
            self.decoder = mlp(feat, obs_dim, args.hidden, 2, nn.SiLU, norm=True)
        self.reward = mlp(feat, 1, args.hidden, 2, nn.SiLU, norm=True)
        heads = args.ensemble if args.agent == "p2e" else 0  # Plan2Explore's predictors
        predictor = partial(mlp, feat + action_dim, embed_dim, args.ensemble_hidden, 2)
        self.ensemble = nn.ModuleList([predictor() for _ in range(heads)])


class Actor(nn.Module):
    """pi(a_t | s_t): a tanh-Gaussian whose mean and std come from MLPs of 2 x 128 ELU units."""

    def __init__(self, feature_dim: int, action_dim: int) -> None:
        super().__init__()
        self.mean = mlp(feature_dim, action_dim, 128, 2)
        self.std = mlp(feature_dim, action_dim, 128, 2)

    def forward(self, features: Tensor) -> TanhNormal:
        return TanhNormal(self.mean(features), F.softplus(self.std(features)) + 1e-6)


# == Dynamics learning ============================================================================
def world_model_loss(
    model: WorldModel, batch: dict[str, Tensor], keys: tuple[str, ...], args: Config
) -> tuple[Tensor, tuple[Tensor, Tensor], dict[str, Tensor]]:
    """Dreamer's model loss, the negative of its objective eq. (10) (section 4: the observation's
    and the reward's log-likelihoods and the KL between posterior and prior), per record; for
    Plan2Explore plus the ensemble's regression loss.

    Returns the loss, the posterior states (h, s) [T, B, ...] to imagine from, and metrics."""
    obs, actions = observation(batch, keys), batch["pre_action"]  # [T, B, ...], [T, B, A]
    embed = model.encoder(obs)  # [T, B, embed]
    post = model.rssm.observe(embed, actions)
    feat = post.features()  # [T, B, deter + stoch]
    dims = tuple(range(2, obs.ndim))
    # -ln q(o_t | s_t) and -ln q(r_t | s_t) of eq. (10): unit-variance Gaussians, no constant
    rec_loss = 0.5 * (model.decoder(feat) - obs).square().sum(dims).mean()
    # Plan2Explore's states never learn from the task reward: its reward head reads them detached.
    reward_in = feat.detach() if len(model.ensemble) else feat
    reward_loss = 0.5 * (model.reward(reward_in).squeeze(-1) - batch["reward"]).square().mean()
    # the KL term of eq. (10), with free nats and KL balancing (`common/nets.py::kl_loss`)
    kl = kl_loss(
        post.post_mean, post.post_std, post.prior_mean, post.prior_std,
        args.free_nats, args.kl_balance,
    ).mean()  # fmt: skip
    loss = rec_loss + reward_loss + kl  # eq. (10)
    metrics = {"rec_loss": rec_loss, "reward_loss": reward_loss, "kl": kl}
    if len(model.ensemble):  # predict f(o_t+1) from (s_t, a_t); a_t is the record t+1's pre_action
        inputs = torch.cat([feat[:-1], actions[1:]], -1).detach()
        target = embed[1:].detach()
        ens_loss = torch.stack([(head(inputs) - target).square().mean() for head in model.ensemble])
        ens_loss = ens_loss.sum()
        loss = loss + ens_loss
        metrics["ensemble_loss"] = ens_loss
    metrics["loss"] = loss
    return loss, (post.deter.detach(), post.stoch.detach()), metrics


# == Behaviour learning ===========================================================================
class Imagination(NamedTuple):
    features: Tensor  # [H + 1, N, deter + stoch], s_0 (the start) .. s_H
    actions: Tensor  # [H, N, A], a_tau taken in s_tau
    log_probs: Tensor  # [H, N], log pi(a_tau | s_tau)


def imagine(model: WorldModel, actor: Actor, h: Tensor, s: Tensor, horizon: int) -> Imagination:
    """Roll the prior `horizon` steps from the states (h, s) [N, ...] with actions sampled from
    the actor (reparameterised, so the imagined returns are differentiable in the actor)."""
    features, actions, log_probs = [torch.cat([h, s], -1)], [], []
    for _ in range(horizon):
        action, log_prob = actor(features[-1]).rsample_with_log_prob()
        h, s, _, _ = model.rssm.img_step(h, s, action)
        features.append(torch.cat([h, s], -1))
        actions.append(action)
        log_probs.append(log_prob)
    return Imagination(torch.stack(features), torch.stack(actions), torch.stack(log_probs))


def lambda_return(reward: Tensor, value: Tensor, gamma: float, lam: float) -> Tensor:
    """V_lambda(s_tau) for tau = 0..H-1 (Dreamer eq. 6), computed backwards:

        V_lambda(s_tau) = r_tau+1 + gamma ((1 - lambda) v(s_tau+1) + lambda V_lambda(s_tau+1)),
        V_lambda(s_H) = v(s_H).

    reward [H, N]: r_tau+1 (the reward of reaching s_tau+1); value [H + 1, N]: v(s_tau)."""
    returns, last = [], value[-1]
    for t in reversed(range(reward.shape[0])):
        last = reward[t] + gamma * ((1 - lam) * value[t + 1] + lam * last)  # eq. (6)
        returns.append(last)
    return torch.stack(returns[::-1])


def intrinsic_reward(model: WorldModel, features: Tensor, actions: Tensor) -> Tensor:
    """Plan2Explore's latent disagreement (Sekar et al. 2020, section "Planning to Explore"): the
    ensemble's variance about f(o_tau+1) given (s_tau, a_tau) [H, N], as a mean log-variance over
    the embedding's dimensions (the authors' scripts; the paper uses the variance itself)."""
    inputs = torch.cat([features, actions], -1)
    predictions = torch.stack([head(inputs) for head in model.ensemble])  # [K, H, N, embed]
    return predictions.var(0).log().mean(-1)


def actor_critic_loss(
    model: WorldModel,
    actor: Actor,
    value: nn.Module,
    start: tuple[Tensor, Tensor],
    args: Config,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Actor and value losses from imagined trajectories starting at every posterior state."""
    h, s = (x.flatten(0, 1) for x in start)  # [T * B, ...]
    imag = imagine(model, actor, h, s, args.imag_horizon)
    if len(model.ensemble):
        reward = intrinsic_reward(model, imag.features[:-1], imag.actions)  # [H, N]
    else:
        reward = model.reward(imag.features[1:]).squeeze(-1)  # r_tau+1  [H, N]
    v = value(imag.features).squeeze(-1) / (1 - args.gamma)  # [H + 1, N]
    returns = lambda_return(reward, v, args.gamma, args.return_lambda)  # [H, N]
    weight = args.gamma ** torch.arange(args.imag_horizon, device=h.device)[:, None]  # [H, 1]
    entropy = -imag.log_probs  # one-sample estimate  [H, N]
    # eq. (7): maximise the gamma^tau-weighted V_lambda(s_tau), plus the entropy bonus
    actor_loss = -(weight * returns).mean() - args.entropy_scale * (weight * entropy).mean()
    # The value net regresses the (detached) returns from the (detached) imagined states.
    v_pred = value(imag.features[:-1].detach()).squeeze(-1)  # (1 - gamma) v  [H, N]
    target = (1 - args.gamma) * returns.detach()
    # eq. (8): 1/2 (v(s_tau) - V_lambda(s_tau))^2, gamma^tau-weighted, in units of (1 - gamma)
    value_loss = 0.5 * (weight * (v_pred - target).square()).mean()
    metrics = {
        "actor_loss": actor_loss,
        "value_loss": value_loss,
        "entropy": entropy.mean(),
        "imagined_return": returns[0].mean(),
        "imagined_reward": reward.mean(),
    }
    return actor_loss, value_loss, {k: v.detach() for k, v in metrics.items()}


class Agent(NamedTuple):
    model: WorldModel
    actor: Actor
    value: nn.Module
    model_opt: torch.optim.Adam
    actor_opt: torch.optim.Adam
    value_opt: torch.optim.Adam


def make_agent(env: DMCEnv, args: Config, device: torch.device) -> Agent:
    model = WorldModel(env.obs_dim, env.action_dim, args.obs == "visual", args).to(device)
    actor = Actor(model.rssm.feature_dim, env.action_dim).to(device)
    value = mlp(model.rssm.feature_dim, 1, 128, 2).to(device)
    return Agent(
        model, actor, value,
        torch.optim.Adam(model.parameters(), lr=args.model_lr),
        torch.optim.Adam(actor.parameters(), lr=args.actor_lr),
        torch.optim.Adam(value.parameters(), lr=args.value_lr),
    )  # fmt: skip


def train_step(
    agent: Agent, batch: dict[str, Tensor], keys: tuple[str, ...], args: Config
) -> dict[str, Tensor]:
    """One update of the world model, then of the actor and the value net (Dreamer Algorithm 1)."""
    device = batch["pre_action"].device
    with autocast(args.precision, device):  # --precision bf16: matrix products in bfloat16
        model_loss, start, metrics = world_model_loss(agent.model, batch, keys, args)
    agent.model_opt.zero_grad(set_to_none=True)
    model_loss.backward()
    metrics["model_grad_norm"] = nn.utils.clip_grad_norm_(agent.model.parameters(), args.grad_clip)
    agent.model_opt.step()

    with autocast(args.precision, device):
        actor_loss, value_loss, ac_metrics = actor_critic_loss(
            agent.model, agent.actor, agent.value, start, args
        )
    actor_params = list(agent.actor.parameters())
    agent.actor_opt.zero_grad(set_to_none=True)
    actor_loss.backward(inputs=actor_params)  # the model and value net take no gradient from it
    ac_metrics["actor_grad_norm"] = nn.utils.clip_grad_norm_(actor_params, args.grad_clip)
    agent.actor_opt.step()
    agent.value_opt.zero_grad(set_to_none=True)
    value_loss.backward()
    ac_metrics["value_grad_norm"] = nn.utils.clip_grad_norm_(
        agent.value.parameters(), args.grad_clip
    )
    agent.value_opt.step()
    return {**{k: v.detach() for k, v in metrics.items()}, **ac_metrics}


# == Acting in the environment ====================================================================
@torch.no_grad()
def run_episodes(
    envs: list[DMCEnv],
    seeds: list[int],
    agent: Optional[Agent],
    mode: Literal["random", "sample", "mode"],
    args: Args,
    device: torch.device,
) -> list[dict[str, np.ndarray]]:
    """One episode in each environment, in lockstep (`common/evaluation.py::collect_episodes`);
    returns each episode's stacked records.

    The agent acts on the posterior state it filters from the real observations and the actions
    taken (`common/rssm.py::FilteringActor`): a sample of the policy (plus `expl_noise`) or its
    mode. `random` draws uniform actions from the action seeds of `seeds`. Of `args` only
    `expl_noise` is read."""
    act = None
    if mode != "random" and agent is not None:
        explore = args.expl_noise if mode == "sample" else None
        model, keys = agent.model, envs[0].obs_keys
        act = FilteringActor(
            model.encoder, model.rssm, agent.actor, keys, device, len(envs), explore
        )
    return collect_episodes(envs, seeds, act)


# == Datasets =====================================================================================
def folder_settings(args: Config, agent: str, render: bool, **more: str) -> dict[str, Any]:
    """How a dataset folder is made, as its `info.json` records it (`obs`: not for random)."""
    observes = {"random": {}, "scripted-expert": {"obs": "mdp"}}.get(agent, {"obs": args.obs})
    made = {"render": render, "action_repeat": args.action_repeat, "seed": args.seed}
    return {"agent": agent, "env": f"{args.env}-{args.task}", **observes, **made, **more}


def collect_random(args: Args) -> Path:
    """Fill `{data_dir}/{env}-random/` up to `num_trajectories` random-action trajectories.

    Trajectory i depends only on (seed, i), so re-running adds only the missing ones and a resumed
    dataset equals an uninterrupted one. `args` is resolved here (the tests pass `Args`)."""
    cfg = resolve(args)
    folder = Path(cfg.data_dir) / f"{cfg.env}-random"
    settings = folder_settings(cfg, "random", cfg.render)
    todo = datasets.fill_folder(folder, settings, cfg.num_trajectories, "trajectories")
    if todo:
        env = make_env(f"{cfg.env}-{cfg.task}", obs="mdp", seed=cfg.seed,
                       action_repeat=cfg.action_repeat, render=cfg.render)  # fmt: skip
        bar = tqdm(todo, desc=folder.name, unit="traj")
        for i in bar:
            env_seed, action_seed = np.random.SeedSequence([cfg.seed, i]).generate_state(2)
            rng = np.random.default_rng(action_seed)
            records = [env.reset(seed=int(env_seed))]
            while not records[-1]["is_last"]:
                action = rng.uniform(env.action_low, env.action_high).astype(np.float32)
                records.append(env.step(action))
            trajectory = replay.stack_records(records)
            replay.save_trajectory(folder / f"{i}.npz", trajectory)
            bar.set_postfix(ret=f"{trajectory['reward'].sum():.1f}")
    print(datasets.write_info(folder, settings))
    return folder


def collect_expert(agent: Agent, args: Config, agent_path: Path, device: torch.device) -> Path:
    """Fill `{data_dir}/{env}-{task}-expert/` up to `num_demos` trajectories of the policy's
    mode (no exploration noise). Demonstration i's initial state depends only on (seed, i); its
    actions also on the agent file (weights and the random stream it was saved with, which
    `expert_only` restores) and on which demonstrations this call collects (chunks of 10 share
    the posterior's noise), so a new folder gets the training run's demonstrations exactly."""
    folder = Path(args.data_dir) / f"{args.env}-{args.task}-expert"
    settings = folder_settings(args, "dreamer-expert", args.render, source=str(agent_path))
    todo = datasets.fill_folder(folder, settings, args.num_demos, "demonstrations")
    chunk = 10  # episodes in lockstep: one batched policy call per step
    render = args.render or args.obs == "visual"
    envs = [
        make_env(
            f"{args.env}-{args.task}", args.obs, render=render, action_repeat=args.action_repeat
        )
        for _ in range(min(chunk, len(todo)))
    ]
    bar = tqdm(total=len(todo), desc=f"expert {args.env}-{args.task}", unit="traj")
    for first in range(0, len(todo), chunk):
        index = todo[first : first + chunk]
        seeds = [episode_seed(args.seed, EXPERT, i) for i in index]
        episodes = run_episodes(envs[: len(index)], seeds, agent, "mode", args, device)
        for i, episode in zip(index, episodes, strict=True):
            replay.save_trajectory(folder / f"{i}.npz", episode)
            if i == 0 and args.capture_video and "image" in episode:
                save_gif(Path(args.runs_dir) / "videos" / f"{folder.name}-0.gif", episode["image"])
        bar.update(len(index))
        bar.set_postfix(ret=f"{np.mean([e['reward'].sum() for e in episodes]):.1f}")
    bar.close()
    print(datasets.write_info(folder, settings, "expert trajectories"))
    return folder


def cartpole_swingup_expert(record: Record) -> np.ndarray:
    """A hand-written cartpole-swingup controller (docs/dreamer_collect.md, "The scripted
    expert"): below the top it pumps energy into the pole, a push sized by the energy still
    missing to stand upright, signed by the swing, with a spring and a damper on the cart; within
    cosine 0.99 of upright, linear feedback on the cart's and the pole's state. Gains from a
    cross-entropy search, rounded to 3 digits."""
    x, cos, sin = (float(v) for v in record["position"])
    x_dot, angle_dot = (float(v) for v in record["velocity"])
    if cos > 0.99:  # balance
        u = -(0.9 * x - 2.44 * x_dot + 21.9 * math.atan2(sin, cos) + 4.03 * angle_dot)
    else:  # swing up; energy per unit inertia, relative to the pole upright at rest
        energy = 0.5 * angle_dot**2 + 14.3 * (cos - 1.0)
        u = 0.327 * energy * np.sign(angle_dot * cos) - 0.484 * x - 0.688 * x_dot
    return np.clip(np.array([u], np.float32), -1.0, 1.0)


def reacher_expert(record: Record) -> np.ndarray:
    """A hand-written reacher controller (easy, hard; docs/dreamer_collect.md): the Jacobian
    transpose of the two 0.12 m links turns the finger-to-target vector into torques, damped."""
    q1, q2 = (float(v) for v in record["position"])
    s1, c1, s12, c12 = np.sin(q1), np.cos(q1), np.sin(q1 + q2), np.cos(q1 + q2)
    jacobian = 0.12 * np.array([[-s1 - s12, -s12], [c1 + c12, c12]])
    u = 50.0 * jacobian.T @ record["to_target"] - 0.2 * record["velocity"]
    return np.clip(u, -1.0, 1.0).astype(np.float32)


SCRIPTED = {"cartpole-swingup": cartpole_swingup_expert,  # `--agent scripted`'s experts
            "reacher-easy": reacher_expert, "reacher-hard": reacher_expert}  # fmt: skip


def collect_scripted(args: Config) -> Path:
    """Fill `{data_dir}/{env}-{task}-expert/` up to `num_demos` demonstrations of the scripted
    expert, `{env}-{task}-buffer/` up to `buffer_episodes` episodes (a body dataset covering the
    task); episode i starts from the state of (seed, stream EXPERT or BUFFER, i), nothing else."""
    env = make_env(f"{args.env}-{args.task}", "mdp", render=args.render,
                   action_repeat=args.action_repeat)  # fmt: skip
    policy, settings = SCRIPTED[env.name], folder_settings(args, "scripted-expert", args.render)
    folders = [("expert", args.num_demos, EXPERT, "demonstrations"),
               ("buffer", args.buffer_episodes, BUFFER, "episodes")]  # fmt: skip
    for kind, count, stream, what in folders:
        if count == 0:
            continue
        folder = Path(args.data_dir) / f"{env.name}-{kind}"
        todo = datasets.fill_folder(folder, settings, count, what)
        bar = tqdm(todo, desc=folder.name, unit="traj")
        for i in bar:
            records = [env.reset(seed=episode_seed(args.seed, stream, i))]
            while not records[-1]["is_last"]:
                records.append(env.step(policy(records[-1])))
            trajectory = replay.stack_records(records)
            replay.save_trajectory(folder / f"{i}.npz", trajectory)
            bar.set_postfix(ret=f"{trajectory['reward'].sum():.1f}")
        print(datasets.write_info(folder, settings, f"{kind} trajectories"))
    return Path(args.data_dir) / f"{args.env}-{args.task}-expert"


# == Training =====================================================================================
@dataclass
class Counters:
    """What a run has done besides its episodes (checkpointed with them): the gradient updates
    taken. (Its simulator steps are the buffer's, `buffer.transitions` x the action repeat.)"""

    updates: int = 0


def update(
    run: Run, agent: Agent, buffer: replay.ReplayBuffer, keys: tuple[str, ...],
    counters: Counters, episode: int, args: Config, device: torch.device,
) -> None:  # fmt: skip
    """The C updates that follow collecting `episode`, logged at the buffer's simulator steps."""
    sums: dict[str, Tensor] = {}
    needed = [*keys, "pre_action", "reward"]
    for _ in range(args.train_steps_per_episode):
        batch = buffer.sample(args.batch_size, args.horizon, device, needed)
        add_to(sums, train_step(agent, batch, keys, args))
    env_steps = buffer.transitions * args.action_repeat
    means = run.log("train", sums, args.train_steps_per_episode, env_steps)
    run.check_finite(means, f"after episode {episode}")
    counters.updates += args.train_steps_per_episode


def train(args: Config) -> Path:
    """Train Dreamer or Plan2Explore; every episode goes to the buffer folder as it is collected.

    Returns the saved agent's path. Each episode is one epoch of `Run.epochs`: collect it, take
    its updates (none before the last prefill episode), checkpoint. A resumed run drops an
    episode saved after the last checkpoint and collects it again from the checkpoint's random
    streams, so it is the episode the uninterrupted run collected."""
    name = f"{args.env}-{args.task}-buffer" if args.agent == "dreamer" else f"{args.env}-p2e"
    folder = Path(args.data_dir) / name
    if folder.exists() and any(folder.glob("*.npz")) and not (args.resume or args.resume_or_start):
        raise SystemExit(
            f"error: {folder} holds episodes already; pass --resume to continue that run, "
            f"or choose another --data-dir"
        )
    seed_everything(args.seed)
    device = torch.device(args.device)
    render = args.render or args.obs == "visual"
    settings = folder_settings(args, args.agent, render)
    datasets.check_dataset_settings(folder, settings)
    # Plan2Explore learns no task: its run is named after the embodiment alone
    where = f"{args.env}-{args.task}" if args.agent == "dreamer" else args.env
    run = Run(args.runs_dir, f"{where}__{args.agent}__{args.obs}__{args.seed}", args, args.resume,
              "agent.pt")  # fmt: skip

    env = make_env(
        f"{args.env}-{args.task}", args.obs, seed=args.seed,
        action_repeat=args.action_repeat, render=render,
    )  # fmt: skip
    eval_env = make_env(
        f"{args.env}-{args.task}", args.obs, action_repeat=args.action_repeat,
        render=args.capture_video or args.obs == "visual",
    )  # fmt: skip
    keys = env.obs_keys
    agent = make_agent(env, args, device)
    buffer = replay.ReplayBuffer(folder, seed=args.seed, keys=[*keys, "pre_action", "reward"])
    datasets.write_info(folder, settings)
    counters = Counters()
    episodes = math.ceil(args.total_steps / env.episode_steps)
    for episode in run.epochs("training", episodes, agent._asdict(), [buffer], f"{name} (episodes)",
                              counters):  # fmt: skip
        if len(buffer) < episode:
            raise SystemExit(
                f"error: {run.ckpt_path} was trained on {episode} episodes but {folder} holds "
                f"{len(buffer)}; the buffer lost files"
            )
        buffer.keep(episode)  # (one a killed run saved after its checkpoint: again)
        seed = episode_seed(args.seed, BUFFER, episode)
        prefill = episode < args.prefill_episodes
        mode: Literal["random", "sample"] = "random" if prefill else "sample"
        agent.model.eval()
        (trajectory,) = run_episodes([env], [seed], agent, mode, args, device)
        agent.model.train()
        buffer.add(trajectory)
        env_steps = buffer.transitions * args.action_repeat  # prefill included
        ret = float(trajectory["reward"].sum())
        run.writer.add_scalar("train/return", ret, env_steps)
        run.show(return_=f"{ret:.1f}", steps=env_steps)
        if episode >= args.prefill_episodes - 1:
            update(run, agent, buffer, keys, counters, episode, args, device)
        if args.eval_every and (episode + 1) % args.eval_every == 0 and args.agent == "dreamer":
            seed = episode_seed(args.seed, EVAL, episode)
            (ep,) = run_episodes([eval_env], [seed], agent, "mode", args, device)
            run.writer.add_scalar("eval/return", float(ep["reward"].sum()), env_steps)
            if args.capture_video:
                save_gif(run.dir / "videos" / f"episode{episode + 1}.gif", ep["image"])
    print(f"{datasets.write_info(folder, settings, 'episodes')}; agent saved to {run.ckpt_path}")
    run.close()
    return run.ckpt_path


def expert_only(args: Config) -> Path:
    """Load a saved agent (`--load-agent`) and (re)collect its expert demonstrations."""
    assert args.load_agent is not None
    path = Path(args.load_agent)
    ckpt = read_checkpoint(path, "--load-agent", "an agent (agent.pt)", Agent._fields, run=True)
    saved = resolve(Args(**ckpt["args"]))
    if saved.agent != "dreamer":
        raise SystemExit(f"error: {path} is a {saved.agent} agent; only Dreamer has a task policy")
    if (args.env, args.task) != (saved.env, saved.task):
        raise SystemExit(f"error: {path} was trained on {saved.env}-{saved.task}, "
                         f"not {args.env}-{args.task}")  # fmt: skip
    # acting draws posterior noise from torch's streams: start them where the run saved them
    set_torch_rng_state(ckpt["rng"])
    acting = replace(  # the agent's own settings, with this command's budget, folders, device
        saved, num_demos=args.num_demos, data_dir=args.data_dir, runs_dir=args.runs_dir,
        capture_video=args.capture_video, device=args.device, render=args.render,
    )  # fmt: skip
    device = torch.device(args.device)
    env = make_env(f"{acting.env}-{acting.task}", acting.obs)
    agent = make_agent(env, acting, device)
    for name in Agent._fields:  # the agent's networks and optimisers, as `train` saved them
        load_state(path, getattr(agent, name), ckpt[name])
    agent.model.eval()
    return collect_expert(agent, acting, path, device)


def main(args: Args) -> None:
    try:
        cfg = resolve(args)
        print(json.dumps(asdict(cfg)))
        if cfg.load_agent is not None:
            expert_only(cfg)
        elif cfg.agent == "random":
            collect_random(cfg)
        elif cfg.agent == "scripted":
            collect_scripted(cfg)
        else:
            path = train(cfg)
            if cfg.agent == "dreamer" and cfg.num_demos > 0:
                expert_only(replace(cfg, load_agent=str(path)))
    except (replay.DatasetError, EnvError) as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main(tyro.cli(Args))
