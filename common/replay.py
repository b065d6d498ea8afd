"""Trajectory storage and replay: the AIME authors' one-`.npz`-per-trajectory format, batches of
windows and the online agents' buffer.

File format (readable by the authors' loader, and theirs by ours): `{folder}/{index}.npz`, each key
an array over the records of one trajectory (501 for a DMC episode at action repeat 2): the
dm_control observation keys [T, dim], `image` [T, 64, 64, 3] uint8, `reward`, `is_first`,
`is_last`, `is_terminal` [T, 1], and `pre_action` [T, A], the action that led to each record
(zeros at t = 0). Files are written atomically (`atomic_write`); V-D4RL's episodes are converted
into this format by download.py.

In memory a trajectory is a `dict[str, np.ndarray]` over time: scalars [T], vectors [T, dim],
images [T, H, W, 3] uint8. Batches are time-major torch tensors: [T, B, dim], images
[T, B, 3, H, W] float in [0, 1] (converted on the target device, never held as float on the host).

`WindowSampler` draws windows of consecutive records of its trajectories uniformly. `ReplayBuffer`
is the online agents' buffer: it appends finished episodes, saves each one in the same format, and
samples the same windows. Folders of trajectories read for training are common/datasets.py's.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union, cast

import numpy as np
import torch

Trajectory = dict[str, np.ndarray]
PathLike = Union[str, Path]

FLAG_KEYS: tuple[str, ...] = ("is_first", "is_last", "is_terminal")
IMAGE_KEYS: tuple[str, ...] = ("image",)


_UMASK = os.umask(0)  # the process's umask (read by setting it, then put back)
os.umask(_UMASK)


class DatasetError(ValueError):
    """A dataset that cannot be used, with the file and the problem named."""


# --------------------------------------------------------------------------------------------
# One trajectory on disk
# --------------------------------------------------------------------------------------------
def stack_records(records: Sequence[Mapping[str, np.ndarray]]) -> Trajectory:
    """Stack the per-step records of an environment into one trajectory."""
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


def atomic_write(
    path: PathLike, write: Callable[[Path], object], size: Optional[int] = None
) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place.

    A kill at any moment leaves either the old file or the new one, never a partial one; a full
    disk is one line naming the file (and the `size` it needed, where given), the old file kept.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # as a plain open() would: colleagues can read a dataset
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:  # the old file, if any, is still there
            need = f" ({size / 1e6:.1f} MB needed)" if size is not None else ""
            raise SystemExit(f"error: the disk is full: {path} could not be written{need}; "
                             f"the previous {path.name}, if any, is kept") from e  # fmt: skip
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(path: PathLike, payload: object) -> None:
    """`torch.save`, atomically and through memory: on a full disk torch's own writer says only
    "unexpected pos"; writing its bytes makes that an OSError `atomic_write` reports."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    atomic_write(path, lambda tmp: tmp.write_bytes(data), size=data.nbytes)


def remove_stale_temporaries(folder: PathLike) -> None:
    """Remove what writes killed mid-way left in `folder` (`atomic_write`'s `.{name}.*.tmp`)."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def save_trajectory(path: PathLike, trajectory: Mapping[str, np.ndarray]) -> None:
    """Write a trajectory as one compressed `.npz` in the authors' layout, atomically."""
    lengths = {k: len(v) for k, v in trajectory.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"cannot save {path}: keys have different lengths {lengths}")
    # The authors' files hold every non-image key with a trailing feature axis: [T, 1].
    arrays = {
        k: np.asarray(v)[:, None] if np.ndim(v) == 1 else np.asarray(v)
        for k, v in trajectory.items()
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **cast(dict[str, Any], arrays))

    atomic_write(path, write)


def _normalise(key: str, value: np.ndarray) -> np.ndarray:
    """Stored array -> in-memory layout: scalars [T], vectors [T, dim] float32, images uint8."""
    if key in FLAG_KEYS:
        return value.reshape(len(value)).astype(bool)
    if key == "reward":
        return value.reshape(len(value)).astype(np.float32)
    if key in IMAGE_KEYS:
        return value
    return value.reshape(len(value), -1).astype(np.float32)


def load_trajectory(path: PathLike, keys: Optional[Sequence[str]] = None) -> Trajectory:
    """Read the `keys` (default: all) of one trajectory file.

    Raises DatasetError naming the file for a corrupt file, a missing key or unequal lengths.
    """
    path = Path(path)
    try:
        with np.load(path) as npz:
            present = list(npz.files)
            wanted = list(present if keys is None else keys)
            missing = [k for k in wanted if k not in present]
            if missing:
                hint = (
                    " (a dataset collected with --no-render has no images)"
                    if "image" in missing
                    else ""
                )
                raise DatasetError(
                    f"{path}: missing key(s) {missing}{hint}; the file holds {sorted(present)}"
                )
            out = {k: npz[k] for k in wanted}
    except DatasetError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # cut short or damaged
        raise DatasetError(f"{path}: damaged trajectory file ({type(e).__name__}: {e})") from e
    except (ValueError, KeyError) as e:  # not an .npz at all (numpy suspects pickled data)
        raise DatasetError(f"{path}: not an .npz trajectory file ({type(e).__name__})") from e
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{path}: keys have inconsistent lengths {lengths}")
    for k in IMAGE_KEYS:
        if k in out and (out[k].dtype != np.uint8 or out[k].ndim != 4 or out[k].shape[-1] != 3):
            raise DatasetError(
                f"{path}: {k!r} must be uint8 [T, H, W, 3], got {out[k].dtype} {out[k].shape}"
            )
    return {k: _normalise(k, np.asarray(v)) for k, v in out.items()}


def numbered_files(folder: Path) -> list[Path]:
    """The trajectory files `{index}.npz` of `folder`, in the order of their indices."""
    return sorted((p for p in folder.glob("*.npz") if p.stem.isdigit()), key=lambda p: int(p.stem))


# --------------------------------------------------------------------------------------------
# Windows of consecutive records
# --------------------------------------------------------------------------------------------
def to_torch_batch(
    arrays: Mapping[str, np.ndarray], device: Union[str, torch.device]
) -> dict[str, torch.Tensor]:
    """Time-major numpy windows [T, B, ...] -> tensors on `device`; images [T, B, 3, H, W] float.

    Images travel as uint8 and become floats in [0, 1] on the device only; they keep the
    channels-last memory of the files (the fast layout for convolutions), shaped [T, B, 3, H, W].
    """
    batch = {}
    for k, v in arrays.items():
        x = torch.from_numpy(v).to(device, non_blocking=True)
        if k in IMAGE_KEYS:
            x = x.permute(0, 1, 4, 2, 3).float().div_(255.0)  # [T, B, 3, H, W], channels last
        batch[k] = x
    return batch


def sample_union(
    samplers: Sequence[WindowSampler], batch_size: int, horizon: int, device: torch.device,
    keys: list[str],
) -> dict[str, torch.Tensor]:  # fmt: skip
    """A batch from the union of the samplers (V-MAIL's B_E u B_pi): each window's source is
    drawn in proportion to the trajectories the sources hold (the first sampler's generator),
    then a window of it uniformly."""
    rng = samplers[0].rng
    sizes = np.array([len(s) for s in samplers], dtype=np.float64)
    counts = rng.multinomial(batch_size, sizes / sizes.sum())
    parts = []
    for sampler, n in zip(samplers, counts, strict=True):
        if n:
            traj, start = sampler.sample_windows(int(n), horizon)
            parts.append(sampler.gather(traj, start, horizon, keys))
    batch = {k: np.concatenate([p[k] for p in parts], axis=1) for k in keys}
    return to_torch_batch(batch, device)


def records_batch(
    records: Sequence[Mapping[str, np.ndarray]],
    keys: Sequence[str],
    device: Union[str, torch.device],
) -> dict[str, torch.Tensor]:
    """The current records of n environments as a batch of one step [1, n, ...] (images
    [1, n, 3, H, W] float in [0, 1]), the layout `to_torch_batch` gives sampled windows."""
    return to_torch_batch({k: np.stack([r[k] for r in records])[None] for k in keys}, device)


class WindowSampler:
    """Uniform sampling of windows of `horizon` consecutive records of one trajectory.

    Every valid window (trajectory i, start j with j + horizon <= length_i) is equally likely, so
    windows never cross a trajectory's end and longer trajectories give more windows.
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        self.trajectories: list[Trajectory] = []
        self.rng = np.random.default_rng(seed)
        self._lengths = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def lengths(self) -> np.ndarray:
        """Records per trajectory [N] (recomputed only when trajectories were added)."""
        if len(self._lengths) != len(self.trajectories):
            self._lengths = np.array(
                [len(next(iter(t.values()))) for t in self.trajectories], dtype=np.int64
            )
        return self._lengths

    @property
    def num_records(self) -> int:
        return int(self.lengths.sum())

    @property
    def transitions(self) -> int:
        """Actions taken over all trajectories (a trajectory of n records holds n - 1)."""
        return int((self.lengths - 1).sum())

    def subset(self, indices: Sequence[int], seed: Optional[int] = None) -> WindowSampler:
        """A sampler over the trajectories `indices` only (views, no copy): splits by trajectory."""
        part = WindowSampler(seed)
        part.trajectories = [self.trajectories[i] for i in indices]
        return part

    def windows(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Every valid window as (trajectory index, start) arrays, in order."""
        counts = np.maximum(self.lengths - horizon + 1, 0)
        traj = np.repeat(np.arange(len(counts)), counts)
        start = np.arange(len(traj)) - np.repeat(np.cumsum(counts) - counts, counts)
        return traj, start

    def require_windows(self, horizon: int) -> None:
        """Refuse a horizon longer than every trajectory (a script checks it before training)."""
        if not (self.lengths >= horizon).any():
            raise DatasetError(
                f"no trajectory has {horizon} records (the longest has "
                f"{self.lengths.max(initial=0)}); use a shorter horizon"
            )

    def sample_windows(self, batch_size: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` windows drawn uniformly (with replacement) from all valid windows."""
        self.require_windows(horizon)
        counts = np.maximum(self.lengths - horizon + 1, 0)
        total = int(counts.sum())
        flat = self.rng.integers(total, size=batch_size)
        ends = np.cumsum(counts)
        traj = np.searchsorted(ends, flat, side="right")
        start = flat - (ends[traj] - counts[traj])
        return traj, start

    def gather(
        self,
        traj: np.ndarray,
        start: np.ndarray,
        horizon: int,
        keys: Optional[Sequence[str]] = None,
    ) -> dict[str, np.ndarray]:
        """The windows as time-major numpy arrays [horizon, B, ...] (images stay uint8)."""
        keys = list(self.trajectories[0]) if keys is None else keys
        windows = list(zip(traj, start, strict=True))
        return {
            k: np.stack([self.trajectories[i][k][j : j + horizon] for i, j in windows], axis=1)
            for k in keys
        }

    def sample(
        self,
        batch_size: int,
        horizon: int,
        device: Union[str, torch.device] = "cpu",
        keys: Optional[Sequence[str]] = None,
    ) -> dict[str, torch.Tensor]:
        """A batch of uniformly drawn windows as time-major tensors (see `to_torch_batch`)."""
        traj, start = self.sample_windows(batch_size, horizon)
        return to_torch_batch(self.gather(traj, start, horizon, keys), device)


# --------------------------------------------------------------------------------------------
# Online replay
# --------------------------------------------------------------------------------------------
class ReplayBuffer(WindowSampler):
    """The online agents' buffer: finished episodes in memory (images uint8), each also saved
    whole to `{directory}/{index}.npz`. Episodes already in `directory` are loaded, so a resumed
    run continues where the files end. `keys` limits what is held in memory (e.g. no images for
    an agent that does not see them); the files always hold every key."""

    def __init__(
        self,
        directory: Optional[PathLike] = None,
        seed: Optional[int] = None,
        keys: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__(seed)
        self.directory = None if directory is None else Path(directory)
        self.keys = None if keys is None else list(keys)
        self._file_keys: Optional[set[str]] = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(".*.tmp"):  # left by a killed write
                stale.unlink()
            for path in numbered_files(self.directory):
                self.trajectories.append(load_trajectory(path, self.keys))
                if self._file_keys is None:  # the keys stored, without reading them again
                    with np.load(path) as stored:
                        self._file_keys = set(stored.files)

    def keep(self, n: int) -> None:
        """Drop every episode after the first `n`, and its file (those a killed run saved after
        its last checkpoint, which the resumed run collects again)."""
        for i in range(n, len(self.trajectories)):
            if self.directory is not None:
                (self.directory / f"{i}.npz").unlink(missing_ok=True)
        del self.trajectories[n:]

    def add(self, trajectory: Mapping[str, np.ndarray]) -> Optional[Path]:
        """Append a finished episode (and save it); returns the file written, if any."""
        episode = {k: _normalise(k, np.asarray(v)) for k, v in trajectory.items()}
        if self._file_keys is not None and set(episode) != self._file_keys:
            raise DatasetError(
                f"episode keys {sorted(episode)} differ from the buffer's {sorted(self._file_keys)}"
            )
        if self.keys is not None and not set(self.keys) <= set(episode):
            raise DatasetError(f"episode keys {sorted(episode)} lack some of {self.keys}")
        self._file_keys = set(episode)
        path = None
        if self.directory is not None:
            path = self.directory / f"{len(self.trajectories)}.npz"
            save_trajectory(path, episode)
        kept = episode if self.keys is None else {k: episode[k] for k in self.keys}
        self.trajectories.append(kept)
        return path
