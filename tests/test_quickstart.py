"""The README's quick start, run as written (`bash quickstart.sh`, about 15 minutes on 2 CPU
cores): AIME learns the swing-up from positions alone and beats BCO(0) on the same data, the
claim the quick start's table is there to show."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from common.evaluation import random_returns

ROOT = Path(__file__).resolve().parents[1]
# AIME's normalised score must exceed BCO(0)'s by more than this (the gaps over seeds 1-3 on
# the quick start's data, 2-core AMD EPYC: 43.2, 50.9, 36.0; docs/benchmark.md, "The quick
# start's cell").
MARGIN = 20.0


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Run the quick start once into a temporary folder: (datasets, runs, its stdout)."""
    root = tmp_path_factory.mktemp("quickstart")
    data, runs = root / "datasets", root / "runs"
    r = subprocess.run(
        ["bash", str(ROOT / "quickstart.sh")], cwd=root, capture_output=True, text=True,
        timeout=3600, env={**os.environ, "DATA": str(data), "RUNS": str(runs)},
    )  # fmt: skip
    (root / "quickstart.out").write_text(r.stdout)  # what it printed, kept for a look later
    assert r.returncode == 0, r.stderr[-3000:]
    return data, runs, r.stdout


def random_at_evaluation(seed: int, n: int) -> np.ndarray:
    """Uniform random actions from the initial states of a run's final evaluation episodes."""
    return np.array(random_returns("cartpole-swingup", 8, seed, n))


@pytest.mark.slow
def test_aime_imitates_from_positions_alone_and_beats_bco0(
    quick_start: tuple[Path, Path, str],
) -> None:
    """AIME's learning check, and the quick start's claim: from the demonstrations' positions
    alone, AIME's policy beats uniform random actions from the same 10 initial states by more
    than 2 of their standard deviations, and BCO(0)'s score (its inverse model cannot recover an
    action from two positions) by more than MARGIN points."""
    data, runs, stdout = quick_start
    results = {
        r["algorithm"]: r for r in (json.loads(p.read_text()) for p in runs.glob("*/results.json"))
    }
    assert set(results) == {"aime", "bco0", "bc", "iidm", "vmail"}
    aime, bco0 = results["aime"], results["bco0"]
    baseline = random_at_evaluation(aime["seed"], len(aime["returns"]))
    print(f"aime {aime['mean_return']:.1f} (score {aime['normalised_score']:.1f}), "
          f"bco0 {bco0['mean_return']:.1f} (score {bco0['normalised_score']:.1f}), "
          f"random {baseline.mean():.1f} +- {baseline.std():.1f}")  # fmt: skip
    assert len(aime["returns"]) == 10 and aime["args"]["action_repeat"] == 8
    assert aime["args"]["obs"] == "lpomdp" and aime["body_data"] == "random"
    expert = json.loads((data / "cartpole-swingup-expert" / "info.json").read_text())
    assert expert["agent"] == "scripted-expert" and expert["num_trajectories"] == 20
    assert aime["mean_return"] > baseline.mean() + 2 * baseline.std()
    assert aime["normalised_score"] > bco0["normalised_score"] + MARGIN
    for row in ("random->swingup | AIME-LPOMDP", "random->swingup | BCO(0)-LPOMDP",
                "random->swingup | IIDM-LPOMDP", "none->swingup | BC-LPOMDP"):  # fmt: skip
        assert f"| cartpole | {row} |" in stdout
    assert stdout.strip().splitlines()[-1].startswith("random policy: return ")
    assert "| cartpole | random->swingup | V-MAIL-LPOMDP |" in stdout
    assert (runs / "results.md").is_file() and (runs / "results.png").is_file()


@pytest.mark.slow
def test_vmail_imitates_in_aimes_world_model(quick_start: tuple[Path, Path, str]) -> None:
    """V-MAIL's learning check (quickstart.sh step 5, vmail_obs.py): its policy, learned inside
    AIME's frozen world model from the same demonstrations, beats uniform random actions from
    the same 10 initial states as AIME's by more than 2 of their standard deviations."""
    _, runs, _ = quick_start
    (path,) = runs.glob("*__random__swingup__vmail__1/results.json")
    vmail = json.loads(path.read_text())
    baseline = random_at_evaluation(vmail["seed"], len(vmail["returns"]))
    print(f"vmail {vmail['mean_return']:.1f} (score {vmail['normalised_score']:.1f}), "
          f"random {baseline.mean():.1f} +- {baseline.std():.1f}")  # fmt: skip
    assert len(vmail["returns"]) == 10 and vmail["obs"] == "lpomdp"
    assert vmail["mean_return"] > baseline.mean() + 2 * baseline.std()
