"""The README's quick start, run as written (`bash quickstart.sh`, about 45 minutes on 2 CPU
cores). It is also the Dreamer learning check (the quick start's expert is a short Dreamer run)
and V-MAIL's online learning check (its V-MAIL run)."""

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
from common.evaluation import eval_seed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Run the quick start once into a temporary folder: (datasets, runs, its stdout)."""
    root = tmp_path_factory.mktemp("quickstart")
    data, runs = root / "datasets", root / "runs"
    r = subprocess.run(
        ["bash", str(ROOT / "quickstart.sh")], cwd=root, capture_output=True, text=True,
        timeout=5400, env={**os.environ, "DATA": str(data), "RUNS": str(runs)},
    )  # fmt: skip
    (root / "quickstart.out").write_text(r.stdout)  # what it printed, kept for a look later
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
    assert set(results) == {"aime", "bco0", "bc", "iidm", "vmail"}
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


def random_at_evaluation(seed: int, n: int) -> np.ndarray:
    """Uniform random actions from the initial states of a run's final evaluation episodes."""
    env, returns = make_env("cartpole-balance", "mdp", action_repeat=8), []
    for i in range(n):
        rng = np.random.default_rng(eval_seed(seed, i))
        record, total = env.reset(seed=eval_seed(seed, i)), 0.0
        while not record["is_last"]:
            record = env.step(rng.uniform(env.action_low, env.action_high).astype(np.float32))
            total += float(record["reward"])
        returns.append(total)
    return np.array(returns)


@pytest.mark.slow
def test_vmail_online_imitates_the_expert(quick_start: tuple[Path, Path, str]) -> None:
    """The online learning check of vmail.py (quickstart.sh step 5): Algorithm 1 with the world
    model learning every iteration, 150 episodes of cartpole-balance. The policy's mode must beat
    uniform random actions from the same 10 initial states by more than 2 of their standard
    deviations and score at least 60% of the expert's return."""
    _, runs, stdout = quick_start
    (path,) = runs.glob("*__online__balance__vmail__1/results.json")
    vmail = json.loads(path.read_text())
    baseline = random_at_evaluation(vmail["seed"], len(vmail["returns"]))
    print(f"vmail {vmail['mean_return']:.1f} (score {vmail['normalised_score']:.1f}), "
          f"random {baseline.mean():.1f} +- {baseline.std():.1f}")  # fmt: skip
    assert vmail["mode"] == "online" and vmail["env_steps"] == {"balance": 150_000}
    assert len(vmail["returns"]) == 10
    assert vmail["mean_return"] > baseline.mean() + 2 * baseline.std()
    assert vmail["normalised_score"] >= 60
    assert "| cartpole | online->balance | V-MAIL-MDP |" in stdout
