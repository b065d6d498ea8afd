"""Test setup: headless rendering must be chosen before anything imports mujoco; collected data
shared by the scripts' tests."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real collected walker data, made once per test session: `walker-random` with 4 random
    trajectories without images, and `visual/walker-random` with 2 that have images."""
    from dreamer_collect import Args, collect_random

    root = tmp_path_factory.mktemp("datasets")
    collect_random(Args(env="walker", num_trajectories=4, render=False, data_dir=str(root)))
    collect_random(Args(env="walker", num_trajectories=2, data_dir=str(root / "visual")))
    return root
