"""Speed of the foundation's hot paths; prints figures, asserts nothing.

    python benchmarks/speed.py                 # CPU
    python benchmarks/speed.py --device cuda --compile   # GPU, with torch.compile

- RSSM: `observe` over a batch of 50 windows of 50 steps (the training shape of AIME and Dreamer),
  forward and backward, for the AIME and the original-Dreamer layouts; eager, and with the step
  compiled when `--compile`.
- Environment: agent steps per second of walker-walk with and without rendering (action repeat 2).
- Dataset: batches of 50 x 50 windows per second from a memory-mapped image dataset.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

from common.envs import make_env
from common.replay import TrajectoryDataset, save_trajectory
from common.rssm import AIME_RSSM, DREAMER_RSSM, RSSM, RSSMConfig, kl_loss


@dataclass
class Args:
    device: str = "cpu"
    """torch device for the RSSM and the batches"""
    compile: bool = False
    """also time the RSSM with its step compiled by torch.compile"""
    batch_size: int = 50
    """sequences per batch"""
    horizon: int = 50
    """steps per sequence"""
    repeats: int = 5
    """timed repetitions (after one warm-up)"""


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds per call, after a warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_rssm(args: Args, device: torch.device) -> None:
    B, T, A = args.batch_size, args.horizon, 6
    layouts: list[tuple[str, RSSMConfig, int]] = [
        ("AIME (GRU 512, s 128, MLP 2x128)", AIME_RSSM, 24),
        ("Dreamer (pre-GRU, 512 LN SiLU, s 30)", DREAMER_RSSM, 1024),
    ]
    for name, cfg, embed_dim in layouts:
        rssm = RSSM(A, embed_dim, cfg).to(device)
        embed = torch.randn(T, B, embed_dim, device=device)
        actions = torch.rand(T, B, A, device=device) * 2 - 1

        def train_step(
            model: RSSM = rssm, embed: torch.Tensor = embed, actions: torch.Tensor = actions
        ) -> None:
            out = model.observe(embed, actions)
            kl_loss(out.post_mean, out.post_std, out.prior_mean, out.prior_std).mean().backward()

        def forward(
            model: RSSM = rssm, embed: torch.Tensor = embed, actions: torch.Tensor = actions
        ) -> None:
            with torch.no_grad():
                model.observe(embed, actions)

        fwd = timed(forward, args.repeats, device)
        step = timed(train_step, args.repeats, device)
        print(
            f"rssm {name} on {device}: observe {B}x{T} forward {1e3 * fwd:.1f} ms, "
            f"forward+backward {1e3 * step:.1f} ms ({B * T / step:,.0f} steps/s)"
        )
        if args.compile:
            compiled = torch.compile(rssm.obs_step, fullgraph=True)
            rssm.obs_step = compiled  # type: ignore[method-assign]
            step_c = timed(train_step, args.repeats, device)
            print(f"    with torch.compile(obs_step): forward+backward {1e3 * step_c:.1f} ms")


def bench_env(repeats: int) -> None:
    for render in (False, True):
        env = make_env("walker-walk", "mdp", render=render)
        env.reset()
        action = np.zeros(6, np.float32)
        n = 200 if render else 1000
        t0 = time.perf_counter()
        for _ in range(n):
            rec = env.step(action)
            if rec["is_last"]:
                env.reset()
        rate = n / (time.perf_counter() - t0)
        what = "with 64x64 rendering" if render else "without rendering"
        print(
            f"env walker-walk {what}: {rate:,.0f} agent steps/s ({2 * rate:,.0f} physics steps/s)"
        )


def bench_dataset(args: Args, device: torch.device) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "d"
        folder.mkdir()
        for i in range(20):
            T = 501
            save_trajectory(
                folder / f"{i}.npz",
                {
                    "image": rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8),
                    "pre_action": rng.uniform(-1, 1, (T, 6)).astype(np.float32),
                },
            )
        data = TrajectoryDataset(folder, ["image", "pre_action"], seed=0, progress=False)
        per_batch = timed(
            lambda: data.sample(args.batch_size, args.horizon, device), args.repeats, device
        )
        print(
            f"dataset: {1 / per_batch:.1f} batches/s of {args.batch_size}x{args.horizon} "
            f"64x64 images to {device} (page cache warm)"
        )


def main(args: Args) -> None:
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if device.type == "cuda":
        print(torch.cuda.get_device_name(device))
    bench_rssm(args, device)
    bench_env(args.repeats)
    bench_dataset(args, device)


if __name__ == "__main__":
    main(tyro.cli(Args))
