"""Gather every `results.json` under a runs folder into the AIME paper's table, beside the
published scores.

    python results_table.py --runs-dir runs

Cells are embodiment dataset -> demonstration task (`mix->run`), columns method and setting
(`AIME-Visual`, `BCO(0)-MDP`, ...), as in the paper's Figures 2 and 3. Runs are kept apart by
method, by ablation (`AIME (KL only)-MDP` for `--kl-only`, likewise `rec only`, `IDM`) and by
number of demonstrations; only the plain methods with 100 demonstrations, the paper's setting,
are compared with the published scores. A row's mean and standard deviation pool the
per-episode normalised scores of all its seeds, as the published ones pool 100 evaluation
episodes (`--spread seeds`: the mean and std over the seeds' mean scores instead). A row is
flagged `*` when its mean falls outside the published mean +- one standard deviation. Writes
`{runs-dir}/results.md`, `{runs-dir}/results.png` (bars per cell: Figures 2, 3 and, with
ablations, 5) and, where a cell has runs with several numbers of demonstrations,
`{runs-dir}/demos.png` (score against the number of demonstrations: Figure 4).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
import tyro

from common.run import derived

ALGORITHMS = {"aime": "AIME", "bco0": "BCO(0)", "bc": "BC", "iidm": "IIDM", "vmail": "V-MAIL"}
SETTINGS = {"mdp": "MDP", "lpomdp": "LPOMDP", "visual": "Visual"}
SHORT_TASKS = {"runbackward": "runb", "flipbackward": "flipb"}  # the paper's abbreviations


@dataclass
class Args:
    """Every results.json under a runs folder as the paper's table, beside the published scores,
    with a figure.

    Example: python results_table.py --runs-dir runs"""

    runs_dir: str = "runs"
    """folder searched (recursively) for results.json files"""
    reference: str = str(Path(__file__).parent / "reference" / "aime-paper-scores.json")
    """the published scores"""
    markdown: Annotated[Optional[str], derived("{runs-dir}/results.md", "PATH")] = None
    """where the markdown table goes"""
    figure: Annotated[Optional[str], derived("{runs-dir}/results.png", "PATH")] = None
    """where the figure goes; 'none' for no figure"""
    demos_figure: Annotated[Optional[str], derived("{runs-dir}/demos.png", "PATH")] = None
    """where the Figure 4 plot goes; 'none' for no plot"""
    spread: Literal["episodes", "seeds"] = "episodes"
    """a row's mean +- std: over every evaluation episode of every seed pooled (the paper's 100
    episodes), or over the seeds' mean scores (std with ddof 0)"""


@dataclass
class Cell:
    """Our score of one embodiment dataset -> task cell for one method and setting."""

    mean: float
    std: float
    seeds: int
    episodes: int
    random: Optional[float] = None  # the random policy's score on the same episodes, where known
    random_std: Optional[float] = None  # its std over the runs (one per seed)


def dataset_name(env: str, name: Optional[str]) -> str:
    """A --body-data or --demo value -> the paper's short name (walker-stand-buffer -> stand);
    `none` for the BC oracle, which reads no embodiment data."""
    if name is None:
        return "none"
    name = Path(name).name if "/" in name else name
    name = name.removeprefix(f"{env}-").removesuffix("-buffer").removesuffix("-expert")
    name = {"plan2explore": "p2e"}.get(name, name)
    return SHORT_TASKS.get(name, name)


ABLATIONS = {"kl_only": "KL only", "rec_only": "rec only", "use_idm": "IDM"}  # AIME Figure 5
Key = tuple[str, str, str, int]  # (env, 'body->task', 'AIME-Visual', number of demonstrations)
Curves = dict[tuple[str, str], dict[str, list[tuple[int, float, float]]]]  # Figure 4's lines


def method_name(r: dict[str, Any]) -> str:
    """'AIME-Visual', or with an ablation's flags 'AIME (KL only)-Visual'."""
    args = r.get("args", {})
    name = ALGORITHMS.get(r["algorithm"], r["algorithm"])
    flags = [label for flag, label in ABLATIONS.items() if args.get(flag)]
    if flags:
        name += " (" + ", ".join(flags) + ")"
    return f"{name}-{SETTINGS[r['obs']]}"


# What a results.json must hold to enter the table, with each field's type.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "algorithm": str, "env": str, "obs": str, "body_data": (str, type(None)), "demo": str,
    "returns": list, "expert_return": (int, float),
}  # fmt: skip


def read_result(path: Path) -> Optional[dict[str, Any]]:
    """A run's results.json, or None with one warning line naming the file where it is damaged
    (cut short, not a JSON object, a field missing or of the wrong kind); the rest are tabled."""
    try:
        r = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        why = f"not readable JSON ({e})"
    else:
        bad = [k for k, kind in FIELDS.items() if not isinstance(r, dict)
               or not isinstance(r.get(k), kind)]  # fmt: skip
        if not isinstance(r, dict):
            why = "not a JSON object"
        elif bad:
            why = f"missing or malformed: {', '.join(bad)}"
        elif r["obs"] not in SETTINGS or not r["returns"] or r["expert_return"] <= 0:
            why = "unknown setting, no returns or a non-positive expert return"
        elif not all(isinstance(x, (int, float)) for x in r["returns"]):
            why = "returns that are not numbers"
        else:
            return r
    print(f"warning: skipped {path}: {why}")
    return None


def gather(runs_dir: Path, spread: str = "episodes") -> dict[Key, Cell]:
    """(env, 'body->task', method, demonstrations) -> our score, from every results.json: the
    mean and std of every episode of every seed pooled, or with `spread` "seeds" of the seeds'
    mean scores (with the random policy's score on the same episodes, where the runs recorded
    it)."""
    pooled: dict[Key, list[list[float]]] = defaultdict(list)
    randoms: dict[Key, list[float]] = defaultdict(list)
    for path in sorted(runs_dir.rglob("results.json")):
        r = read_result(path)
        if r is None:
            continue
        expert = r["expert_return"]
        # The paper's D_body -> D_demo: a run on other demonstrations gets a cell of its own.
        cell = f"{dataset_name(r['env'], r['body_data'])}->{dataset_name(r['env'], r['demo'])}"
        key = (r["env"], cell, method_name(r), int(r.get("num_demos", 100)))
        pooled[key].append([100 * x / expert for x in r["returns"]])
        if "random_normalised_score" in r:
            randoms[key].append(r["random_normalised_score"])
    cells = {}
    for key, runs in pooled.items():
        scores = [np.mean(x) for x in runs] if spread == "seeds" else np.concatenate(runs)
        random, random_std = (
            (float(np.mean(randoms[key])), float(np.std(randoms[key])))
            if randoms[key]
            else (None, None)
        )
        cells[key] = Cell(float(np.mean(scores)), float(np.std(scores)), len(runs),
                          sum(len(x) for x in runs), random, random_std)  # fmt: skip
    return cells


def table(ours: dict[Key, Cell], published: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per cell, method and number of demonstrations: ours, the paper's (for its 100
    demonstrations only), and whether ours is outside its mean +- std."""
    rows = []
    for (env, cell, method, demos), c in sorted(ours.items()):
        paper = published["cells"].get(env, {}).get(cell, {}).get(method) if demos == 100 else None
        outside = paper is not None and abs(c.mean - paper["mean"]) > paper["std"]
        rows.append({"env": env, "cell": cell, "method": method, "demos": demos, "ours": c,
                     "paper": paper, "flag": outside})  # fmt: skip
    return rows


def random_row(block: list[dict[str, Any]], spread: str) -> Optional[str]:
    """The random policy's row of one (embodiment, cell) block: uniform random actions from the
    same initial states as the block's runs at its largest number of demonstrations, normalised
    as they are (with `spread` "seeds", +- its std over the seeds); None where no run recorded
    it."""
    most = max(r["demos"] for r in block)
    known = [r for r in block if r["demos"] == most and r["ours"].random is not None]
    if not known:
        return None
    c, row = known[0]["ours"], known[0]
    score = f"{c.random:.1f} +- {c.random_std:.1f}" if spread == "seeds" else f"{c.random:.1f}"
    return (
        f"| {row['env']} | {row['cell']} | random actions | {most} | {score} | {c.seeds} | - |  |"
    )


def markdown(rows: list[dict[str, Any]], spread: str = "episodes") -> str:
    """The table, one row per cell, method and number of demonstrations (`rows` in `table`'s
    order, a cell's rows together), and after each cell's rows the random policy's (`random_row`;
    a BC oracle's `none->task` cell has none where another cell of the same task has one)."""
    lines = [
        "| embodiment | dataset -> task | method | demos | ours (mean +- std) | seeds | paper "
        "| outside |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with_body = {(r["env"], r["cell"].split("->")[1]) for r in rows
                 if not r["cell"].startswith("none->")}  # fmt: skip
    for (env, cell), group in itertools.groupby(rows, key=lambda r: (r["env"], r["cell"])):
        block = list(group)
        for row in block:
            c, p = row["ours"], row["paper"]
            paper = f"{p['mean']:.1f} +- {p['std']:.1f}" if p else "-"
            lines.append(
                f"| {env} | {cell} | {row['method']} | {row['demos']} | {c.mean:.1f} +- "
                f"{c.std:.1f} | {c.seeds} | {paper} | {'*' if row['flag'] else ''} |"
            )
        line = random_row(block, spread)
        if line and not (cell.startswith("none->") and (env, cell.split("->")[1]) in with_body):
            lines.append(line)
    return "\n".join(lines) + "\n"


def demo_curves(rows: list[dict[str, Any]]) -> Curves:
    """Figure 4's data: for each (env, cell), each method with runs at two or more numbers of
    demonstrations, as (demonstrations, mean, std) points in increasing demonstrations. The BC
    oracle's lines (cell `none->task`, no embodiment data) join every cell of the same task, as
    in the paper's figure, and have a panel of their own only where no such cell has lines."""
    curves: Curves = defaultdict(lambda: defaultdict(list))
    for r in rows:
        curves[(r["env"], r["cell"])][r["method"]].append(
            (r["demos"], r["ours"].mean, r["ours"].std)
        )
    lines = {
        where: {m: sorted(points) for m, points in methods.items() if len(points) >= 2}
        for where, methods in curves.items()
    }
    lines = {where: methods for where, methods in lines.items() if methods}
    for (env, cell), oracle in [(w, m) for w, m in lines.items() if w[1].startswith("none->")]:
        task = cell.removeprefix("none->")
        others = [w for w in lines if w[0] == env and w[1].endswith(f"->{task}") and w[1] != cell]
        for where in others:
            lines[where].update(oracle)
        if others:
            del lines[(env, cell)]
    return lines


def demos_figure(curves: Curves, path: Path) -> None:
    """Figure 4: normalised score against the number of demonstrations (log x axis), one line per
    method with its row's std (`--spread`) shaded, one panel per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
    for ax, ((env, cell), methods) in zip(axes.flat, sorted(curves.items()), strict=True):
        for method, points in sorted(methods.items()):
            n, mean, std = (np.array(x, dtype=float) for x in zip(*points, strict=True))
            ax.plot(n, mean, marker="o", label=method)
            ax.fill_between(n, mean - std, mean + std, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("number of demonstrations")
        ax.set_ylabel("normalised score")
        ax.set_title(f"{env}: {cell}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


CAPTION = (
    "Bars: our mean normalised score (100 x return / the demonstrations' mean return); error bars: "
    "+-1 std over {spread} (counts under each bar). Paper: the published mean +- std (AIME, 100 "
    "episodes), where it has the cell. Lines: the expert (100) and the random policy on the same "
    "episodes."
)
SPREADS = {"episodes": "every evaluation episode of every seed", "seeds": "the seeds' mean scores"}


def figure(rows: list[dict[str, Any]], path: Path, spread: str = "episodes") -> None:
    """A grid of bar charts, one per embodiment dataset -> task, ours beside the paper's where
    it has a number, with the expert's and the random policy's scores as reference lines; each
    method at its largest number of demonstrations (the others are Figure 4's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a method's runs at fewer demonstrations than its most are Figure 4's (`demos_figure`)
    most: dict[tuple[str, str, str], int] = defaultdict(int)
    for r in rows:
        most[(r["env"], r["cell"], r["method"])] = max(
            most[(r["env"], r["cell"], r["method"])], r["demos"]
        )
    rows = [r for r in rows if r["demos"] == most[(r["env"], r["cell"], r["method"])]]
    cells = sorted({(r["env"], r["cell"]) for r in rows})
    cols = min(3, len(cells))
    nrows = (len(cells) + cols - 1) // cols
    width = max(5.0, 1.05 * max(sum((r["env"], r["cell"]) == c for r in rows) for c in cells))
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 3.6 * nrows + 0.9), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (env, cell) in zip(axes.flat, cells, strict=False):
        here = [r for r in rows if (r["env"], r["cell"]) == (env, cell)]
        for x, r in enumerate(here):
            c, p = r["ours"], r["paper"]
            shift = -0.2 if p else 0.0  # centred where the paper has no bar beside it
            handles["ours"] = ax.bar(x + shift, c.mean, 0.4, yerr=c.std, capsize=3, color="C0")
            if p:
                handles["paper"] = ax.bar(x + 0.2, p["mean"], 0.4, yerr=p["std"], capsize=3,
                                          color="C1")  # fmt: skip
        handles["expert (100)"] = ax.axhline(100, color="0.3", linestyle="--", linewidth=1)
        randoms = [r["ours"].random for r in here if r["ours"].random is not None]
        if randoms:
            handles["random policy"] = ax.axhline(
                float(np.mean(randoms)), color="C3", linestyle=":", linewidth=1.5
            )
        names = []
        for r in here:  # 'AIME-MDP' over its counts, and its demonstrations where not 100
            c, plural = r["ours"], "s" if r["ours"].seeds > 1 else ""
            name = "\n".join(r["method"].rsplit("-", 1))  # the setting under the method
            demos = "" if r["demos"] == 100 else f"\n{r['demos']} demos"
            names.append(f"{name}\n{c.episodes} ep., {c.seeds} seed{plural}{demos}")
        ax.set_xticks(range(len(here)), names, fontsize=8)
        ax.set_xlim(-0.6, len(here) - 0.4)
        ax.set_ylim(0, max(110, *(r["ours"].mean + r["ours"].std + 5 for r in here)))
        ax.set_title(f"{env}: {cell}", fontsize=10)
        ax.set_ylabel("normalised score")
    for ax in axes.flat[len(cells) :]:
        ax.axis("off")
    order = [k for k in ("ours", "paper", "expert (100)", "random policy") if k in handles]
    fig.legend([handles[k] for k in order], order, loc="upper center", ncol=len(order),
               frameon=False, fontsize=9)  # fmt: skip
    fig.text(
        0.5,
        0.01,
        CAPTION.format(spread=SPREADS[spread]),
        ha="center",
        va="bottom",
        fontsize=7.5,
        wrap=True,
    )
    fig.tight_layout(rect=(0, 0.1 / nrows, 1, 1 - 0.07 / nrows))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(args: Args) -> list[dict[str, Any]]:
    runs_dir = Path(args.runs_dir)
    published = json.loads(Path(args.reference).read_text())
    rows = table(gather(runs_dir, args.spread), published)
    if not rows:
        raise SystemExit(f"error: no results.json under {runs_dir}")
    text = markdown(rows, args.spread)
    print(text, end="")
    compared = [r for r in rows if r["paper"]]
    if compared:
        flagged = sum(r["flag"] for r in compared)
        print(f"{flagged} of the {len(compared)} rows the paper has outside its mean +- std (*)")
    else:
        print("the paper has none of these rows: nothing to compare with")
    (Path(args.markdown) if args.markdown else runs_dir / "results.md").write_text(text)
    if args.figure != "none":
        figure(rows, Path(args.figure) if args.figure else runs_dir / "results.png", args.spread)
    curves = demo_curves(rows)
    if curves and args.demos_figure != "none":
        demos = Path(args.demos_figure) if args.demos_figure else runs_dir / "demos.png"
        demos_figure(curves, demos)
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
