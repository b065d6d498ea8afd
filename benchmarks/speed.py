"""Speed of the hot paths; prints one `case [precision]: value unit` line per case and precision,
then the ratio of each precision to the first, and asserts nothing.

    python benchmarks/speed.py                                  # every case, CPU, fp32 and bf16
    python benchmarks/speed.py --cases phase1-mdp phase2-mdp --steps 5 --precisions fp32
    python benchmarks/speed.py --device cuda --compile           # GPU, with torch.compile

The training cases (phase*, rssm-*, vmail-*, collect-*) run in every `--precisions` (the scripts'
`--precision`: bf16 computes matrix products and convolutions in bfloat16, the rest in float32),
in alternating rounds, so that the precisions share the machine's state and the ratio is a
side-by-side figure; env and dataset cases do not depend on it and run once.

Cases:
- phase1-mdp, phase1-visual, phase2-mdp, phase2-visual: AIME gradient steps per second at the
  paper's sizes (walker, batch 50 x horizon 50, the default RSSM), including the optimiser step.
- rssm-aime, rssm-dreamer: `RSSM.observe` forward and backward over 50 x 50, both layouts.
- env, env-render: walker-walk agent steps per second without and with 64x64 rendering.
- vmail-mdp, vmail-visual: one V-MAIL training iteration of Algorithm 1 per second at the
  default sizes (a model step on 50 x 50, the expert latents of 50 x 50 demonstration records,
  then discriminator, actor and value steps on K = 15 rollouts from all 2500 posterior states).
- vmail-mdp-inputs-gp, vmail-mdp-no-gp: vmail-mdp with D's gradient penalty over its inputs
  (`--grad-penalty inputs`) and without one (`none`), beside the default over its parameters.
- vmail-obsonly-mdp: one iteration of `vmail_obs.py` on AIME's (frozen) world model.
- dataset: batches of 50 x 50 64x64 images per second from a memory-mapped dataset.
- collect-mdp, collect-visual: `dreamer_collect.py --agent dreamer` on walker-walk at the default
  sizes: environment steps per second of the whole collect-and-train loop, from the timed parts
  (one episode of acting with 64x64 rendering, since the datasets store images, and
  `--steps` Dreamer updates of 50 x 50): 1000 / (episode time + 100 x update time).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

import aime
import dreamer_collect
import vmail
import vmail_obs
from common.datasets import TrajectoryDataset
from common.envs import make_env
from common.nets import kl_loss
from common.replay import save_trajectory
from common.rssm import AIME_RSSM, DREAMER_RSSM, RSSM
from common.run import Precision, autocast, mixed_precision

WALKER_MDP = {"orientations": 14, "height": 1, "velocity": 9}  # walker's keys and sizes
CASES = (
    "phase1-mdp", "phase1-visual", "phase2-mdp", "phase2-visual",
    "rssm-aime", "rssm-dreamer", "env", "env-render", "dataset", "collect-mdp", "collect-visual",
    "vmail-mdp", "vmail-mdp-inputs-gp", "vmail-mdp-no-gp", "vmail-visual", "vmail-obsonly-mdp",
)  # fmt: skip


@dataclass
class Args:
    cases: list[str] = field(default_factory=lambda: list(CASES))
    """cases to run, from: phase1-mdp phase1-visual phase2-mdp phase2-visual rssm-aime
    rssm-dreamer env env-render dataset collect-mdp collect-visual vmail-mdp vmail-mdp-inputs-gp
    vmail-mdp-no-gp vmail-visual vmail-obsonly-mdp"""
    steps: int = 5
    """timed repetitions of each case (after one warm-up)"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    compile: bool = False
    """compile the RSSM's posterior step with torch.compile"""
    batch_size: int = 50
    """sequences per batch"""
    horizon: int = 50
    """records per sequence"""
    precisions: list[Precision] = field(default_factory=lambda: ["fp32", "bf16"])
    """precisions to run each training case in, side by side (ratios to the first)"""
    rounds: int = 2
    """alternating rounds of --steps timed calls per precision (their rates are averaged)"""
    authors_src: Path | None = None
    """the AIME authors' repository (github argmax-ai/aime, commit 3d2cd90; needs einops and
    hydra-core): phase1-mdp and phase1-visual then also time their training step, side by side"""


def per_second(fn: Callable[[], object], steps: int, device: torch.device) -> float:
    """Calls per second over `steps` calls, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def walker_batch(
    obs: str, T: int, B: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """A synthetic walker batch [T, B, ...] with actions, and the setting's observation keys.
    Images are uint8 frames made channels-last floats, as the dataset delivers them."""
    batch = {"pre_action": torch.rand(T, B, 6, device=device) * 2 - 1}
    if obs == "visual":
        frames = torch.randint(0, 256, (T, B, 64, 64, 3), dtype=torch.uint8, device=device)
        batch["image"] = frames.permute(0, 1, 4, 2, 3).float() / 255
        return batch, ("image",)
    keys = ("orientations", "height", "velocity")
    for k, d in zip(keys, (14, 1, 9), strict=True):
        batch[k] = torch.randn(T, B, d, device=device)
    return batch, keys


def aime_step(
    case: str, args: Args, device: torch.device, precision: Precision
) -> Callable[[], object]:
    """One AIME gradient step on a synthetic walker batch with the script's own functions."""
    phase, obs = case.split("-")
    T, B = args.horizon, args.batch_size
    aime_args = aime.resolve(aime.Args(env="walker", obs=obs))  # type: ignore[arg-type]
    dims = {"image": 3 * 64 * 64} if obs == "visual" else WALKER_MDP
    model = aime.WorldModel(dims, 6, "aime", False).to(device)
    mixed_precision(precision, model)
    if args.compile:
        model.rssm.obs_step = torch.compile(model.rssm.obs_step)  # type: ignore[method-assign]
    batch, keys = walker_batch(obs, T, B, device)
    if phase == "phase1":
        opt = torch.optim.Adam(model.parameters(), lr=3e-4)

        def step() -> None:
            with autocast(precision, device):
                loss, _ = aime.phase1_step(model, batch, keys, aime_args)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
            opt.step()

        return step
    model.requires_grad_(False)
    policy = aime.Policy(model.rssm.feature_dim, 6).to(device)
    mixed_precision(precision, policy)
    popt = torch.optim.Adam(policy.parameters(), lr=3e-4)

    def step2() -> None:
        with autocast(precision, device):
            loss, _ = aime.phase2_step(model, policy, batch, keys, aime_args)
        popt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 100.0)
        popt.step()

    return step2


def authors_step(case: str, args: Args, device: torch.device) -> Callable[[], object]:
    """One phase-1 step of the AIME authors' own code, unmodified, as their
    scripts/train_model_only.py takes it with its defaults (float32, `use_fp16: false`): their
    `model-only` config composed by Hydra for walker with the `rssm` world model (the published
    walker sizes), their model's forward pass and loss, backward, the gradient norm clipped at
    100 and read back, Adam. The batch is `walker_batch`'s, images contiguous channels-first as
    their dataset loader hands them over, and in Visual the proprioceptive keys their probe heads
    read."""
    import types

    assert args.authors_src is not None
    src = args.authors_src.resolve()
    if not (src / "aime" / "models" / "ssm.py").is_file():
        raise SystemExit(
            f"--authors-src {src}: not the AIME authors' repository (no aime/models/ssm.py)"
        )
    # their image encoder imports torchvision only for Resize(64), a no-op on 64x64 frames
    if "torchvision" not in sys.modules:
        vision, transforms = (
            types.ModuleType("torchvision"),
            types.ModuleType("torchvision.transforms"),
        )
        transforms.Resize = lambda size: lambda image: image  # type: ignore[attr-defined]
        vision.transforms = transforms  # type: ignore[attr-defined]
        sys.modules.update({"torchvision": vision, "torchvision.transforms": transforms})
    # their package is also called `aime`: import it while this repository's aime.py steps aside
    ours, path = sys.modules.pop("aime"), list(sys.path)
    sys.path.insert(0, str(src))
    try:
        from aime.data import ArrayDict
        from aime.models.ssm import ssm_classes
        from aime.utils import parse_world_model_config
    finally:
        for name in [n for n in sys.modules if n == "aime" or n.startswith("aime.")]:
            del sys.modules[name]
        sys.modules["aime"], sys.path[:] = ours, path
    from hydra import compose, initialize_config_dir

    obs = case.split("-")[1]
    overrides = ["env=walker", f"environment_setup={obs}", "world_model=rssm",
                 "embodiment_dataset_name=walker-mix"]  # fmt: skip
    with initialize_config_dir(config_dir=str(src / "aime" / "configs"), version_base=None):
        config = compose("model-only", overrides=overrides)
    batch, _ = walker_batch(obs, args.horizon, args.batch_size, device)
    if obs == "visual":  # their Visual model also trains probe heads on the proprioceptive keys
        batch = {**walker_batch("mdp", args.horizon, args.batch_size, device)[0], **batch}
    data = ArrayDict({k: v.contiguous() for k, v in batch.items()})
    wm_config = parse_world_model_config(
        config, config["env"]["sensors"], ArrayDict({k: v[:, 0] for k, v in data.items()}),
        predict_reward=config["use_reward"],
    )  # fmt: skip
    model = ssm_classes[wm_config.pop("name")](**wm_config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config["model_lr"])

    def step() -> None:
        _, _, loss, _ = model(data, data["pre_action"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"]).item()
        opt.step()

    return step


def vmail_step(
    case: str, args: Args, device: torch.device, precision: Precision
) -> Callable[[], object]:
    """One V-MAIL training iteration on a synthetic walker batch with the script's functions."""
    obs = "visual" if case == "vmail-visual" else "mdp"
    T, B = args.horizon, args.batch_size
    batch, keys = walker_batch(obs, T, B, device)
    if case == "vmail-obsonly-mdp":
        o_args = vmail_obs.Config(obs="mdp", device=str(device), precision=precision)
        frozen = aime.WorldModel(WALKER_MDP, 6, "aime", False).to(device).requires_grad_(False)
        learner = vmail.make_learner(frozen.rssm.feature_dim, 6, False, o_args)
        mixed_precision(precision, frozen, learner.actor, learner.value, learner.disc)
        demo = {k: v for k, v in batch.items() if k != "pre_action"}
        deter = frozen.rssm.cfg.deter

        def obs_only() -> None:
            with autocast(precision, device):
                feat = vmail_obs.expert_latents(
                    frozen.encoder, frozen.rssm, demo, keys, learner.actor
                )
            start = (feat[..., :deter], feat[..., deter:])
            vmail_obs.imitation_step(frozen.rssm, learner, start, feat, o_args)

        return obs_only
    penalty = {"vmail-mdp-inputs-gp": "inputs", "vmail-mdp-no-gp": "none"}.get(case, "params")
    v_args = vmail.Config(
        obs=obs, device=str(device), grad_penalty=penalty, precision=precision,  # type: ignore[arg-type]
    )  # fmt: skip
    model = vmail.WorldModel(24, 6, obs == "visual", v_args).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=v_args.model_lr)
    learner = vmail.make_learner(model.rssm.feature_dim, 6, True, v_args)
    mixed_precision(precision, model, learner.actor, learner.value, learner.disc)
    nets = vmail.Nets(model, opt, {"walk": learner})

    def step() -> None:
        vmail.iteration(nets, "walk", batch, batch, keys, v_args)

    return step


def rssm_step(
    case: str, args: Args, device: torch.device, precision: Precision
) -> Callable[[], object]:
    cfg, embed_dim = (AIME_RSSM, 24) if case == "rssm-aime" else (DREAMER_RSSM, 1024)
    rssm = RSSM(6, embed_dim, cfg).to(device)
    mixed_precision(precision, rssm)
    if args.compile:
        rssm.obs_step = torch.compile(rssm.obs_step)  # type: ignore[method-assign]
    embed = torch.randn(args.horizon, args.batch_size, embed_dim, device=device)
    actions = torch.rand(args.horizon, args.batch_size, 6, device=device) * 2 - 1

    def step() -> None:
        with autocast(precision, device):
            out = rssm.observe(embed, actions)
        kl_loss(out.post_mean, out.post_std, out.prior_mean, out.prior_std).mean().backward()

    return step


def env_step(case: str) -> Callable[[], object]:
    env = make_env("walker-walk", "mdp", render=case == "env-render")
    env.reset()
    action = np.zeros(6, np.float32)

    def step() -> None:
        if env.step(action)["is_last"]:
            env.reset()

    return step


def dataset_rate(args: Args, device: torch.device) -> float:
    """Batches of image windows per second from a memory-mapped dataset (page cache warm)."""
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(10):
            trajectory: dict[str, np.ndarray] = {
                "image": rng.integers(0, 256, (501, 64, 64, 3), dtype=np.uint8),
                "pre_action": rng.uniform(-1, 1, (501, 6)).astype(np.float32),
            }
            save_trajectory(Path(tmp) / f"{i}.npz", trajectory)
        data = TrajectoryDataset(tmp, ["image", "pre_action"], seed=0, progress=False)
        return per_second(
            lambda: data.sample(args.batch_size, args.horizon, device), args.steps, device
        )


def collect_rate(
    case: str, args: Args, device: torch.device, precision: Precision
) -> tuple[float, float, float]:
    """(environment steps/s of collect-and-train, updates/s, seconds per acted episode)."""
    obs = case.split("-")[1]
    dargs = dreamer_collect.resolve(dreamer_collect.Args(
        agent="dreamer", env="walker", task="walk", obs=obs,  # type: ignore[arg-type]
        batch_size=args.batch_size, horizon=args.horizon, device=str(device), precision=precision,
    ))  # fmt: skip
    env = make_env("walker-walk", obs, render=True)  # type: ignore[arg-type]
    agent = dreamer_collect.make_agent(env, dargs, device)
    mixed_precision(precision, agent.model, agent.actor, agent.value)
    keys = env.obs_keys
    T, B = args.horizon, args.batch_size
    batch = {
        "pre_action": torch.rand(T, B, env.action_dim, device=device) * 2 - 1,
        "reward": torch.rand(T, B, device=device),
    }
    if obs == "visual":  # uint8 frames become channels-last floats, as the buffer delivers them
        frames = torch.randint(0, 256, (T, B, 64, 64, 3), dtype=torch.uint8, device=device)
        batch["image"] = frames.permute(0, 1, 4, 2, 3).float() / 255
    else:
        for k in keys:
            batch[k] = torch.randn(T, B, *env.record_shapes[k], device=device)
    updates = per_second(
        lambda: dreamer_collect.train_step(agent, batch, keys, dargs), args.steps, device
    )
    t0 = time.perf_counter()
    dreamer_collect.run_episodes([env], [0], agent, "sample", dargs, device)
    episode = time.perf_counter() - t0
    env_steps = 1000 / (episode + dargs.train_steps_per_episode / updates)
    return env_steps, updates, episode


TRAINING = {"phase": (aime_step, "steps/s"), "rssm": (rssm_step, "steps/s"),
            "vmail": (vmail_step, "iterations/s")}  # fmt: skip


def kind_of(case: str) -> str:
    """A case's kind: phase (phase1-*, phase2-*), rssm, vmail, env, collect or dataset."""
    return case.split("-")[0].rstrip("12")


def side_by_side(case: str, args: Args, device: torch.device) -> dict[str, float]:
    """Calls per second of a training case in each of `args.precisions`, in alternating rounds."""
    make = TRAINING[kind_of(case)][0]
    steps: dict[str, Callable[[], object]] = {
        p: make(case, args, device, p) for p in args.precisions
    }
    if args.authors_src is not None and case in ("phase1-mdp", "phase1-visual"):
        steps["authors"] = authors_step(case, args, device)
    rates: dict[str, list[float]] = {p: [] for p in steps}
    for _ in range(args.rounds):
        for p, step in steps.items():
            rates[p].append(per_second(step, args.steps, device))
    return {p: float(np.mean(r)) for p, r in rates.items()}


def print_ratios(case: str, values: dict[str, float]) -> None:
    """Each precision's rate over the first's, then (with --authors-src) over the authors'."""
    ours = {p: v for p, v in values.items() if p != "authors"}
    first, *others = ours
    for p in others:
        print(f"{case}: {p} / {first} = {ours[p] / ours[first]:.2f}", flush=True)
    for p in ours if "authors" in values else ():
        print(f"{case}: {p} / authors = {ours[p] / values['authors']:.2f}", flush=True)


def main(args: Args) -> None:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for case in args.cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; choose from {' '.join(CASES)}")
        kind = kind_of(case)
        if kind in TRAINING:
            rates = side_by_side(case, args, device)
            for p, rate in rates.items():
                extra = f" ({1e3 / rate:.0f} ms forward+backward)" if kind == "rssm" else ""
                extra += " (their code, float32)" if p == "authors" else ""
                print(f"{case} [{p}]: {rate:.2f} {TRAINING[kind][1]}{extra}", flush=True)
            print_ratios(case, rates)
        elif kind == "env":
            rate = per_second(env_step(case), 100 * args.steps, device)
            print(f"{case}: {rate:.0f} agent steps/s", flush=True)
        elif kind == "collect":
            env_rates: dict[str, float] = {}
            for p in args.precisions:
                rate, updates, episode = collect_rate(case, args, device, p)
                env_rates[p] = rate
                print(
                    f"{case} [{p}]: {rate:.1f} env steps/s ({updates:.2f} updates/s, "
                    f"{episode:.1f} s per episode of acting), {1e6 / rate / 3600:.1f} h per 1M "
                    "env steps",
                    flush=True,
                )
            print_ratios(case, env_rates)
        else:
            rate = dataset_rate(args, device)
            print(f"{case}: {rate:.1f} batches/s", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
