"""download.py on local archives laid out like the AIME authors' release, and the message that
names every missing dataset of a run before anything is trained."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

import aime
import download
from common.datasets import TrajectoryDataset, require_datasets
from common.replay import DatasetError, load_trajectory, save_trajectory
from tests.test_replay import fake_trajectory


def make_archive(path: Path, files: dict[str, bytes]) -> None:
    """A .tgz holding `files` (member name -> bytes)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def npz_bytes(tmp_path: Path) -> bytes:
    save_trajectory(tmp_path / "t.npz", fake_trajectory(5, image=False))
    return (tmp_path / "t.npz").read_bytes()


def test_datasets_and_models_unpack_where_the_scripts_read_them(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    traj = npz_bytes(tmp_path)
    make_archive(
        release / "walker-random.tgz", {"walker-random/0.npz": traj, "walker-random/1.npz": traj}
    )
    make_archive(
        release / "pretrained-models.tgz",
        {"walker-mix-visual/model.pt": b"x", "walker-mix-visual/config.yaml": b"y: 1\n"},
    )
    args = download.Args(
        names=("walker-random",), models=True, data_dir=str(tmp_path / "datasets"),
        models_dir=str(tmp_path / "pretrained-models"), source=str(release),
    )  # fmt: skip
    got = download.main(args)
    data = tmp_path / "datasets" / "walker-random"
    assert sorted(p.name for p in data.glob("*.npz")) == ["0.npz", "1.npz"]
    assert (tmp_path / "pretrained-models" / "walker-mix-visual" / "config.yaml").is_file()
    assert got == [data, tmp_path / "pretrained-models" / "walker-mix-visual"]
    require_datasets([data])  # the scripts accept it
    # a second call leaves the folder as it is
    (release / "walker-random.tgz").unlink()
    assert download.main(download.Args(names=("walker-random",), data_dir=args.data_dir)) == []


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"../outside/0.npz": b"x"}, "refusing the member ../outside/0.npz"),
        ({"walker-walk-buffer/0.npz": b"x"}, "not the folder walker-random/"),
    ],
)
def test_a_bad_archive_is_refused_and_nothing_lands_outside(
    tmp_path: Path, files: dict[str, bytes], message: str
) -> None:
    release = tmp_path / "release"
    release.mkdir()
    make_archive(release / "walker-random.tgz", files)
    args = download.Args(
        names=("walker-random",), data_dir=str(tmp_path / "d" / "datasets"), source=str(release)
    )
    with pytest.raises(SystemExit, match=message):
        download.main(args)
    assert not (tmp_path / "d" / "outside").exists()


def test_a_missing_archive_or_a_damaged_one_is_one_clear_error(tmp_path: Path) -> None:
    args = download.Args(names=("walker-random",), source=str(tmp_path))
    with pytest.raises(SystemExit, match=r"walker-random\.tgz does not exist"):
        download.main(args)
    (tmp_path / "walker-random.tgz").write_bytes(b"not gzip")
    with pytest.raises(SystemExit, match=r"not a readable \.tgz archive"):
        download.main(args)
    with pytest.raises(SystemExit, match="name the datasets"):
        download.main(download.Args())


def test_every_missing_dataset_is_named_with_its_command_cost_and_download(
    tmp_path: Path,
) -> None:
    """aime.py's default cell reads five datasets: all are named at once, before training."""
    (tmp_path / "walker-stand-buffer").mkdir()
    save_trajectory(tmp_path / "walker-stand-buffer" / "0.npz", fake_trajectory(5, image=False))
    with pytest.raises(DatasetError) as info:
        aime.main(aime.Args(data_dir=str(tmp_path), runs_dir=str(tmp_path / "runs")))
    lines = str(info.value).splitlines()
    assert lines[0] == (
        "4 of the 5 datasets this run reads are missing (about 48 h to make them all):"
    )  # 4 h random data, 12 h Plan2Explore, 16 h each Dreamer (walk's buffer, run's expert)
    assert (
        f"{tmp_path}/walker-random: make it with: python dreamer_collect.py --agent random"
        in (lines[1])
    )
    assert "walker-stand-buffer" not in str(info.value)
    assert "--agent dreamer --env walker --task run (about 16 h)" in lines[4]
    assert lines[5].endswith(
        "python download.py walker-random walker-plan2explore-buffer walker-walk-buffer "
        f"walker-run-expert --data-dir {tmp_path}"
    )
    assert not (tmp_path / "runs").exists()  # refused before the run folder was made


def test_vd4rl_episodes_are_converted_onto_our_keys(tmp_path: Path) -> None:
    """`download.py --vd4rl`: DreamerV2's layout (`action[t]` led to observation t, `discount`,
    64px `image` or the channel-first `observation`) becomes ours, read like any dataset."""
    T = 501
    image = np.random.default_rng(0).integers(0, 256, (T, 64, 64, 3), dtype=np.uint8)
    action = np.random.default_rng(1).uniform(-1, 1, (T, 6)).astype(np.float32)
    action[0] = 0
    discount = np.ones(T, np.float32)
    discount[-1] = 0
    source = tmp_path / "64px"
    source.mkdir()
    np.savez_compressed(
        source / "20220101T000000-0123456789abcdef-501.npz",
        image=image, action=action, reward=np.ones(T), discount=discount,
    )  # fmt: skip
    np.savez_compressed(
        source / "20220101T000001-ff-501.npz",
        observation=image.transpose(0, 3, 1, 2), action=action, reward=np.ones(T),
        discount=np.ones(T, np.float32),
    )  # fmt: skip
    args = download.Args(names=("walker-walk-vd4rl",), vd4rl=str(source), data_dir=str(tmp_path))
    (folder,) = download.main(args)
    assert sorted(p.name for p in folder.glob("*.npz")) == ["0.npz", "1.npz"]
    for name, terminal in (("0.npz", True), ("1.npz", False)):
        traj = load_trajectory(folder / name)
        np.testing.assert_array_equal(traj["image"], image)
        np.testing.assert_array_equal(traj["pre_action"], action)
        assert traj["is_first"][0] and traj["is_last"][-1]
        assert traj["is_first"].sum() == traj["is_last"].sum() == 1
        assert traj["is_terminal"].sum() == terminal and traj["is_terminal"][-1] == terminal
    data = TrajectoryDataset(
        folder, ["image", "pre_action"], expected_shapes={"image": (64, 64, 3)}, progress=False
    )
    assert len(data) == 2
    with pytest.raises(DatasetError, match="missing key"):
        load_trajectory(folder / "0.npz", ["orientations"])
    with pytest.raises(SystemExit, match="holds trajectories already"):
        download.main(args)
    with pytest.raises(SystemExit, match=r"is not a folder of \.npz episodes"):
        download.main(download.Args(names=("x",), vd4rl=str(tmp_path / "none")))
    (source / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SystemExit, match=r"bad\.npz is not a V-D4RL episode"):
        download.main(download.Args(names=("y",), vd4rl=str(source), data_dir=str(tmp_path)))
