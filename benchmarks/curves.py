"""Learning curves from runs' TensorBoard logs: one scalar against its step, a line per run, with
horizontal reference lines (e.g. random actions' and the expert's return); prints the points too.

    python benchmarks/curves.py runs/cartpole-balance__mdp__online__balance__vmail__{1,2,3} \
        --tag eval/balance/return --line random=282.9 expert=534.8 \
        --out docs/vmail-online.png
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro


@dataclass
class Args:
    runs: tyro.conf.Positional[tuple[str, ...]]
    """run folders (each holds a TensorBoard events file)"""
    tag: str = "eval/return"
    """the scalar to draw"""
    line: list[str] = field(default_factory=list)
    """horizontal reference lines NAME=VALUE"""
    xlabel: str = "simulator steps"
    """the x axis' label"""
    out: str = "curves.png"
    """the figure (PNG)"""


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of `tag` in the run's TensorBoard events, in order of step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        raise SystemExit(f"error: {run} logs no scalar {tag}; it has {acc.Tags()['scalars']}")
    return sorted((e.step, e.value) for e in acc.Scalars(tag))


def main(args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = {}
    for item in args.line:
        name, _, value = item.partition("=")
        try:
            lines[name] = float(value)
        except ValueError:
            raise SystemExit(f"error: --line {item!r} is not NAME=NUMBER") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in map(Path, args.runs):
        if not run.is_dir():
            raise SystemExit(f"error: {run} is not a run folder")
        points = scalars(run, args.tag)
        print(f"{run.name}: " + ", ".join(f"{s}: {v:.1f}" for s, v in points))
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=run.name)
    for i, (name, level) in enumerate(lines.items()):
        ax.axhline(level, color=f"C{len(args.runs) + i}", linestyle="--", label=f"{name} {level:g}")
    ax.set_xlabel(args.xlabel)
    ax.set_ylabel(args.tag)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"figure written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main(tyro.cli(Args))
