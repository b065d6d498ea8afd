"""results_table.py on synthetic results.json files: pooled means, standard deviations, flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

import results_table


def write(
    path: Path,
    algorithm: str,
    env: str,
    task: str,
    obs: str,
    body: Optional[str],
    returns: list[float],
    expert: float,
    num_demos: int = 100,
    **flags: bool,
) -> None:
    path.mkdir(parents=True)
    result = {"algorithm": algorithm, "env": env, "task": task, "obs": obs, "body_data": body,
              "demo": task, "returns": returns, "expert_return": expert, "num_demos": num_demos,
              "args": flags}  # fmt: skip
    (path / "results.json").write_text(json.dumps(result))


def test_cells_pool_seeds_and_flag_against_the_paper(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # walker mix -> run, AIME Visual, two seeds; the paper: 61.11 +- 12.9 (see the reference).
    write(runs / "a1", "aime", "walker", "run", "visual", "mix", [302.05, 290.0], 604.10)
    write(runs / "a2", "aime", "walker", "run", "visual", "mix", [270.0], 604.10)
    # cheetah runbackward from the authors' flip buffer given as a path, BCO(0) MDP.
    write(
        runs / "b",
        "bco0",
        "cheetah",
        "runbackward",
        "mdp",
        "datasets/cheetah-flip-buffer",
        [10.0, 30.0],
        218.5,
    )
    # Random trajectories standing in for demonstrations: a cell of their own, not the paper's.
    write(runs / "c", "aime", "walker", "walk", "mdp", "random", [40.0], 943.79)
    result = json.loads((runs / "c" / "results.json").read_text())
    (runs / "c" / "results.json").write_text(
        json.dumps({**result, "demo": "datasets/walker-random"})
    )
    rows = results_table.main(
        results_table.Args(runs_dir=str(runs), figure=str(tmp_path / "f.png"))
    )
    by = {(r["env"], r["cell"], r["method"]): r for r in rows}
    aime = by[("walker", "mix->run", "AIME-Visual")]
    scores = 100 * np.array([302.05, 290.0, 270.0]) / 604.10
    assert aime["ours"].mean == pytest.approx(scores.mean()) and aime["ours"].std == pytest.approx(
        scores.std()
    )
    assert aime["ours"].seeds == 2 and aime["ours"].episodes == 3
    published = json.loads(
        (Path(results_table.__file__).parent / "reference" / "aime-paper-scores.json").read_text()
    )
    paper = published["cells"]["walker"]["mix->run"]["AIME-Visual"]
    assert aime["paper"] == paper
    assert aime["flag"] == (abs(scores.mean() - paper["mean"]) > paper["std"])
    bco = by[("cheetah", "flip->runb", "BCO(0)-MDP")]
    assert bco["ours"].mean == pytest.approx(100 * 20 / 218.5)
    assert bco["paper"] == published["cells"]["cheetah"]["flip->runb"]["BCO(0)-MDP"]
    assert by[("walker", "random->random", "AIME-MDP")]["paper"] is None
    assert (runs / "results.md").read_text().count("\n") == 2 + 3
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_spread_over_seeds_takes_the_std_of_the_seeds_mean_scores(tmp_path: Path) -> None:
    """`--spread seeds`: a row is the mean and std (ddof 0) of its seeds' mean scores, not of
    their episodes pooled; its figure says so."""
    runs = tmp_path / "runs"
    write(runs / "s1", "aime", "cartpole", "swingup", "lpomdp", "random", [100.0, 300.0], 400.0, 20)
    write(runs / "s2", "aime", "cartpole", "swingup", "lpomdp", "random", [240.0], 400.0, 20)
    pooled = results_table.main(results_table.Args(runs_dir=str(runs), figure="none"))
    (seeds,) = results_table.main(
        results_table.Args(runs_dir=str(runs), figure=str(tmp_path / "f.png"), spread="seeds")
    )
    per_seed = [50.0, 60.0]  # normalised: seed 1's episodes 25 and 75, seed 2's 60
    assert seeds["ours"].mean == pytest.approx(np.mean(per_seed))
    assert seeds["ours"].std == pytest.approx(np.std(per_seed))  # 5.0
    assert pooled[0]["ours"].std == pytest.approx(np.std([25.0, 75.0, 60.0]))  # 20.9
    assert (seeds["ours"].seeds, seeds["ours"].episodes) == (2, 3)
    assert "seeds' mean scores" in results_table.CAPTION.format(
        spread=results_table.SPREADS["seeds"]
    )
    assert (tmp_path / "f.png").is_file()


def test_flags_follow_the_published_interval() -> None:
    published = json.loads(results_table.Path(results_table.Args.reference).read_text())
    cell = published["cells"]["walker"]["random->stand"]
    mdp, lpomdp = cell["AIME-MDP"], cell["AIME-LPOMDP"]
    ours = {
        ("walker", "random->stand", "AIME-MDP", 100): results_table.Cell(
            mdp["mean"] + 0.9 * mdp["std"], 1, 1, 100
        ),
        ("walker", "random->stand", "AIME-LPOMDP", 100): results_table.Cell(
            lpomdp["mean"] - 1.1 * lpomdp["std"], 1, 1, 100
        ),
        ("walker", "random->jump", "AIME-MDP", 100): results_table.Cell(
            50.0, 1, 1, 100
        ),  # not in the paper
    }
    flags = {
        (r["cell"], r["method"]): (r["flag"], r["paper"])
        for r in results_table.table(ours, published)
    }
    assert flags[("random->stand", "AIME-MDP")] == (False, mdp)
    assert flags[("random->stand", "AIME-LPOMDP")] == (True, lpomdp)
    assert flags[("random->jump", "AIME-MDP")] == (False, None)


def test_no_results_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no results\.json"):
        results_table.main(results_table.Args(runs_dir=str(tmp_path)))


def test_demonstration_counts_and_ablations_stay_apart(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs / "a10", "aime", "walker", "run", "mdp", "mix", [60.41], 604.10, num_demos=10)
    write(runs / "a100", "aime", "walker", "run", "mdp", "mix", [302.05], 604.10)
    write(runs / "kl", "aime", "walker", "run", "mdp", "mix", [120.82], 604.10, kl_only=True)
    write(runs / "b10", "bco0", "walker", "run", "mdp", "mix", [120.82], 604.10, num_demos=10)
    write(runs / "b100", "bco0", "walker", "run", "mdp", "mix", [181.23], 604.10)
    write(runs / "c1", "bc", "walker", "run", "mdp", None, [241.64], 604.10, num_demos=1)
    rows = results_table.main(
        results_table.Args(runs_dir=str(runs), figure="none", demos_figure=str(tmp_path / "d.png"))
    )
    by = {(r["cell"], r["method"], r["demos"]): r["ours"].mean for r in rows}
    assert by[("mix->run", "AIME-MDP", 10)] == pytest.approx(10.0)
    assert by[("mix->run", "AIME-MDP", 100)] == pytest.approx(50.0)
    assert by[("mix->run", "AIME (KL only)-MDP", 100)] == pytest.approx(20.0)
    assert by[("none->run", "BC-MDP", 1)] == pytest.approx(40.0)
    papers = {(r["method"], r["demos"]): r["paper"] is not None for r in rows}
    assert papers[("AIME-MDP", 100)] and not papers[("AIME-MDP", 10)]
    assert not papers[("AIME (KL only)-MDP", 100)]  # the paper's table has no ablations
    curves = results_table.demo_curves(rows)
    assert set(curves) == {("walker", "mix->run")}  # the BC cell has one count only
    lines = curves[("walker", "mix->run")]
    assert [n for n, _, _ in lines["AIME-MDP"]] == [10, 100]
    assert [n for n, _, _ in lines["BCO(0)-MDP"]] == [10, 100]
    assert "AIME (KL only)-MDP" not in lines  # one count: a point, not a line of Figure 4
    assert (tmp_path / "d.png").stat().st_size > 1000
    # With a second count the BC oracle's line joins the panel of the same task, as in Figure 4.
    write(runs / "c5", "bc", "walker", "run", "mdp", None, [302.05], 604.10, num_demos=5)
    rows = results_table.main(results_table.Args(runs_dir=str(runs), figure="none"))
    curves = results_table.demo_curves(rows)
    assert set(curves) == {("walker", "mix->run")}
    assert [(n, m) for n, m, _ in curves[("walker", "mix->run")]["BC-MDP"]] == [
        (1, 40.0),
        (5, 50.0),
    ]


def test_random_reference_and_summary_count_only_what_the_paper_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The random policy's recorded score is pooled over a row's seeds (the figure's reference
    line); the summary counts only rows the paper has, and says so when it has none."""
    runs = tmp_path / "runs"
    for seed, random in ((1, 30.0), (2, 40.0)):
        write(runs / f"s{seed}", "aime", "cartpole", "balance", "mdp", "random", [500.0], 600.0)
        path = runs / f"s{seed}" / "results.json"
        result = json.loads(path.read_text())
        path.write_text(json.dumps({**result, "random_normalised_score": random}))
    write(runs / "old", "bco0", "cartpole", "balance", "mdp", "random", [400.0], 600.0)
    rows = results_table.main(
        results_table.Args(runs_dir=str(runs), figure=str(tmp_path / "f.png"))
    )
    by = {r["method"]: r["ours"] for r in rows}
    assert by["AIME-MDP"].random == pytest.approx(35.0) and by["AIME-MDP"].seeds == 2
    assert by["BCO(0)-MDP"].random is None  # a run that recorded none
    assert capsys.readouterr().out.splitlines()[-1] == (
        "the paper has none of these rows: nothing to compare with"
    )
    assert (tmp_path / "f.png").stat().st_size > 0
    write(runs / "w", "aime", "walker", "run", "visual", "mix", [302.05], 604.10)
    results_table.main(results_table.Args(runs_dir=str(runs), figure="none"))
    assert capsys.readouterr().out.splitlines()[-1] == (
        "0 of the 1 rows the paper has outside its mean +- std (*)"
    )


def test_each_cell_ends_with_the_random_policys_row(tmp_path: Path) -> None:
    """After each cell's rows, the random policy's: its recorded score on the same initial states
    at the cell's largest number of demonstrations (over the seeds: mean +- std with `--spread
    seeds`); the BC oracle's `none->task` cell has its own only where no other cell has the
    task."""
    runs = tmp_path / "runs"
    for seed, random in ((1, 30.0), (2, 40.0)):
        for method, body, demos in (("aime", "random", 20), ("aime", "random", 5),
                                    ("bc", None, 20)):  # fmt: skip
            folder = runs / f"{method}-{demos}-s{seed}"
            write(folder, method, "cartpole", "swingup", "lpomdp", body, [500.0], 600.0, demos)
            result = json.loads((folder / "results.json").read_text())
            score = random if demos == 20 else random + 100  # 5 demos: another normaliser
            result.update(random_normalised_score=score, seed=seed)
            (folder / "results.json").write_text(json.dumps(result))
    write(runs / "other-task", "bc", "cartpole", "balance", "lpomdp", None, [500.0], 600.0, 20)
    path = runs / "other-task" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "random_normalised_score": 7.0}))
    rows = results_table.table(results_table.gather(runs, "seeds"), {"cells": {}})
    lines = results_table.markdown(rows, "seeds").splitlines()
    randoms = [line for line in lines if "random actions" in line]
    assert randoms == [
        "| cartpole | none->balance | random actions | 20 | 7.0 +- 0.0 | 1 | - |  |",
        "| cartpole | random->swingup | random actions | 20 | 35.0 +- 5.0 | 2 | - |  |",
    ]
    assert lines[-1] == randoms[-1]  # the swing-up cell's last row
    pooled = results_table.table(results_table.gather(runs), {"cells": {}})  # over episodes
    assert "| random->swingup | random actions | 20 | 35.0 | 2 |" in results_table.markdown(pooled)


NUMBERS_BAD = (
    '{"algorithm": "aime", "env": "walker", "obs": "mdp", "body_data": "mix", "demo": "run", '
    '"returns": ["x"], "expert_return": 500}'
)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"algorithm": "aime", "env": "wal', "not readable JSON"),
        ("[1, 2, 3]", "not a JSON object"),
        ('{"algorithm": "aime", "env": "walker"}', "missing or malformed: obs, demo, returns"),
        (NUMBERS_BAD, "returns that are not numbers"),
    ],
    ids=["cut short", "not an object", "fields missing", "returns not numbers"],
)
def test_a_damaged_results_file_is_skipped_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, why: str
) -> None:
    runs = tmp_path / "runs"
    write(runs / "good", "aime", "walker", "run", "mdp", "mix", [300.0, 500.0], 400.0)
    (runs / "bad").mkdir()
    (runs / "bad" / "results.json").write_text(content)
    rows = results_table.main(results_table.Args(runs_dir=str(runs), figure="none"))
    assert len(rows) == 1 and rows[0]["ours"].mean == pytest.approx(100.0)  # the good one
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: skipped {runs / 'bad' / 'results.json'}: ")
    assert why in warnings[0]


def test_curves_draws_each_runs_scalar_and_refuses_a_missing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/curves.py: a run's logged points, in order of step, printed and drawn."""
    from torch.utils.tensorboard import SummaryWriter

    from benchmarks import curves

    run = tmp_path / "run1"
    writer = SummaryWriter(str(run))
    for step, value in [(2000, 250.0), (1000, 200.0)]:
        writer.add_scalar("eval/return", value, step)
    writer.close()
    out = tmp_path / "c.png"
    curves.main(curves.Args(runs=(str(run),), line=["random=100"], out=str(out)))
    assert "run1: 1000: 200.0, 2000: 250.0" in capsys.readouterr().out
    assert out.stat().st_size > 0
    with pytest.raises(SystemExit, match="logs no scalar eval/nothing"):
        curves.main(curves.Args(runs=(str(run),), tag="eval/nothing", out=str(out)))
    with pytest.raises(SystemExit, match="is not NAME=NUMBER"):
        curves.main(curves.Args(runs=(str(run),), line=["random"], out=str(out)))
