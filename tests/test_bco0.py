"""bco0.py: the split, the IDM by behaviour, labels that never see the true actions, the command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bco0
from common.datasets import TrajectoryDataset
from common.replay import ReplayBuffer, load_trajectory, save_trajectory, to_torch_batch
from common.run import Run
from tests.systems import drive_to_origin, point_mass, random_actions

ROOT = Path(__file__).resolve().parents[1]


def point_mass_buffer(
    n: int, T: int = 40, seed: int = 0, act: Any = random_actions
) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    data = ReplayBuffer(seed=seed)
    for _ in range(n):
        data.add(point_mass(rng, act, T=T))
    return data


def test_split_by_windows_and_by_trajectory() -> None:
    data = point_mass_buffer(20)  # 20 trajectories of 41 records: 40 windows of 2 each
    train, val = bco0.split(data, 2, "windows", seed=3)
    assert (len(train), len(val)) == (int(0.7 * 800), 800 - int(0.7 * 800))
    assert set(train.traj) == set(range(20)), "the authors' split: every trajectory trains"
    pairs = set(zip(train.traj, train.start, strict=True))
    assert not pairs & set(zip(val.traj, val.start, strict=True))
    train, val = bco0.split(data, 2, "trajectories", seed=3)
    assert not set(train.traj) & set(val.traj), "a trajectory is on both sides of the split"
    assert len(set(train.traj)) == 14 and len(train) + len(val) == 800
    again, _ = bco0.split(data, 2, "trajectories", seed=3)
    np.testing.assert_array_equal(again.traj, train.traj)  # reproducible


def test_one_demonstration_splits_by_windows_and_refuses_by_trajectory() -> None:
    data = point_mass_buffer(1)
    train, val = bco0.split(data, 6, "windows", seed=0)
    assert len(train) > 0 and len(val) > 0
    with pytest.raises(
        SystemExit, match=r"--split trajectories needs at least 2 trajectories, 1 given"
    ):
        bco0.split(data, 6, "trajectories", seed=0)


def schedule_run(tmp_path: Path, **flags: Any) -> bco0.EarlyStop:
    """`train` on the point mass's IDM with a learning rate of 0: the validation loss never
    improves after the first epoch, so the stopping rule alone decides the epochs."""
    data = point_mass_buffer(20)
    windows = bco0.split(data, 2, "windows", seed=0)
    cfg = bco0.Config(method="bco0", obs="mdp", stack=1, batch_size=8, phase1_epochs=1000,
                      runs_dir=str(tmp_path), **flags)  # fmt: skip
    run = Run(tmp_path, "schedule", cfg, resume=False)
    idm = bco0.StackNet(4, False, 2, 2)
    opt = torch.optim.SGD(idm.parameters(), lr=0.0)
    keys = ("position", "velocity")
    objective = partial(bco0.idm_loss, idm, keys=keys)
    progress = bco0.train(1, idm, opt, objective, windows, [*keys, "pre_action"], cfg, run,
                          {"idm": idm}, [data])  # fmt: skip
    run.writer.close()
    return progress


def test_authors_schedule_trains_50_epochs_and_5000_steps_before_it_may_stop(
    tmp_path: Path,
) -> None:
    progress = schedule_run(tmp_path / "a")  # 560 training windows: 70 batches of 8 an epoch
    assert progress.steps >= 5000 and progress.epoch >= 50
    assert progress.epoch == -(-5000 // 70) and progress.steps == 70 * progress.epoch
    progress = schedule_run(tmp_path / "b", min_epochs=0, min_steps=0)
    assert progress.epoch == 1 + 3, "the first epoch improves, then 3 without improvement"
    progress = schedule_run(tmp_path / "c", min_epochs=0, min_steps=0, patience=5,
                            schedule="fast", steps_per_epoch=7)  # fmt: skip
    assert (progress.epoch, progress.steps) == (6, 42)


def held_out_action_error(policy: bco0.StackNet, demos: ReplayBuffer) -> float:
    """The policy's mean squared action error on every window of held-out demonstrations."""
    traj, start = demos.windows(2)
    batch = to_torch_batch(demos.gather(traj, start, 2, ["position", "velocity", "pre_action"]),
                           "cpu")  # fmt: skip
    with torch.no_grad():
        return float(bco0.oracle_loss(policy, batch, ("position", "velocity"))[0])


def point_mass_cost(policy: Any, episodes: int = 20, T: int = 60) -> float:
    """The mean distance to the origin over episodes from the same initial states."""
    rng = np.random.default_rng(123)
    costs = []
    for _ in range(episodes):
        x, v = rng.uniform(-1, 1, 2), np.zeros(2)
        for _ in range(T):
            a = policy(x, v, rng)
            v = 0.8 * v + 0.5 * a
            x = x + 0.1 * v
            costs.append(float(np.linalg.norm(x)))
    return float(np.mean(costs))


def as_controller(policy: bco0.StackNet) -> Any:
    def act(x: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        obs = torch.tensor(np.concatenate([x, v]), dtype=torch.float32)[None, None]
        with torch.no_grad():
            return policy(obs)[0].numpy()

    return act


def fit(loss: Any, params: Any, data: ReplayBuffer, steps: int, frames: int = 2) -> None:
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(steps):
        value, _ = loss(data.sample(32, frames, keys=["position", "velocity", "pre_action"]))
        opt.zero_grad(), value.backward(), opt.step()


def test_bc_oracle_clones_better_than_bco0_at_the_same_budget() -> None:
    body = point_mass_buffer(60, seed=0)
    demos = point_mass_buffer(20, seed=1, act=drive_to_origin)
    held_out = point_mass_buffer(10, seed=2, act=drive_to_origin)
    keys = ("position", "velocity")
    torch.manual_seed(0)
    idm, bco, oracle = (bco0.StackNet(4, False, f, 2) for f in (2, 1, 1))
    fit(partial(bco0.idm_loss, idm, keys=keys), idm.parameters(), body, 400)
    idm.requires_grad_(False)
    fit(partial(bco0.bc_loss, bco, idm, keys=keys), bco.parameters(), demos, 400)
    fit(partial(bco0.oracle_loss, oracle, keys=keys), oracle.parameters(), demos, 400)
    bco_error, oracle_error = (
        held_out_action_error(bco, held_out),
        held_out_action_error(oracle, held_out),
    )
    assert oracle_error < bco_error, (oracle_error, bco_error)
    assert oracle_error < 0.02, oracle_error


def test_iidm_forward_model_and_its_policy_learn() -> None:
    """IIDM on the point mass: the forward model's validation error ends far below that of
    predicting the last observation, and the policy trained through it drives the mass towards
    the origin far better than random actions, from the same initial states."""
    body = point_mass_buffer(60, seed=0)
    demos = point_mass_buffer(20, seed=1, act=drive_to_origin)
    keys = ("position", "velocity")
    torch.manual_seed(0)
    model = bco0.ForwardModel({"position": 2, "velocity": 2}, 1, 2)
    held_out = point_mass_buffer(10, seed=3)
    val = bco0.Windows(held_out, *held_out.windows(2))
    idx = np.arange(len(val))
    data_keys = [*keys, "pre_action"]
    fit(partial(bco0.forward_loss, model, keys=keys), model.parameters(), body, 600)
    error = bco0.validation_loss(lambda b: bco0.forward_loss(model, b, keys)[0], val, idx, 2,
                                 data_keys, torch.device("cpu"))  # fmt: skip
    batch = val.batch(idx, 2, data_keys, torch.device("cpu"))
    last = float(sum(((batch[k][-1] - batch[k][0]) ** 2).mean() for k in keys))
    assert error < 0.1 * last, (error, last)
    model.requires_grad_(False)
    policy = bco0.StackNet(4, False, 1, 2)
    fit(partial(bco0.iidm_loss, policy, model, keys=keys), policy.parameters(), demos, 600)
    random_cost = point_mass_cost(random_actions)
    assert point_mass_cost(as_controller(policy)) < 0.7 * random_cost


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
         "--batch-size", "4", "--schedule", "fast", "--min-epochs", "0", "--min-steps", "0",
         "--val-windows", "40", "--eval-episodes", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].startswith("normalised score: ")
    (run_dir,) = tmp_path.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["algorithm"] == "bco0" and results["obs"] == obs and len(results["returns"]) == 1
    expert = results["expert_return"]  # the demonstrations' mean return, the published beside
    assert results["published_expert_return"] == 943.79 and expert < 943.79
    assert results["normalised_score"] == pytest.approx(100 * results["mean_return"] / expert)
    assert results["args"]["stack"] == (1 if obs == "mdp" else 5)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["stages"] == ["phase1", "phase2"]  # written in phase 2
    # Real optimiser steps in both phases.
    assert results["wall_time_s"]["phase1"] > 0 and results["wall_time_s"]["phase2"] > 0
    assert ckpt["policy_opt"]["state"], "the policy's optimiser took no step"


def test_missing_dataset_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"make it with: python dreamer_collect.py --agent random"):
        bco0.main(
            bco0.Args(
                env="walker", body_data="random", demo="run", obs="mdp", data_dir=str(tmp_path)
            )
        )


def test_dataset_keys_are_loaded_for_the_setting(data_dir: Path) -> None:
    data = TrajectoryDataset(
        data_dir / "walker-random", ["orientations", "height", "pre_action"], progress=False
    )
    train, val = bco0.split(data, 6, "trajectories", 0)
    assert len(set(train.traj)) + len(set(val.traj)) == 4 and len(val) >= 1
    batch = train.batch(
        np.arange(3), 6, ["orientations", "height", "pre_action"], torch.device("cpu")
    )
    assert batch["orientations"].shape == (6, 3, 14)


def test_bc_oracle_refuses_demonstrations_without_actions(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-actions"
    folder.mkdir()
    traj = load_trajectory(data_dir / "walker-random" / "0.npz")
    save_trajectory(folder / "0.npz", {k: v for k, v in traj.items() if k != "pre_action"})
    with pytest.raises(Exception, match="pre_action"):
        bco0.main(
            bco0.Args(method="bc", env="walker", task="walk", demo=str(folder), obs="mdp",
                      num_demos=1, data_dir=str(data_dir), runs_dir=str(tmp_path / "r"))
        )  # fmt: skip
    assert not list((tmp_path / "r").glob("*/checkpoint.pt"))


@pytest.mark.slow
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(
    data_dir: Path, tmp_path: Path
) -> None:
    flags = ["--env", "walker", "--task", "walk", "--body-data", "random", "--demo",
             str(data_dir / "walker-random"), "--obs", "mdp", "--data-dir", str(data_dir),
             "--num-demos", "3", "--phase1-epochs", "15", "--phase2-epochs", "5",
             "--steps-per-epoch", "10", "--batch-size", "8", "--schedule", "fast",
             "--min-epochs", "0", "--min-steps", "0",
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
    assert torch.load(ckpt, weights_only=False)["state"]["stages"] == ["phase1"], (
        "not killed in phase 1"
    )
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
