"""Bad flags, each refused before anything is trained or written with a one-line message that
names the flag and what is wrong (a table of cases: remove a check and its case fails)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import tyro

import aime
import bco0
import dreamer_collect
import vmail
import vmail_obs
from common.envs import EnvError
from common.replay import DatasetError

ROOT = Path(__file__).resolve().parents[1]

CASES: list[tuple[ModuleType, list[str], str]] = [
    (aime, ["--batch-size", "0"], "--batch-size must be at least 1, not 0"),
    (aime, ["--horizon", "-3"], "--horizon must be at least 1, not -3"),
    (aime, ["--steps-per-epoch", "0"], "--steps-per-epoch must be at least 1"),
    (aime, ["--num-demos", "0"], "--num-demos must be at least 1"),
    (aime, ["--eval-episodes", "0"], "--eval-episodes must be at least 1"),
    (aime, ["--action-repeat", "0"], "--action-repeat must be at least 1"),
    (aime, ["--device", "potato"], "--device potato is not a torch device"),
    (aime, ["--kl-only", "--rec-only"], "--kl-only and --rec-only exclude each other"),
    (aime, ["--phase1-only", "--world-model", "x.pt"], "--phase1-only trains the world model"),
    (aime, ["--env", "nosuch"], "unknown environment 'nosuch-run'; domains: acrobot,"),
    (aime, ["--task", "nosuch"], "unknown environment 'walker-nosuch'"),
    (aime, ["--env", "acrobot", "--obs", "lpomdp", "--task", "swingup"], "lpomdp setting needs"),
    (bco0, ["--stack", "0"], "--stack must be at least 1, not 0"),
    (bco0, ["--num-demos", "0"], "--num-demos must be at least 1"),
    (bco0, ["--val-windows", "0"], "--val-windows must be at least 1"),
    (bco0, ["--phase2-epochs", "0"], "--phase2-epochs must be at least 1"),
    (vmail, ["--imag-horizon", "0"], "--imag-horizon must be at least 1"),
    (vmail, ["--train-steps-per-episode", "0"], "--train-steps-per-episode must be at least 1"),
    (vmail, ["--actor-init-std", "0"], "--actor-init-std must be positive"),
    (vmail, ["--zero-shot", "--task", "run"], "the target task run is one of --source-tasks"),
    (vmail, ["--eval-samples", "-1"], "--eval-samples must be at least 0, not -1"),
    (vmail, ["--imag-horizon", "1"], "--imag-horizon must be at least 2 without --value-bootstr"),
    (vmail, ["--pretrain-steps", "-5"], "--pretrain-steps must be at least 0, not -5"),
    (vmail, ["--prefill-episodes", "-1"], "--prefill-episodes must be at least 0, not -1"),
    (vmail_obs, [], "--world-model is required"),
    (vmail_obs, ["--world-model", "missing.pt"], "--world-model missing.pt does not exist"),
    (vmail_obs, ["--world-model", "x.pt", "--imag-horizon", "0"], "--imag-horizon must be at"),
    (dreamer_collect, ["--num-trajectories", "0"], "--num-trajectories must be at least 1"),
    (dreamer_collect, ["--total-steps", "0"], "--total-steps must be at least 1"),
    (dreamer_collect, ["--action-repeat", "0"], "--action-repeat must be at least 1"),
    (dreamer_collect, ["--env", "hopper"], "--task is needed for the embodiment 'hopper'"),
    (dreamer_collect, ["--env", "cartpole", "--task", "nosuch"], "cartpole's tasks: balance,"),
    (vmail, ["--task", "nosuch"], "unknown environment 'walker-nosuch'"),
    (bco0, ["--obs", "lpomdp", "--env", "acrobot", "--task", "swingup"], "lpomdp setting needs"),
    # learning rates: positive and finite, before Adam sees them
    (aime, ["--lr", "0"], "--lr must be a positive finite learning rate, not 0.0"),
    (aime, ["--lr", "nan"], "--lr must be a positive finite learning rate, not nan"),
    (bco0, ["--lr", "-1e-3"], "--lr must be a positive finite learning rate, not -0.001"),
    (vmail, ["--model-lr", "inf"], "--model-lr must be a positive finite learning rate, not inf"),
    (vmail, ["--actor-lr", "0"], "--actor-lr must be a positive finite learning rate"),
    (vmail, ["--value-lr", "nan"], "--value-lr must be a positive finite learning rate"),
    (vmail, ["--disc-lr", "-1"], "--disc-lr must be a positive finite learning rate"),
    (vmail_obs, ["--world-model", "x.pt", "--disc-lr", "0"], "--disc-lr must be a positive"),
    (dreamer_collect, ["--model-lr", "0"], "--model-lr must be a positive finite learning rate"),
    (dreamer_collect, ["--actor-lr", "inf"], "--actor-lr must be a positive finite learning"),
    (dreamer_collect, ["--value-lr", "-2"], "--value-lr must be a positive finite learning"),
    # runs that would train nothing
    (aime, ["--phase1-epochs", "-1"], "--phase1-epochs must be at least 1, not -1"),
    (aime, ["--phase1-epochs", "0"], "--phase1-epochs must be at least 1, not 0"),
    (aime, ["--phase2-epochs", "0"], "--phase2-epochs must be at least 1, not 0"),
    (aime, ["--horizon", "1"], "--horizon must be at least 2, not 1"),
    (vmail_obs, ["--world-model", "x.pt", "--phase2-epochs", "0"], "--phase2-epochs must be at"),
    (vmail, ["--total-steps", "0"], "--total-steps must be at least 1, not 0"),
]
if not torch.cuda.is_available():
    CASES.append((aime, ["--device", "cuda"], "--device cuda, but torch finds no CUDA GPU"))


def message(module: ModuleType, argv: list[str]) -> str:
    """What the script says to `argv`, as its `__main__` block would print it."""
    try:
        module.main(tyro.cli(module.Args, args=argv))
    except SystemExit as e:
        return str(e.code)
    except (DatasetError, EnvError) as e:
        return f"error: {e}"
    raise AssertionError(f"{module.__name__} {argv} was not refused")


@pytest.mark.parametrize(
    ("module", "argv", "expected"),
    CASES,
    ids=[f"{m.__name__} {' '.join(a) or '(none)'}" for m, a, _ in CASES],
)
def test_a_bad_flag_is_one_line_before_anything_is_written(
    module: ModuleType, argv: list[str], expected: str, tmp_path: Path
) -> None:
    runs, data = tmp_path / "runs", tmp_path / "datasets"
    said = message(module, [*argv, "--runs-dir", str(runs), "--data-dir", str(data)])
    assert said.startswith("error: ") and expected in said, said
    assert "\n" not in said, said
    assert not runs.exists() and not data.exists()  # nothing written


def test_an_unknown_environment_from_the_command_line_has_no_traceback(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "aime.py", "--env", "nosuch", "--runs-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: unknown environment 'nosuch-run'"), r.stderr
