"""aime.py: the ELBO against torch.distributions, learning by behaviour, the command as users run
it, resume, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import aime
from common import model_files
from common.datasets import trajectory_files
from common.nets import PointDeconv
from common.replay import DatasetError, ReplayBuffer, load_trajectory, save_trajectory
from common.rssm import RSSMConfig
from tests.systems import point_mass, point_mass_data, random_actions

ROOT = Path(__file__).resolve().parents[1]
POINT_MASS = {"position": 2, "velocity": 2}  # tests/systems.py's observation keys and sizes
WALKER_MDP = {"orientations": 14, "height": 1, "velocity": 9}
TINY = [
    "--phase1-epochs", "2", "--phase2-epochs", "2", "--steps-per-epoch", "3",
    "--batch-size", "4", "--horizon", "10", "--eval-episodes", "2", "--eval-every", "1",
    "--eval-episodes-during", "1", "--num-demos", "2",
]  # fmt: skip


def run(*flags: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "aime.py"), *flags], cwd=cwd, capture_output=True, text=True,
        timeout=900, env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )  # fmt: skip


def call_main(**kwargs: Any) -> dict[str, Any]:
    return aime.main(aime.Args(**kwargs))


# ---------------------------------------------------------------------------------------------
# The ELBO and the networks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["aime", "dreamer"])
def test_elbo_terms_equal_torch_distributions(layout: aime.Layout) -> None:
    torch.manual_seed(0)
    model = aime.WorldModel({"obs": 5}, 2, layout, False, RSSMConfig(deter=16, stoch=4, hidden=16))
    obs, actions = torch.randn(6, 3, 5), torch.rand(6, 3, 2) * 2 - 1
    states = model.rssm.observe(model.encoder(obs), actions)
    loss, m = aime.elbo_loss(model, obs, states)
    mean, std = model.decode(states.features())
    std_t = torch.ones_like(mean) if std is None else std
    log_p = torch.distributions.Normal(mean, std_t).log_prob(obs)  # [T, B, D]
    q = torch.distributions.Normal(states.post_mean, states.post_std)
    p = torch.distributions.Normal(states.prior_mean, states.prior_std)
    kl = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(m["rec_term"], log_p.sum(-1).sum(0).mean())  # eq. (2)
    torch.testing.assert_close(m["kl_term"], -kl.sum(0).mean())  # eq. (3)
    torch.testing.assert_close(m["elbo"], m["rec_term"] + m["kl_term"])  # eq. (1)
    # beta-NLL: the loss weights each log-likelihood by its detached std, the KL by their mean.
    w = std_t.detach()
    want = -(log_p * w).sum(-1).sum(0).mean() + (kl * w.mean(-1)).sum(0).mean()
    torch.testing.assert_close(loss, want)
    _, only_kl = aime.elbo_loss(model, obs, states, kl_only=True)
    torch.testing.assert_close(only_kl["loss"], (kl * w.mean(-1)).sum(0).mean())


def test_point_deconv_equals_the_transposed_convolution() -> None:
    torch.manual_seed(0)
    fast, slow = PointDeconv(12, 5, 5, 2), nn.ConvTranspose2d(12, 5, 5, 2)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(7, 12, 1, 1)
    torch.testing.assert_close(fast(x), slow(x))
    fast(x).square().sum().backward()
    slow(x).square().sum().backward()
    assert fast.weight.grad is not None and slow.weight.grad is not None
    torch.testing.assert_close(fast.weight.grad, slow.weight.grad)


def test_visual_model_shapes() -> None:
    model = aime.WorldModel({"image": 3 * 64 * 64}, 6, "aime", False)
    image = torch.rand(3, 2, 64, 64, 3).permute(0, 1, 4, 2, 3)  # channels last, as batches come
    embed = model.encoder(image)
    assert embed.shape == (3, 2, 1024)
    states = model.rssm.observe(embed, torch.zeros(3, 2, 6))
    mean, std = model.decode(states.features())
    assert mean.shape == (3, 2, 3, 64, 64) and std is None
    actions = torch.rand(8, 4, 6) * 2 - 1
    grid = aime.open_loop_images(
        model, {"image": torch.rand(8, 4, 3, 64, 64), "pre_action": actions}
    )
    assert grid.shape == (3, 4 * 2 * 64, 8 * 64)
    assert float(mean.detach().min()) >= 0 and float(mean.detach().max()) <= 1


# ---------------------------------------------------------------------------------------------
# Learning, checked by behaviour
# ---------------------------------------------------------------------------------------------
def train_phase1(
    model: aime.WorldModel, sample: Callable[[], dict[str, torch.Tensor]], keys: tuple[str, ...],
    args: aime.Config, steps: int, metric: str,
) -> list[float]:  # fmt: skip
    """`steps` Adam steps (lr 1e-3) of phase 1 on `sample()`'s batches; `metric` at each."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    values = []
    for _ in range(steps):
        loss, m = aime.phase1_step(model, sample(), keys, args)
        opt.zero_grad(), loss.backward(), opt.step()
        values.append(float(m[metric]))
    return values


def test_phase2_infers_the_actions_of_a_known_policy() -> None:
    """Random-action embodiment data, demonstrations of a = tanh(-2x - v): after phase 2 the
    inferred actions are far closer to the true ones than a random policy's or the initial ones."""
    body, demo = point_mass_data(seed=0)
    torch.manual_seed(0)
    keys = ("position", "velocity")
    args = aime.resolve(aime.Args(env="walker", obs="mdp"))
    model = aime.WorldModel(POINT_MASS, 2, "aime", False, RSSMConfig(deter=64, stoch=8, hidden=64))
    elbo = train_phase1(model, lambda: body.sample(16, 20), keys, args, 300, "elbo")
    assert np.mean(elbo[-20:]) > np.mean(elbo[:20]) + 50, "phase 1 did not learn the dynamics"

    model.requires_grad_(False)
    policy = aime.Policy(model.rssm.feature_dim, 2)
    popt = torch.optim.Adam(policy.parameters(), 1e-3)
    mse = []
    for _ in range(300):
        loss, m = aime.phase2_step(model, policy, demo.sample(16, 20), keys, args)
        popt.zero_grad(), loss.backward(), popt.step()
        mse.append(float(m["action_mse"]))
    batch = demo.sample(256, 20)
    random_mse = float(
        ((torch.rand_like(batch["pre_action"]) * 2 - 1 - batch["pre_action"]) ** 2).mean()
    )
    final = float(np.mean(mse[-20:]))
    assert final < 0.1 * random_mse, (final, random_mse)
    assert final < 0.3 * np.mean(mse[:10]), "the inferred actions did not improve"


def test_idm_learns_the_actions_on_detached_inputs() -> None:
    """Appendix C: the IDM head learns q(a_t-1 | s_t-1, f(o_t)) in phase 1 without moving the
    world model (its inputs are detached)."""
    rng = np.random.default_rng(0)
    body = ReplayBuffer(seed=0)
    for _ in range(30):
        body.add(point_mass(rng, random_actions))
    torch.manual_seed(0)
    keys = ("position", "velocity")
    args = aime.resolve(aime.Args(env="walker", obs="mdp"))
    model = aime.WorldModel(POINT_MASS, 2, "aime", True, RSSMConfig(deter=32, stoch=8, hidden=32))
    batch = body.sample(8, 10)
    torch.manual_seed(3)
    with_idm, _ = aime.phase1_step(model, batch, keys, args)
    idm, model.idm = model.idm, None
    torch.manual_seed(3)
    without_idm, _ = aime.phase1_step(model, batch, keys, args)
    model.idm = idm
    # The IDM's term moves no parameter of the world model: its inputs are detached.
    others = [p for n, p in model.named_parameters() if not n.startswith("idm.")]
    grads = torch.autograd.grad(with_idm - without_idm, others, allow_unused=True)
    assert all(g is None or float(g.abs().max()) < 1e-6 for g in grads)
    idm_loss = train_phase1(model, lambda: body.sample(16, 10), keys, args, 200, "idm_loss")
    assert np.mean(idm_loss[-20:]) < np.mean(idm_loss[:20]) - 5, (idm_loss[:3], idm_loss[-3:])


def test_phase1_elbo_rises_on_collected_walker_data(data_dir: Path) -> None:
    from common.datasets import TrajectoryDataset

    keys = ("orientations", "height", "velocity")
    body = TrajectoryDataset(
        data_dir / "walker-random", [*keys, "pre_action"], seed=0, progress=False
    )
    torch.manual_seed(0)
    model = aime.WorldModel(WALKER_MDP, 6, "aime", False)  # the paper's sizes
    args = aime.resolve(aime.Args(env="walker", obs="mdp"))
    opt = torch.optim.Adam(model.parameters(), args.lr)
    elbo = []
    for _ in range(200):
        loss, m = aime.phase1_step(model, body.sample(8, 20), keys, args)
        opt.zero_grad(), loss.backward(), opt.step()
        elbo.append(float(m["elbo"]))
    first, last = np.mean(elbo[:20]), np.mean(elbo[-20:])
    assert last > first + 0.5 * abs(first), (first, last)


def test_rec_only_drops_the_action_kl_as_the_authors_code() -> None:
    """With --use-idm, KL(IDM || pi) is scaled by the KL scale, so --rec-only drops it."""
    torch.manual_seed(0)
    model = aime.WorldModel(POINT_MASS, 2, "aime", True, RSSMConfig(deter=16, stoch=4, hidden=16))
    model.requires_grad_(False)
    policy = aime.Policy(model.rssm.feature_dim, 2)
    batch = {"position": torch.randn(8, 3, 2), "velocity": torch.randn(8, 3, 2)}
    keys = ("position", "velocity")
    args = aime.resolve(aime.Args(env="walker", obs="mdp", use_idm=True, rec_only=True))
    loss, m = aime.phase2_step(model, policy, batch, keys, args)
    assert float(m["action_kl"]) > 0
    torch.testing.assert_close(loss.detach(), m["rec_loss"])
    args = aime.resolve(aime.Args(env="walker", obs="mdp", use_idm=True))
    torch.manual_seed(1)
    loss, m = aime.phase2_step(model, policy, batch, keys, args)
    torch.testing.assert_close(loss.detach(), m["rec_loss"] + m["kl_loss"] + m["action_kl"])


def test_demonstration_actions_never_reach_training() -> None:
    torch.manual_seed(0)
    model = aime.WorldModel(POINT_MASS, 2, "aime", True, RSSMConfig(deter=16, stoch=4, hidden=16))
    model.requires_grad_(False)
    policy = aime.Policy(model.rssm.feature_dim, 2)
    args = aime.resolve(aime.Args(env="walker", obs="mdp"))
    batch = {"position": torch.randn(8, 3, 2), "velocity": torch.randn(8, 3, 2)}
    grads = []
    variants: list[dict[str, Any]] = [{}, {"use_idm": True}, {"kl_only": True}, {"rec_only": True}]
    for actions in (torch.zeros(8, 3, 2), torch.ones(8, 3, 2), None):
        b = batch if actions is None else {**batch, "pre_action": actions}
        torch.manual_seed(1)
        for flags in variants:
            loss, _ = aime.phase2_step(
                model, policy, b, ("position", "velocity"), replace(args, **flags)
            )
            grads.append(torch.autograd.grad(loss, list(policy.parameters())))
    for other in (grads[4:8], grads[8:12]):
        for g, h in zip(grads[0:4], other, strict=True):
            for x, y in zip(g, h, strict=True):
                torch.testing.assert_close(x, y)


# ---------------------------------------------------------------------------------------------
# The command as users run it
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("obs", ["mdp", "visual"])
def test_user_command_runs_both_phases_and_writes_results(
    data_dir: Path, tmp_path: Path, obs: str
) -> None:
    data = data_dir / "visual" if obs == "visual" else data_dir
    demo = str(data / "walker-random")
    # Visual evaluation renders every step (about 14 s an episode on 2 cores): one episode.
    evals = ["--eval-episodes", "1", "--eval-every", "0"] if obs == "visual" else []
    flags = [*TINY, "--num-demos", "1", *evals] if obs == "visual" else TINY
    common = ["--env", "walker", "--task", "walk", "--body-data", "random", "--demo", demo,
              "--obs", obs, "--data-dir", str(data), "--runs-dir", str(tmp_path),
              *flags]  # fmt: skip
    r = run(*common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].startswith("normalised score: ")
    (run_dir,) = tmp_path.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["algorithm"] == "aime" and results["obs"] == obs
    assert len(results["returns"]) == (1 if obs == "visual" else 2)
    # normalised by the demonstrations' mean return, the published expert's recorded beside it
    demo_files = trajectory_files(data / "walker-random")[: 1 if obs == "visual" else 2]
    demo_mean = np.mean([load_trajectory(f, ["reward"])["reward"].sum() for f in demo_files])
    assert results["expert_return"] == pytest.approx(demo_mean)
    assert results["published_expert_return"] == 943.79
    assert "not the paper's expert" in r.stdout  # random demonstrations, far from 943.79
    assert results["normalised_score"] == pytest.approx(100 * results["mean_return"] / demo_mean)
    assert set(results["wall_time_s"]) == {"phase1", "phase2", "evaluation"}
    assert (run_dir / "world_model.pt").exists() and (run_dir / "checkpoint.pt").exists()
    assert list(run_dir.glob("events.out.tfevents.*"))
    # The model is reused for another demonstration task without running phase 1 again.
    r = run(*common, "--world-model", str(run_dir / "world_model.pt"), "--exp-name", "reuse")
    assert r.returncode == 0, r.stderr[-3000:]
    reuse = json.loads(next(tmp_path.glob("*reuse*/results.json")).read_text())
    assert reuse["wall_time_s"]["phase1"] == 0


@pytest.mark.slow
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(
    data_dir: Path, tmp_path: Path
) -> None:
    flags = ["--env", "walker", "--task", "walk", "--body-data", "random", "--demo",
             str(data_dir / "walker-random"), "--obs", "mdp", "--data-dir", str(data_dir),
             "--phase1-epochs", "4", "--phase2-epochs", "4", "--steps-per-epoch", "4",
             "--batch-size", "4", "--horizon", "10", "--eval-episodes", "2", "--eval-every", "2",
             "--eval-episodes-during", "1", "--num-demos", "2"]  # fmt: skip
    assert run(*flags, "--runs-dir", str(tmp_path / "a")).returncode == 0

    cmd = [sys.executable, str(ROOT / "aime.py"), *flags, "--runs-dir", str(tmp_path / "b")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "b" / "walker-walk__mdp__random__walker-random__aime__1" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=False)["state"]
    assert (state["stages"], state["epoch"]) != (["phase1", "phase2"], 4), "the run ended first"
    assert not (ckpt.parent / "results.json").exists()

    r = run(*flags, "--runs-dir", str(tmp_path / "b"), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout
    a, b = (json.loads(next((tmp_path / x).glob("*/results.json")).read_text()) for x in "ab")
    assert a["returns"] == b["returns"]
    pa, pb = (
        torch.load(next((tmp_path / x).glob("*/checkpoint.pt")), weights_only=False) for x in "ab"
    )
    for k, v in pa["policy"].items():
        torch.testing.assert_close(pb["policy"][k], v, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def base(data_dir: Path, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        env="walker", task="walk", body_data="random", demo=str(data_dir / "walker-random"),
        obs="mdp", data_dir=str(data_dir), runs_dir=str(tmp_path), phase1_epochs=1,
        phase2_epochs=1, steps_per_epoch=2, batch_size=2, horizon=5, eval_episodes=1,
        eval_every=0, num_demos=2,
    )  # fmt: skip
    return {**args, **kw}


def test_missing_dataset_names_the_command_that_makes_it(data_dir: Path, tmp_path: Path) -> None:
    r = run("--env", "walker", "--body-data", "mix", "--demo", "run", "--obs", "mdp",
            "--data-dir", str(tmp_path / "none"), "--runs-dir", str(tmp_path))  # fmt: skip
    assert r.returncode != 0
    assert "make it with: python dreamer_collect.py --agent random --env walker" in r.stderr
    assert "python download.py walker-random walker-plan2explore-buffer" in r.stderr
    assert "Traceback" not in r.stderr


def test_dataset_of_another_embodiment_fails_clearly(data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "cheetah-like"
    other.mkdir()
    traj = load_trajectory(data_dir / "walker-random" / "0.npz")
    traj["pre_action"] = traj["pre_action"][:, :4]
    save_trajectory(other / "0.npz", traj)
    with pytest.raises(Exception, match=r"another embodiment|but the environment has"):
        call_main(**base(data_dir, tmp_path, body_data=str(other)))


def test_too_few_demonstrations_fail_before_training(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"--num-demos 50, but .* holds 4"):
        call_main(**base(data_dir, tmp_path, num_demos=50))
    assert not list(tmp_path.glob("*/checkpoint.pt"))


def test_world_model_of_another_setting_is_refused(data_dir: Path, tmp_path: Path) -> None:
    call_main(**base(data_dir, tmp_path / "a"))
    model = next((tmp_path / "a").glob("*/world_model.pt"))
    with pytest.raises(SystemExit, match=r"other settings .*'obs': \('mdp', 'lpomdp'\)"):
        call_main(**base(data_dir, tmp_path / "b", obs="lpomdp", world_model=str(model)))
    with pytest.raises(SystemExit, match="does not exist"):
        call_main(**base(data_dir, tmp_path / "c", world_model=str(tmp_path / "nope.pt")))


def test_existing_run_is_not_overwritten_without_resume(data_dir: Path, tmp_path: Path) -> None:
    # --resume of a run that does not exist (a mistyped flag names another run) starts nothing.
    with pytest.raises(SystemExit, match=r"--resume: .* does not exist; check the flags"):
        call_main(**base(data_dir, tmp_path, resume=True))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    first = call_main(**base(data_dir, tmp_path, resume_or_start=True))  # starts it
    with pytest.raises(SystemExit, match="pass --resume"):
        call_main(**base(data_dir, tmp_path))
    again = call_main(**base(data_dir, tmp_path, resume_or_start=True))  # continues: ends as is
    assert again["returns"] == first["returns"]


def test_non_finite_data_are_named_by_file_key_and_record(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "walker-nan"
    bad.mkdir()
    for i in range(2):
        traj = load_trajectory(data_dir / "walker-random" / f"{i}.npz")
        traj["velocity"][7:, 3] = np.inf if i else np.nan
        save_trajectory(bad / f"{i}.npz", traj)
    with pytest.raises(DatasetError, match=r"0\.npz: 'velocity' holds NaN or inf at record 7"):
        call_main(**base(data_dir, tmp_path / "runs", body_data=str(bad)))
    assert not (tmp_path / "runs").exists()  # before the run's folder is made


def test_non_finite_loss_stops_naming_the_step(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = aime.elbo_loss

    def diverged(*a: Any, **k: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = real(*a, **k)
        return loss * torch.tensor(float("nan")), metrics

    monkeypatch.setattr(aime, "elbo_loss", diverged)
    with pytest.raises(
        SystemExit, match=r"non-finite loss at phase-1 gradient step 0; no checkpoint"
    ):
        call_main(**base(data_dir, tmp_path))


def test_phase1_only_needs_no_demonstrations_and_serves_later_runs(
    data_dir: Path, tmp_path: Path
) -> None:
    out = call_main(**base(data_dir, tmp_path, demo=str(tmp_path / "none"), phase1_only=True))
    model = Path(out["world_model"])
    assert model.name == "world_model.pt" and model.is_file()
    assert model.parent.name == "walker__mdp__random__phase1__aime__1"
    assert not (model.parent / "results.json").exists()
    # Resuming a finished phase-1 run trains nothing more and leaves the model as it is.
    before = model.stat().st_mtime_ns
    call_main(
        **base(data_dir, tmp_path, demo=str(tmp_path / "none"), phase1_only=True, resume=True)
    )
    assert model.stat().st_mtime_ns == before
    results = call_main(**base(data_dir, tmp_path, world_model=str(model)))
    assert results["wall_time_s"]["phase1"] == 0 and len(results["returns"]) == 1
    # Without --body-data the run is named and scored by the data the model was trained on.
    again = call_main(
        **{**base(data_dir, tmp_path / "b", world_model=str(model)), "body_data": None}
    )
    assert again["body_data"] == "random"
    assert (tmp_path / "b" / "walker-walk__mdp__random__walker-random__aime__1").is_dir()
    with pytest.raises(
        SystemExit, match="--body-data mix, but --world-model was trained on random"
    ):
        call_main(**base(data_dir, tmp_path / "c", world_model=str(model), body_data="mix"))


def test_a_world_model_file_is_read_once_per_run(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`resolve` (the data it was trained on) and `main` (the weights) share one read."""
    out = call_main(**base(data_dir, tmp_path, demo=str(tmp_path / "none"), phase1_only=True))
    reads: list[Path] = []
    read = model_files.read_checkpoint

    def counted(path: Path, *args: Any) -> dict[str, Any]:
        reads.append(path)
        return read(path, *args)

    monkeypatch.setattr(model_files, "read_checkpoint", counted)
    call_main(**{**base(data_dir, tmp_path, world_model=out["world_model"]), "body_data": None})
    assert reads == [Path(out["world_model"]).resolve()]


def test_a_published_world_model_names_its_embodiment_dataset() -> None:
    folder = ROOT / "tests" / "fixtures" / "authors-aime" / "walker-mdp-small"
    assert model_files.trained_on(folder, "walker") == "mix"  # config.yaml: walker-mix


def test_track_mirrors_the_run_to_weights_and_biases_offline(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--track (CleanRL's): the run's flags and TensorBoard scalars go to a W&B run, here in
    offline mode (no account, no network), in the run's folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = call_main(**base(data_dir, tmp_path, track=True, wandb_project="test"))
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # as the process's exit does: wandb-core writes out and closes the run's log
    run_dir = next(tmp_path.glob("*/results.json")).parent
    (log,) = (run_dir / "wandb").glob("offline-run-*/*.wandb")  # what `wandb sync` uploads
    data = log.read_bytes()
    for logged in (b"phase1_epochs", b"world_model/elbo", b"policy/elbo", b"final_normalised"):
        assert logged in data, logged  # the flags, each phase's scalars, the final score
    assert out["normalised_score"] is not None


def test_a_world_model_flag_naming_a_run_checkpoint_says_what_it_is(
    data_dir: Path, tmp_path: Path
) -> None:
    call_main(**base(data_dir, tmp_path / "a"))
    ckpt = next((tmp_path / "a").glob("*/checkpoint.pt"))
    with pytest.raises(SystemExit, match=r"is a run's checkpoint, not a world model"):
        call_main(**base(data_dir, tmp_path / "b", world_model=str(ckpt)))
    torch.save({"settings": {}, "weights": {}}, tmp_path / "other.pt")  # no "model" entry
    with pytest.raises(SystemExit, match=r"other\.pt is something else, not a world model"):
        call_main(**base(data_dir, tmp_path / "d", world_model=str(tmp_path / "other.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="is not a checkpoint torch can read"):
        call_main(**base(data_dir, tmp_path / "c", world_model=str(tmp_path / "junk.pt")))
