"""BCO(0) and the AIME paper's other stacked-observation baselines, in one file.

    python bco0.py --env walker --body-data mix --demo run --obs visual               # BCO(0)
    python bco0.py --env walker --demo run --obs mdp --method bc                      # BC oracle
    python bco0.py --env walker --body-data mix --demo run --obs mdp --method iidm    # IIDM

BCO(0) (Torabi et al., 2018) as the AIME paper runs it (section 4.1, Appendix B): an inverse
dynamics model (IDM) trained on the embodiment dataset labels the demonstrations with actions,
and behavioural cloning recovers the policy from the labels. The other two share its data,
stacks, encoders, schedule and evaluation, so they live here:
- `--method bc`, the oracle of Figure 4: behavioural cloning on the demonstrations' TRUE actions
  (no embodiment data, no phase 1);
- `--method iidm`, Figure 5: a forward model (o_t-k..o_t-1, a_t-1) -> o_t trained on the
  embodiment data serves as an implicit IDM: the policy's action goes through the frozen forward
  model, which is scored on the demonstration's next observation.
Where each step lives here:
    Phase 1  windows (o_t-k..o_t, a_t-1) ~ D_body        `train`: windows of the training split
             bco0: IDM(o_t-k..o_t) -> a_t-1, MSE          `idm_loss`, Adam on the IDM
             iidm: f(o_t-k..o_t-1, a_t-1) -> o_t, MSE     `forward_loss`, Adam on the model
    Phase 2  windows o_t-k..o_t ~ D_demo
             bco0: pi(o_t-k..o_t-1) -> IDM's label         `bc_loss`, Adam on the policy
             bc:   pi(o_t-k..o_t-1) -> the true a_t-1      `oracle_loss`
             iidm: f(o_t-k..o_t-1, pi(...)) -> o_t         `iidm_loss`, the model frozen
    Both     7:3 split, the model of lowest validation    `split`, `train`
             loss kept
Evaluation in DMC exactly as `aime.py`'s (common/evaluation.py), the stack filled with the first
observation at reset (`StackActor`).

Implementation details (the AIME paper's Appendix B and the authors' code, `scripts/train_bco.py`,
`train_bc.py`, `train_iidm.py` and their configs):
 1. Encoders as the world model's: identity for low-dimensional settings, the World Models CNN for
    Visual; each network has its own encoder, the policy's starting from phase 1's.
 2. Stacks of 5 encoded observations (`--stack`; the authors use 1 in MDP, where the state is
    complete), MLPs of 2 x 128 ELU with a tanh output trained by mean squared error, i.e. a
    Gaussian action distribution of fixed variance, Adam with learning rate 1e-3. The forward
    model decodes each observation key with its own MLP of 2 x 128 ELU (images: the
    convolutional decoder); its loss is the sum over keys of their mean squared errors.
 3. The authors' schedule (`--schedule authors`, the default): an epoch is one pass over every
    training window in a random order (the last batch may be smaller); training stops after
    `--patience` 3 epochs without a lower validation loss, but never before `--min-epochs` 50
    epochs and `--min-steps` 5000 gradient steps; the validation loss is the mean over every
    validation window. `--schedule fast` runs `--steps-per-epoch` sampled batches per epoch and
    validates on `--val-windows` windows.
 4. The 7:3 train/validation split is over windows (`--split windows`, the authors' random_split:
    the overlapping windows of one trajectory fall on both sides); `--split trajectories` keeps
    each trajectory on one side. The model kept is the one of lowest validation loss.
 5. Demonstration actions never reach training in bco0 and iidm; where the files hold them, the
    errors of the labels and of the policy against them are logged for analysis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
import torch
import tyro
from torch import Tensor, nn

from common import datasets, replay
from common.envs import EnvError, Record, check_env, make_env
from common.evaluation import evaluate, expert_return, scores
from common.nets import ConvDecoder, ConvEncoder, mlp, observation
from common.run import (
    POSITIVE,  # flags' ranges
    Run,
    RunArgs,
    Stateful,
    add_to,
    check_flags,
    derived,
    label,
    seed_everything,
)

Method = Literal["bco0", "bc", "iidm"]


@dataclass
class Args(RunArgs):
    """BCO(0): an inverse dynamics model trained on the embodiment data labels the
    demonstrations, behavioural cloning learns the labels; also the BC oracle and IIDM.

    Example: python bco0.py --env walker --body-data mix --demo run --obs visual"""

    method: Method = "bco0"
    """bco0: IDM labels, then behavioural cloning; bc: cloning the demonstrations' true actions
    (the oracle of AIME Figure 4); iidm: a forward model as implicit IDM (Figure 5)"""
    exp_name: Annotated[Optional[str], derived("the method", "STR")] = None
    """name of this experiment, part of the run's folder name"""
    env: str = "walker"
    """embodiment (dm_control domain): walker or cheetah (or another suite domain)"""
    task: Annotated[Optional[str], derived("the --demo task", "STR")] = None
    """task the policy is evaluated on"""
    body_data: str = "mix"
    """embodiment dataset: random, p2e, a task (stand -> {env}-stand-buffer), mix, a+b, or a path
    (not read by --method bc)"""
    demo: str = "run"
    """demonstration dataset: a task (run -> {env}-run-expert) or a path"""
    obs: Literal["mdp", "lpomdp", "visual"] = "visual"
    """observation setting: true state, positions only, or 64x64 images"""
    num_demos: Annotated[int, POSITIVE] = 100
    """demonstration trajectories used (the first N)"""
    schedule: Literal["authors", "fast"] = "authors"
    """authors: an epoch is one pass over the training windows, validation on all validation
    windows; fast: --steps-per-epoch sampled batches, validation on --val-windows windows"""
    split: Literal["windows", "trajectories"] = "windows"
    """7:3 train/validation split of the windows (the authors') or of whole trajectories"""
    phase1_epochs: Annotated[int, POSITIVE] = 1000
    """most phase-1 epochs (training stops earlier on the validation loss)"""
    phase2_epochs: Annotated[int, POSITIVE] = 1000
    """most phase-2 epochs (training stops earlier on the validation loss)"""
    patience: int = 3
    """epochs without a lower validation loss before training stops (the authors' 3)"""
    min_epochs: int = 50
    """epochs before training may stop (the authors' 50)"""
    min_steps: int = 5000
    """gradient steps before training may stop (the authors' 5000)"""
    steps_per_epoch: Annotated[int, POSITIVE] = 100
    """--schedule fast: gradient steps per epoch"""
    val_windows: Annotated[int, POSITIVE] = 5000
    """--schedule fast: validation windows the validation loss is measured on"""
    batch_size: Annotated[int, POSITIVE] = 50
    """windows per batch"""
    eval_episodes: Annotated[int, POSITIVE] = 100
    """evaluation episodes at the end"""
    lr: float = 1e-3
    """Adam learning rate of both phases (the authors' configs)"""
    stack: Annotated[Optional[int], derived("5; 1 in MDP, as the authors", "INT"), POSITIVE] = None
    """encoded observations stacked"""
    action_repeat: Annotated[
        Optional[int],
        derived("the data's info.json, else the authors' for the domain", "INT"),
        POSITIVE,
    ] = None
    """environment steps per action; without info.json the AIME authors' configs/env/*.yaml give
    it (cartpole 8, reacher and ball_in_cup 4, every other domain 2)"""


@dataclass
class Config(Args):
    """The flags after `resolve`: every default that depends on other flags filled in."""

    exp_name: str = ""
    task: str = ""
    stack: int = 5
    action_repeat: int = 2


def data_folders(args: Args) -> list[Path]:
    """The dataset folders a run reads: the embodiment data (none for the oracle), the
    demonstrations."""
    data, env = args.data_dir, args.env
    body = (
        [] if args.method == "bc" else datasets.dataset_folders(data, env, args.body_data, "body")
    )
    return [*body, *datasets.dataset_folders(data, env, args.demo, "demo")]


def resolve(args: Args) -> Config:
    """Fill the defaults that depend on other flags: the run's name from the method, the task
    from `--demo` (`run`, or a path such as .../walker-run-expert -> run), the stack (5; 1 in
    MDP, as the authors' code) and the action repeat the datasets were recorded at (their
    info.json; the benchmark's 2 without); refuse out-of-range flags."""
    check_flags(args)  # every flag's range (its annotation), learning rates, --device
    task = args.task or datasets.dataset_task(args.env, args.demo)
    check_env(f"{args.env}-{task}", args.obs)
    return Config(
        **{
            **asdict(args),
            "exp_name": args.exp_name or args.method,
            "task": task,
            "stack": args.stack or (1 if args.obs == "mdp" else 5),
            "action_repeat": datasets.dataset_action_repeat(
                data_folders(args), args.action_repeat, args.env
            ),
        }
    )


@dataclass
class EarlyStop:
    """A phase's stopping rule's counters, saved in every checkpoint so that `--resume` goes on."""

    epoch: int = 0  # epochs done in this phase
    steps: int = 0  # gradient steps done in this phase
    best: float = float("inf")  # the phase's lowest validation loss so far
    bad_epochs: int = 0  # epochs since it last improved
    best_weights: Optional[dict[str, Tensor]] = None  # the weights that reached it


# == Networks =====================================================================================
def encoder(obs_dim: int, visual: bool) -> tuple[nn.Module, int]:
    """The world model's encoder and its output size: identity, or the World Models CNN
    (channels-last memory: the fast layout for convolutions; 256 channels x 2 x 2 out)."""
    if not visual:
        return nn.Identity(), obs_dim
    cnn = ConvEncoder().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return cnn, cnn.out_dim


class StackNet(nn.Module):
    """Encode each of `frames` observations, concatenate, MLP 2 x 128 ELU -> tanh action."""

    def __init__(self, obs_dim: int, visual: bool, frames: int, action_dim: int) -> None:
        super().__init__()
        self.encoder, embed = encoder(obs_dim, visual)
        self.mlp = nn.Sequential(*mlp(frames * embed, action_dim, 128, 2), nn.Tanh())

    def forward(self, obs: Tensor) -> Tensor:  # [frames, B, ...] -> [B, action]
        embed = self.encoder(obs)  # [frames, B, embed]
        return self.mlp(embed.transpose(0, 1).flatten(1))


class ForwardModel(nn.Module):
    """IIDM's forward model: encode each of `frames` observations, concatenate with the action,
    and decode each observation key with its own network (MLP 2 x 128 ELU; images: the conv
    decoder). `dims` holds the keys (sensor order) and their sizes."""

    def __init__(self, dims: dict[str, int], frames: int, action_dim: int) -> None:
        super().__init__()
        self.encoder, embed = encoder(sum(dims.values()), "image" in dims)
        inp = frames * embed + action_dim
        self.decoders = nn.ModuleDict(
            {k: ConvDecoder(inp) if k == "image" else mlp(inp, d, 128, 2) for k, d in dims.items()}
        )

    def forward(self, obs: Tensor, action: Tensor) -> dict[str, Tensor]:
        """[frames, B, ...] and [B, action] -> the next observation's keys, each [B, ...]."""
        x = torch.cat([self.encoder(obs).transpose(0, 1).flatten(1), action], -1)
        return {k: decoder(x) for k, decoder in self.decoders.items()}


# == Losses: maximum likelihood of a Gaussian of fixed variance, i.e. mean squared errors =========
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


def oracle_loss(
    policy: StackNet, batch: Batch, keys: tuple[str, ...]
) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE of policy(o_t-k..o_t-1) against the demonstrator's true a_t-1 (the BC oracle)."""
    # AIME paper, Figure 4: behavioural cloning with the true actions, an upper reference
    loss = ((policy(observation(batch, keys)[:-1]) - batch["pre_action"][-1]) ** 2).mean()
    return loss, {"loss": loss.detach(), "policy_action_mse": loss.detach()}


def prediction_error(pred: dict[str, Tensor], batch: Batch) -> Tensor:
    """The sum over keys of each key's MSE against the window's last record o_t."""
    return sum((((p - batch[k][-1]) ** 2).mean() for k, p in pred.items()), torch.zeros(()))


def forward_loss(
    model: ForwardModel, batch: Batch, keys: tuple[str, ...]
) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE of f(o_t-k..o_t-1, a_t-1) against o_t (embodiment data)."""
    # AIME paper, Figure 5: IIDM first trains a forward model on the embodiment data
    loss = prediction_error(model(observation(batch, keys)[:-1], batch["pre_action"][-1]), batch)
    return loss, {"loss": loss.detach()}


def iidm_loss(
    policy: StackNet, model: ForwardModel, batch: Batch, keys: tuple[str, ...]
) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE of f(o_t-k..o_t-1, pi(o_t-k..o_t-1)) against o_t, through the frozen forward model."""
    obs = observation(batch, keys)
    action = policy(obs[:-1])
    # AIME paper, Figure 5: the forward model's error on the demonstration, back to the action
    loss = prediction_error(model(obs[:-1], action), batch)
    metrics = {"loss": loss.detach()}
    if "pre_action" in batch:  # analysis only: never part of the loss
        metrics["policy_action_mse"] = ((action.detach() - batch["pre_action"][-1]) ** 2).mean()
    return loss, metrics


# == Training on a 7:3 split, keeping the model of lowest validation loss (Appendix B) ============
@dataclass
class Windows:
    """Windows of `frames` consecutive records of one dataset: trajectory indices and starts."""

    data: replay.WindowSampler
    traj: np.ndarray
    start: np.ndarray

    def __len__(self) -> int:
        return len(self.traj)

    def batch(self, idx: np.ndarray, frames: int, keys: list[str], device: torch.device) -> Batch:
        return replay.to_torch_batch(
            self.data.gather(self.traj[idx], self.start[idx], frames, keys), device
        )


def split(data: replay.WindowSampler, frames: int, by: str, seed: int) -> tuple[Windows, Windows]:
    """7:3 train/validation split of the windows of `frames` records (the authors'
    `random_split`), or of whole trajectories (`by="trajectories"`)."""
    traj, start = data.windows(frames)
    rng = np.random.default_rng(seed)
    if by == "windows":
        order = rng.permutation(len(traj))
        cut = int(0.7 * len(traj))  # the authors' train size
        train, val = np.sort(order[:cut]), np.sort(order[cut:])
    else:
        chosen = rng.permutation(len(data))[: round(0.7 * len(data))]
        in_train = np.isin(traj, chosen)
        train, val = np.flatnonzero(in_train), np.flatnonzero(~in_train)
    if len(train) == 0 or len(val) == 0:
        if by == "trajectories":
            raise SystemExit(f"error: --split trajectories needs at least 2 trajectories, "
                             f"{len(data)} given; use --split windows")  # fmt: skip
        raise SystemExit(f"error: {len(data)} trajectories hold {len(traj)} windows of {frames} "
                         "records, too few for a 7:3 split")  # fmt: skip
    return Windows(data, traj[train], start[train]), Windows(data, traj[val], start[val])


def epoch_batches(train: Windows, cfg: Config) -> list[np.ndarray]:
    """The batches of one epoch, as indices into `train`: every window once in a random order
    (`--schedule authors`), or `--steps-per-epoch` batches drawn uniformly (`fast`)."""
    rng = train.data.rng  # the sampler's stream, saved in every checkpoint
    if cfg.schedule == "authors":
        order = rng.permutation(len(train))
        return [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    return list(rng.integers(len(train), size=(cfg.steps_per_epoch, cfg.batch_size)))


@torch.no_grad()
def validation_loss(
    loss: Callable[[Batch], Tensor],
    val: Windows,
    idx: np.ndarray,
    frames: int,
    keys: list[str],
    device: torch.device,
) -> float:
    """Mean loss over the validation windows `idx`, in batches of 500."""
    total = 0.0
    for i in range(0, len(idx), 500):
        total += float(loss(val.batch(idx[i : i + 500], frames, keys, device))) * len(
            idx[i : i + 500]
        )
    return total / len(idx)


def stopped(stop: EarlyStop, cfg: Config) -> bool:
    """`--patience` epochs without improvement, after `--min-epochs` and `--min-steps`."""
    return (
        stop.bad_epochs >= cfg.patience
        and stop.epoch >= cfg.min_epochs
        and stop.steps >= cfg.min_steps
    )


def train(
    phase: Literal[1, 2],
    net: nn.Module,
    opt: torch.optim.Optimizer,
    loss: Loss,
    data: tuple[Windows, Windows],
    keys: list[str],
    cfg: Config,
    run: Run,
    parts: Mapping[str, Stateful],
    samplers: Sequence[replay.WindowSampler],
) -> EarlyStop:
    """Adam on `loss` over the training windows of `data` (train, validation), each of the
    `stack` + 1 records `keys`, until `stopped`; `net` ends with its weights of lowest
    validation loss. Each epoch ends with a checkpoint of `parts`, the random streams of
    `samplers` and the stopping rule's counters, which are returned."""
    train_w, val_w = data
    frames, device = cfg.stack + 1, torch.device(cfg.device)
    epochs = cfg.phase1_epochs if phase == 1 else cfg.phase2_epochs
    name = {"bco0": ("idm", "policy"), "bc": ("", "policy"), "iidm": ("model", "policy")}
    tag = name[cfg.method][phase - 1]
    val_idx = np.arange(len(val_w))
    if cfg.schedule == "fast":  # a fixed random subset
        val_idx = np.sort(
            np.random.default_rng(cfg.seed).permutation(len(val_w))[: cfg.val_windows]
        )
    stop = EarlyStop()
    for epoch in run.epochs(f"phase{phase}", epochs, parts, samplers, f"phase {phase} ({tag})",
                            counters=stop):  # fmt: skip
        if stopped(stop, cfg):
            break
        sums: dict[str, Tensor] = {}
        batches = epoch_batches(train_w, cfg)
        for idx in batches:
            batch = train_w.batch(idx, frames, keys, device)
            with run.autocast():  # --precision bf16: matrix products in bfloat16
                value, metrics = loss(batch)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            add_to(sums, metrics)
        stop.steps += len(batches)
        means = run.log(tag, sums, len(batches), stop.steps)
        run.check_finite({"loss": means["loss"]}, f"in phase {phase}, epoch {epoch}")
        val_loss = validation_loss(lambda b: loss(b)[0], val_w, val_idx, frames, keys, device)
        run.writer.add_scalar(f"{tag}/val_loss", val_loss, stop.steps)
        run.show(loss=f"{means['loss']:.4f}", val=f"{val_loss:.4f}")
        if val_loss < stop.best:
            stop.best, stop.bad_epochs = val_loss, 0
            stop.best_weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stop.bad_epochs += 1
        stop.epoch = epoch + 1
    if stop.best_weights is not None:
        net.load_state_dict(stop.best_weights)  # the model of lowest validation loss
    return stop


# == Evaluation (common/evaluation.py's, as aime.py's) ============================================
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
        batch = replay.records_batch(recs, self.keys, self.device)  # [1, n, ...]
        obs = observation(batch, self.keys)  # [1, n, ...]
        if self.history is None:
            self.history = obs.expand(self.stack, *obs.shape[1:])
        else:
            self.history = torch.cat([self.history[1:], obs])
        return self.policy(self.history).cpu().numpy()


# == Main =========================================================================================
def main(args: Args) -> dict[str, Any]:
    cfg = resolve(args)

    # -- data: the datasets opened and checked, and split, before anything is written ------------
    env = make_env(f"{cfg.env}-{cfg.task}", cfg.obs)
    keys, shapes, frames = env.obs_keys, env.record_shapes, cfg.stack + 1
    datasets.require_datasets(data_folders(cfg))  # every missing one named at once
    body = None
    if cfg.method != "bc":  # the embodiment data of phase 1
        body = datasets.open_dataset(
            cfg.data_dir, cfg.env, cfg.body_data, "body", keys, shapes, seed=cfg.seed,
            cache_dir=cfg.cache_dir,
        )  # fmt: skip
    # the demonstrations' actions: the oracle's targets; otherwise read, where held, for analysis
    demo = datasets.open_dataset(
        cfg.data_dir, cfg.env, cfg.demo, "demo", keys, shapes, cfg.num_demos,
        True if cfg.method == "bc" else None, cfg.seed + 1, cache_dir=cfg.cache_dir,
    )  # fmt: skip
    body_split = split(body.data, frames, cfg.split, cfg.seed) if body else None
    demo_split = split(demo.data, frames, cfg.split, cfg.seed + 1)
    samplers = [d.data for d in (body, demo) if d is not None]  # their streams draw the batches
    body_name = label(cfg.body_data) if body else "none"
    demo_name = label(cfg.demo)
    name = f"{cfg.env}-{cfg.task}__{cfg.obs}__{body_name}__{demo_name}__{cfg.exp_name}__{cfg.seed}"
    run = Run(cfg.runs_dir, name, cfg, cfg.resume)  # refuses a used folder unless --resume

    # -- networks: phase 1's (the IDM on o_t-k..o_t, or the forward model), the policy -----------
    seed_everything(cfg.seed)
    device, visual = torch.device(cfg.device), cfg.obs == "visual"
    dims = {k: math.prod(shapes[k]) for k in keys}
    first: StackNet | ForwardModel | None = None
    if cfg.method == "bco0":
        first = StackNet(env.obs_dim, visual, frames, env.action_dim).to(device)
    elif cfg.method == "iidm":
        first = ForwardModel(dims, cfg.stack, env.action_dim).to(device)
    policy = StackNet(env.obs_dim, visual, cfg.stack, env.action_dim).to(device)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    parts: dict[str, Stateful] = {"policy": policy, "policy_opt": policy_opt}
    if first is not None:
        first_opt = torch.optim.Adam(first.parameters(), lr=cfg.lr)
        parts.update(first=first, first_opt=first_opt)

    # -- phase 1: the IDM (bco0) or the forward model (iidm) on the embodiment data -------------
    if first is not None and body is not None and body_split is not None:
        step1: Loss
        if isinstance(first, StackNet):  # the IDM on the action that led to o_t
            step1 = partial(idm_loss, first, keys=keys)
        else:  # the forward model on o_t
            step1 = partial(forward_loss, first, keys=keys)
        train(1, first, first_opt, step1, body_split, body.data.keys, cfg, run, parts, samplers)
        first.requires_grad_(False)
        policy.encoder.load_state_dict(first.encoder.state_dict())  # the policy's starts as it

    # -- phase 2: the policy on the demonstrations -----------------------------------------------
    step2: Loss
    if isinstance(first, StackNet):  # the frozen IDM labels, the policy clones the labels
        step2 = partial(bc_loss, policy, first, keys=keys)
    elif isinstance(first, ForwardModel):  # the policy's action through the frozen model
        step2 = partial(iidm_loss, policy, first, keys=keys)
    else:  # the oracle: the demonstrator's true actions
        step2 = partial(oracle_loss, policy, keys=keys)
    train(2, policy, policy_opt, step2, demo_split, demo.data.keys, cfg, run, parts, samplers)

    # -- evaluation ------------------------------------------------------------------------------
    start = time.time()
    video = run.video("final")
    returns = evaluate(f"{cfg.env}-{cfg.task}", cfg.obs, cfg.action_repeat, cfg.seed,
                       cfg.eval_episodes, lambda n: StackActor(policy, keys, cfg.stack, device),
                       video)  # fmt: skip
    expert = expert_return(cfg.env, cfg.task, demo)
    results = {
        "algorithm": cfg.method,
        "env": cfg.env, "task": cfg.task, "obs": cfg.obs,
        "body_data": cfg.body_data if body else None, "demo": cfg.demo,
        "num_demos": cfg.num_demos, "seed": cfg.seed,
        **scores(returns, expert, f"{cfg.env}-{cfg.task}", cfg.action_repeat, cfg.seed),
        "wall_time_s": {"phase1": 0.0, **run.wall, "evaluation": time.time() - start},  # 0: bc
    }  # fmt: skip
    return run.finish(results)


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (replay.DatasetError, EnvError) as e:  # bad data or task: the file or name, the problem
        raise SystemExit(f"error: {e}") from e
