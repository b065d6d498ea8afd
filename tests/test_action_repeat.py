"""Datasets carry their action repeat; the imitation scripts act at the rate their data were
recorded at and refuse datasets recorded at different rates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import aime
import bco0
import common.evaluation
from common.datasets import dataset_action_repeat
from common.envs import make_env
from common.replay import DatasetError
from dreamer_collect import Args as CollectArgs
from dreamer_collect import collect_random


def test_dataset_action_repeat_reads_and_checks_info(tmp_path: Path) -> None:
    folders = {}
    for name, repeat in (("a", 4), ("b", 4), ("c", 8), ("plain", None)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        if repeat is not None:
            (folders[name] / "info.json").write_text(json.dumps({"action_repeat": repeat}))
    assert dataset_action_repeat([folders["a"], folders["b"], folders["plain"]]) == 4
    assert dataset_action_repeat([folders["plain"]]) == 2  # the authors' datasets: none recorded
    assert dataset_action_repeat([folders["plain"]], asked=8) == 8
    with pytest.raises(DatasetError, match="different action repeats"):
        dataset_action_repeat([folders["a"], folders["c"]])
    with pytest.raises(DatasetError, match="--action-repeat 2, but"):
        dataset_action_repeat([folders["a"]], asked=2)


@pytest.fixture(scope="module")
def repeat4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two random walker trajectories recorded at action repeat 4 (250 records each)."""
    root = tmp_path_factory.mktemp("repeat4")
    collect_random(
        CollectArgs(
            env="walker", num_trajectories=2, render=False, action_repeat=4, data_dir=str(root)
        )
    )
    return root


TINY_AIME: dict[str, Any] = dict(
    phase1_epochs=1, phase2_epochs=1, steps_per_epoch=2, batch_size=2, horizon=5,
    eval_episodes=1, eval_every=0, num_demos=2,
)  # fmt: skip
TINY_BCO: dict[str, Any] = dict(
    phase1_epochs=1, phase2_epochs=1, steps_per_epoch=2, batch_size=2, min_steps=0,
    val_windows=10, eval_episodes=1, num_demos=2,
)  # fmt: skip


@pytest.mark.parametrize("script", [aime, bco0])
def test_policy_acts_at_the_datasets_action_repeat(
    script: Any, repeat4: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repeats: list[int] = []

    def recording_make_env(name: str, obs: Any, **kwargs: Any) -> Any:
        repeats.append(kwargs.get("action_repeat", 2))
        return make_env(name, obs, **kwargs)

    monkeypatch.setattr(script, "make_env", recording_make_env)
    monkeypatch.setattr(common.evaluation, "make_env", recording_make_env)  # the evaluation's
    budget = TINY_AIME if script is aime else TINY_BCO
    demo = str(repeat4 / "walker-random")
    where = dict(env="walker", task="walk", body_data="random", obs="mdp", data_dir=str(repeat4))
    results = script.main(script.Args(**where, demo=demo, runs_dir=str(tmp_path), **budget))
    assert results["args"]["action_repeat"] == 4
    assert repeats and repeats[-1] == 4  # the evaluation environment
    # A demonstration set recorded at another rate is refused before any training.
    other = tmp_path / "walker-other"
    other.mkdir()
    (other / "info.json").write_text(json.dumps({"action_repeat": 2}))
    for f in (repeat4 / "walker-random").glob("*.npz"):
        (other / f.name).symlink_to(f)
    with pytest.raises(DatasetError, match="different action repeats"):
        script.main(
            script.Args(**where, demo=str(other), runs_dir=str(tmp_path / "other"), **budget)
        )
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").rglob("*.pt"))
