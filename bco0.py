"""BCO(0): behavioural cloning from observation (Torabi et al., 2018), as run in the AIME paper.

    python bco0.py --env walker --body-data mix --demo run --obs visual

1. Inverse dynamics model (IDM) on the embodiment data: the encoded observations o_t-k..o_t
   (k = `stack`) -> the action a_t-1 that led to o_t.
2. The IDM labels the demonstrations: a_t-1 = IDM(o_t-k..o_t) for every demonstration window.
3. Behavioural cloning: the policy maps o_t-k..o_t-1 to the labelled action a_t-1.
4. Evaluation in DMC exactly as `aime.py` (the stack filled with the first observation at reset).

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

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
import tyro
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from common.envs import EXPERT_RETURNS, DMCEnv, make_env
from common.replay import (
    DatasetError,
    TrajectoryDataset,
    WindowSampler,
    atomic_write,
    dataset_action_repeat,
    dataset_folders,
    load_trajectory,
    to_torch_batch,
    trajectory_files,
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


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
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
        self.out_dim = 32 * d

    def forward(self, image: Tensor) -> Tensor:  # [..., 3, 64, 64] -> [..., 1024]
        return self.net(image.flatten(0, -4)).unflatten(0, image.shape[:-3])


class StackNet(nn.Module):
    """Encode each of `frames` observations, concatenate, MLP 2 x 128 ELU -> tanh action."""

    def __init__(self, obs_dim: int, visual: bool, frames: int, action_dim: int) -> None:
        super().__init__()
        self.encoder: nn.Module = ConvEncoder() if visual else nn.Identity()
        embed = 1024 if visual else obs_dim  # the CNN's 256 channels x 2 x 2
        if visual:  # channels-last memory: the fast layout for convolutions
            self.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.mlp = nn.Sequential(
            nn.Linear(frames * embed, 128), nn.ELU(), nn.Linear(128, 128), nn.ELU(),
            nn.Linear(128, action_dim), nn.Tanh(),
        )  # fmt: skip

    def forward(self, obs: Tensor) -> Tensor:  # [frames, B, ...] -> [B, action]
        embed = self.encoder(obs)  # [frames, B, embed]
        return self.mlp(embed.transpose(0, 1).flatten(1))


def observation(batch: dict[str, Tensor], keys: tuple[str, ...]) -> Tensor:
    """The setting's observation: the image, or the low-dimensional keys concatenated."""
    return batch["image"] if keys == ("image",) else torch.cat([batch[k] for k in keys], -1)


def split(data: WindowSampler, seed: int) -> tuple[WindowSampler, WindowSampler]:
    """7:3 train/validation split by trajectory (a trajectory's windows stay on one side)."""
    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, min(len(data) - 1, round(0.7 * len(data))))
    return data.subset(sorted(order[:cut]), seed), data.subset(sorted(order[cut:]), seed + 1)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def idm_loss(idm: StackNet, batch: dict[str, Tensor], keys: tuple[str, ...]) -> Tensor:
    """MSE of IDM(o_t-k..o_t) against the action a_t-1 that led to o_t (embodiment data)."""
    return ((idm(observation(batch, keys)) - batch["pre_action"][-1]) ** 2).mean()


def bc_loss(
    policy: StackNet, idm: StackNet, batch: dict[str, Tensor], keys: tuple[str, ...]
) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE of policy(o_t-k..o_t-1) against the IDM's label for a_t-1 (demonstrations)."""
    obs = observation(batch, keys)
    with torch.no_grad():
        label = idm(obs)
    action = policy(obs[:-1])
    loss = ((action - label) ** 2).mean()
    metrics = {"loss": loss.detach()}
    if "pre_action" in batch:  # analysis only: never part of the loss
        metrics["idm_label_mse"] = ((label - batch["pre_action"][-1]) ** 2).mean()
        metrics["policy_action_mse"] = ((action.detach() - batch["pre_action"][-1]) ** 2).mean()
    return loss, metrics


@torch.no_grad()
def validation_loss(
    loss: Callable[[dict[str, Tensor]], Tensor],
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


def fixed_windows(
    data: WindowSampler, frames: int, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    traj, start = data.windows(frames)
    pick = np.sort(np.random.default_rng(seed).permutation(len(traj))[:n])
    return traj[pick], start[pick]


# ---------------------------------------------------------------------------------------------
# Evaluation (as aime.py)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    policy: StackNet,
    args: Args,
    stack: int,
    episodes: int,
    device: torch.device,
    video: Optional[Path] = None,
) -> list[float]:
    """Episode returns of the policy acting on its stack of the last `stack` observations, filled
    with the first observation at reset. Up to 10 episodes run in lockstep (one batch)."""
    returns: list[float] = []
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
        total, frames, history = np.zeros(n), [], None
        while True:
            batch = {
                k: torch.as_tensor(np.stack([r[k] for r in recs]), device=device)[None]
                for k in keys
            }
            if "image" in batch:
                batch["image"] = batch["image"].permute(0, 1, 4, 2, 3).float() / 255
            obs = observation(batch, keys)  # [1, n, ...]
            history = (
                obs.expand(stack, *obs.shape[1:])
                if history is None
                else torch.cat([history[1:], obs])
            )
            if recs[0]["is_last"]:
                break
            action = policy(history).cpu().numpy()
            recs = [env.step(a) for env, a in zip(envs, action, strict=True)]
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


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(args: Args) -> dict[str, Any]:
    task = args.task or Path(args.demo).name.removeprefix(f"{args.env}-").split("-")[0]
    stack = args.stack or (1 if args.obs == "mdp" else 5)
    args = Args(**{**asdict(args), "task": task, "stack": stack})
    body_name = Path(args.body_data).name if Path(args.body_data).is_dir() else args.body_data
    demo_name = Path(args.demo).name if Path(args.demo).is_dir() else args.demo
    run_name = (
        f"{args.env}-{task}__{args.obs}__{body_name}__{demo_name}__{args.exp_name}__{args.seed}"
    )
    run_dir = Path(args.runs_dir) / run_name
    ckpt_path = run_dir / "checkpoint.pt"
    if (ckpt_path.exists() or (run_dir / "results.json").exists()) and not args.resume:
        raise SystemExit(
            f"error: {run_dir} holds a run already; pass --resume to continue it, "
            "or another --exp-name"
        )

    # -- data: every dataset is checked before any training ----------------------------------
    env = make_env(f"{args.env}-{task}", args.obs)
    keys = env.obs_keys
    shapes = {k: env.record_shapes[k] for k in (*keys, "pre_action")}
    body_folders = dataset_folders(args.data_dir, args.env, args.body_data, "body")
    demo_folders = dataset_folders(args.data_dir, args.env, args.demo, "demo")
    for folder in body_folders:
        trajectory_files(folder)
    demo_files = [f for folder in demo_folders for f in trajectory_files(folder)]
    if len(demo_files) < args.num_demos:
        raise DatasetError(f"--num-demos {args.num_demos}, but {args.demo} holds {len(demo_files)}")
    if f"{args.env}-{task}" in EXPERT_RETURNS:
        expert, expert_source = (
            EXPERT_RETURNS[f"{args.env}-{task}"],
            "published expert return (AIME Appendix D)",
        )
    else:
        demo_returns = [
            load_trajectory(f, ["reward"])["reward"].sum() for f in demo_files[: args.num_demos]
        ]
        expert, expert_source = float(np.mean(demo_returns)), "mean return of the demonstrations"
    repeat = dataset_action_repeat([*body_folders, *demo_folders], args.action_repeat)
    args = Args(**{**asdict(args), "action_repeat": repeat})

    # -- seeding ---------------------------------------------------------------------------------
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    visual = args.obs == "visual"
    idm = StackNet(env.obs_dim, visual, stack + 1, env.action_dim).to(device)
    policy = StackNet(env.obs_dim, visual, stack, env.action_dim).to(device)
    idm_opt = torch.optim.Adam(idm.parameters(), lr=args.lr)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    fresh = {"epoch": 0, "best": float("inf"), "bad_epochs": 0, "best_weights": None}
    state: dict[str, Any] = {"phase": 1, **fresh, "wall": {"phase1": 0.0, "phase2": 0.0}}
    resumed, resume_phase = None, 0
    if args.resume and ckpt_path.exists():
        resumed = torch.load(ckpt_path, map_location=device, weights_only=False)
        if {k: v for k, v in resumed["args"].items() if k != "resume"} != {
            k: v for k, v in asdict(args).items() if k != "resume"
        }:
            raise SystemExit(
                f"error: {ckpt_path} was written with other flags; resume with the same flags"
            )
        state, resume_phase = resumed["state"], resumed["state"]["phase"]
        for net, key in (
            (idm, "idm"),
            (policy, "policy"),
            (idm_opt, "idm_opt"),
            (policy_opt, "policy_opt"),
        ):
            net.load_state_dict(resumed[key])
        torch.set_rng_state(resumed["torch_rng"])
        print(f"resuming {run_dir} at phase {state['phase']}, epoch {state['epoch']}")
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(run_dir))
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()),
    )

    def train(
        phase: int,
        net: StackNet,
        opt: torch.optim.Optimizer,
        train_data: WindowSampler,
        val_data: WindowSampler,
        loss: Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]],
        data_keys: list[str],
        max_epochs: int,
    ) -> None:
        """Adam on `loss` until the validation loss stops improving; keep the best weights."""
        frames = stack + 1
        val = fixed_windows(val_data, frames, args.val_windows, args.seed)
        if resumed is not None and resume_phase == phase:  # the sampler where the run stopped
            train_data.rng.bit_generator.state = resumed["data_rng"]
        bar = tqdm(
            range(state["epoch"], max_epochs),
            desc=f"phase {phase} ({'IDM' if phase == 1 else 'BC'})",
            initial=state["epoch"],
            total=max_epochs,
        )
        for epoch in bar:
            done = state["epoch"] * args.steps_per_epoch >= args.min_steps
            if done and state["bad_epochs"] >= args.patience:
                break  # no better validation loss for `patience` epochs
            start = time.time()
            sums: dict[str, Tensor] = {}
            for _ in range(args.steps_per_epoch):
                batch = train_data.sample(args.batch_size, frames, device, data_keys)
                value, metrics = loss(batch)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                for k, v in metrics.items():
                    sums[k] = v + sums[k] if k in sums else v
            values: dict[str, float] = {k: float(v) / args.steps_per_epoch for k, v in sums.items()}
            if not np.isfinite(values["loss"]):
                raise SystemExit(
                    f"error: non-finite loss in phase {phase}, epoch {epoch}; "
                    f"the last good checkpoint {ckpt_path} is kept"
                )
            values["val_loss"] = validation_loss(
                lambda b: loss(b)[0], val_data, val, frames, data_keys, device
            )
            prefix = "idm" if phase == 1 else "policy"
            for k, x in values.items():
                writer.add_scalar(f"{prefix}/{k}", x, (epoch + 1) * args.steps_per_epoch)
            bar.set_postfix(loss=f"{values['loss']:.4f}", val=f"{values['val_loss']:.4f}")
            if values["val_loss"] < state["best"]:
                state.update(best=values["val_loss"], bad_epochs=0)
                state["best_weights"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            state["wall"][f"phase{phase}"] += time.time() - start
            save(train_data)
        net.load_state_dict(state["best_weights"])  # the model of lowest validation loss

    def save(data: WindowSampler) -> None:
        payload = {
            "args": asdict(args), "state": state, "torch_rng": torch.get_rng_state(),
            "data_rng": data.rng.bit_generator.state,
            "idm": idm.state_dict(), "policy": policy.state_dict(),
            "idm_opt": idm_opt.state_dict(), "policy_opt": policy_opt.state_dict(),
        }  # fmt: skip
        atomic_write(ckpt_path, lambda tmp: torch.save(payload, tmp))

    # -- phase 1: the inverse dynamics model on the embodiment data ------------------------------
    body_keys = [*keys, "pre_action"]
    if state["phase"] == 1:
        body = TrajectoryDataset(body_folders, body_keys, expected_shapes=shapes, seed=args.seed)
        body_train, body_val = split(body, args.seed)
        train(
            1,
            idm,
            idm_opt,
            body_train,
            body_val,
            lambda b: (loss := idm_loss(idm, b, keys), {"loss": loss.detach()}),
            body_keys,
            args.phase1_epochs,
        )
        state.update(phase=2, **fresh)
        policy.encoder.load_state_dict(
            idm.encoder.state_dict()
        )  # the policy's encoder starts as the IDM's

    # -- phase 2: label the demonstrations with the IDM, clone the labels ------------------------
    idm.requires_grad_(False)
    with np.load(demo_files[0]) as first:
        demo_keys = (
            [*keys, "pre_action"] if {"pre_action", "action"} & set(first.files) else list(keys)
        )
    demo = TrajectoryDataset(demo_folders, demo_keys, args.num_demos, shapes, seed=args.seed + 1)
    if state["phase"] == 2:
        demo_train, demo_val = split(demo, args.seed + 1)
        train(
            2,
            policy,
            policy_opt,
            demo_train,
            demo_val,
            lambda b: bc_loss(policy, idm, b, keys),
            demo_keys,
            args.phase2_epochs,
        )
        state.update(phase=3, epoch=0)
        save(demo)

    # -- evaluation ------------------------------------------------------------------------------
    start = time.time()
    video = run_dir / "videos" / "final.gif" if args.capture_video else None
    returns = evaluate(policy, args, stack, args.eval_episodes, device, video)
    scores = 100 * np.asarray(returns) / expert
    results = {
        "algorithm": "bco0",
        "env": args.env, "task": task, "obs": args.obs,
        "body_data": args.body_data, "demo": args.demo, "num_demos": args.num_demos,
        "seed": args.seed, "returns": returns,
        "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
        "normalised_score": float(scores.mean()), "normalised_score_std": float(scores.std()),
        "expert_return": expert, "expert_return_source": expert_source,
        "wall_time_s": {**state["wall"], "evaluation": time.time() - start},
        "args": asdict(args),
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
