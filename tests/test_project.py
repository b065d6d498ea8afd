"""The project's promises about itself: the README's commands, help texts, packaging."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "aime.py",
    "vmail.py",
    "vmail_obs.py",
    "bco0.py",
    "dreamer_collect.py",
    "results_table.py",
    "grid.py",
    "download.py",
]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", section, flags=re.S)  # not ```text
    return [line for block in blocks for line in block.strip().splitlines() if line.strip()]


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    install_and_run, install_and_test = commands
    # The first runs the quick start script, which tests/test_quickstart.py runs as it is.
    assert "pip install" in install_and_run and install_and_run.endswith("bash quickstart.sh")
    assert (ROOT / "quickstart.sh").is_file()
    assert (
        "pytest" in install_and_test and "mypy" in install_and_test and "ruff" in install_and_test
    )
    ci = (ROOT / ".ci" / "run").read_text()
    assert install_and_test in ci.splitlines(), ".ci/run does not run the README's test command"


def option_texts(help_text: str) -> dict[str, str]:
    """tyro's --help box -> {flag: its description}, descriptions joined across wrapped lines."""
    lines = [line.strip("│ ").rstrip() for line in help_text.splitlines() if line.startswith("│")]
    blocks: dict[str, str] = {}
    flag = None
    for line in lines:
        # a flag, its --no- twin, a metavar (`INT`, `{a,b}` or `[STR [STR ...]]`), its text
        m = re.match(
            r"(--[\w-]+)((?:, --[\w-]+)?)(?: (?:\[[^\]]*\]+|[^ ]+))?(?:\s{2,}(.*))?$", line
        )
        if m:
            flag = m[1]
            blocks[flag] = m[3] or ""
        elif flag is not None:
            blocks[flag] += " " + line.strip()
    return blocks


def test_every_flag_has_help_text() -> None:
    """Each script's --help opens with what it does and an example command; every flag has a
    description, one default said once, and no `None` where a default is derived."""
    for script in SCRIPTS:
        run = subprocess.run(
            [sys.executable, script, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert f"Example: python {script} " in run.stdout.split("╭")[0], f"{script}: no example"
        assert "{None}" not in run.stdout, f"{script}: a metavar offers None"
        blocks = option_texts(run.stdout)
        assert len(blocks) >= 3, run.stdout  # the parser found the options
        for flag, text in blocks.items():
            # A field without a docstring shows only its default.
            described = re.sub(r"\(default: [^)]*\)", "", text).strip()
            assert described, f"{script} {flag} has no help text"
            assert text.count("(default:") <= 1, f"{script} {flag}: two defaults: {text}"
            assert "(default: None)" not in text, f"{script} {flag}: default None: {text}"


def test_no_top_level_common_package_is_installed() -> None:
    """`common/` is imported from the checkout only; it must not shadow other projects' `common`."""
    probe = "import importlib.util, sys; print(importlib.util.find_spec('common'))"
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, timeout=60
    )
    assert run.stdout.strip() == "None", run.stdout
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"] == []


def test_mujoco_is_pinned_to_a_version_dm_control_works_with() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "mujoco==3.17.0" in deps and "dm_control==1.0.50" in deps
    assert sys.version_info >= (3, 10)


def repository_imports(script: str) -> set[str]:
    """The repository's modules `script` imports, transitively (what copying it takes)."""
    import ast

    seen: set[str] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            todo += [f for n in names if (ROOT / (f := n.replace(".", "/") + ".py")).is_file()]
    return seen - {script}


def test_each_script_imports_only_common_and_the_learner_it_builds_on() -> None:
    """A script is copied with `common/` alone; vmail_obs.py with vmail.py (its learner) too: it
    reads AIME's model through `common/model_files.py`, not aime.py."""
    for script in ("aime.py", "vmail.py", "bco0.py", "dreamer_collect.py", "vmail_obs.py"):
        others = {m for m in repository_imports(script) if not m.startswith("common/")}
        assert others == ({"vmail.py"} if script == "vmail_obs.py" else set()), (script, others)
