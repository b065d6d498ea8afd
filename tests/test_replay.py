"""Trajectory files, datasets and the replay buffer: round trips, windows, bad input."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import pytest
import torch

from common.datasets import TrajectoryDataset, dataset_folders, trajectory_files
from common.replay import (
    DatasetError,
    ReplayBuffer,
    atomic_write,
    load_trajectory,
    save_trajectory,
    to_torch_batch,
)
from common.run import FREE_ON_RESUME, Run, RunArgs

WALKER_SHAPES = {
    "orientations": (14,), "height": (1,), "velocity": (9,), "pre_action": (6,),
    "reward": (), "is_first": (), "is_last": (), "is_terminal": (), "image": (8, 8, 3),
}  # fmt: skip


def fake_trajectory(length: int, tag: int = 0, image: bool = True) -> dict[str, np.ndarray]:
    """A walker-like trajectory whose `velocity[:, 0]` is the trajectory tag and
    `velocity[:, 1]` the time index, so windows can be traced back to their origin."""
    rng = np.random.default_rng(tag)
    t = np.arange(length)
    velocity = rng.normal(size=(length, 9)).astype(np.float32)
    velocity[:, 0], velocity[:, 1] = tag, t
    traj = {
        "orientations": rng.normal(size=(length, 14)).astype(np.float32),
        "height": rng.normal(size=(length, 1)).astype(np.float32),
        "velocity": velocity,
        "reward": rng.uniform(size=length).astype(np.float32),
        "is_first": t == 0,
        "is_last": t == length - 1,
        "is_terminal": np.zeros(length, bool),
        "pre_action": np.where(t[:, None] == 0, 0, rng.uniform(-1, 1, (length, 6))).astype(
            np.float32
        ),
    }
    if image:
        traj["image"] = rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8)
    return traj


def write_folder(
    folder: Path, lengths: list[int], start_tag: int = 0, image: bool = True
) -> list[dict[str, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    trajs = [fake_trajectory(n, start_tag + i, image) for i, n in enumerate(lengths)]
    for i, traj in enumerate(trajs):
        save_trajectory(folder / f"{i}.npz", traj)
    return trajs


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def test_written_trajectory_reads_back_identical(tmp_path: Path) -> None:
    traj = fake_trajectory(501)
    save_trajectory(tmp_path / "0.npz", traj)
    back = load_trajectory(tmp_path / "0.npz")
    assert set(back) == set(traj)
    for k in traj:
        assert back[k].dtype == traj[k].dtype, k
        np.testing.assert_array_equal(back[k], traj[k], err_msg=k)
    # On disk: the authors' layout, every non-image key with a feature axis.
    with np.load(tmp_path / "0.npz") as raw:
        assert raw["reward"].shape == (501, 1) and raw["is_first"].shape == (501, 1)
        assert raw["image"].shape == (501, 8, 8, 3)


def test_authors_file_layout_loads(tmp_path: Path) -> None:
    """Their writer stores python floats as float64 [T, 1] and the reset action as float64 zeros."""
    T = 11
    np.savez_compressed(
        tmp_path / "0.npz",
        reward=np.zeros((T, 1)), is_first=(np.arange(T) == 0)[:, None],
        is_last=(np.arange(T) == T - 1)[:, None], is_terminal=np.zeros((T, 1), bool),
        position=np.ones((T, 8)), velocity=np.ones((T, 9)), pre_action=np.zeros((T, 6)),
        image=np.zeros((T, 64, 64, 3), np.uint8),
    )  # fmt: skip
    traj = load_trajectory(tmp_path / "0.npz", ["position", "reward", "is_first", "pre_action"])
    assert traj["reward"].shape == (T,) and traj["reward"].dtype == np.float32
    assert traj["is_first"].dtype == bool and traj["is_first"][0] and not traj["is_first"][1:].any()
    assert traj["position"].shape == (T, 8) and traj["pre_action"].dtype == np.float32


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "0.npz"
    save_trajectory(path, fake_trajectory(5, tag=1))

    def dies(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies)
    assert load_trajectory(path)["velocity"][0, 0] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.npz"], "a temporary file was left"


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------
def test_windows_cover_every_valid_start_and_never_cross_ends(tmp_path: Path) -> None:
    lengths, H = [7, 3, 10, 4], 4
    write_folder(tmp_path / "d", lengths)
    data = TrajectoryDataset(tmp_path / "d", ["velocity", "is_first"], seed=0, progress=False)
    expected = {(i, j) for i, n in enumerate(lengths) for j in range(n - H + 1)}
    traj, start = data.windows(H)
    assert set(zip(traj.tolist(), start.tolist(), strict=True)) == expected and len(traj) == len(
        expected
    )

    traj, start = data.sample_windows(20_000, H)
    counts: dict[tuple[int, int], int] = {}
    for i, j in zip(traj.tolist(), start.tolist(), strict=True):
        counts[(i, j)] = counts.get((i, j), 0) + 1
    assert set(counts) == expected, "some valid window is never drawn, or an invalid one is"
    share = np.array(list(counts.values())) / 20_000
    assert np.allclose(share, 1 / len(expected), atol=0.01), "windows are not drawn uniformly"

    batch = data.sample(64, H)
    v = batch["velocity"]  # [T, B, 9]
    assert v.shape == (H, 64, 9)
    assert torch.all(v[:, :, 0] == v[:1, :, 0]), "a window mixes two trajectories"
    assert torch.all(v[1:, :, 1] - v[:-1, :, 1] == 1), "a window is not consecutive"
    assert batch["is_first"].dtype == torch.bool
    assert torch.equal(batch["is_first"], v[:, :, 1] == 0)


def test_batches_are_time_major_and_images_are_floats_in_unit_range(tmp_path: Path) -> None:
    trajs = write_folder(tmp_path / "d", [20, 30])
    data = TrajectoryDataset(
        tmp_path / "d", ["image", "velocity", "pre_action"], seed=1, progress=False
    )
    batch = data.sample(5, 6)
    assert batch["image"].shape == (6, 5, 3, 8, 8) and batch["image"].dtype == torch.float32
    assert batch["pre_action"].shape == (6, 5, 6) and batch["velocity"].shape == (6, 5, 9)
    # The same windows, traced back to the files through their (trajectory, start).
    traj, start = data.sample_windows(5, 6)
    image = to_torch_batch(data.gather(traj, start, 6, ["image"]), "cpu")["image"]
    for b, (i, j) in enumerate(zip(traj, start, strict=True)):
        want = torch.from_numpy(trajs[i]["image"][j : j + 6]).permute(0, 3, 1, 2).float() / 255
        torch.testing.assert_close(image[:, b], want)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_only_requested_keys_are_read_and_cached(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", [10, 10])
    data = TrajectoryDataset(tmp_path / "d", ["orientations", "height"], progress=False)
    assert set(data.trajectories[0]) == {"orientations", "height"}
    cached = {p.name for p in (tmp_path / "d" / ".cache").glob("*.bin")}
    assert cached == {"orientations.bin", "height.bin"}
    assert isinstance(data.trajectories[0]["orientations"], np.memmap)


def test_cache_is_built_once_and_rebuilt_when_files_change(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", [10, 12])
    TrajectoryDataset(tmp_path / "d", ["velocity"], progress=False)
    bin_file = tmp_path / "d" / ".cache" / "velocity.bin"
    first = bin_file.stat().st_mtime_ns
    os.utime(bin_file, ns=(first - 10**9, first - 10**9))
    TrajectoryDataset(tmp_path / "d", ["velocity"], progress=False)
    assert bin_file.stat().st_mtime_ns == first - 10**9, "the cache was rebuilt without a change"
    save_trajectory(tmp_path / "d" / "2.npz", fake_trajectory(5, tag=2))
    data = TrajectoryDataset(tmp_path / "d", ["velocity"], progress=False)
    assert len(data) == 3 and data.trajectories[2]["velocity"][0, 0] == 2


def test_mixed_folders_and_trajectory_limit(tmp_path: Path) -> None:
    write_folder(tmp_path / "a", [8, 8, 8], start_tag=0)
    write_folder(tmp_path / "b", [8, 8], start_tag=100)
    mix = TrajectoryDataset([tmp_path / "a", tmp_path / "b"], ["velocity"], seed=0, progress=False)
    assert [int(t["velocity"][0, 0]) for t in mix.trajectories] == [0, 1, 2, 100, 101]
    tags = set(mix.sample(200, 5)["velocity"][0, :, 0].int().tolist())
    assert tags == {0, 1, 2, 100, 101}
    first4 = TrajectoryDataset(
        [tmp_path / "a", tmp_path / "b"], ["velocity"], num_trajectories=4, progress=False
    )
    assert [int(t["velocity"][0, 0]) for t in first4.trajectories] == [0, 1, 2, 100]
    with pytest.raises(DatasetError, match="hold only 5"):
        TrajectoryDataset(
            [tmp_path / "a", tmp_path / "b"], ["velocity"], num_trajectories=6, progress=False
        )


def test_numbered_files_are_ordered_numerically(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    for i in [0, 1, 2, 10, 11]:
        save_trajectory(folder / f"{i}.npz", fake_trajectory(4, tag=i, image=False))
    data = TrajectoryDataset(folder, ["velocity"], num_trajectories=4, progress=False)
    assert [int(t["velocity"][0, 0]) for t in data.trajectories] == [0, 1, 2, 10]


def test_horizon_longer_than_every_trajectory_fails_clearly(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", [5, 6], image=False)
    data = TrajectoryDataset(tmp_path / "d", ["velocity"], progress=False)
    with pytest.raises(DatasetError, match="no trajectory has 50 records"):
        data.sample(4, 50)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_missing_folder_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError,
        match=r"does not exist; create it with: python dreamer_collect.py --agent random "
        r"--env walker",
    ):
        TrajectoryDataset(tmp_path / "walker-random", ["velocity"])
    with pytest.raises(DatasetError, match=r"--agent dreamer --env cheetah --task flip"):
        TrajectoryDataset(tmp_path / "cheetah-flip-expert", ["velocity"])
    with pytest.raises(DatasetError, match=r"--agent p2e --env walker$"):
        TrajectoryDataset(tmp_path / "walker-plan2explore-buffer", ["velocity"])


def test_empty_folder_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError, match=r"contains no \.npz"):
        TrajectoryDataset(tmp_path / "d", ["velocity"])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file_is_named(tmp_path: Path, damage: str) -> None:
    write_folder(tmp_path / "d", [6, 6])
    bad = tmp_path / "d" / "1.npz"
    if damage == "garbage":
        bad.write_bytes(b"not a zip file at all")
    else:
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    # garbage: numpy would suggest pickled data; a half-written file: a broken zip or stream
    said = r"1\.npz: not an \.npz trajectory" if damage == "garbage" else r"1\.npz: damaged"
    with pytest.raises(DatasetError, match=said):
        TrajectoryDataset(tmp_path / "d", ["velocity"], progress=False)


def test_a_damaged_deflate_stream_is_named(tmp_path: Path) -> None:
    """A file whose zip directory is intact but whose compressed bytes are not (zlib.error)."""
    write_folder(tmp_path / "d", [6])
    path = tmp_path / "d" / "0.npz"
    data = bytearray(path.read_bytes())
    start = data.index(b"velocity.npy") + len("velocity.npy")  # the member's compressed bytes
    data[start + 20 : start + 60] = bytes(40)
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"0\.npz: damaged trajectory file"):
        load_trajectory(path, ["velocity"])


def test_only_trajectory_names_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`0 (copy).npz` or `notes.npz` beside the trajectories are ignored, with a notice."""
    write_folder(tmp_path / "d", [6, 6])
    (tmp_path / "d" / "0 (copy).npz").write_bytes((tmp_path / "d" / "0.npz").read_bytes())
    assert [p.name for p in trajectory_files(tmp_path / "d")] == ["0.npz", "1.npz"]
    assert "not trajectory names, ignored: 0 (copy).npz" in capsys.readouterr().out
    trajectory_files(tmp_path / "d")  # a second dataset reading the folder: said once only
    assert "notice" not in capsys.readouterr().out


def test_missing_key_is_named(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", [6], image=False)
    with pytest.raises(DatasetError, match=r"0\.npz: missing key\(s\) \['image'\].*--no-render"):
        TrajectoryDataset(tmp_path / "d", ["image"], progress=False)


def test_inconsistent_lengths_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    traj = fake_trajectory(6)
    traj["pre_action"] = traj["pre_action"][:5]
    np.savez_compressed(folder / "0.npz", **cast(dict[str, Any], traj))
    with pytest.raises(DatasetError, match=r"0\.npz: keys have inconsistent lengths"):
        TrajectoryDataset(folder, ["velocity", "pre_action"], progress=False)


@pytest.mark.parametrize(("key", "shape"), [("pre_action", (3,)), ("velocity", (4,))])
def test_dimension_mismatch_with_the_environment_is_named(
    tmp_path: Path, key: str, shape: tuple[int, ...]
) -> None:
    write_folder(tmp_path / "d", [6, 6], image=False)
    with pytest.raises(
        DatasetError, match=rf"0\.npz: '{key}' has shape .* but the environment has"
    ):
        TrajectoryDataset(tmp_path / "d", [key], expected_shapes={key: shape}, progress=False)
    # A cache built without the check still refuses the mismatch.
    TrajectoryDataset(tmp_path / "d", [key], progress=False)
    with pytest.raises(DatasetError, match="another embodiment"):
        TrajectoryDataset(tmp_path / "d", [key], expected_shapes={key: shape}, progress=False)


def test_files_that_disagree_with_each_other_are_named(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", [6], image=False)
    other = fake_trajectory(6, image=False)
    other["velocity"] = other["velocity"][:, :4]
    save_trajectory(tmp_path / "d" / "1.npz", other)
    with pytest.raises(
        DatasetError, match=r"1\.npz: 'velocity' has shape \(4,\) per record but earlier files"
    ):
        TrajectoryDataset(tmp_path / "d", ["velocity"], progress=False)


# ---------------------------------------------------------------------------------------------
# Replay buffer
# ---------------------------------------------------------------------------------------------
def test_replay_buffer_saves_episodes_and_resumes(tmp_path: Path) -> None:
    buffer = ReplayBuffer(tmp_path / "buffer", seed=0)
    episodes = [fake_trajectory(n, tag=i) for i, n in enumerate([9, 12, 7])]
    for episode in episodes:
        buffer.add(episode)
    assert sorted(p.name for p in (tmp_path / "buffer").iterdir()) == ["0.npz", "1.npz", "2.npz"]
    batch = buffer.sample(16, 5, keys=["velocity", "image"])
    assert batch["velocity"].shape == (5, 16, 9) and batch["image"].shape == (5, 16, 3, 8, 8)
    assert torch.all(batch["velocity"][1:, :, 1] - batch["velocity"][:-1, :, 1] == 1)

    resumed = ReplayBuffer(tmp_path / "buffer")
    assert len(resumed) == 3 and resumed.num_records == 28
    for a, b in zip(resumed.trajectories, episodes, strict=True):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])
    resumed.add(fake_trajectory(5, tag=3))
    assert (tmp_path / "buffer" / "3.npz").exists()
    # The buffer's files form a dataset.
    assert len(TrajectoryDataset(tmp_path / "buffer", ["image"], progress=False)) == 4


def test_replay_buffer_refuses_episodes_with_other_keys() -> None:
    buffer = ReplayBuffer()
    buffer.add(fake_trajectory(5))
    with pytest.raises(DatasetError, match="differ"):
        buffer.add(fake_trajectory(5, image=False))


def test_float_images_are_refused(tmp_path: Path) -> None:
    traj = fake_trajectory(4)
    traj["image"] = traj["image"].astype(np.float32) / 255
    (tmp_path / "d").mkdir()
    save_trajectory(tmp_path / "d" / "0.npz", traj)
    with pytest.raises(DatasetError, match=r"0\.npz: 'image' must be uint8"):
        TrajectoryDataset(tmp_path / "d", ["image"], progress=False)


def test_dataset_names_resolve_to_the_papers_folders(tmp_path: Path) -> None:
    folders = dataset_folders("d", "walker", "mix", "body")
    assert [f.name for f in folders] == [
        "walker-random", "walker-p2e", "walker-stand-buffer", "walker-walk-buffer",
    ]  # fmt: skip
    pair = dataset_folders("d", "cheetah", "run+random", "body")
    assert [f.name for f in pair] == ["cheetah-run-buffer", "cheetah-random"]
    assert dataset_folders("d", "walker", "run", "demo") == [Path("d/walker-run-expert")]
    assert dataset_folders("d", "walker", "some/where", "demo") == [Path("some/where")]
    (tmp_path / "walker-plan2explore-buffer").mkdir()  # the authors' published name
    assert (
        dataset_folders(tmp_path, "walker", "p2e", "body")[0].name == "walker-plan2explore-buffer"
    )
    with pytest.raises(DatasetError, match="walker mix"):
        dataset_folders("d", "cheetah", "mix", "body")


def test_replay_buffer_holds_only_the_keys_asked_for_but_saves_every_key(tmp_path: Path) -> None:
    buffer = ReplayBuffer(tmp_path / "buffer", seed=0, keys=["velocity", "pre_action"])
    episode = fake_trajectory(6)
    buffer.add(episode)
    assert set(buffer.trajectories[0]) == {"velocity", "pre_action"}
    assert set(load_trajectory(tmp_path / "buffer" / "0.npz")) == set(episode)
    with pytest.raises(DatasetError, match="differ"):
        buffer.add(fake_trajectory(6, image=False))
    resumed = ReplayBuffer(tmp_path / "buffer", keys=["velocity", "pre_action"])
    assert set(resumed.trajectories[0]) == {"velocity", "pre_action"}
    with pytest.raises(DatasetError, match="differ"):  # the files' keys are known after a load
        resumed.add(fake_trajectory(6, image=False))


def test_a_dataset_recorded_on_another_embodiment_is_refused(tmp_path: Path) -> None:
    """Cheetah data have walker's action size: the embodiment recorded in info.json tells."""
    from common.datasets import open_dataset

    write_folder(tmp_path / "walker-random", [6, 6])
    (tmp_path / "walker-random" / "info.json").write_text('{"env": "cheetah-run"}')
    with pytest.raises(DatasetError, match="collected on cheetah, not walker"):
        open_dataset(tmp_path, "walker", "random", "body", ["velocity"], WALKER_SHAPES)


def test_written_files_keep_the_umask_and_a_full_disk_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    path = tmp_path / "info.json"
    atomic_write(path, lambda tmp: tmp.write_text("old"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SystemExit, match=r"the disk is full: .*info\.json could not be written"):
        atomic_write(path, full)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "info.json"
    ]  # no temporary file left


def test_temporaries_of_killed_writes_are_removed_at_start_up(tmp_path: Path) -> None:

    (tmp_path / "r").mkdir()
    stale = tmp_path / "r" / ".checkpoint.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    Run(tmp_path, "r", RunArgs()).close()
    assert not stale.exists()


def test_the_cache_follows_content_not_times_and_repairs_itself(tmp_path: Path) -> None:
    """A same-size rewrite that keeps the old time (as `cp -p` leaves) is served fresh; a
    damaged manifest or a cut cache file rebuilds the cache instead of breaking every run."""
    import os

    folder = tmp_path / "d"
    trajs = write_folder(folder, [6, 6], image=False)
    path = folder / "1.npz"
    arrays: dict[str, Any] = dict(trajs[1])
    np.savez(path, **arrays)  # uncompressed: its size does not depend on the values
    first = TrajectoryDataset(folder, ["velocity"], progress=False).trajectories[1]["velocity"]
    stat = path.stat()
    np.savez(path, **{**arrays, "velocity": arrays["velocity"] + 1.0})  # other values
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size  # same size, same time: only the content moved
    again = TrajectoryDataset(folder, ["velocity"], progress=False).trajectories[1]["velocity"]
    np.testing.assert_allclose(again, first + 1.0)

    (folder / ".cache" / "manifest.json").write_text("{ damaged")
    data = TrajectoryDataset(folder, ["velocity"], progress=False)
    np.testing.assert_allclose(data.trajectories[1]["velocity"], first + 1.0)
    cached = folder / ".cache" / "velocity.bin"
    cached.write_bytes(cached.read_bytes()[:-8])  # a cache file cut short
    data = TrajectoryDataset(folder, ["velocity"], progress=False)
    np.testing.assert_allclose(data.trajectories[1]["velocity"], first + 1.0)


def test_cache_dir_keeps_caches_out_of_the_dataset_folder(tmp_path: Path) -> None:
    from common.datasets import open_dataset

    folder = tmp_path / "walker-random"
    write_folder(folder, [6, 6], image=False)
    shapes = {"velocity": (9,)}
    open_dataset(tmp_path, "walker", "random", "body", ["velocity"], shapes, actions=False,
                 cache_dir=tmp_path / "caches")  # fmt: skip
    assert not (folder / ".cache").exists() and any((tmp_path / "caches").iterdir())
    (folder / ".cache").write_text("")  # a folder where no cache can be made
    with pytest.raises(DatasetError, match="pass --cache-dir with a writable folder"):
        open_dataset(tmp_path, "walker", "random", "body", ["velocity"], shapes, actions=False)


READER = """
import sys
import numpy as np
from common.datasets import TrajectoryDataset
for _ in range(int(sys.argv[2])):
    data = TrajectoryDataset(sys.argv[1], ["velocity"], progress=False)
    velocity = data.trajectories[1]["velocity"]
    assert np.all(velocity == velocity.flat[0]), "one trajectory mixed from two versions"
print("ok")
"""


def test_readers_racing_a_writer_each_see_one_whole_version(tmp_path: Path) -> None:
    """Two processes load the dataset over and over while its file 1 is rewritten and the cache
    rebuilt under them: no reader dies (a cache file pulled away mid-read was the failure) and
    each sees a whole version of the file."""
    import subprocess
    import sys

    folder = tmp_path / "d"
    trajs = write_folder(folder, [6, 40], image=False)
    TrajectoryDataset(folder, ["velocity"], progress=False)
    root = Path(__file__).resolve().parents[1]
    readers = [
        subprocess.Popen([sys.executable, "-c", READER, str(folder), "25"], cwd=root,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    version = 0
    while any(r.poll() is None for r in readers):
        version += 1
        velocity = np.full_like(trajs[1]["velocity"], float(version))
        save_trajectory(folder / "1.npz", {**trajs[1], "velocity": velocity})
        TrajectoryDataset(folder, ["velocity"], progress=False)  # the writer rebuilds the cache
    for r in readers:
        out, err = r.communicate()
        assert r.returncode == 0 and out.strip() == "ok", err.strip().splitlines()[-1:]
    assert version > 3, "the readers finished before the file was rewritten"


@dataclass
class Flags(RunArgs):
    lr: float = 1e-3
    total_steps: Annotated[int, FREE_ON_RESUME] = 10


def test_a_resumed_run_may_change_only_the_flags_marked_free_on_resume(tmp_path: Path) -> None:
    """A flag annotated `FREE_ON_RESUME` (a budget, how the run is logged) may differ from the
    checkpoint's; any other is refused in one line naming it, before anything is written."""
    run = Run(tmp_path, "r", Flags())
    run.checkpoint({}, [])
    run.close()
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    Run(tmp_path, "r", Flags(total_steps=20, track=False, capture_video=True), resume=True).close()
    with pytest.raises(SystemExit, match=r"other flags: --lr 0.001 \(now 0.002\); resume"):
        Run(tmp_path, "r", Flags(lr=2e-3, total_steps=20), resume=True)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before


def test_a_run_folder_moved_elsewhere_resumes_there(tmp_path: Path) -> None:
    """--runs-dir and --cache-dir say where things are, not what the run is: a run folder moved
    to another disk resumes from there; another --data-dir is still refused."""
    run = Run(tmp_path / "a", "r", Flags(runs_dir=str(tmp_path / "a")))
    run.checkpoint({}, [])
    run.close()
    (tmp_path / "a").rename(tmp_path / "b")
    moved = Flags(runs_dir=str(tmp_path / "b"), cache_dir=str(tmp_path / "cache"))
    Run(tmp_path / "b", "r", moved, resume=True).close()
    with pytest.raises(SystemExit, match=r"other flags: --data-dir 'datasets' \(now 'elsewhere'\)"):
        Run(tmp_path / "b", "r", replace(moved, data_dir="elsewhere"), resume=True)


def test_run_epochs_resume_where_the_checkpoint_was_written(tmp_path: Path) -> None:
    """`Run.epochs` across two stages: a run stopped after stage b's first epoch and resumed
    skips stage a, gets b's networks, random streams and counters back, and goes on from b's
    second epoch exactly as the uninterrupted run did."""
    from torch import nn

    from common.replay import WindowSampler

    @dataclass
    class Counters:
        draws: int = 0

    def train(root: Path, stop_at: tuple[str, int] = ("", -1), resume: bool = False) -> list:
        """The draws, weights and counters after each epoch."""
        torch.manual_seed(0)
        net, sampler, counters = nn.Linear(2, 2), WindowSampler(seed=3), Counters()
        run = Run(root, "r", RunArgs(), resume=resume)
        seen: list = []
        for stage, n in (("a", 2), ("b", 3)):
            for epoch in run.epochs(stage, n, {"net": net}, [sampler], counters=counters):
                if (stage, epoch) == stop_at:
                    run.close()
                    return seen  # a kill before this epoch's checkpoint
                draw = (float(torch.rand(1)), float(sampler.rng.random()))
                with torch.no_grad():
                    net.weight += draw[0]
                    counters.draws += 1
                    seen.append((stage, epoch, draw, float(net.weight.sum()), counters.draws))
        run.close()
        return seen

    whole = train(tmp_path / "whole")
    assert [(s, e) for s, e, *_ in whole] == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
    assert train(tmp_path / "cut", stop_at=("b", 1)) == whole[:3]
    state = torch.load(tmp_path / "cut" / "r" / "checkpoint.pt", weights_only=False)["state"]
    assert (state["stages"], state["epoch"], state["counters"]) == (["a", "b"], 1, {"draws": 3})
    assert train(tmp_path / "cut", resume=True) == whole[3:]  # draws, weights, counters


def test_run_epochs_refuse_a_checkpoint_of_no_stage_and_keep_it(tmp_path: Path) -> None:
    """A checkpoint written without `Run.epochs` (an older layout) is refused in one line on
    resume, not trained over from scratch, and stays as it was."""

    run = Run(tmp_path, "r", RunArgs())
    run.checkpoint({"phase": 2, "epoch": 3}, [])
    run.close()
    before = run.ckpt_path.read_bytes()
    resumed = Run(tmp_path, "r", RunArgs(), resume=True)
    with pytest.raises(SystemExit, match="records no training stage"):
        next(iter(resumed.epochs("phase1", 4, {}, [])))
    resumed.close()
    assert run.ckpt_path.read_bytes() == before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB disk (tmpfs), where this process may mount one (root on Linux; skipped
    elsewhere), so that a full disk fails as it does in use, not as a test double would."""
    import subprocess

    where = tmp_path / "disk"
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("no tmpfs can be mounted here (it needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)  # even with a file open


def test_a_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_last(small_disk: Path) -> None:

    from torch import nn

    run = Run(small_disk, "r", RunArgs())
    run.checkpoint({"epoch": 1}, [], net=nn.Linear(2, 2))  # fits
    with pytest.raises(SystemExit) as e:  # torch's own writer would say "unexpected pos"
        run.checkpoint({"epoch": 2}, [], net=nn.Linear(1000, 1000))  # 4 MB does not
    message = str(e.value.code)
    assert message.startswith(f"error: the disk is full: {run.ckpt_path} could not be written")
    assert "(4.0 MB needed); the previous checkpoint.pt, if any, is kept" in message
    assert torch.load(run.ckpt_path, weights_only=False)["state"] == {"epoch": 1}
    assert not list(run.dir.glob(".*.tmp"))  # no temporary left
    run.close()


def test_a_dataset_cache_on_a_full_disk_is_one_line(tmp_path: Path, small_disk: Path) -> None:
    from common.datasets import open_dataset

    folder = tmp_path / "walker-random"
    write_folder(folder, [2000] * 8, image=False)  # 8 x (72 kB velocity + 112 kB orientations)
    keys = ["orientations", "velocity"]
    with pytest.raises(DatasetError) as e:
        open_dataset(tmp_path, "walker", "random", "body", keys, WALKER_SHAPES, actions=False,
                     cache_dir=small_disk)  # fmt: skip
    message = str(e.value)
    assert message.startswith(f"the disk is full: the cache of {folder} could not be written")
    assert "(about 1.5 MB needed); the dataset is untouched" in message and "\n" not in message
    assert not list(small_disk.rglob("*.tmp"))  # the partial cache is removed
