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
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import tyro

from common.datasets import AUTHORS_RELEASE


@dataclass
class Args:
    """Download and unpack the AIME authors' datasets and world models.

    Example: python download.py walker-random walker-run-expert"""

    names: tyro.conf.Positional[tuple[str, ...]] = ()
    """datasets by the authors' folder names, e.g. walker-random walker-run-expert"""
    models: bool = False
    """also fetch their pretrained world models (pretrained-models.tgz)"""
    data_dir: str = "datasets"
    """where datasets go: {data_dir}/{name}/"""
    models_dir: str = "pretrained-models"
    """where world models go: {models_dir}/{model}/model.pt and config.yaml"""
    source: str = AUTHORS_RELEASE + "/download"
    """the address the archives are fetched from, or a local folder that holds them"""


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
