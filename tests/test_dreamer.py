"""Dreamer and Plan2Explore in `dreamer_collect.py`: returns, learning, datasets, resume."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import dreamer_collect as dc
from common.datasets import TrajectoryDataset, dataset_folders
from common.envs import make_env
from common.replay import ReplayBuffer, load_trajectory

ROOT = Path(__file__).resolve().parents[1]
# A small Dreamer for CPU tests: the script's code at reduced sizes.
TINY = ["--deter", "32", "--stoch", "8", "--hidden", "32", "--batch-size", "4", "--horizon", "10"]


def run_script(*flags: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "dreamer_collect.py", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )  # fmt: skip


def tiny_args(tmp_path: Path, **kw: object) -> dc.Config:
    args = dc.Args(
        agent="dreamer", env="cartpole", task="balance", obs="mdp", render=False,
        deter=32, stoch=8, hidden=32, batch_size=4, horizon=10, prefill_episodes=1,
        train_steps_per_episode=2, eval_every=0, num_demos=0, device="cpu",
        data_dir=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"),
    )  # fmt: skip
    return dc.resolve(replace(args, **kw))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# lambda-returns
# ---------------------------------------------------------------------------------------------
def textbook_lambda_return(
    reward: np.ndarray, value: np.ndarray, gamma: float, lam: float
) -> np.ndarray:
    """Sutton & Barto's truncated lambda-return: a (1 - lambda) lambda^(n-1) weighted sum of the
    n-step returns G_t^(n) = sum_k<n gamma^k r_t+k+1 + gamma^n v(s_t+n), the last one (which
    bootstraps from v(s_H)) taking the remaining weight lambda^(H-t-1)."""
    H = len(reward)
    out = np.zeros_like(reward)
    for t in range(H):
        n_step = []
        for n in range(1, H - t + 1):
            g = sum(gamma**k * reward[t + k] for k in range(n)) + gamma**n * value[t + n]
            n_step.append(g)
        weights = [(1 - lam) * lam ** (n - 1) for n in range(1, H - t)] + [lam ** (H - t - 1)]
        out[t] = sum(w * g for w, g in zip(weights, n_step, strict=True))
    return out


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_lambda_return_matches_the_textbook_definition(lam: float) -> None:
    rng = np.random.default_rng(0)
    reward, value = rng.normal(size=(7, 3)), rng.normal(size=(8, 3))
    ours = dc.lambda_return(torch.tensor(reward), torch.tensor(value), 0.9, lam).numpy()
    np.testing.assert_allclose(ours, textbook_lambda_return(reward, value, 0.9, lam), rtol=1e-10)
    if lam == 0.0:  # one-step TD targets
        np.testing.assert_allclose(ours, reward + 0.9 * value[1:], rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Learning, piece by piece
# ---------------------------------------------------------------------------------------------
def collected_buffer(args: dc.Config, episodes: int) -> ReplayBuffer:
    env = make_env("cartpole-balance", "mdp", render=False)
    buffer = ReplayBuffer(seed=0)
    for i in range(episodes):
        (episode,) = dc.run_episodes([env], [i], None, "random", args, torch.device("cpu"))
        buffer.add(episode)
    return buffer


def test_train_step_learns_the_model_and_updates_each_network_from_its_own_loss(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    args = tiny_args(tmp_path, batch_size=8, horizon=16, model_lr=1e-3)
    env = make_env("cartpole-balance", "mdp", render=False)
    agent = dc.make_agent(env, args, torch.device("cpu"))
    buffer = collected_buffer(args, 2)
    keys = env.obs_keys
    batch = buffer.sample(8, 16, "cpu", [*keys, "pre_action", "reward"])
    before = {
        name: [p.detach().clone() for p in getattr(agent, name).parameters()]
        for name in ("model", "actor", "value")
    }
    first = dc.train_step(agent, batch, keys, args)
    for name, params in before.items():
        moved = any(
            not torch.equal(p, q)
            for p, q in zip(params, getattr(agent, name).parameters(), strict=True)
        )
        assert moved, f"{name} took no update"
    for _ in range(100):
        last = dc.train_step(agent, batch, keys, args)
    assert float(last["rec_loss"]) < 0.5 * float(first["rec_loss"])
    assert float(last["reward_loss"]) < 0.3 * float(first["reward_loss"])

    # The actor's loss gives the model no gradient (only the actor's parameters take it).
    _, start, _ = dc.world_model_loss(agent.model, batch, keys, args)
    actor_loss, _, _ = dc.actor_critic_loss(agent.model, agent.actor, agent.value, start, args)
    agent.model.zero_grad(set_to_none=True)
    actor_loss.backward(inputs=list(agent.actor.parameters()))
    assert all(p.grad is None for p in agent.model.parameters())
    assert all(p.grad is not None for p in agent.actor.parameters())


def test_imagined_returns_improve_the_actor_on_a_known_reward(tmp_path: Path) -> None:
    """With the world model frozen, behaviour learning alone raises the imagined return."""
    torch.manual_seed(0)
    args = tiny_args(tmp_path, actor_lr=3e-3, value_lr=1e-3)
    env = make_env("cartpole-balance", "mdp", render=False)
    agent = dc.make_agent(env, args, torch.device("cpu"))
    # A known reward head: the first stochastic dimension of the state reached.
    head = torch.nn.Linear(agent.model.rssm.feature_dim, 1, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, args.deter] = 1.0
    agent.model.reward = torch.nn.Sequential(head)
    agent.model.requires_grad_(False)
    h, s = agent.model.rssm.initial(256, torch.device("cpu"))
    start = (h[None], torch.randn_like(s)[None])

    def imagined_return() -> float:
        torch.manual_seed(1)  # the same imagination noise before and after
        with torch.no_grad():
            imag = dc.imagine(agent.model, agent.actor, h, start[1][0], args.imag_horizon)
            return float(agent.model.reward(imag.features[1:]).mean())

    before = imagined_return()
    for _ in range(200):
        actor_loss, value_loss, _ = dc.actor_critic_loss(
            agent.model, agent.actor, agent.value, start, args
        )
        agent.actor_opt.zero_grad()
        actor_loss.backward(inputs=list(agent.actor.parameters()))
        agent.actor_opt.step()
        agent.value_opt.zero_grad()
        value_loss.backward()
        agent.value_opt.step()
    after = imagined_return()
    assert after > before + 0.05, (before, after)


def test_ensemble_disagreement_is_lower_where_it_was_trained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    args = tiny_args(tmp_path, agent="p2e", ensemble=5, ensemble_hidden=64)
    env = make_env("cartpole-balance", "mdp", render=False)
    model = dc.make_agent(env, args, torch.device("cpu")).model
    feat_dim, embed_dim = model.rssm.feature_dim, args.hidden
    seen = torch.randn(256, feat_dim)
    actions = torch.rand(256, 1) * 2 - 1
    target = torch.sin(seen[:, :embed_dim]) + actions
    opt = torch.optim.Adam(model.ensemble.parameters(), lr=1e-3)
    inputs = torch.cat([seen, actions], -1)
    for _ in range(300):
        loss = torch.stack([(head(inputs) - target).square().mean() for head in model.ensemble])
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        on_data = dc.intrinsic_reward(model, seen, actions).mean()
        off_data = dc.intrinsic_reward(model, 4 * torch.randn(256, feat_dim), actions).mean()
    assert float(off_data) > float(on_data) + 1.0


def test_plan2explore_states_never_learn_from_the_task_reward(tmp_path: Path) -> None:
    """Only Dreamer's representation is shaped by the reward; Plan2Explore's reward head is a
    probe on detached states."""
    torch.manual_seed(0)
    env = make_env("cartpole-balance", "mdp", render=False)
    keys = env.obs_keys
    for agent_kind, reaches in (("p2e", False), ("dreamer", True)):
        args = tiny_args(tmp_path, agent=agent_kind, ensemble_hidden=32)
        model = dc.make_agent(env, args, torch.device("cpu")).model
        batch = collected_buffer(args, 1).sample(4, 8, "cpu", [*keys, "pre_action", "reward"])
        _, _, metrics = dc.world_model_loss(model, batch, keys, args)
        representation = [*model.encoder.parameters(), *model.rssm.parameters()]
        grads = torch.autograd.grad(
            metrics["reward_loss"], representation, allow_unused=True, retain_graph=True
        )
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == reaches, agent_kind
        head = torch.autograd.grad(metrics["reward_loss"], list(model.reward.parameters()))
        assert all(g.abs().sum() > 0 for g in head)


# ---------------------------------------------------------------------------------------------
# The script as a user runs it
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dreamer_writes_its_buffer_and_expert_demonstrations_with_every_modality(
    tmp_path: Path,
) -> None:
    run = run_script(
        "--agent", "dreamer", "--env", "walker", "--task", "walk", "--obs", "visual", *TINY,
        "--total-steps", "2000", "--prefill-episodes", "1", "--train-steps-per-episode", "3",
        "--num-demos", "1", "--eval-every", "0", "--device", "cpu",
        "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    env = make_env("walker-walk", "visual", render=True)
    for name, count in (("walker-walk-buffer", 2), ("walker-walk-expert", 1)):
        folder = tmp_path / "data" / name
        data = TrajectoryDataset(
            folder, list(env.record_shapes), expected_shapes=env.record_shapes, progress=False
        )
        assert len(data) == count
        for traj in data.trajectories:
            assert all(len(v) == 501 for v in traj.values()), name
            assert traj["image"].std() > 0 and traj["pre_action"][1:].std() > 0
        info = json.loads((folder / "info.json").read_text())
        returns = [float(t["reward"].sum()) for t in data.trajectories]
        assert info["num_trajectories"] == count
        assert info["mean_return"] == pytest.approx(np.mean(returns), rel=1e-5)
    assert "expert trajectories, return" in run.stdout
    ckpt = torch.load(
        tmp_path / "runs" / "walker-walk__dreamer__visual__0" / "agent.pt", weights_only=False
    )
    assert ckpt["state"]["counters"]["updates"] == 2 * 3  # after the prefill episode and episode 1

    # Expert-only mode: more demonstrations from the saved agent, the first one kept as it was.
    first = load_trajectory(tmp_path / "data" / "walker-walk-expert" / "0.npz")
    agent = str(tmp_path / "runs" / "walker-walk__dreamer__visual__0" / "agent.pt")
    flags = ["--env", "walker", "--task", "walk", "--num-demos", "2", "--device", "cpu"]
    flags += ["--data-dir", str(tmp_path / "data")]
    mixed = run_script("--load-agent", agent, *flags, "--no-render")  # files without images
    assert mixed.returncode != 0 and "other settings" in mixed.stderr
    again = run_script("--load-agent", agent, *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 demonstrations present, collecting 1" in again.stdout
    assert len(list((tmp_path / "data" / "walker-walk-expert").glob("*.npz"))) == 2
    np.testing.assert_array_equal(
        load_trajectory(tmp_path / "data" / "walker-walk-expert" / "0.npz")["image"], first["image"]
    )
    wrong = run_script(
        "--load-agent", str(tmp_path / "runs" / "walker-walk__dreamer__visual__0" / "agent.pt"),
        "--env", "cheetah", "--data-dir", str(tmp_path / "data"), "--device", "cpu",
    )  # fmt: skip
    assert wrong.returncode != 0 and "was trained on walker-walk" in wrong.stderr


def random_from_expert_starts(
    task: str, n: int, env: str = "cartpole", repeat: int = 8
) -> list[dict[str, np.ndarray]]:
    """Episodes of uniform random actions on `env`-`task` from the initial states of
    demonstrations 0..n-1 of seed 0."""
    envs = [make_env(f"{env}-{task}", "mdp", render=False, action_repeat=repeat) for _ in range(n)]
    seeds = [dc.episode_seed(0, dc.EXPERT, i) for i in range(n)]
    args = dc.Args(env=env, task=task, action_repeat=repeat)
    return dc.run_episodes(envs, seeds, None, "random", args, torch.device("cpu"))


def test_the_scripted_expert_swings_the_pole_up_and_writes_every_modality(tmp_path: Path) -> None:
    """`--agent scripted` on cartpole-swingup: 3 demonstrations, each returning more than 150
    above uniform random actions from the same initial state (random actions return about 130
    of 1000, the controller about 520), recorded as the scripted expert's, with images; a second
    call adds nothing; any other task is refused in one line."""
    flags = ["--agent", "scripted", "--env", "cartpole", "--task", "swingup",
             "--action-repeat", "8", "--num-demos", "3", "--data-dir", str(tmp_path)]  # fmt: skip
    run = run_script(*flags)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "cartpole-swingup-expert"
    info = json.loads((folder / "info.json").read_text())
    assert info["agent"] == "scripted-expert" and info["obs"] == "mdp" and info["render"]
    for i, episode in enumerate(random_from_expert_starts("swingup", 3)):
        demo = load_trajectory(folder / f"{i}.npz")
        assert demo["image"].shape == (126, 64, 64, 3) and demo["image"].std() > 0
        np.testing.assert_array_equal(demo["position"][0], episode["position"][0])  # same start
        assert demo["reward"].sum() > episode["reward"].sum() + 150
    assert "3 demonstrations present" in run_script(*flags).stdout
    wrong = run_script("--agent", "scripted", "--env", "walker", "--data-dir", str(tmp_path))
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines()[-1] == (
        "error: --agent scripted: no scripted expert for walker-walk; scripted experts: "
        "cartpole-swingup, reacher-easy, reacher-hard"
    )


@pytest.mark.parametrize("task", ["easy", "hard"])
def test_the_scripted_reacher_expert_reaches_the_target(tmp_path: Path, task: str) -> None:
    """`--agent scripted` on reacher-easy and -hard (action repeat 4, the AIME authors'): 3
    demonstrations, each returning more than 300 of 1000 above uniform random actions from the
    same initial state (random actions return about 60 on easy and 7 on hard, the controller
    about 900 and 850 over 20 episodes)."""
    flags = ["--agent", "scripted", "--env", "reacher", "--task", task, "--action-repeat", "4",
             "--num-demos", "3", "--no-render", "--data-dir", str(tmp_path)]  # fmt: skip
    run = run_script(*flags)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / f"reacher-{task}-expert"
    for i, episode in enumerate(random_from_expert_starts(task, 3, "reacher", 4)):
        demo = load_trajectory(folder / f"{i}.npz")
        np.testing.assert_array_equal(demo["to_target"][0], episode["to_target"][0])  # same start
        assert demo["reward"].sum() > episode["reward"].sum() + 300, (i, demo["reward"].sum())


def test_the_scripted_buffer_is_more_expert_episodes_from_other_starts(tmp_path: Path) -> None:
    """`--buffer-episodes 2` writes reacher-easy-buffer/: 2 more episodes of the expert, as good
    as its demonstrations but from initial states none of them start from (an embodiment dataset
    that covers the task, readable as `--body-data random+easy`); the demonstrations are the
    same with or without it."""
    flags = ["--agent", "scripted", "--env", "reacher", "--task", "easy", "--action-repeat", "4",
             "--num-demos", "3", "--no-render"]  # fmt: skip
    alone = run_script(*flags, "--data-dir", str(tmp_path / "alone"))
    both = run_script(*flags, "--buffer-episodes", "2", "--data-dir", str(tmp_path / "both"))
    assert alone.returncode == 0 and both.returncode == 0, both.stderr[-3000:]
    demos = [
        load_trajectory(tmp_path / "both" / "reacher-easy-expert" / f"{i}.npz") for i in range(3)
    ]
    for i, demo in enumerate(demos):
        same = load_trajectory(tmp_path / "alone" / "reacher-easy-expert" / f"{i}.npz")
        np.testing.assert_array_equal(demo["pre_action"], same["pre_action"])
    buffer = tmp_path / "both" / "reacher-easy-buffer"
    info = json.loads((buffer / "info.json").read_text())
    assert info["agent"] == "scripted-expert" and info["num_trajectories"] == 2
    starts = {tuple(d["to_target"][0]) for d in demos}
    for i in range(2):
        episode = load_trajectory(buffer / f"{i}.npz")
        assert tuple(episode["to_target"][0]) not in starts
        assert episode["reward"].sum() > 500, (i, episode["reward"].sum())
    assert not (tmp_path / "alone" / "reacher-easy-buffer").exists()
    folders = dataset_folders(tmp_path / "both", "reacher", "random+easy", "body")
    assert folders[1] == buffer


def test_collecting_again_from_the_saved_agent_writes_the_runs_demonstrations(
    tmp_path: Path,
) -> None:
    """`--load-agent` into a new folder gives the demonstrations the training run wrote, bit for
    bit: the filtered posterior's noise starts from the random stream saved in agent.pt."""
    args = tiny_args(tmp_path, total_steps=2000, num_demos=3)
    dc.main(args)
    agent = tmp_path / "runs" / "cartpole-balance__dreamer__mdp__0" / "agent.pt"
    torch.manual_seed(123)  # whatever the process drew before must not matter
    dc.main(replace(args, load_agent=str(agent), data_dir=str(tmp_path / "again")))
    first = episode_files(tmp_path / "data" / "cartpole-balance-expert")
    again = episode_files(tmp_path / "again" / "cartpole-balance-expert")
    assert list(first) == list(again) == ["0.npz", "1.npz", "2.npz"]
    for name in first:
        assert_same_episode(first[name], again[name], name)


def test_plan2explore_writes_its_buffer_and_trains_its_ensemble(tmp_path: Path) -> None:
    args = tiny_args(tmp_path, agent="p2e", env="walker", task=None, ensemble=3, ensemble_hidden=32,
                     total_steps=3000, train_steps_per_episode=20)  # fmt: skip
    dc.main(args)
    folder = tmp_path / "data" / "walker-p2e"
    files = sorted(p.name for p in folder.glob("*.npz"))
    assert files == ["0.npz", "1.npz", "2.npz"]
    assert not (tmp_path / "data" / "walker-walk-expert").exists()
    assert json.loads((folder / "info.json").read_text())["agent"] == "p2e"
    ckpt = torch.load(tmp_path / "runs" / "walker__p2e__mdp__0" / "agent.pt", weights_only=False)
    assert ckpt["state"]["counters"]["updates"] == 3 * 20
    assert any(k.startswith("ensemble.2.") for k in ckpt["model"])


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------
def episode_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npz"))}


def assert_same_episode(file: bytes, other: bytes, name: str) -> None:
    """Two trajectory files hold the same arrays (their zip headers' times may differ)."""
    with np.load(io.BytesIO(file)) as a, np.load(io.BytesIO(other)) as b:
        assert a.files == b.files, name
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")


def test_resume_collects_again_the_episodes_saved_after_the_last_checkpoint(tmp_path: Path) -> None:
    args = tiny_args(tmp_path, total_steps=3000)
    dc.main(args)
    folder = tmp_path / "data" / "cartpole-balance-buffer"
    ckpt_path = tmp_path / "runs" / "cartpole-balance__dreamer__mdp__0" / "agent.pt"
    old_ckpt = ckpt_path.read_bytes()
    dc.main(replace(args, total_steps=5000, resume=True))
    kept = episode_files(folder)
    assert list(kept) == [f"{i}.npz" for i in range(5)]
    # A kill after saving episodes 3 and 4 but before their checkpoints: the old one is back.
    # They are collected again from the checkpoint's streams: the same episodes.
    ckpt_path.write_bytes(old_ckpt)
    dc.main(replace(args, total_steps=6000, resume=True))
    now = episode_files(folder)
    assert list(now) == [f"{i}.npz" for i in range(6)], "an episode was lost or duplicated"
    for name, first in kept.items():
        assert_same_episode(now[name], first, name)
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["state"]["epoch"] == 6
    assert ckpt["state"]["counters"]["updates"] == 6 * args.train_steps_per_episode

    with pytest.raises(SystemExit, match="pass --resume"):
        dc.main(replace(args, total_steps=7000))
    with pytest.raises(SystemExit, match="other settings"):
        dc.main(replace(args, total_steps=7000, resume=True, obs="lpomdp"))
    with pytest.raises(SystemExit, match=r"other flags: --batch-size 4 \(now 8\)"):
        dc.main(replace(args, total_steps=7000, resume=True, batch_size=8))  # a budget may change
    assert episode_files(folder) == now


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = tiny_args(tmp_path, total_steps=2000)
    dc.main(args)
    ckpt_path = tmp_path / "runs" / "cartpole-balance__dreamer__mdp__0" / "agent.pt"
    good = ckpt_path.read_bytes()
    monkeypatch.setattr(dc, "train_step", lambda *a: {"loss": torch.tensor(float("nan"))})
    with pytest.raises(SystemExit, match="non-finite loss after episode 2; the last good"):
        dc.main(replace(args, total_steps=3000, resume=True))
    assert ckpt_path.read_bytes() == good
    assert len(list((tmp_path / "data" / "cartpole-balance-buffer").glob("*.npz"))) == 3


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_duplicating_episodes(tmp_path: Path) -> None:
    flags = [
        "--agent", "dreamer", "--env", "cartpole", "--task", "balance", "--obs", "mdp",
        "--no-render", *TINY, "--prefill-episodes", "1", "--train-steps-per-episode", "20",
        "--num-demos", "0", "--eval-every", "0", "--device", "cpu", "--total-steps", "8000",
        "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    folder = tmp_path / "data" / "cartpole-balance-buffer"
    proc = subprocess.Popen(
        [sys.executable, "dreamer_collect.py", *flags], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while len(list(folder.glob("*.npz"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = episode_files(folder)
    assert 3 <= len(before) < 8, "the run was not killed mid-way"

    run = run_script(*flags, "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    after = episode_files(folder)
    assert list(after) == [f"{i}.npz" for i in range(8)]
    for name, first in before.items():  # one saved after the last checkpoint: again, the same
        assert_same_episode(after[name], first, name)
    contents = [load_trajectory(folder / name)["pre_action"].tobytes() for name in after]
    assert len(set(contents)) == 8, "two episodes are the same"
    ckpt = torch.load(
        tmp_path / "runs" / "cartpole-balance__dreamer__mdp__0" / "agent.pt", weights_only=False
    )
    assert ckpt["state"]["epoch"] == 8 and ckpt["state"]["counters"]["updates"] == 8 * 20
    assert not list(folder.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# Learning check
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_short_dreamer_run_beats_the_random_policy(tmp_path: Path) -> None:
    """Dreamer's learning check: 11 episodes of cartpole-balance at action repeat 8 (5 random,
    then 200 updates after each) at small sizes, about 4 minutes on 2 CPU cores; its 20
    demonstrations (the policy's mode) must clearly beat uniform random actions from the same
    initial states."""
    run = run_script(
        "--agent", "dreamer", "--env", "cartpole", "--task", "balance", "--obs", "mdp",
        "--action-repeat", "8", "--total-steps", "11000", "--prefill-episodes", "5",
        "--train-steps-per-episode", "200", "--batch-size", "16", "--horizon", "32",
        "--deter", "64", "--stoch", "16", "--hidden", "64", "--model-lr", "1e-3",
        "--actor-lr", "4e-4", "--value-lr", "4e-4", "--eval-every", "0", "--num-demos", "20",
        "--no-render", "--device", "cpu",
        "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"), timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    expert = json.loads((tmp_path / "data" / "cartpole-balance-expert" / "info.json").read_text())
    baseline = np.array(
        [float(e["reward"].sum()) for e in random_from_expert_starts("balance", 20)]
    )
    print(f"dreamer {expert['mean_return']:.1f} +- {expert['std_return']:.1f}, "
          f"random {baseline.mean():.1f} +- {baseline.std():.1f}")  # fmt: skip
    assert expert["num_trajectories"] == 20 and expert["action_repeat"] == 8
    assert expert["mean_return"] > 1.2 * baseline.mean()
    assert expert["mean_return"] > baseline.mean() + 2 * baseline.std()
