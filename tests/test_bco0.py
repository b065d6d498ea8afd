"""bco0.py: the split, the IDM by behaviour, labels that never see the true actions, the command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import bco0
from common.replay import ReplayBuffer, TrajectoryDataset
from tests.systems import point_mass, random_actions

ROOT = Path(__file__).resolve().parents[1]


def test_split_is_by_trajectory() -> None:
    rng = np.random.default_rng(0)
    data = ReplayBuffer()
    for _ in range(20):
        data.add(point_mass(rng, random_actions, T=40))
    train, val = bco0.split(data, seed=3)
    ids = {id(t["position"]): i for i, t in enumerate(data.trajectories)}
    train_ids = {ids[id(t["position"])] for t in train.trajectories}
    val_ids = {ids[id(t["position"])] for t in val.trajectories}
    assert not train_ids & val_ids, "a trajectory is on both sides of the split"
    assert train_ids | val_ids == set(range(20)) and len(train_ids) == 14
    assert bco0.split(data, seed=3)[0].trajectories[0] is train.trajectories[0]  # reproducible


def test_idm_validation_error_falls_far_below_the_mean_action() -> None:
    """On a system whose action is visible in consecutive observations, the IDM's validation
    error ends far below that of predicting the mean action."""
    rng = np.random.default_rng(0)
    data = ReplayBuffer(seed=0)
    for _ in range(40):
        data.add(point_mass(rng, random_actions, T=40))
    train, val = bco0.split(data, seed=0)
    keys = ("position", "velocity")
    torch.manual_seed(0)
    idm = bco0.StackNet(4, False, frames=2, action_dim=2)
    opt = torch.optim.Adam(idm.parameters(), lr=1e-3)
    windows = bco0.fixed_windows(val, 2, 1000, seed=0)
    data_keys = [*keys, "pre_action"]

    def val_loss() -> float:
        return bco0.validation_loss(
            lambda b: bco0.idm_loss(idm, b, keys)[0],
            val,
            windows,
            2,
            data_keys,
            torch.device("cpu"),
        )

    before = val_loss()
    for _ in range(600):
        loss, _ = bco0.idm_loss(idm, train.sample(64, 2, keys=data_keys), keys)
        opt.zero_grad(), loss.backward(), opt.step()
    after = val_loss()
    mean_action = np.concatenate([t["pre_action"][1:] for t in train.trajectories]).mean(0)
    truth = np.concatenate([t["pre_action"][1:] for t in val.trajectories])
    baseline = float(((truth - mean_action) ** 2).mean())
    assert after < 0.1 * baseline, (after, baseline)
    assert after < 0.1 * before


def test_labels_never_see_the_demonstration_actions() -> None:
    torch.manual_seed(0)
    idm, policy = bco0.StackNet(4, False, 3, 2), bco0.StackNet(4, False, 2, 2)
    obs = {"position": torch.randn(3, 5, 2), "velocity": torch.randn(3, 5, 2)}
    grads = []
    for actions in (torch.zeros(3, 5, 2), torch.ones(3, 5, 2)):
        loss, metrics = bco0.bc_loss(
            policy, idm, {**obs, "pre_action": actions}, ("position", "velocity")
        )
        grads.append(torch.autograd.grad(loss, list(policy.parameters())))
        assert "policy_action_mse" in metrics
    for g, h in zip(*grads, strict=True):
        torch.testing.assert_close(g, h)


def test_resolve_fills_every_default(tmp_path: Path) -> None:
    folder = tmp_path / "walker-random"
    folder.mkdir()
    (folder / "info.json").write_text(json.dumps({"action_repeat": 4}))
    args = bco0.Args(
        env="walker", body_data="random", demo="run", obs="mdp", data_dir=str(tmp_path)
    )
    cfg = bco0.resolve(args)
    assert (cfg.task, cfg.stack, cfg.action_repeat) == ("run", 1, 4)
    assert list(asdict(cfg)) == list(asdict(bco0.Args()))  # the same flags, in the same order
    visual = bco0.resolve(bco0.Args(demo=str(tmp_path / "walker-walk-expert"), data_dir="none"))
    assert (visual.task, visual.stack, visual.action_repeat) == ("walk", 5, 2)


def test_actor_stacks_the_last_observations_from_the_first() -> None:
    seen: list[torch.Tensor] = []

    def policy(history: torch.Tensor) -> torch.Tensor:
        seen.append(history.clone())
        return torch.zeros(history.shape[1], 1)

    actor = bco0.StackActor(policy, ("position",), 3, torch.device("cpu"))  # type: ignore[arg-type]
    for t in range(4):
        actions = actor([{"position": np.full(2, 10.0 * t + i, np.float32)} for i in range(2)])
        assert actions.shape == (2, 1)
    assert seen[0][:, 1, 0].tolist() == [1, 1, 1]  # the first observation fills the stack
    assert seen[3][:, 1, 0].tolist() == [11, 21, 31]  # then the last three, oldest first


@pytest.mark.slow
@pytest.mark.parametrize("obs", ["mdp", "visual"])
def test_user_command_trains_both_phases_and_writes_results(
    data_dir: Path, tmp_path: Path, obs: str
) -> None:
    data = data_dir / "visual" if obs == "visual" else data_dir
    r = subprocess.run(
        [sys.executable, str(ROOT / "bco0.py"), "--env", "walker", "--task", "walk",
         "--body-data", "random", "--demo", str(data / "walker-random"), "--obs", obs,
         "--data-dir", str(data), "--runs-dir", str(tmp_path), "--num-demos", "2",
         "--phase1-epochs", "3", "--phase2-epochs", "2", "--steps-per-epoch", "3",
         "--batch-size", "4", "--min-steps", "0", "--val-windows", "40", "--eval-episodes", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].startswith("normalised score: ")
    (run_dir,) = tmp_path.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["algorithm"] == "bco0" and results["obs"] == obs and len(results["returns"]) == 1
    assert results["normalised_score"] == pytest.approx(100 * results["mean_return"] / 943.79)
    assert results["args"]["stack"] == (1 if obs == "mdp" else 5)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["phase"] == 3
    # Real optimiser steps in both phases.
    assert results["wall_time_s"]["phase1"] > 0 and results["wall_time_s"]["phase2"] > 0
    assert ckpt["policy_opt"]["state"], "the policy's optimiser took no step"


def test_missing_dataset_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(
        Exception, match=r"create it with: python dreamer_collect.py --agent random"
    ):
        bco0.main(
            bco0.Args(
                env="walker", body_data="random", demo="run", obs="mdp", data_dir=str(tmp_path)
            )
        )


def test_dataset_keys_are_loaded_for_the_setting(data_dir: Path) -> None:
    data = TrajectoryDataset(
        data_dir / "walker-random", ["orientations", "height", "pre_action"], progress=False
    )
    train, val = bco0.split(data, 0)
    assert len(train) + len(val) == 4 and len(val) >= 1


@pytest.mark.slow
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(
    data_dir: Path, tmp_path: Path
) -> None:
    flags = ["--env", "walker", "--task", "walk", "--body-data", "random", "--demo",
             str(data_dir / "walker-random"), "--obs", "mdp", "--data-dir", str(data_dir),
             "--num-demos", "3", "--phase1-epochs", "15", "--phase2-epochs", "5",
             "--steps-per-epoch", "10", "--batch-size", "8", "--min-steps", "0",
             "--patience", "100", "--val-windows", "50", "--eval-episodes", "1"]  # fmt: skip
    script = [sys.executable, str(ROOT / "bco0.py"), *flags]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    assert (
        subprocess.run([*script, "--runs-dir", str(tmp_path / "a")], cwd=ROOT, env=env).returncode
        == 0
    )
    # Killed in phase 1: the resumed process restores phase 1's sampler, then runs phase 2 afresh.
    proc = subprocess.Popen([*script, "--runs-dir", str(tmp_path / "b")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt = tmp_path / "b" / "walker-walk__mdp__random__walker-random__bco0__1" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(ckpt, weights_only=False)["state"]["phase"] == 1, "not killed in phase 1"
    r = subprocess.run([*script, "--runs-dir", str(tmp_path / "b"), "--resume"], cwd=ROOT, env=env,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr[-2000:]
    a, b = (json.loads(next((tmp_path / x).glob("*/results.json")).read_text()) for x in "ab")
    assert a["returns"] == b["returns"]
    pa, pb = (
        torch.load(next((tmp_path / x).glob("*/checkpoint.pt")), weights_only=False) for x in "ab"
    )
    for k, v in pa["policy"].items():
        torch.testing.assert_close(pb["policy"][k], v, rtol=0, atol=0)
