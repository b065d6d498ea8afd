"""`dreamer_collect.py --agent random` as a user runs it: datasets the reader accepts, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.datasets import TrajectoryDataset
from common.envs import make_env
from common.replay import load_trajectory

ROOT = Path(__file__).resolve().parents[1]


def collect(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "dreamer_collect.py", "--agent", "random", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )  # fmt: skip


@pytest.mark.slow
def test_random_collection_with_images_is_a_valid_dataset(tmp_path: Path) -> None:
    run = collect("--env", "walker", "--num-trajectories", "1", "--data-dir", str(tmp_path))
    assert run.returncode == 0, run.stderr
    folder = tmp_path / "walker-random"
    env = make_env("walker-walk", "visual", render=True)
    data = TrajectoryDataset(
        folder, list(env.record_shapes), expected_shapes=env.record_shapes, progress=False
    )
    (traj,) = data.trajectories
    assert all(len(v) == 501 for v in traj.values())
    assert traj["image"].dtype == np.uint8 and traj["image"].std() > 0
    assert traj["is_first"][0] and traj["is_last"][-1] and not traj["is_last"][:-1].any()
    actions = traj["pre_action"][1:]
    assert np.all(traj["pre_action"][0] == 0) and np.all(np.abs(actions) <= 1)
    assert actions.std() > 0.5, "actions do not look uniform on [-1, 1]"
    info = json.loads((folder / "info.json").read_text())
    assert info["num_trajectories"] == 1 and info["render"] is True
    assert info["mean_return"] == pytest.approx(float(traj["reward"].sum()), rel=1e-5)


def test_rerunning_adds_only_the_missing_trajectories(tmp_path: Path) -> None:
    common = ["--env", "cheetah", "--no-render", "--data-dir", str(tmp_path)]
    assert collect(*common, "--num-trajectories", "2").returncode == 0
    folder = tmp_path / "cheetah-random"
    original = load_trajectory(folder / "0.npz")
    kept = (folder / "1.npz").stat().st_mtime_ns
    # A killed run: trajectory 0 lost, a half-written temporary file left behind.
    (folder / "0.npz").unlink()
    (folder / ".2.npz.abc.tmp").write_bytes(b"partial")

    run = collect(*common, "--num-trajectories", "3")
    assert run.returncode == 0, run.stderr
    assert "1 trajectories present, collecting 2" in run.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["0.npz", "1.npz", "2.npz", "info.json"]
    assert (folder / "1.npz").stat().st_mtime_ns == kept, "an existing trajectory was rewritten"
    again = load_trajectory(folder / "0.npz")
    for k in original:  # trajectory i depends only on (seed, i)
        np.testing.assert_array_equal(again[k], original[k], err_msg=k)
    assert not np.array_equal(again["pre_action"], load_trajectory(folder / "2.npz")["pre_action"])
    assert "image" not in again

    clash = collect("--env", "cheetah", "--data-dir", str(tmp_path), "--num-trajectories", "4")
    assert clash.returncode != 0 and "other settings" in clash.stderr
    assert len(list(folder.glob("*.npz"))) == 3
