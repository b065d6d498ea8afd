"""vmail_obs.py: V-MAIL on AIME's frozen world model from observation-only demonstrations, end to
end with real optimiser steps and AIME's evaluation episodes; the refusal of a missing or absent
--world-model (it never trains phase 1 itself)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import aime
import vmail_obs
from common.rssm import AIME_RSSM
from tests.test_vmail import demos_dir, recorded_resets, without_actions

ROOT = Path(__file__).resolve().parents[1]


def tiny(root: Path, runs: Path, **kwargs: Any) -> vmail_obs.Args:
    """Budgets that take real optimiser steps in seconds."""
    settings: dict[str, Any] = dict(
        obs="mdp", data_dir=str(root), runs_dir=str(runs), device="cpu", num_demos=3,
        phase2_epochs=2, steps_per_epoch=3, batch_size=4, horizon=12, imag_horizon=5,
        eval_episodes=2, eval_every=0, hidden=32,
    )  # fmt: skip
    settings.update(kwargs)
    return vmail_obs.Args(**settings)


def test_imitates_with_aimes_frozen_world_model(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = demos_dir(data_dir, tmp_path, tasks=())
    demo = without_actions(data_dir, root / "walker-walk-expert")
    runs = tmp_path / "runs"
    # an AIME phase-1 model, made by aime.py
    aime.main(aime.Args(
        env="walker", obs="mdp", body_data="random", data_dir=str(root), runs_dir=str(runs),
        device="cpu", phase1_only=True, exp_name="phase1", phase1_epochs=1, steps_per_epoch=3,
        batch_size=4, horizon=12,
    ))  # fmt: skip
    wm = runs / "walker__mdp__random__phase1__phase1__1" / "world_model.pt"
    seeds = recorded_resets(monkeypatch)
    results = vmail_obs.main(tiny(root, runs, demo=str(demo), task="walk", world_model=str(wm)))
    assert results["algorithm"] == "vmail" and results["mode"] == "obs_only"  # results_table.py
    assert results["world_model"] == str(wm) and results["env_steps"] == {}
    assert results["body_data"] == "random"  # the embodiment dataset the model recorded
    # only the evaluation, on aime.py's initial states (seed 1), then the random policy's
    # reference on the same ones
    assert seeds == [101, 102, 101, 102]
    run_dir = runs / "walker-walk__mdp__random__walker-walk-expert__vmail__1"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["epoch"] == 2
    aime_state = torch.load(wm, weights_only=False)["model"]
    filtering = {k for k in aime_state if k.startswith(("encoder.", "rssm."))}
    assert set(ckpt["model"]) == filtering  # AIME's encoder and RSSM, read without aime.py
    for k, v in ckpt["model"].items():  # the very same model, untouched
        assert torch.equal(v, aime_state[k]), k
    disc_in = ckpt["walk/disc"]["0.weight"].shape[1]
    assert disc_in == AIME_RSSM.deter + AIME_RSSM.stoch  # AIME's [h, s]: D reads states only


def test_refuses_a_missing_or_absent_world_model(data_dir: Path, tmp_path: Path) -> None:
    root = demos_dir(data_dir, tmp_path)
    with pytest.raises(SystemExit, match="--world-model is required"):
        vmail_obs.main(tiny(root, tmp_path / "runs", demo="walk"))
    with pytest.raises(SystemExit, match="does not exist"):
        vmail_obs.main(tiny(root, tmp_path / "runs", demo="walk", world_model=str(tmp_path / "no")))
    assert not (tmp_path / "runs").exists()  # no phase 1 in-process, no run started
    r = subprocess.run(
        [sys.executable, str(ROOT / "vmail_obs.py"), "--data-dir", str(root), "--runs-dir",
         str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: --world-model is required")


def test_task_is_taken_from_the_flag_and_a_published_model_is_read(
    data_dir: Path, tmp_path: Path
) -> None:
    """A demonstration folder whose name is not {env}-{task}-... (here walker-random) with --task
    stand imitates and evaluates stand; the AIME authors' published form serves as the model."""
    published = ROOT / "tests" / "fixtures" / "authors-aime" / "walker-mdp-small"
    results = vmail_obs.main(tiny(
        data_dir, tmp_path / "runs", demo=str(data_dir / "walker-random"), task="stand",
        world_model=str(published), phase2_epochs=1, eval_episodes=1,
    ))  # fmt: skip
    assert results["task"] == "stand" and results["body_data"] == "mix"  # its config.yaml's
    assert (tmp_path / "runs" / "walker-stand__mdp__mix__walker-random__vmail__1").is_dir()


def test_a_folder_without_a_model_is_refused_with_what_is_expected(
    data_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match=r"holds no model\.pt and config\.yaml"):
        vmail_obs.main(tiny(data_dir, tmp_path / "runs", demo="walk", task="walk",
                            world_model=str(tmp_path)))  # fmt: skip
