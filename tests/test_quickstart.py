"""The README's quick start, run as written (`bash quickstart.sh`, about 11 minutes on 2 CPU
cores). It is also the Dreamer learning check: the quick start's expert is a short Dreamer run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import dreamer_collect as dc
from common.envs import make_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Run the quick start once into a temporary folder: (datasets, runs, its stdout)."""
    root = tmp_path_factory.mktemp("quickstart")
    data, runs = root / "datasets", root / "runs"
    r = subprocess.run(
        ["bash", str(ROOT / "quickstart.sh")], cwd=root, capture_output=True, text=True,
        timeout=3600, env={**os.environ, "DATA": str(data), "RUNS": str(runs)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return data, runs, r.stdout


def random_returns(n: int) -> np.ndarray:
    """Uniform random actions from the initial states of the quick start's demonstrations."""
    envs = [make_env("cartpole-balance", "mdp", render=False, action_repeat=8) for _ in range(n)]
    seeds = [dc.episode_seed(0, dc.EXPERT, i) for i in range(n)]
    args = dc.Args(env="cartpole", task="balance", action_repeat=8)
    episodes = dc.run_episodes(envs, seeds, None, "random", args, torch.device("cpu"))
    return np.array([float(e["reward"].sum()) for e in episodes])


@pytest.mark.slow
def test_the_short_dreamer_run_beats_the_random_policy(quick_start: tuple[Path, Path, str]) -> None:
    """The learning check of dreamer_collect.py: 11 episodes of cartpole-balance, 200 updates
    after each from the 5th, at small sizes; its 20 demonstrations (the policy's mode) must
    clearly beat random actions from the same initial states."""
    data, _, _ = quick_start
    expert = json.loads((data / "cartpole-balance-expert" / "info.json").read_text())
    baseline = random_returns(20)
    print(f"dreamer {expert['mean_return']:.1f} +- {expert['std_return']:.1f}, "
          f"random {baseline.mean():.1f} +- {baseline.std():.1f}")  # fmt: skip
    assert expert["num_trajectories"] == 20 and expert["action_repeat"] == 8
    assert expert["mean_return"] > 1.2 * baseline.mean()
    assert expert["mean_return"] > baseline.mean() + 2 * baseline.std()


@pytest.mark.slow
def test_aime_imitates_the_expert_and_the_table_is_printed(
    quick_start: tuple[Path, Path, str],
) -> None:
    data, runs, stdout = quick_start
    results = {
        r["algorithm"]: r for r in (json.loads(p.read_text()) for p in runs.glob("*/results.json"))
    }
    assert set(results) == {"aime", "bco0", "bc", "iidm"}
    random_ = json.loads((data / "cartpole-random" / "info.json").read_text())
    aime = results["aime"]
    assert len(aime["returns"]) == 10 and aime["args"]["action_repeat"] == 8
    print(f"aime {aime['mean_return']:.1f} (score {aime['normalised_score']:.1f}), "
          f"random {random_['mean_return']:.1f} +- {random_['std_return']:.1f}")  # fmt: skip
    assert aime["mean_return"] > random_["mean_return"] + 2 * random_["std_return"]
    assert "| cartpole | random+balance->balance | AIME-MDP |" in stdout
    assert "| cartpole | random+balance->balance | BCO(0)-MDP |" in stdout
    assert "| cartpole | random+balance->balance | IIDM-MDP |" in stdout
    assert "| cartpole | none->balance | BC-MDP |" in stdout  # the oracle reads no body data
    assert stdout.strip().splitlines()[-1].startswith("random policy: return ")
    assert (runs / "results.md").is_file() and (runs / "results.png").is_file()
