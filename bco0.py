"""BCO(0): behavioural cloning from observation (Torabi et al., 2018), as run in the AIME paper.

    python bco0.py --env walker --body-data mix --demo run --obs visual

BCO(0) as the AIME paper describes its baseline (section 4.1, Appendix B): an inverse dynamics
model (IDM) trained on the embodiment dataset labels the demonstrations with actions, and
behavioural cloning recovers the policy from the labels. Where each step lives here:
    Phase 1  windows (o_t-k..o_t, a_t-1) ~ D_body        `train`: data.sample(...)
             IDM(o_t-k..o_t) -> a_t-1 (the action that    `idm_loss`, Adam on the IDM
             led to o_t; k = `stack`), maximum likelihood
    Label    a^_t-1 = IDM(o_t-k..o_t) on each window of   `bc_loss`: the frozen IDM
             the observation-only demonstrations D_demo
    Phase 2  pi(o_t-k..o_t-1) -> a^_t-1, maximum          `bc_loss`, Adam on the policy
             likelihood
    Both     7:3 split, the model of lowest validation    `split`, `train`
             loss kept
Evaluation in DMC exactly as `aime.py`'s (common/run.py), the stack filled with the first
observation at reset (`StackActor`).

Implementation details (the AIME paper's Appendix B and the authors' code):
 1. Encoders as the world model's: identity for low-dimensional settings, the World Models CNN for
    Visual; the IDM and the policy have their own encoder, the policy's starting from the IDM's.
 2. Stacks of 5 encoded observations (`--stack`; the authors use 1 in MDP, where the state is
    complete), MLPs of 2 x 128 ELU with a tanh output trained by mean squared error, i.e. a
    Gaussian action distribution of fixed variance, Adam with learning rate 1e-3.
 3. 7:3 train/validation splits by trajectory (the authors split overlapping windows, which leaks
    windows of one trajectory into both sides). The model kept is the one of lowest validation
    loss; training stops after `--patience` epochs without improvement once `--min-steps`
    gradient steps are done. The validation loss is measured on a fixed random set of at most
    `--val-windows` windows.
 4. Demonstration actions never reach training; where the files hold them, the errors of the
    IDM's labels and of the policy against them are logged for analysis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Literal, Optional

import numpy as np
import torch
import tyro
from torch import Tensor, nn
from tqdm import tqdm

from common.envs import Record, make_env
from common.nets import ConvEncoder, mlp, observation
from common.replay import (
    DatasetError,
    WindowSampler,
    dataset_action_repeat,
    dataset_folders,
    dataset_task,
    open_dataset,
    records_batch,
    to_torch_batch,
)
from common.run import (
    Run,
    Stateful,
    add_to,
    evaluate,
    expert_return,
    label,
    scores,
    seed_everything,
)


@dataclass
class Args:
    exp_name: str = "bco0"
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
    """seed of torch, numpy, the splits, sampling and the evaluation environments"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    phase1_epochs: int = 1000
    """most IDM epochs (training stops earlier on the validation loss)"""
    phase2_epochs: int = 1000
    """most behavioural-cloning epochs (training stops earlier on the validation loss)"""
    steps_per_epoch: int = 100
    """gradient steps per epoch"""
    batch_size: int = 50
    """windows per batch"""
    eval_episodes: int = 100
    """evaluation episodes at the end"""
    resume: bool = False
    """continue the run in {runs_dir}/{run_name}/ from its last checkpoint"""
    capture_video: bool = False
    """save a GIF of the first evaluation episode to {run_dir}/videos/"""
    lr: float = 1e-3
    """Adam learning rate of the IDM and the policy"""
    stack: Optional[int] = None
    """encoded observations stacked (default: 5; 1 in MDP, as the authors)"""
    action_repeat: Optional[int] = None
    """environment steps per action (default: the datasets' info.json, else the benchmark's 2)"""
    patience: int = 10
    """epochs without a better validation loss before training stops"""
    min_steps: int = 5000
    """gradient steps before training may stop (the authors' minimum)"""
    val_windows: int = 5000
    """validation windows the validation loss is measured on"""


@dataclass
class Config(Args):
    """The flags after `resolve`: every default that depends on other flags filled in."""

    task: str = ""
    stack: int = 5
    action_repeat: int = 2


def resolve(args: Args) -> Config:
    """Fill the defaults that depend on other flags: the task from `--demo` (`run`, or a path
    such as .../walker-run-expert -> run), the stack (5; 1 in MDP, as the authors' code) and the
    action repeat the datasets were recorded at (their info.json; the benchmark's 2 without)."""
    folders = [
        *dataset_folders(args.data_dir, args.env, args.body_data, "body"),
        *dataset_folders(args.data_dir, args.env, args.demo, "demo"),
    ]
    return Config(
        **{
            **asdict(args),
            "task": args.task or dataset_task(args.env, args.demo),
            "stack": args.stack or (1 if args.obs == "mdp" else 5),
            "action_repeat": dataset_action_repeat(folders, args.action_repeat),
        }
    )


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint (as a dict), so `--resume` continues it."""

    phase: Literal[1, 2, 3] = 1  # 1: the IDM, 2: behavioural cloning, 3: trained, evaluation only
    epoch: int = 0  # epochs done in this phase
    best: float = float("inf")  # the phase's lowest validation loss so far
    bad_epochs: int = 0  # epochs since it last improved
    best_weights: Optional[dict[str, Tensor]] = None  # the weights that reached it
    wall: dict[str, float] = field(default_factory=lambda: {"phase1": 0.0, "phase2": 0.0})


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
class StackNet(nn.Module):
    """Encode each of `frames` observations, concatenate, MLP 2 x 128 ELU -> tanh action."""

    def __init__(self, obs_dim: int, visual: bool, frames: int, action_dim: int) -> None:
        super().__init__()
        self.encoder: nn.Module = ConvEncoder() if visual else nn.Identity()
        embed = 1024 if visual else obs_dim  # the CNN's 256 channels x 2 x 2
        if visual:  # channels-last memory: the fast layout for convolutions
            self.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.mlp = nn.Sequential(*mlp(frames * embed, action_dim, 128, 2), nn.Tanh())

    def forward(self, obs: Tensor) -> Tensor:  # [frames, B, ...] -> [B, action]
        embed = self.encoder(obs)  # [frames, B, embed]
        return self.mlp(embed.transpose(0, 1).flatten(1))


# ---------------------------------------------------------------------------------------------
# Losses: maximum likelihood of a Gaussian of fixed variance, i.e. mean squared errors
# ---------------------------------------------------------------------------------------------
Batch = dict[str, Tensor]
Loss = Callable[[Batch], tuple[Tensor, dict[str, Tensor]]]


def idm_loss(
    idm: StackNet, batch: Batch, keys: tuple[str, ...]
) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE of IDM(o_t-k..o_t) against the action a_t-1 that led to o_t (embodiment data)."""
    # AIME paper, section 4.1 and Appendix B: BCO(0) first trains an IDM on the embodiment data
    loss = ((idm(observation(batch, keys)) - batch["pre_action"][-1]) ** 2).mean()
    return loss, {"loss": loss.detach()}


def bc_loss(
    policy: StackNet, idm: StackNet, batch: Batch, keys: tuple[str, ...]
) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE of policy(o_t-k..o_t-1) against the IDM's label for a_t-1 (demonstrations)."""
    obs = observation(batch, keys)
    with torch.no_grad():  # AIME paper, section 4.1: the trained IDM labels the demonstrations
        labels = idm(obs)
    action = policy(obs[:-1])
    # AIME paper, section 4.1 and Appendix B: behavioural cloning on the labelled demonstrations
    loss = ((action - labels) ** 2).mean()
    metrics = {"loss": loss.detach()}
    if "pre_action" in batch:  # analysis only: never part of the loss
        metrics["idm_label_mse"] = ((labels - batch["pre_action"][-1]) ** 2).mean()
        metrics["policy_action_mse"] = ((action.detach() - batch["pre_action"][-1]) ** 2).mean()
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Training on a 7:3 split, keeping the model of lowest validation loss (Appendix B)
# ---------------------------------------------------------------------------------------------
def split(data: WindowSampler, seed: int) -> tuple[WindowSampler, WindowSampler]:
    """7:3 train/validation split by trajectory (a trajectory's windows stay on one side)."""
    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, min(len(data) - 1, round(0.7 * len(data))))
    return data.subset(sorted(order[:cut]), seed), data.subset(sorted(order[cut:]), seed + 1)


def fixed_windows(
    data: WindowSampler, frames: int, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most `n` windows of `data`, drawn once: the validation loss is measured on them."""
    traj, start = data.windows(frames)
    pick = np.sort(np.random.default_rng(seed).permutation(len(traj))[:n])
    return traj[pick], start[pick]


@torch.no_grad()
def validation_loss(
    loss: Callable[[Batch], Tensor],
    data: WindowSampler,
    windows: tuple[np.ndarray, np.ndarray],
    frames: int,
    keys: list[str],
    device: torch.device,
) -> float:
    """Mean loss over the fixed validation windows, in batches of 500."""
    traj, start = windows
    total = 0.0
    for i in range(0, len(traj), 500):
        batch = to_torch_batch(
            data.gather(traj[i : i + 500], start[i : i + 500], frames, keys), device
        )
        total += float(loss(batch)) * len(traj[i : i + 500])
    return total / len(traj)


def train(
    phase: Literal[1, 2],
    net: StackNet,
    opt: torch.optim.Optimizer,
    loss: Loss,
    data: tuple[WindowSampler, WindowSampler],
    keys: list[str],
    cfg: Config,
    run: Run,
    progress: Progress,
    parts: Mapping[str, Stateful],
    samplers: Sequence[WindowSampler],
) -> None:
    """Adam on `loss` over windows of the training split of `data` (train, validation), each of
    the `stack` + 1 records `keys`, until the validation loss stops improving; `net` ends with
    its weights of lowest validation loss. Each epoch updates `progress` and ends with a
    checkpoint of `progress`, `parts` and the random streams of `samplers`."""
    train_data, val_data = data
    frames, device = cfg.stack + 1, torch.device(cfg.device)
    epochs, name = (cfg.phase1_epochs, "idm") if phase == 1 else (cfg.phase2_epochs, "policy")
    val = fixed_windows(val_data, frames, cfg.val_windows, cfg.seed)
    desc = f"phase {phase} ({'IDM' if phase == 1 else 'BC'})"
    bar = tqdm(range(progress.epoch, epochs), desc=desc, initial=progress.epoch, total=epochs)
    for epoch in bar:
        done = progress.epoch * cfg.steps_per_epoch >= cfg.min_steps
        if done and progress.bad_epochs >= cfg.patience:
            break  # no better validation loss for `patience` epochs
        start = time.time()
        sums: dict[str, Tensor] = {}
        for _ in range(cfg.steps_per_epoch):
            value, metrics = loss(train_data.sample(cfg.batch_size, frames, device, keys))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            add_to(sums, metrics)
        step = (epoch + 1) * cfg.steps_per_epoch
        means = run.log(name, sums, cfg.steps_per_epoch, step)
        run.check_finite({"loss": means["loss"]}, f"in phase {phase}, epoch {epoch}")
        val_loss = validation_loss(lambda b: loss(b)[0], val_data, val, frames, keys, device)
        run.writer.add_scalar(f"{name}/val_loss", val_loss, step)
        bar.set_postfix(loss=f"{means['loss']:.4f}", val=f"{val_loss:.4f}")
        if val_loss < progress.best:
            progress.best, progress.bad_epochs = val_loss, 0
            progress.best_weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            progress.bad_epochs += 1
        progress.epoch = epoch + 1
        progress.wall[f"phase{phase}"] += time.time() - start
        run.checkpoint(asdict(progress), samplers, **parts)
    if progress.best_weights is not None:
        net.load_state_dict(progress.best_weights)  # the model of lowest validation loss


# ---------------------------------------------------------------------------------------------
# Evaluation (common/run.py's, as aime.py's)
# ---------------------------------------------------------------------------------------------
class StackActor:
    """The policy acting on its stack of the last `stack` observations of a batch of episodes,
    filled with the first observation at reset."""

    def __init__(
        self, policy: StackNet, keys: tuple[str, ...], stack: int, device: torch.device
    ) -> None:
        self.policy, self.keys, self.stack, self.device = policy, keys, stack, device
        self.history: Optional[Tensor] = None  # [stack, n, ...]

    @torch.no_grad()
    def __call__(self, recs: list[Record]) -> np.ndarray:
        batch = records_batch(recs, self.keys, self.device)  # [1, n, ...]
        obs = observation(batch, self.keys)  # [1, n, ...]
        if self.history is None:
            self.history = obs.expand(self.stack, *obs.shape[1:])
        else:
            self.history = torch.cat([self.history[1:], obs])
        return self.policy(self.history).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(args: Args) -> dict[str, Any]:
    cfg = resolve(args)

    # -- data: both datasets opened and checked before anything is written ----------------------
    env = make_env(f"{cfg.env}-{cfg.task}", cfg.obs)
    keys, shapes = env.obs_keys, env.record_shapes
    body = open_dataset(cfg.data_dir, cfg.env, cfg.body_data, "body", keys, shapes, seed=cfg.seed)
    demo = open_dataset(  # the demonstrations' actions are read, where held, for analysis only
        cfg.data_dir, cfg.env, cfg.demo, "demo", keys, shapes, cfg.num_demos, None, cfg.seed + 1
    )
    body_split, demo_split = split(body.data, cfg.seed), split(demo.data, cfg.seed + 1)
    samplers = [body_split[0], demo_split[0]]  # the training splits draw the batches
    body_name, demo_name = label(cfg.body_data), label(cfg.demo)
    name = f"{cfg.env}-{cfg.task}__{cfg.obs}__{body_name}__{demo_name}__{cfg.exp_name}__{cfg.seed}"
    run = Run(cfg.runs_dir, name, cfg, cfg.resume)  # refuses a used folder unless --resume

    # -- the IDM (on o_t-k..o_t) and the policy (on o_t-k..o_t-1) --------------------------------
    seed_everything(cfg.seed)
    device, visual = torch.device(cfg.device), cfg.obs == "visual"
    idm = StackNet(env.obs_dim, visual, cfg.stack + 1, env.action_dim).to(device)
    policy = StackNet(env.obs_dim, visual, cfg.stack, env.action_dim).to(device)
    idm_opt = torch.optim.Adam(idm.parameters(), lr=cfg.lr)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    parts: dict[str, Stateful] = {
        "idm": idm,
        "policy": policy,
        "idm_opt": idm_opt,
        "policy_opt": policy_opt,
    }
    progress = Progress()
    if run.resumed is not None:
        progress = Progress(**run.resumed["state"])
        run.restore(**parts)
        run.restore_rng(samplers)
        print(f"resuming {run.dir} at phase {progress.phase}, epoch {progress.epoch}")

    # -- phase 1: the IDM on the embodiment data -------------------------------------------------
    if progress.phase == 1:
        idm_objective = partial(idm_loss, idm, keys=keys)
        train(1, idm, idm_opt, idm_objective, body_split, body.data.keys,
              cfg, run, progress, parts, samplers)  # fmt: skip
        progress = Progress(phase=2, wall=progress.wall)
        policy.encoder.load_state_dict(idm.encoder.state_dict())  # the policy's starts as the IDM's

    # -- phase 2: the frozen IDM labels the demonstrations, the policy clones the labels ---------
    idm.requires_grad_(False)
    if progress.phase == 2:
        bc_objective = partial(bc_loss, policy, idm, keys=keys)
        train(2, policy, policy_opt, bc_objective, demo_split, demo.data.keys,
              cfg, run, progress, parts, samplers)  # fmt: skip
        progress.phase, progress.epoch = 3, 0
        run.checkpoint(asdict(progress), samplers, **parts)

    # -- evaluation ------------------------------------------------------------------------------
    start = time.time()
    video = run.dir / "videos" / "final.gif" if cfg.capture_video else None
    returns = evaluate(f"{cfg.env}-{cfg.task}", cfg.obs, cfg.action_repeat, cfg.seed,
                       cfg.eval_episodes, lambda n: StackActor(policy, keys, cfg.stack, device),
                       video)  # fmt: skip
    expert, source = expert_return(cfg.env, cfg.task, demo)
    results = {
        "algorithm": "bco0",
        "env": cfg.env, "task": cfg.task, "obs": cfg.obs,
        "body_data": cfg.body_data, "demo": cfg.demo, "num_demos": cfg.num_demos,
        "seed": cfg.seed, **scores(returns, expert, source),
        "wall_time_s": {**progress.wall, "evaluation": time.time() - start},
    }  # fmt: skip
    return run.finish(results)


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except DatasetError as e:  # a missing or malformed dataset: the file and the problem, no trace
        raise SystemExit(f"error: {e}") from e
