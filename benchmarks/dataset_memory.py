"""Peak memory of loading a large image dataset through `TrajectoryDataset`, and sampling from it.

    python benchmarks/dataset_memory.py --num-trajectories 1000

Writes a synthetic walker-like dataset (501 records of 64x64x3 noise images per trajectory,
incompressible, so the files are as large as they can be), then in fresh processes: builds the
memory-mapped cache, loads the dataset from the cache, and samples batches of 50 windows of 50
records. Prints the peak resident memory of each step, split into anonymous memory (what the
process itself holds) and file-backed pages (the page cache the kernel may drop at will).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Args:
    num_trajectories: int = 1000
    """trajectories of 501 records (1000 is one embodiment dataset, 6.2 GB of uint8 images)"""
    folder: str = "/tmp/aime-memory-benchmark/walker-synthetic"
    """where the synthetic dataset (and its cache) is written"""
    batches: int = 200
    """batches of 50 x 50 sampled after loading"""
    keep: bool = False
    """keep the dataset afterwards"""


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (e.g. VmHWM, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def write_dataset(folder: Path, n: int) -> None:
    from common.replay import save_trajectory

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"{i}.npz"
        if path.exists():
            continue
        T = 501
        save_trajectory(
            path,
            {
                "image": rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8),
                "orientations": rng.normal(size=(T, 14)).astype(np.float32),
                "height": rng.normal(size=(T, 1)).astype(np.float32),
                "velocity": rng.normal(size=(T, 9)).astype(np.float32),
                "pre_action": rng.uniform(-1, 1, (T, 6)).astype(np.float32),
                "reward": rng.uniform(size=T).astype(np.float32),
                "is_first": np.arange(T) == 0,
                "is_last": np.arange(T) == T - 1,
                "is_terminal": np.zeros(T, bool),
            },
        )


def measure(folder: str, batches: int) -> None:
    """Runs in a fresh process: load (building the cache if needed), then sample."""
    from common.datasets import TrajectoryDataset

    t0 = time.time()
    data = TrajectoryDataset(folder, ["image", "pre_action"], seed=0, progress=False)
    load_s = time.time() - t0
    after_load = {"hwm_mb": status_kb("VmHWM") / 1024, "anon_mb": status_kb("RssAnon") / 1024}
    t0 = time.time()
    for _ in range(batches):
        batch = data.sample(50, 50)
    sample_s = time.time() - t0
    result = {
        "load_s": load_s,
        "after_load": after_load,
        "batches_per_s": batches / sample_s,
        "batch_image_shape": list(batch["image"].shape),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_mb": status_kb("RssAnon") / 1024,
        "file_mb": status_kb("RssFile") / 1024,
        "records": data.num_records,
    }
    print(json.dumps(result))


def main(args: Args) -> None:
    folder = Path(args.folder)
    t0 = time.time()
    write_dataset(folder, args.num_trajectories)
    npz_gb = sum(p.stat().st_size for p in folder.glob("*.npz")) / 1e9
    written_s = time.time() - t0
    print(
        f"dataset: {args.num_trajectories} trajectories, {npz_gb:.2f} GB .npz ({written_s:.0f} s)"
    )
    images_gb = args.num_trajectories * 501 * 64 * 64 * 3 / 1e9
    print(f"images: {images_gb:.2f} GB as uint8, {4 * images_gb:.2f} GB as float32")
    for step in ["first load (builds the cache)", "second load (cache exists)"]:
        run = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder), str(args.batches)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(
            f"{step}: load {r['load_s']:.1f} s, peak RSS after load "
            f"{r['after_load']['hwm_mb']:.0f} MB (anonymous {r['after_load']['anon_mb']:.0f} MB); "
            f"sampling {r['batches_per_s']:.1f} "
            f"batches/s of {r['batch_image_shape']}; peak RSS {r['peak_rss_mb']:.0f} MB, of which "
            f"anonymous {r['anon_mb']:.0f} MB and file-backed (page cache) {r['file_mb']:.0f} MB"
        )
    if not args.keep:
        import shutil

        shutil.rmtree(folder)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        measure(sys.argv[2], int(sys.argv[3]))
    else:
        main(tyro.cli(Args))
