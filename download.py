"""Fetch the AIME authors' published datasets and world models into the folders the scripts read.

    python download.py walker-random walker-plan2explore-buffer walker-stand-buffer \
        walker-walk-buffer walker-run-expert                   # the walker mix and run's demos
    python download.py --models                                # their pretrained world models

The authors publish each dataset as one `{name}.tgz` and their world models as
`pretrained-models.tgz` in their GitHub release (https://github.com/argmax-ai/aime/releases,
CC BY 4.0). A dataset archive holds the folder `{name}/` of `.npz` trajectories, unpacked into
`--data-dir` (`datasets/`), where the scripts read the authors' names unchanged (`walker-mix` is
read in place from its four parts, `{env}-plan2explore-buffer` as `--body-data p2e`). The models
archive unpacks into `--models-dir` (`pretrained-models/`): one folder per model
(`walker-mix-visual/` with `model.pt` and `config.yaml`), which `aime.py --world-model` loads.

`--source` takes another address, or a local folder holding the same archives (a mirror, or
archives downloaded by hand). A folder that exists already is left as it is.

    python download.py --vd4rl path/to/v-d4rl/walker_walk/expert/64px walker-walk-vd4rl

converts a folder of V-D4RL episodes (Lu et al., 2022: DreamerV2's `{time}-{id}-{length}.npz`
with `image` [T, 64, 64, 3] or channel-first `observation`, `action`, `reward`, `discount`) into
`{data_dir}/{name}/` in this format: `action[t]`, which led to observation t in DreamerV2's
layout, becomes `pre_action[t]`; `discount == 0` becomes `is_terminal`; `is_first` and `is_last`
mark each episode's ends (where an episode holds its own step flags, those are kept). They
hold images only (`--obs visual`).
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import tyro

from common.datasets import AUTHORS_RELEASE
from common.replay import save_trajectory
from common.run import derived


@dataclass
class Args:
    """Download and unpack the AIME authors' datasets and world models.

    Example: python download.py walker-random walker-run-expert"""

    names: tyro.conf.Positional[tuple[str, ...]] = ()
    """datasets by the authors' folder names, e.g. walker-random walker-run-expert (with
    --vd4rl: the one folder to write)"""
    models: bool = False
    """also fetch their pretrained world models (pretrained-models.tgz)"""
    data_dir: str = "datasets"
    """where datasets go: {data_dir}/{name}/"""
    models_dir: str = "pretrained-models"
    """where world models go: {models_dir}/{model}/model.pt and config.yaml"""
    source: str = AUTHORS_RELEASE + "/download"
    """the address the archives are fetched from, or a local folder that holds them"""
    vd4rl: Annotated[Optional[str], derived("none: download", "FOLDER")] = None
    """convert this folder of V-D4RL episodes into {data_dir}/{name}/ (one name) instead"""


def vd4rl_trajectory(path: Path) -> dict[str, np.ndarray]:
    """One V-D4RL episode in this repository's keys (module docstring)."""
    try:
        with np.load(path) as npz:
            image = npz["image"] if "image" in npz.files else npz["observation"]
            action, reward, discount = npz["action"], npz["reward"], npz["discount"]
            held = {k: npz[k] for k in ("is_first", "is_last", "is_terminal") if k in npz.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise SystemExit(f"error: {path} is not a V-D4RL episode ({type(e).__name__}: {e})") from e
    T = len(action)
    return {
        "image": image.transpose(0, 2, 3, 1) if image.shape[1] == 3 else image,
        "pre_action": action,
        "reward": reward,
        "is_first": np.arange(T) == 0,
        "is_last": np.arange(T) == T - 1,
        "is_terminal": np.asarray(discount) == 0,
        **held,  # the step flags an episode holds itself, where it does
    }


def convert_vd4rl(source: Path, folder: Path) -> Path:
    """Write V-D4RL's episodes in `source`, in their names' order, as `{folder}/{i}.npz`."""
    episodes = sorted(source.glob("*.npz")) if source.is_dir() else []
    if not episodes:
        raise SystemExit(f"error: --vd4rl {source} is not a folder of .npz episodes")
    if folder.exists() and any(folder.glob("*.npz")):
        raise SystemExit(f"error: {folder} holds trajectories already; name another folder")
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(episodes):
        save_trajectory(folder / f"{i}.npz", vd4rl_trajectory(path))
    print(f"{folder}: {len(episodes)} trajectories from {source}")
    return folder


def fetch(source: str, archive: str, into: Path) -> Path:
    """The archive `archive` of `source` (an address or a folder), as a local file."""
    if not source.startswith(("http://", "https://")):
        path = Path(source) / archive
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist")
        return path
    url = f"{source.rstrip('/')}/{archive}"
    target = into / archive
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as e:
        raise SystemExit(f"error: could not download {url}: {e}") from e
    return target


def unpack(archive: Path, into: Path, expect: str | None) -> list[str]:
    """Unpack a .tgz into `into`, refusing members that would land outside it; with `expect`,
    the archive must hold that folder. Returns the top-level folders it held."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:  # nothing may land outside `into` (tarfile's "data" filter too)
                if (
                    Path(m.name).is_absolute()
                    or ".." in Path(m.name).parts
                    or m.issym()
                    or m.islnk()
                ):
                    raise SystemExit(f"error: {archive}: refusing the member {m.name}")
            tops = sorted({Path(m.name).parts[0] for m in members if Path(m.name).parts})
            if expect is not None and expect not in tops:
                raise SystemExit(f"error: {archive} holds {tops}, not the folder {expect}/")
            into.mkdir(parents=True, exist_ok=True)
            tar.extractall(into, members)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SystemExit(f"error: {archive} is not a readable .tgz archive: {e}") from e
    return tops


def main(args: Args) -> list[Path]:
    if args.vd4rl is not None:
        if len(args.names) != 1 or args.models:
            raise SystemExit("error: --vd4rl converts into one folder: name it (and no --models)")
        return [convert_vd4rl(Path(args.vd4rl), Path(args.data_dir) / args.names[0])]
    if not args.names and not args.models:
        raise SystemExit("error: name the datasets to fetch (e.g. walker-random) or pass --models")
    got: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            folder = Path(args.data_dir) / name
            if folder.is_dir() and any(folder.glob("*.npz")):
                print(f"{folder}: there already, left as it is")
                continue
            unpack(fetch(args.source, f"{name}.tgz", Path(tmp)), Path(args.data_dir), name)
            count = len(list(folder.glob("*.npz")))
            print(f"{folder}: {count} trajectories")
            got.append(folder)
        if args.models:
            archive = fetch(args.source, "pretrained-models.tgz", Path(tmp))
            for top in unpack(archive, Path(args.models_dir), None):
                print(f"{Path(args.models_dir) / top}: unpacked")
                got.append(Path(args.models_dir) / top)
    return got


if __name__ == "__main__":
    main(tyro.cli(Args))
