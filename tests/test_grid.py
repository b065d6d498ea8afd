"""grid.py: the paper's grid, the order of its jobs, and running it (for real, at tiny budgets)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import grid
from grid import Args, Job

ROOT = Path(__file__).resolve().parents[1]


def run_grid(*flags: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "grid.py", *flags], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )  # fmt: skip


def dry_run_jobs(stdout: str) -> list[tuple[str, list[str]]]:
    """(name, printed command) of each job of a dry run, in the printed order."""
    names = re.findall(r"^\[\d+\] (\S+) ", stdout, flags=re.M)
    commands = re.findall(r"^    (?!after: )(\S.*)$", stdout, flags=re.M)
    assert len(names) == len(commands), stdout
    return [(n, c.split()) for n, c in zip(names, commands, strict=True)]


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------
def flag(command: tuple[str, ...], name: str) -> str | None:
    """The value of `--name` in a command, or None."""
    return command[command.index(name) + 1] if name in command else None


def test_figure_4_lays_out_every_count_for_aime_bco0_and_the_bc_oracle() -> None:
    jobs = {j.name: j for j in grid.build_grid(Args(envs=("walker",), obs=("mdp",), figure=4))}
    runs = [j for j in jobs.values() if j.name.startswith(("aime", "bco0"))]
    assert len(runs) == 3 * len(grid.DEMO_COUNTS) == 30
    counts: dict[tuple[str, str | None], list[int]] = {}
    for j in runs:  # (script, --method) -> the numbers of demonstrations
        key = (j.name.split(":")[0].split("/")[0], flag(j.command, "--method"))
        counts.setdefault(key, []).append(int(flag(j.command, "--num-demos") or 0))
    counts = {k: sorted(v) for k, v in counts.items()}
    assert counts == {(m, k): list(grid.DEMO_COUNTS)
                      for m, k in (("aime", None), ("bco0", None), ("bco0", "bc"))}  # fmt: skip
    assert len({j.markers for j in runs}) == 30, "two runs would share a folder"
    assert all(j.name.endswith("walker-mix->run-mdp-s1") for j in runs)  # the default cell
    oracle = jobs["bco0/bc-demos-5:walker-mix->run-mdp-s1"]
    assert oracle.deps == ("data:walker-run",) and "__none__" in oracle.markers[0]
    assert set(jobs["table"].deps) == {j.name for j in runs}


def test_figure_5_lays_out_aime_its_ablations_iidm_and_bco0() -> None:
    jobs = {j.name: j for j in grid.build_grid(Args(envs=("walker",), obs=("visual",), figure=5))}
    cell = "walker-mix->run-visual-s1"
    names = ["aime", "aime/kl-only", "aime/rec-only", "aime/idm", "bco0/iidm", "bco0"]
    assert {n for n in jobs if n.endswith(cell)} == {f"{n}:{cell}" for n in names}
    assert "--kl-only" in jobs[f"aime/kl-only:{cell}"].command
    assert "--rec-only" in jobs[f"aime/rec-only:{cell}"].command
    idm = jobs[f"aime/idm:{cell}"]
    assert "--use-idm" in idm.command and "wm-idm:walker-mix-visual-s1" in idm.deps
    assert "--use-idm" in jobs["wm-idm:walker-mix-visual-s1"].command
    assert flag(idm.command, "--world-model") == jobs["wm-idm:walker-mix-visual-s1"].markers[0]
    assert flag(jobs[f"bco0/iidm:{cell}"].command, "--method") == "iidm"


def test_the_grid_has_every_cell_of_the_paper_and_no_other() -> None:
    published = json.loads((ROOT / "reference" / "aime-paper-scores.json").read_text())["cells"]
    jobs = grid.build_grid(Args(obs=("mdp",), methods=("aime", "bco0", "vmail")))
    for method in ("aime", "bco0", "vmail"):
        ours: dict[str, set[str]] = {"walker": set(), "cheetah": set()}
        for job in jobs:
            m = re.fullmatch(rf"{method}:(\w+)-(\w+->\w+)-mdp-s1", job.name)
            if m:
                ours[m[1]].add(m[2])
        assert ours == {env: set(cells) for env, cells in published.items()}, method


def test_the_cpu_benchmark_lays_out_every_method_figure_4_and_figure_5_for_each_seed() -> None:
    args = grid.cpu_setup(Args(cpu=True))
    jobs = {j.name: j for j in grid.cpu_grid(args)}
    cell, seeds = "cartpole-random->swingup-lpomdp", grid.CPU_SEEDS
    main = ["aime", "bco0", "bco0/iidm", "bco0/bc", "vmail"]
    figure_4 = [f"{m}-demos-{k}" for k in grid.CPU_DEMO_COUNTS
                for m in ("aime/aime", "bco0/bco0", "bco0/bc")]  # fmt: skip
    figure_5 = ["aime/kl-only", "aime/rec-only", "aime/idm"]
    runs = {f"{n}:{cell}-s{s}" for s in seeds for n in [*main, *figure_4, *figure_5]}
    runs |= {f"{n}:reacher-random->{t}-lpomdp-s{s}" for s in seeds for n in main
             for t in ("easy", "hard")}  # fmt: skip
    data = {f"data:{d}" for d in ("cartpole-random", "cartpole-swingup", "reacher-random",
                                  "reacher-easy", "reacher-hard")}  # fmt: skip
    models = {f"{w}:cartpole-random-lpomdp-s{s}" for s in seeds for w in ("wm", "wm-idm")}
    models |= {f"wm:reacher-random-lpomdp-s{s}" for s in seeds}
    assert set(jobs) == runs | data | models | {"table"}
    assert len({j.markers for j in jobs.values()}) == len(jobs), "two jobs share a folder"
    assert set(jobs["table"].deps) == runs and flag(jobs["table"].command, "--spread") == "seeds"
    folders = {n: Path(j.markers[0]) for n, j in jobs.items()}
    assert all(Path("runs/grid/cpu") in f.parents for n, f in folders.items() if n not in data)
    assert all(Path("datasets/cpu") in folders[n].parents for n in data)
    for s in seeds:
        aime, idm = jobs[f"aime:{cell}-s{s}"], jobs[f"aime/idm:{cell}-s{s}"]
        assert (
            flag(aime.command, "--world-model")
            == jobs[f"wm:cartpole-random-lpomdp-s{s}"].markers[0]
        )
        assert (
            flag(idm.command, "--world-model")
            == jobs[f"wm-idm:cartpole-random-lpomdp-s{s}"].markers[0]
        )
        assert flag(jobs[f"aime/aime-demos-2:{cell}-s{s}"].command, "--num-demos") == "2"
        assert jobs[f"bco0/bc:{cell}-s{s}"].deps == ("data:cartpole-swingup",)
        assert flag(aime.command, "--seed") == str(s) == flag(idm.command, "--seed")
    # bco0.py runs at the authors' schedule: no epoch budget of the grid's
    assert not any("--phase1-epochs" in j.command for n, j in jobs.items() if n.startswith("bco0"))
    random, demos = jobs["data:cartpole-random"].command, jobs["data:cartpole-swingup"].command
    assert (flag(random, "--task"), flag(random, "--agent"), flag(demos, "--agent")) == (
        "balance",
        "random",
        "scripted",
    )
    reacher = jobs["aime:reacher-random->hard-lpomdp-s2"]
    assert flag(reacher.command, "--world-model") == jobs["wm:reacher-random-lpomdp-s2"].markers[0]
    assert flag(jobs["data:reacher-hard"].command, "--action-repeat") == "4"
    assert flag(jobs["data:reacher-random"].command, "--task") == "easy"


def test_a_body_dataset_that_covers_a_task_adds_its_scripted_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `random+TASK` embodiment dataset: TASK's data job also writes its scripted buffer (and
    waits for it), the world model and BCO(0)/IIDM wait for both data jobs and read both, every
    task gets its cells on each body dataset, and the BC oracle, which reads no body data, runs
    once per task and seed."""
    both = grid.CpuEmbodiment("easy", ("easy", "hard"), 4, ("random", "random+easy"))
    monkeypatch.setattr(grid, "CPU_EMBODIMENTS", {"reacher": both})
    jobs = {j.name: j for j in grid.cpu_grid(grid.cpu_setup(Args(cpu=True, seeds=(1,))))}
    easy, hard = jobs["data:reacher-easy"], jobs["data:reacher-hard"]
    assert flag(easy.command, "--buffer-episodes") == str(grid.CPU_BUFFER_EPISODES)
    assert easy.markers[-1].endswith(f"reacher-easy-buffer/{grid.CPU_BUFFER_EPISODES - 1}.npz")
    assert "--buffer-episodes" not in hard.command and len(hard.markers) == 1
    wm = jobs["wm:reacher-random+easy-lpomdp-s1"]
    assert set(wm.deps) == {"data:reacher-random", "data:reacher-easy"}
    assert flag(wm.command, "--body-data") == "random+easy"
    for task in ("easy", "hard"):
        for body in ("random", "random+easy"):
            cell = f"reacher-{body}->{task}-lpomdp-s1"
            assert {f"{m}:{cell}" for m in ("aime", "bco0", "bco0/iidm", "vmail")} <= set(jobs)
            assert (
                flag(jobs[f"aime:{cell}"].command, "--world-model")
                == (jobs[f"wm:reacher-{body}-lpomdp-s1"].markers[0])
            )
        bco0 = jobs[f"bco0:reacher-random+easy->{task}-lpomdp-s1"]
        assert flag(bco0.command, "--body-data") == "random+easy"
        assert {"data:reacher-random", "data:reacher-easy"} <= set(bco0.deps)
    oracles = [n for n in jobs if n.startswith("bco0/bc:")]
    assert sorted(oracles) == [f"bco0/bc:reacher-random->{t}-lpomdp-s1" for t in ("easy", "hard")]
    assert len({j.markers for j in jobs.values()}) == len(jobs), "two jobs share a folder"


def test_the_quick_start_runs_the_cpu_benchmarks_commands() -> None:
    """quickstart.sh's steps use grid.py's CPU budgets (CPU_DATA, CPU_ARGS): one place for them."""
    text = (ROOT / "quickstart.sh").read_text().replace("\\\n", " ")
    lines = {s: next(line.split() for line in text.splitlines() if s in line and "python" in line)
             for s in ("--agent random", "--agent scripted", "aime.py", "vmail_obs.py",
                       "bco0.py")}  # fmt: skip
    pairs = {k: list(itertools.pairwise(v)) for k, v in lines.items()}
    for script, key in (("aime.py", "aime"), ("vmail_obs.py", "vmail")):
        wanted = grid.CPU_ARGS[key].split()
        for i, word in enumerate(wanted):
            if word.startswith("--") and i + 1 < len(wanted) and not wanted[i + 1].startswith("--"):
                assert (word, wanted[i + 1]) in pairs[script], (script, word)
    data = grid.CPU_DATA
    assert ("--num-trajectories", str(data["random_trajectories"])) in pairs["--agent random"]
    assert ("--num-demos", str(data["collect_demos"])) in pairs["--agent scripted"]
    for script in ("aime.py", "vmail_obs.py", "bco0.py"):
        assert ("--num-demos", str(data["num_demos"])) in pairs[script]
        assert ("--eval-episodes", str(data["eval_episodes"])) in pairs[script]
    cartpole = grid.CPU_EMBODIMENTS["cartpole"]
    repeat = str(cartpole.action_repeat)
    assert ("--action-repeat", repeat) in pairs["--agent random"]
    assert ("--action-repeat", repeat) in pairs["--agent scripted"]
    assert ("--task", cartpole.body_task) in pairs["--agent random"]


@pytest.mark.parametrize("given", [{"envs": ("walker",)}, {"quick": True}, {"figure": 5},
                                   {"num_demos": 5}, {"obs": ("mdp",)}])  # fmt: skip
def test_the_cpu_benchmark_refuses_the_paper_grids_selections_in_one_line(
    given: dict[str, object],
) -> None:
    with pytest.raises(
        SystemExit, match=f"--cpu runs its own .* --{next(iter(given)).replace('_', '-')}"
    ):
        grid.cpu_setup(Args(cpu=True, **given))  # type: ignore[arg-type]


def test_dry_run_of_a_small_grid_lists_each_job_once_after_its_dependencies(
    tmp_path: Path,
) -> None:
    cells, obs, seeds = ["mix->run", "random->stand"], ["mdp", "visual"], ["1", "2"]
    r = run_grid(
        "--dry-run", "--envs", "walker", "--cells", *cells, "--obs", *obs, "--seeds", *seeds,
        "--grid-dir", str(tmp_path / "grid"), "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    printed = dry_run_jobs(r.stdout)
    names = [n for n, _ in printed]

    # The expected jobs, counted from the paper's definitions: the walker mix is random + p2e +
    # stand + walk; a task's demonstrations come from its Dreamer run, as its buffer does.
    datasets = {"random", "p2e", "stand", "walk"} | {"random"} | {"run", "stand"}
    world_models = len({"mix", "random"}) * len(obs) * len(seeds)
    runs = len(cells) * len(obs) * len(seeds) * len(("aime", "bco0"))
    assert len(names) == len(set(names)) == len(datasets) + world_models + runs + 1
    assert {n for n in names if n.startswith("data:")} == {f"data:walker-{d}" for d in datasets}
    assert sum(n.startswith("wm:") for n in names) == world_models
    assert f"total: {len(names)} jobs" in r.stdout
    assert not (tmp_path / "grid").exists() and not (tmp_path / "data").exists()  # nothing ran

    jobs = {j.name: j for j in grid.build_grid(Args(
        envs=("walker",), cells=tuple(cells), obs=("mdp", "visual"), seeds=(1, 2),
        grid_dir=str(tmp_path / "grid"), data_dir=str(tmp_path / "data"),
    ))}  # fmt: skip
    assert set(jobs) == set(names)
    position = {n: i for i, n in enumerate(names)}
    for name, command in printed:
        assert all(position[d] < position[name] for d in jobs[name].deps), name
        assert command[0] == sys.executable and command[2:] == list(jobs[name].command[2:])
    # AIME's phase 2 loads the world model its world-model job writes, and waits for that job
    # and for the demonstrations; the mix world model waits for the four datasets of the mix.
    aime = jobs["aime:walker-mix->run-visual-s2"]
    wm = jobs["wm:walker-mix-visual-s2"]
    assert set(aime.deps) == {wm.name, "data:walker-run"}
    command = list(aime.command)
    assert command[command.index("--world-model") + 1] == wm.markers[0]
    assert set(wm.deps) == {f"data:walker-{d}" for d in ("random", "p2e", "stand", "walk")}
    bco0 = jobs["bco0:walker-random->stand-mdp-s1"]
    assert set(bco0.deps) == {"data:walker-random", "data:walker-stand"}
    assert set(jobs["table"].deps) == {n for n in names if n.startswith(("aime:", "bco0:"))}

    # V-MAIL (observation-only) joins on request and imitates with the same world model as AIME.
    with_vmail = {j.name: j for j in grid.build_grid(Args(
        envs=("walker",), cells=tuple(cells), obs=("mdp", "visual"), seeds=(1, 2),
        methods=("aime", "bco0", "vmail"),
    ))}  # fmt: skip
    assert set(with_vmail) - set(jobs) == {
        n.replace("aime:", "vmail:") for n in jobs if n.startswith("aime:")
    }
    vm = with_vmail["vmail:walker-mix->run-visual-s2"]
    assert set(vm.deps) == {wm.name, "data:walker-run"}
    command = list(vm.command)
    assert command[command.index("--world-model") + 1] == with_vmail[wm.name].markers[0]
    assert command[1] == str(ROOT / "vmail_obs.py") and "--body-data" not in command
    assert command[command.index("--task") + 1] == "run"


def test_full_grid_size_and_cost() -> None:
    jobs = grid.build_grid(Args())
    # walker: 5 datasets, 6 bodies x 3 settings world models, 18 cells x 3 x 2 methods runs;
    # cheetah: 6 datasets, 6 x 3 world models, 24 x 3 x 2 runs; one table.
    assert len(jobs) == (5 + 18 + 108) + (6 + 18 + 144) + 1
    aime_days = sum(j.hours for j in jobs if j.name.startswith(("wm:", "aime:"))) / 24
    assert 40 < aime_days < 60  # the paper: roughly 50 GPU-days for AIME's benchmark
    quick = grid.build_grid(Args(quick=True))
    assert len(quick) == len(jobs) and sum(j.hours for j in quick) < 1


def test_budget_defaults_are_the_scripts() -> None:
    import aime
    import bco0
    import dreamer_collect
    import vmail_obs

    a, b, d = aime.Args(), bco0.Args(), dreamer_collect.Args()
    expected = {
        "random_trajectories": d.num_trajectories, "total_steps": d.total_steps,
        "collect_demos": d.num_demos, "num_demos": a.num_demos,
        "aime_phase1_epochs": a.phase1_epochs, "aime_phase2_epochs": a.phase2_epochs,
        "bco0_phase1_epochs": b.phase1_epochs, "bco0_phase2_epochs": b.phase2_epochs,
        "steps_per_epoch": a.steps_per_epoch,
    }  # fmt: skip
    assert expected == grid.DEFAULTS
    assert b.num_demos == a.num_demos and b.steps_per_epoch == a.steps_per_epoch
    v = vmail_obs.Args()  # its run's budgets are AIME's phase 2
    assert v.num_demos == a.num_demos and v.eval_episodes == a.eval_episodes
    assert v.phase2_epochs == a.phase2_epochs and v.steps_per_epoch == a.steps_per_epoch


def test_unknown_cell_is_refused() -> None:
    with pytest.raises(SystemExit, match="no cell mix->flip"):
        grid.build_grid(Args(envs=("walker",), cells=("mix->flip",)))
    with pytest.raises(SystemExit, match="body->task"):
        grid.build_grid(Args(cells=("mix-run",)))


# ---------------------------------------------------------------------------------------------
# The local launcher on stand-in jobs
# ---------------------------------------------------------------------------------------------
def touch_job(name: str, tmp: Path, deps: tuple[str, ...] = (), code: int = 0) -> Job:
    """A job that records the GPU it was given in its marker, or exits with `code`."""
    marker = tmp / f"{name}.done"
    script = (
        f"import os, sys; sys.exit({code})" if code
        else f"import os, pathlib; pathlib.Path({str(marker)!r}).write_text("
        "os.environ.get('CUDA_VISIBLE_DEVICES', 'none'))"
    )  # fmt: skip
    return Job(name, (sys.executable, "-c", script), (str(marker),), deps)


def test_a_failed_job_blocks_its_dependents_and_independent_jobs_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(grid, "visible_gpus", lambda: ["3", "5"])
    jobs = [
        touch_job("a", tmp_path),
        touch_job("bad", tmp_path, code=3),
        touch_job("after-bad", tmp_path, deps=("bad",)),
        touch_job("after-after-bad", tmp_path, deps=("after-bad", "a")),
        touch_job("after-a", tmp_path, deps=("a",)),
    ]
    args = Args(grid_dir=str(tmp_path / "grid"), workers=2)
    assert grid.launch(grid.topological_order(jobs), args) == 1
    report = json.loads((tmp_path / "grid" / "report.json").read_text())
    assert report == {
        "a": "done", "bad": "failed", "after-bad": "blocked", "after-after-bad": "blocked",
        "after-a": "done",
    }  # fmt: skip
    assert not (tmp_path / "after-bad.done").exists()
    assert not grid.log_path(args.grid_dir, jobs[2]).exists()  # never started
    assert "exit code 3" in capsys.readouterr().out
    # Each worker pinned one of the visible GPUs.
    assert {(tmp_path / f"{n}.done").read_text() for n in ("a", "after-a")} <= {"3", "5"}

    # Again: the finished jobs are skipped, the failed one is tried again (and fails again).
    assert grid.launch(grid.topological_order(jobs), args) == 1
    report = json.loads((tmp_path / "grid" / "report.json").read_text())
    assert report["a"] == report["after-a"] == "skipped" and report["bad"] == "failed"
    assert grid.log_path(args.grid_dir, jobs[1]).read_text().count("=== ") == 2


def test_a_job_whose_markers_exist_is_never_run(tmp_path: Path) -> None:
    job = touch_job("finished", tmp_path, code=1)  # would fail if it ran
    Path(job.markers[0]).write_text("")
    args = Args(grid_dir=str(tmp_path / "grid"))
    assert grid.launch([job, touch_job("next", tmp_path, deps=("finished",))], args) == 0
    report = json.loads((tmp_path / "grid" / "report.json").read_text())
    assert report == {"finished": "skipped", "next": "done"}
    with pytest.raises(ValueError, match="outside the grid"):  # rather than wait forever
        grid.launch([touch_job("orphan", tmp_path, deps=("missing",))], args)


def test_partial_run_is_resumed_and_the_table_is_redone_after_new_results(tmp_path: Path) -> None:
    job = Job("run", ("python", "aime.py"), (str(tmp_path / "results.json"),),
              partial=(str(tmp_path / "*.pt"),))  # fmt: skip
    assert grid.launch_command(job) == ["python", "aime.py"]
    (tmp_path / "checkpoint.pt").write_text("")
    assert grid.launch_command(job) == ["python", "aime.py", "--resume"]

    table = Job("table", ("true",), (str(tmp_path / "results.md"),), ("run",), refresh=True)
    by_name = {"run": job, "table": table}
    Path(job.markers[0]).write_text("{}")
    time.sleep(0.01)
    Path(table.markers[0]).write_text("")
    assert grid.finished(table, by_name)
    os.utime(job.markers[0], (time.time() + 10, time.time() + 10))  # a newer result
    assert not grid.finished(table, by_name)


# ---------------------------------------------------------------------------------------------
# SLURM through the real submitit: its sbatch scripts (a fake sbatch), its local executor
# ---------------------------------------------------------------------------------------------
def test_slurm_scripts_carry_partition_gpus_time_and_afterok_dependencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submitit writes one sbatch script per unfinished job; a stand-in `sbatch` on PATH keeps
    each script and answers with a job id, as SLURM's does."""
    kept = tmp_path / "sbatch"
    kept.mkdir()
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f'n=$(ls {kept} | wc -l); cp "$1" {kept}/$((n + 1)).sh; '
        'echo "Submitted batch job $((n + 101))"\n'
    )
    fake.chmod(0o755)
    (fake.parent / "srun").write_text("#!/bin/sh\n")  # submitit looks for it before submitting
    (fake.parent / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    done = touch_job("done", tmp_path)
    Path(done.markers[0]).write_text("")
    a = replace(touch_job("a", tmp_path, deps=("done",)), hours=2.0)
    jobs = [done, a, touch_job("b", tmp_path, ("a", "done"))]
    args = Args(grid_dir=str(tmp_path / "grid"), launcher="slurm", slurm_partition="gpu",
                slurm_gpus_per_job=2, slurm_mem_gb=32)  # fmt: skip
    assert grid.launch(jobs, args) == 0
    first, second = ((kept / f"{i}.sh").read_text() for i in (1, 2))  # the finished job: none
    assert not (kept / "3.sh").exists()
    for script in (first, second):
        assert "#SBATCH --partition=gpu" in script and "#SBATCH --gpus-per-node=2" in script
        assert "#SBATCH --mem=32GB" in script and "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --job-name=a" in first and "#SBATCH --time=240" in first  # 2 x 2 h
    assert "--dependency" not in first  # its dependency had finished before
    assert "#SBATCH --job-name=b" in second and "#SBATCH --time=60" in second  # at least 60
    assert "#SBATCH --dependency=afterok:101" in second
    assert "#SBATCH --kill-on-invalid-dep=yes" in second
    report = json.loads((tmp_path / "grid" / "report.json").read_text())
    assert report == {"done": "skipped", "a": "submitted", "b": "submitted"}


def test_submitit_local_executor_runs_jobs_after_their_dependencies(tmp_path: Path) -> None:
    """`--submitit-cluster local`: the same submission, each job run by submitit on this
    machine; a failed job blocks its dependents."""
    first = touch_job("first", tmp_path)
    second = touch_job("second", tmp_path, deps=("first",))
    bad = touch_job("bad", tmp_path, code=3)
    after_bad = touch_job("after-bad", tmp_path, deps=("bad",))
    args = Args(grid_dir=str(tmp_path / "grid"), launcher="slurm", submitit_cluster="local")
    assert grid.launch([first, bad, second, after_bad], args) == 1
    report = json.loads((tmp_path / "grid" / "report.json").read_text())
    assert report == {"first": "done", "bad": "failed", "second": "done", "after-bad": "blocked"}
    assert Path(second.markers[0]).is_file() and not Path(after_bad.markers[0]).exists()
    assert (tmp_path / "grid" / "logs" / "bad.log").read_text().startswith("=== ")  # its log


def test_slurm_without_submitit_tells_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import fails as if not installed
    with pytest.raises(SystemExit, match="pip install submitit"):
        grid.launch([], Args(launcher="slurm"))


# ---------------------------------------------------------------------------------------------
# A tiny grid, for real
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_grid_runs_end_to_end_and_a_second_run_starts_nothing(tmp_path: Path) -> None:
    flags = [
        "--quick", "--envs", "walker", "--cells", "random->stand", "--obs", "mdp",
        "--collect-obs", "mdp", "--no-render", "--workers", "2",
        "--grid-dir", str(tmp_path / "grid"), "--data-dir", str(tmp_path / "data"),
        "--methods", "aime", "bco0", "vmail",
    ]  # fmt: skip
    r = run_grid(*flags)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cell = "walker-random->stand-mdp-s1"
    names = ["data:walker-random", "data:walker-stand", "wm:walker-random-mdp-s1",
             f"aime:{cell}", f"bco0:{cell}", f"vmail:{cell}", "table"]  # fmt: skip
    report = json.loads((tmp_path / "grid" / "quick" / "report.json").read_text())
    assert report == dict.fromkeys(names, "done")
    assert (tmp_path / "data" / "quick" / "walker-random").is_dir()  # apart from full datasets
    assert not (tmp_path / "data" / "walker-random").exists()
    results = tmp_path / "grid" / "quick" / "results"
    for method in ("aime", "bco0", "vmail"):
        run = json.loads(
            (
                results / f"walker-stand__mdp__random__stand__{method}__1" / "results.json"
            ).read_text()
        )
        assert run["algorithm"] == method and len(run["returns"]) == 1
    aime = json.loads(next(results.glob("*__aime__1/results.json")).read_text())
    assert aime["wall_time_s"]["phase1"] == 0  # phase 2 loaded the world model of the wm job
    assert Path(aime["world_model"]).is_file()
    vm = json.loads(next(results.glob("*__vmail__1/results.json")).read_text())
    assert vm["world_model"] == aime["world_model"]  # both imitate with the very same model
    table = (results / "results.md").read_text()
    assert "| walker | random->stand | AIME-MDP |" in table and "BCO(0)-MDP" in table
    assert "V-MAIL-MDP" in table
    logs = {p.name: p.read_text() for p in (tmp_path / "grid" / "quick" / "logs").iterdir()}
    assert len(logs) == len(names)

    again = run_grid(*flags)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "started" not in again.stdout
    report = json.loads((tmp_path / "grid" / "quick" / "report.json").read_text())
    assert report == dict.fromkeys(names, "skipped")
    logs_again = (tmp_path / "grid" / "quick" / "logs").iterdir()
    assert {p.name: p.read_text() for p in logs_again} == logs


@pytest.mark.slow
def test_tiny_grid_end_to_end_through_submitit_local_executor(tmp_path: Path) -> None:
    """The scripts' own jobs (datasets, world model, AIME, the table) submitted through
    submitit, run by its local executor, each after its dependencies."""
    r = run_grid(
        "--quick", "--envs", "walker", "--cells", "random->stand", "--obs", "mdp",
        "--collect-obs", "mdp", "--no-render", "--methods", "aime", "--launcher", "slurm",
        "--submitit-cluster", "local", "--grid-dir", str(tmp_path / "grid"),
        "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "grid" / "quick" / "report.json").read_text())
    names = ["data:walker-random", "data:walker-stand", "wm:walker-random-mdp-s1",
             "aime:walker-random->stand-mdp-s1", "table"]  # fmt: skip
    assert report == dict.fromkeys(names, "done")
    table = (tmp_path / "grid" / "quick" / "results" / "results.md").read_text()
    assert "| walker | random->stand | AIME-MDP |" in table
