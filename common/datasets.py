"""Datasets on disk: folders of trajectory files in common/replay.py's format, read for training.

A dataset folder is named by its embodiment and by what made it (`dataset_folders`: `random`,
`p2e`, a task's buffer or its expert demonstrations, the walker mix); a missing one is named with
the `dreamer_collect.py` command that makes it, or the `download.py` command that fetches the AIME
authors' copy. A folder's `info.json` records the settings it was collected with (`write_info`),
which a run checks (the embodiment, the action repeat).

`TrajectoryDataset` reads one or several folders (several = a mixed embodiment dataset) through
an uncompressed memory-mapped cache built once per folder, so a dataset larger than RAM is
usable and only the requested keys are ever read. `open_dataset` resolves a script's
`--body-data` or `--demo` name, checks every file used and returns the `Dataset` with its facts.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np
from tqdm import tqdm

from common.envs import AUTHORS_ACTION_REPEAT
from common.replay import (
    DatasetError,
    PathLike,
    Trajectory,
    WindowSampler,
    atomic_write,
    load_trajectory,
    numbered_files,
    remove_stale_temporaries,
)

CACHE_VERSION = 2  # 2: files signed by their members' CRC-32s, not by times


# --------------------------------------------------------------------------------------------
# The catalogue: dataset names, and what makes a missing one
# --------------------------------------------------------------------------------------------
# Dataset folder names and the flags of `dreamer_collect.py` that create them.
_MAKERS = [
    (r"(\w+)-random", "--agent random --env {0}"),
    (r"(\w+)-(?:p2e|plan2explore-buffer)", "--agent p2e --env {0}"),  # ours, the authors' name
    (r"(\w+)-(\w+)-(?:buffer|expert)", "--agent dreamer --env {0} --task {1}"),
]
# What making a dataset costs at dreamer_collect.py's default budgets (grid.py's estimates too).
# A Dreamer or Plan2Explore run, per 1M environment steps: no GPU figure of ours yet; the Dreamer
# authors' TF2 code about 3 h on a V100, PyTorch ports 9 to 37 h.
HOURS_DREAMER_PER_MILLION = 12.0
# Collection on the CPU: a random walker trajectory takes 15 s with 64x64 images and 0.3 s
# without; an expert demonstration is bound by rendering, 37 agent steps/s.
SECONDS_RANDOM_TRAJECTORY = {True: 15.0, False: 0.3}
SECONDS_DEMO = {True: 501 / 37, False: 0.3}
# Where the AIME authors publish their datasets and world models (their README), one .tgz each.
AUTHORS_RELEASE = "https://github.com/argmax-ai/aime/releases/latest"


def make_command(folder: PathLike) -> str:
    """The command that creates a dataset folder, inferred from its name ('' if unknown)."""
    for pattern, flags in _MAKERS:
        if m := re.fullmatch(pattern, Path(folder).name):
            return "python dreamer_collect.py " + flags.format(*m.groups())
    return ""


def make_hours(command: str) -> float:
    """Hours of a `make_command` at dreamer_collect.py's default budgets (rendering on): 1000
    random trajectories, or 1M environment steps of an agent (and a Dreamer agent's 1000
    demonstrations, made by the same command as its buffer); 0 for no command."""
    if "--agent random" in command:
        return 1000 * SECONDS_RANDOM_TRAJECTORY[True] / 3600
    demos = 1000 * SECONDS_DEMO[True] / 3600 if "--agent dreamer" in command else 0.0
    return HOURS_DREAMER_PER_MILLION + demos if command else 0.0


def require_datasets(folders: Sequence[PathLike]) -> None:
    """Refuse, before any training, a run whose datasets are not all there: every missing folder
    is named with the command that makes it and its cost, and the authors' published copies
    with the `download.py` command that fetches them."""
    missing = [Path(f) for f in folders if not (Path(f).is_dir() and any(Path(f).glob("*.npz")))]
    if not missing:
        return
    commands = {f: make_command(f) for f in missing}
    hours = {f: make_hours(c) for f, c in commands.items()}
    lines = [
        f"{len(missing)} of the {len(folders)} datasets this run reads are missing "
        f"(about {sum(hours.values()):.0f} h to make them all):"
    ]
    for folder, command in commands.items():
        how = f"make it with: {command} (about {hours[folder]:.0f} h)" if command else ""
        lines.append(f"  {folder}: {how or 'no command makes a folder of this name'}")
    names = [f.name.replace("-p2e", "-plan2explore-buffer") for f, c in commands.items() if c]
    if names:
        data_dir = missing[0].parent
        lines.append(
            f"or download the AIME authors' copies ({AUTHORS_RELEASE}): "
            f"python download.py {' '.join(names)}"
            + (f" --data-dir {data_dir}" if str(data_dir) != "datasets" else "")
        )
    raise DatasetError("\n".join(lines))


# The paper's walker mix: every walker embodiment dataset except run (AIME section 4).
WALKER_MIX = ("random", "p2e", "stand", "walk")


def dataset_folders(data_dir: PathLike, env: str, name: str, kind: str) -> list[Path]:
    """Dataset names of the scripts' `--body-data` (kind "body") and `--demo` (kind "demo"):
    `random` -> {env}-random, `p2e` -> {env}-p2e (or the authors' {env}-plan2explore-buffer),
    a task such as `run` -> {env}-run-buffer (body) or {env}-run-expert (demo), `mix` -> the
    walker mix, `a+b` -> both, read in place; anything with a `/` is a path."""
    if "/" in name:
        return [Path(name)]
    folders: list[Path] = []
    for part in name.split("+"):
        if part == "mix":
            if env != "walker":
                raise DatasetError("mix is the paper's walker mix; name the parts, e.g. random+p2e")
            folders += dataset_folders(data_dir, env, "+".join(WALKER_MIX), kind)
        elif part == "random":
            folders.append(Path(data_dir) / f"{env}-random")
        elif part == "p2e":
            ours, theirs = (
                Path(data_dir) / f"{env}-p2e",
                Path(data_dir) / f"{env}-plan2explore-buffer",
            )
            folders.append(theirs if theirs.is_dir() and not ours.is_dir() else ours)
        else:
            folders.append(
                Path(data_dir) / f"{env}-{part}-{'buffer' if kind == 'body' else 'expert'}"
            )
    return folders


def dataset_task(env: str, name: str) -> str:
    """The task a demonstration dataset's name tells: `run` -> run, and a path such as
    .../walker-run-expert -> run."""
    return Path(name).name.removeprefix(f"{env}-").split("-")[0]


# --------------------------------------------------------------------------------------------
# The trajectory files of a folder, and its facts
# --------------------------------------------------------------------------------------------
_NOTICES: set[str] = set()  # the notices already printed by this process


def notice(message: str) -> None:
    """Print `notice: {message}`, once per process (two datasets may share a folder)."""
    if message not in _NOTICES:
        _NOTICES.add(message)
        print(f"notice: {message}")


def trajectory_files(folder: PathLike) -> list[Path]:
    """The trajectory files of a dataset folder in order; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        command = make_command(folder)
        how = f"; create it with: {command}" if command else ""
        raise DatasetError(f"dataset folder {folder} does not exist{how}")
    files = numbered_files(folder)  # `{index}.npz`, ours and the authors'
    if others := sorted(f.name for f in folder.glob("*.npz") if f not in files):
        notice(f"{folder}: not trajectory names, ignored: {', '.join(others[:5])}"
               + (f" and {len(others) - 5} more" if len(others) > 5 else ""))  # fmt: skip
    if not files:
        raise DatasetError(f"dataset folder {folder} contains no .npz trajectory files")
    return files


def dataset_info(folder: PathLike) -> dict[str, Any]:
    """The settings a dataset was collected with (its `info.json`), or {} where it has none."""
    path = Path(folder) / "info.json"
    return json.loads(path.read_text()) if path.exists() else {}


def dataset_action_repeat(
    folders: Sequence[PathLike], asked: Optional[int] = None, env: str = ""
) -> int:
    """The action repeat the datasets were recorded with, from their `info.json`.

    Folders without one (the authors' datasets) say nothing; with no record at all the answer is
    `asked`, else the authors' repeat for the domain `env` (`envs.AUTHORS_ACTION_REPEAT`, 2 for
    most). Datasets recorded with different repeats, or a repeat other than `asked`, are refused:
    a policy must act at the rate its data were recorded at."""
    recorded: dict[str, int] = {}
    for folder in folders:
        if repeat := dataset_info(folder).get("action_repeat"):
            recorded[str(folder)] = int(repeat)
    repeats = set(recorded.values())
    if len(repeats) > 1:
        raise DatasetError(f"the datasets were recorded with different action repeats: {recorded}")
    if asked is not None and repeats and repeats != {asked}:
        raise DatasetError(
            f"--action-repeat {asked}, but the datasets were recorded with {recorded}"
        )
    if asked is not None:
        return asked
    return repeats.pop() if repeats else AUTHORS_ACTION_REPEAT.get(env, 2)


# --------------------------------------------------------------------------------------------
# Writing a dataset (dreamer_collect.py)
# --------------------------------------------------------------------------------------------
def write_info(folder: Path, settings: dict[str, Any], what: str = "trajectories") -> str:
    """Record the dataset's settings and its trajectories' mean return in `info.json`; returns
    the line that tells it on the terminal."""
    files = trajectory_files(folder) if any(folder.glob("*.npz")) else []
    returns = [float(load_trajectory(p, ["reward"])["reward"].sum()) for p in files]
    info = {
        **settings,
        "num_trajectories": len(files),
        "mean_return": float(np.mean(returns)) if returns else None,
        "std_return": float(np.std(returns)) if returns else None,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write(folder / "info.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    spread = f"{np.mean(returns):.1f} +- {np.std(returns):.1f}" if returns else "none"
    return f"{folder}: {len(files)} {what}, return {spread}"


def check_dataset_settings(folder: Path, settings: dict[str, Any]) -> None:
    """A dataset is extended only with the settings it was started with."""
    previous = dataset_info(folder)
    clashes = {
        k: (previous[k], v) for k, v in settings.items() if k in previous and previous[k] != v
    }
    if clashes:
        raise SystemExit(
            f"error: {folder} was collected with other settings (existing, asked): {clashes}; "
            f"use the same flags or another --data-dir"
        )


def fill_folder(folder: Path, settings: dict[str, Any], count: int, what: str) -> list[int]:
    """Open a dataset folder that is filled up to `count` trajectories `{i}.npz`: remove what a
    killed write left, check its settings (and record them), and return the indices missing."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)  # left by a collection that was killed mid-write
    check_dataset_settings(folder, settings)
    write_info(folder, settings)  # the settings recorded before the first new trajectory
    done = {int(p.stem) for p in folder.glob("*.npz") if p.stem.isdigit()}
    todo = [i for i in range(count) if i not in done]
    print(f"{folder}: {len(done)} {what} present, collecting {len(todo)}")
    return todo


# --------------------------------------------------------------------------------------------
# Datasets read through a memory-mapped cache
# --------------------------------------------------------------------------------------------
@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`, so parallel runs build a cache once."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _signature(files: Sequence[Path]) -> list[list[Union[str, int]]]:
    """Each file's name, size and content: the CRC-32 of every member, read from the zip
    directory at its end (a same-size rewrite with the old time, as `cp -p` leaves, changes it;
    an unreadable file signs as -1 and is named when the cache reads it)."""
    signed: list[list[Union[str, int]]] = []
    for f in files:
        try:
            with zipfile.ZipFile(f) as z:
                crcs = zlib.crc32(b"".join(i.CRC.to_bytes(4, "little") for i in z.infolist()))
        except (OSError, zipfile.BadZipFile, EOFError):
            crcs = -1
        signed.append([f.name, f.stat().st_size, crcs])
    return signed


def _check_shapes(
    path: Path,
    traj: Trajectory,
    expected: Mapping[str, tuple[int, ...]],
    seen: Mapping[str, tuple[int, ...]],
) -> None:
    """Per-record shapes must match the environment's and those of the files read before."""
    for k, v in traj.items():
        for shapes, what in ((expected, "the environment has"), (seen, "earlier files have")):
            if k in shapes and v.shape[1:] != tuple(shapes[k]):
                raise DatasetError(
                    f"{path}: {k!r} has shape {v.shape[1:]} per record but {what} {shapes[k]}"
                )


def _check_finite(path: Path, traj: Trajectory) -> None:
    """No NaN or inf in a trajectory's numbers: the first one is named by key and record."""
    for k, v in traj.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            record = int(np.argwhere(~np.isfinite(v))[0][0])
            raise DatasetError(f"{path}: {k!r} holds NaN or inf at record {record}")


class FolderCache:
    """An uncompressed, memory-mapped copy of chosen keys of a dataset folder, built once.

    `{cache}/{key}.bin` holds the key's records of all trajectories back to back;
    `manifest.json` the folder's file list (names, sizes, the CRC-32s of their members),
    trajectory lengths and the dtype/shape of each cached key. A change in the folder's files,
    a damaged manifest or a cache file of the wrong size rebuilds the cache; a reader holds the
    lock until its files are mapped, so a writer never pulls them away mid-read.
    """

    def __init__(self, folder: PathLike, cache_dir: Optional[PathLike] = None) -> None:
        self.folder = Path(folder)
        self.files = trajectory_files(self.folder)
        if cache_dir is None:
            self.dir = self.folder / ".cache"
        else:
            digest = hashlib.sha1(str(self.folder.resolve()).encode()).hexdigest()[:10]
            self.dir = Path(cache_dir) / f"{self.folder.name}-{digest}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatasetError(
                f"cannot create the dataset cache {self.dir} ({e}); "
                "pass --cache-dir with a writable folder"
            ) from e

    def _manifest(self) -> dict[str, Any]:
        """The cache's manifest where it still describes the folder and its cache files are
        whole; otherwise a fresh one (a damaged cache rebuilds itself)."""
        path, signature = self.dir / "manifest.json", _signature(self.files)  # reads every file
        try:
            manifest = json.loads(path.read_text())
            records = sum(manifest["lengths"] or [])
            whole = all(
                (self.dir / f"{k}.bin").stat().st_size
                == records * np.dtype(info["dtype"]).itemsize * int(np.prod(info["shape"]))
                for k, info in manifest["keys"].items()
            )
            if (
                manifest.get("version") == CACHE_VERSION
                and manifest.get("files") == signature
                and whole
            ):
                return dict(manifest)
        except (OSError, ValueError, KeyError, TypeError):  # missing, damaged, or another version
            pass
        return {
            "version": CACHE_VERSION,
            "files": signature,
            "lengths": None,
            "keys": {},
        }

    def load(
        self,
        keys: Sequence[str],
        expected_shapes: Optional[Mapping[str, tuple[int, ...]]] = None,
        progress: bool = True,
    ) -> list[Trajectory]:
        """Per-trajectory views (memory-mapped, zero-copy) of `keys`, building what is missing."""
        with _locked(self.dir / "lock"):  # held until mapped: a writer cannot pull files away
            manifest = self._manifest()
            missing = [k for k in keys if k not in manifest["keys"]]
            if missing:
                self._build(manifest, missing, expected_shapes or {}, progress)
            return self._map(manifest, keys, expected_shapes)

    def _map(
        self,
        manifest: dict[str, Any],
        keys: Sequence[str],
        expected_shapes: Optional[Mapping[str, tuple[int, ...]]],
    ) -> list[Trajectory]:
        lengths = np.asarray(manifest["lengths"], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        arrays = {}
        for k in keys:
            info = manifest["keys"][k]
            shape = (int(offsets[-1]), *info["shape"])
            if (
                expected_shapes
                and k in expected_shapes
                and tuple(info["shape"]) != tuple(expected_shapes[k])
            ):
                raise DatasetError(
                    f"{self.folder}: {k!r} has shape {tuple(info['shape'])} per record but the "
                    f"environment has {tuple(expected_shapes[k])} "
                    f"(a dataset of another embodiment?)"
                )
            arrays[k] = np.memmap(self.dir / f"{k}.bin", dtype=info["dtype"], mode="r", shape=shape)
        return [
            {k: a[offsets[i] : offsets[i + 1]] for k, a in arrays.items()}
            for i in range(len(lengths))
        ]

    def _build(
        self,
        manifest: dict[str, Any],
        keys: Sequence[str],
        expected: Mapping[str, tuple[int, ...]],
        progress: bool,
    ) -> None:
        """Stream every file once, validating it, and append its `keys` to the cache files."""
        remove_stale_temporaries(self.dir)  # left by a build that was killed
        if manifest["lengths"] is None:  # a new or changed folder: start over
            for stale in self.dir.glob("*.bin"):
                stale.unlink()
            manifest["keys"] = {}
        known_lengths: Optional[list[int]] = manifest["lengths"]
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, np.dtype[Any]] = {}
        lengths: list[int] = []
        written = 0  # bytes of the files cached, for the space a full disk would have needed
        tmp_paths = {k: self.dir / f".{k}.bin.{os.getpid()}.tmp" for k in keys}
        try:
            with ExitStack() as stack:
                outs = {k: stack.enter_context(open(p, "wb")) for k, p in tmp_paths.items()}
                desc = f"caching {self.folder.name} {list(keys)}"
                for i, path in enumerate(tqdm(self.files, desc=desc, disable=not progress)):
                    traj = load_trajectory(path, keys)
                    _check_shapes(path, traj, expected, shapes)
                    _check_finite(path, traj)
                    length = len(next(iter(traj.values())))
                    if known_lengths is not None and known_lengths[i] != length:
                        raise DatasetError(
                            f"{path}: has {length} records in {list(keys)} "
                            f"but {known_lengths[i]} in its other keys"
                        )
                    for k, v in traj.items():
                        shapes.setdefault(k, v.shape[1:])
                        if dtypes.setdefault(k, v.dtype) != v.dtype:
                            raise DatasetError(
                                f"{path}: {k!r} is {v.dtype}, earlier files hold {dtypes[k]}"
                            )
                        outs[k].write(np.ascontiguousarray(v).tobytes())
                    lengths.append(length)
                    written += sum(v.nbytes for v in traj.values())
        except BaseException as e:
            for tmp in tmp_paths.values():
                tmp.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                need = written / max(len(lengths), 1) * len(self.files) / 1e6  # an estimate
                raise DatasetError(
                    f"the disk is full: the cache of {self.folder} could not be written in "
                    f"{self.dir} (about {need:.1f} MB needed); the dataset is untouched; free "
                    "space or pass --cache-dir with a folder on another disk"
                ) from e
            raise
        for k, tmp in tmp_paths.items():
            os.replace(tmp, self.dir / f"{k}.bin")
            manifest["keys"][k] = {"dtype": str(dtypes[k]), "shape": list(shapes[k])}
        manifest["lengths"] = lengths
        manifest_path = self.dir / "manifest.json"
        atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest)))


class TrajectoryDataset(WindowSampler):
    """Trajectories from one or several dataset folders, read through a memory-mapped cache.

    folders            one folder, or several to form a mixed dataset (read in place, in order)
    keys               the record keys to load (e.g. the setting's observation keys and
                       `pre_action`); nothing else is read
    num_trajectories   use only the first N trajectories over all folders (None: all)
    expected_shapes    per-record shapes the data must have (`DMCEnv.record_shapes`), so a
                       dataset of another embodiment fails with a clear message
    cache_dir          where caches go (default: `.cache/` inside each dataset folder)
    """

    def __init__(
        self,
        folders: Union[PathLike, Sequence[PathLike]],
        keys: Sequence[str],
        num_trajectories: Optional[int] = None,
        expected_shapes: Optional[Mapping[str, tuple[int, ...]]] = None,
        cache_dir: Optional[PathLike] = None,
        seed: Optional[int] = None,
        progress: bool = True,
    ) -> None:
        super().__init__(seed)
        folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
        if not folders:
            raise DatasetError("no dataset folder given")
        if num_trajectories is not None and num_trajectories < 1:
            raise DatasetError(f"num_trajectories must be positive, got {num_trajectories}")
        self.folders = [Path(f) for f in folders]
        self.keys = list(dict.fromkeys(keys))
        caches = [FolderCache(f, cache_dir) for f in self.folders]  # checks every folder first
        for cache in caches:
            if num_trajectories is not None and len(self.trajectories) >= num_trajectories:
                break
            self.trajectories += cache.load(self.keys, expected_shapes, progress)
        if num_trajectories is not None:
            if len(self.trajectories) < num_trajectories:
                raise DatasetError(
                    f"{num_trajectories} trajectories asked for, but "
                    f"{', '.join(map(str, self.folders))} hold only {len(self.trajectories)}"
                )
            self.trajectories = self.trajectories[:num_trajectories]


# --------------------------------------------------------------------------------------------
# A dataset opened for training, in one call
# --------------------------------------------------------------------------------------------
class Dataset(NamedTuple):
    """A dataset named on a script's command line, opened and checked, with its facts."""

    name: str  # as given: `random`, `mix`, `run`, `a+b` or a path
    folders: list[Path]  # the folders it resolves to, in order
    files: list[Path]  # the trajectory files used (the first `num` over all folders)
    data: TrajectoryDataset  # the chosen keys of those files, read through the cache

    def mean_return(self) -> float:
        """The mean return of the trajectories used (their rewards are read from the files)."""
        return float(np.mean([load_trajectory(f, ["reward"])["reward"].sum() for f in self.files]))


def open_dataset(
    data_dir: PathLike,
    env: str,
    name: str,
    kind: str,
    keys: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    num: Optional[int] = None,
    actions: Optional[bool] = True,
    seed: Optional[int] = None,
    flag: str = "--num-demos",
    cache_dir: Optional[PathLike] = None,
) -> Dataset:
    """Resolve a `--body-data` (kind "body") or `--demo` (kind "demo") name (`dataset_folders`),
    read and check every file used, and return the dataset with its facts.

    keys     the observation keys to read; `shapes` the per-record shapes the files must have
             (`DMCEnv.record_shapes`), so a dataset of another embodiment is refused
    num      use the first `num` trajectories over all folders (None: all); `flag` is the
             command-line flag named in the error when there are fewer
    actions  True: `pre_action` is read and must be there; None: read where the files hold it
             (for analysis only); False: never read
    seed     the seed of the dataset's window sampler
    cache_dir  where the memory-mapped caches go (None: `.cache/` in each dataset folder)
    The folders' recorded action repeat is `dataset_action_repeat(dataset.folders)`.
    """
    folders = dataset_folders(data_dir, env, name, kind)
    for folder in folders:  # the embodiment a collection recorded (the authors' record none)
        recorded = str(dataset_info(folder).get("env", env)).split("-")[0]
        if recorded != env:
            raise DatasetError(f"{folder} was collected on {recorded}, not {env} (its info.json)")
    files = [f for folder in folders for f in trajectory_files(folder)]
    if num is not None and len(files) < num:
        raise DatasetError(f"{flag} {num}, but {name} holds {len(files)}")
    files = files[:num]
    if actions is None:  # read them where the files hold them
        with np.load(files[0]) as first:
            actions = "pre_action" in first.files or "action" in first.files
    wanted = [*keys, "pre_action"] if actions else list(keys)
    data = TrajectoryDataset(folders, wanted, num, shapes, cache_dir, seed=seed)
    return Dataset(name, folders, files, data)
