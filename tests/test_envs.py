"""The DMC environments match the AIME benchmark (paper section 4, Appendix D, and the authors'
environment configs): observation sizes, rewards, episode length, rendering."""

from __future__ import annotations

import numpy as np
import pytest
from dm_control import suite

from common.envs import EXPERT_RETURNS, make_env


@pytest.mark.parametrize(
    ("name", "obs", "keys", "dim"),
    [
        ("walker-walk", "mdp", ("orientations", "height", "velocity"), 24),
        ("walker-walk", "lpomdp", ("orientations", "height"), 15),
        ("walker-walk", "visual", ("image",), 0),
        ("cheetah-run", "mdp", ("position", "velocity"), 17),
        ("cheetah-flip", "lpomdp", ("position",), 8),
        ("cheetah-runbackward", "visual", ("image",), 0),
    ],
)
def test_observation_sizes_match_spec(name: str, obs: str, keys: tuple[str, ...], dim: int) -> None:
    env = make_env(name, obs)  # type: ignore[arg-type]
    assert env.obs_keys == keys
    assert env.obs_dim == dim
    assert env.action_dim == 6
    rec = env.reset()
    seen = sum(rec[k].size for k in keys if k != "image")
    assert seen == dim
    if obs == "visual":
        assert rec["image"].shape == (64, 64, 3) and rec["image"].dtype == np.uint8


def test_every_record_holds_every_modality() -> None:
    env = make_env("walker-run", "lpomdp", render=True)
    rec = env.step(np.zeros(6, np.float32))
    assert set(rec) == {
        "orientations", "height", "velocity", "image",
        "reward", "is_first", "is_last", "is_terminal", "pre_action",
    }  # fmt: skip
    assert rec["image"].std() > 0, "the rendered image is blank"
    assert {k: rec[k].shape for k in env.record_shapes} == env.record_shapes


@pytest.mark.parametrize("name", ["walker-stand", "cheetah-flipbackward"])
def test_episode_has_501_records(name: str) -> None:
    env = make_env(name, "mdp")
    records = [env.reset(seed=3)]
    while not records[-1]["is_last"]:
        records.append(env.step(np.ones(6, np.float32)))
    assert len(records) == 501
    assert records[0]["is_first"] and not any(r["is_first"] for r in records[1:])
    assert not any(r["is_terminal"] for r in records)
    assert np.all(records[0]["pre_action"] == 0)
    assert np.all(records[1]["pre_action"] == 1)


def test_walker_reward_sums_the_repeat_of_the_suite_task() -> None:
    ours = make_env("walker-walk", "mdp", seed=5)
    theirs = suite.load("walker", "walk", task_kwargs={"random": 5})
    rec, ts = ours.reset(), theirs.reset()
    np.testing.assert_allclose(rec["orientations"], ts.observation["orientations"], rtol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.uniform(-1, 1, 6).astype(np.float32)
        rec = ours.step(action)
        reward = sum(theirs.step(action).reward for _ in range(2))
        assert rec["reward"] == pytest.approx(reward, rel=1e-5)
        assert rec["reward"] > 0  # walker-walk rewards are never exactly zero here


@pytest.mark.parametrize(
    ("task", "joint", "formula"),
    [
        ("runbackward", "rootx", lambda v: np.clip(-v[0] / 10, 0, 1)),
        ("flip", "rooty", lambda v: np.clip(v[2] / 5, 0, 1)),
        ("flipbackward", "rooty", lambda v: np.clip(-v[2] / 5, 0, 1)),
    ],
)
def test_custom_cheetah_rewards_follow_the_formulas(task: str, joint: str, formula) -> None:  # type: ignore[no-untyped-def]
    env = make_env(f"cheetah-{task}", "mdp", seed=0)
    rewards = []
    for speed in [-30.0, -12.0, -6.0, -2.0, 0.0, 2.0, 6.0, 12.0, 30.0]:
        env.reset()
        env.physics.named.data.qvel[joint] = speed
        rec = env.step(np.zeros(6, np.float32))
        # The reward is computed once from the observation after the repeat.
        assert rec["reward"] == pytest.approx(formula(rec["velocity"]), abs=1e-6)
        rewards.append(float(rec["reward"]))
    assert min(rewards) == 0.0 and max(rewards) == 1.0
    assert any(0.05 < r < 0.95 for r in rewards), "no state tested the unclipped range"


def test_cheetah_run_keeps_the_suite_reward() -> None:
    ours = make_env("cheetah-run", "mdp", seed=2)
    theirs = suite.load("cheetah", "run", task_kwargs={"random": 2})
    ours.reset(), theirs.reset()
    for _ in range(30):
        rec = ours.step(np.ones(6, np.float32))
        reward = sum(theirs.step(np.ones(6)).reward for _ in range(2))
        assert rec["reward"] == pytest.approx(reward, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", ["cartpole-swingup", "point_mass-easy"])
def test_other_suite_tasks_work_in_mdp_and_visual(name: str) -> None:
    mdp = make_env(name, "mdp")
    rec = mdp.step(np.zeros(mdp.action_dim, np.float32))
    assert mdp.obs_dim == sum(rec[k].size for k in mdp.proprio_keys) > 0
    visual = make_env(name, "visual")
    assert visual.step(np.zeros(visual.action_dim, np.float32))["image"].shape == (64, 64, 3)


def test_lpomdp_without_a_known_sensor_split_fails_clearly() -> None:
    with pytest.raises(ValueError, match=r"split of acrobot.s sensors into positions"):
        make_env("acrobot-swingup", "lpomdp")


@pytest.mark.parametrize(
    ("name", "obs", "match"),
    [
        ("walker", "mdp", "domain-task"),
        ("walker-fly", "mdp", "unknown environment"),
        ("walker-walk", "pixels", "observation setting"),
    ],
)
def test_bad_environment_arguments_fail_clearly(name: str, obs: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_env(name, obs)  # type: ignore[arg-type]


def test_bad_actions_fail_clearly() -> None:
    env = make_env("walker-walk", "mdp")
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full(6, np.nan, np.float32))


def test_reset_seed_reproduces_the_initial_state() -> None:
    env = make_env("walker-run", "mdp")
    a, b, c = env.reset(seed=7), env.reset(seed=8), env.reset(seed=7)
    np.testing.assert_array_equal(a["orientations"], c["orientations"])
    assert not np.array_equal(a["orientations"], b["orientations"])


def test_expert_returns_cover_every_benchmark_task() -> None:
    for name in EXPERT_RETURNS:
        make_env(name, "mdp")  # every normalised task exists
    assert EXPERT_RETURNS["walker-run"] == 604.10


def test_the_random_reference_is_paired_with_the_evaluation_and_leaves_training_alone() -> None:
    """`random_scores` acts from the evaluation's initial states with its own random stream: the
    same figures twice, whatever the global generators hold, and it draws nothing from them."""
    from common.evaluation import random_scores

    np.random.seed(0)
    first = random_scores("cartpole-balance", 8, seed=3, episodes=2, expert=200.0)
    after = np.random.random()  # the global stream's next draw, as if nothing had drawn from it
    np.random.seed(0)
    assert after == np.random.random()
    np.random.seed(123)
    again = random_scores("cartpole-balance", 8, seed=3, episodes=2, expert=200.0)
    assert first == again
    assert first["random_normalised_score"] == pytest.approx(100 * first["random_return"] / 200)
    other = random_scores("cartpole-balance", 8, seed=4, episodes=2, expert=200.0)
    assert other != first  # other initial states, other actions


def test_collected_episodes_depend_on_their_seed_alone_and_record_the_actions_taken() -> None:
    """`collect_episodes` (V-MAIL's and Dreamer's collection): a random episode is the same alone
    or in lockstep beside another, each episode's `pre_action` holds the actions that led to its
    records, and an actor's actions are the ones taken."""
    from common.evaluation import collect_episodes

    envs = [make_env("cartpole-balance", "mdp", action_repeat=8) for _ in range(2)]
    (alone,) = collect_episodes(envs[:1], [7])
    beside, other = collect_episodes(envs, [7, 8])
    for key in ("position", "velocity", "pre_action", "reward"):
        np.testing.assert_array_equal(alone[key], beside[key])
    assert not np.array_equal(alone["pre_action"], other["pre_action"])
    assert np.all(np.abs(alone["pre_action"][1:]) <= 1) and np.all(alone["pre_action"][0] == 0)
    steps = []

    def act(records: list[dict[str, np.ndarray]]) -> np.ndarray:
        steps.append(len(records))
        return np.full((len(records), 1), 0.25 * (len(steps) % 4), dtype=np.float32)

    (acted,) = collect_episodes(envs[:1], [7], act)
    assert len(steps) == len(acted["reward"]) - 1  # called on every record but the last
    expected = 0.25 * (np.arange(1, len(steps) + 1) % 4)
    np.testing.assert_allclose(acted["pre_action"][1:, 0], expected)
