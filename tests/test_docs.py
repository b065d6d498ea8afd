"""The docs point at code only through names the code carries, and every such pointer resolves.

README.md and every `docs/*.md` page are checked, pages added later included (docs/README.md):
- a reference `aime.py::elbo_loss` (in backticks) names a file, relative to the repository root,
  and a name that file defines: a function, a class, a module-level variable, or a member of one
  of them written with dots (`aime.py::Args.lr`, a dataclass field; `bco0.py::main.train`, a
  function defined inside `main`). Names are resolved with `ast`, imports do not count;
- a reference `aime.py::eq. (8)` names the comment `# eq. (8)` in that file, at the end of the
  line that computes the equation or on its own line just above it;
- a row of an equation list (a table row whose first cell is `eq. (N)`) carries the reference
  `<file>.py::eq. (N)` of its own equation, or says "not implemented";
- every `--flag` of a `python <file>.py` command (in a code block or a code span) is a field of
  that script's `Args` or of its bases (tyro spells `num_demos` as `--num-demos`, and a bool
  also as `--no-...`), so a documented command fails here once its script or a flag is gone;
- relative links point at files that exist.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # README and docs/

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
REF = re.compile(r"`([\w./-]+\.py)::([^`\n]+)`")
BARE_REF = re.compile(r"[\w./-]+\.py::")
EQ = re.compile(r"\beq\. \((\d+)\)")
EQ_ROW = re.compile(r"^\|\s*eq\. \((\d+)\)\s*\|(.*)$", re.M)
COMMAND = re.compile(r"\bpython3? ([\w./-]+\.py)\b([^;|&\n]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


# ---------------------------------------------------------------------------------------------
# What a Python file defines, and which equation tags its comments carry
# ---------------------------------------------------------------------------------------------
def _defined(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """Names bound by the statements of one scope (not by imports), through if/for/with/try
    blocks but not into nested functions or classes, which count as names themselves."""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, SCOPES):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update((n.id, node) for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        for field in ("body", "orelse", "finalbody"):
            inner = getattr(node, field, None)
            if isinstance(inner, list) and not isinstance(node, SCOPES):
                names.update({k: v for k, v in _defined(inner).items() if k not in names})
        for handler in getattr(node, "handlers", []):
            names.update({k: v for k, v in _defined(handler.body).items() if k not in names})
    return names


def resolves(source: str, dotted: str) -> bool:
    """Whether `dotted` (`name`, `Class.field`, `function.inner`) is defined in `source`."""
    scope: list[ast.stmt] = ast.parse(source).body
    node: ast.AST | None = None
    for part in dotted.split("."):
        node = _defined(scope).get(part)
        if node is None:
            return False
        scope = node.body if isinstance(node, SCOPES) else []
    return node is not None


def equation_tags(source: str) -> set[int]:
    """Equation numbers N of the comments `# eq. (N)` that end a line of code or stand on
    their own line(s) just above one (a blank line in between breaks the link)."""
    code_lines: set[int] = set()
    comments: list[tuple[int, str]] = []
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments.append((tok.start[0], tok.string))
        elif tok.type not in skip and tok.type != tokenize.ENDMARKER:
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    comment_only = {line for line, _ in comments} - code_lines
    tags: set[int] = set()
    for line, text in comments:
        below = line
        while below in comment_only:
            below += 1
        if below in code_lines:
            tags.update(int(n) for n in EQ.findall(text))
    return tags


def class_fields(source: str, name: str, root: Path) -> dict[str, bool]:
    """The dataclass fields of class `name` in `source` and of its bases (found in the same file,
    in the module it imports them from, or as `module.Class`), each with whether it is a bool."""
    tree = ast.parse(source)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    imported = {
        alias.name: node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    if name not in classes:
        return {}
    fields: dict[str, bool] = {}
    for base in classes[name].bases:
        if isinstance(base, ast.Name) and base.id in classes:
            fields.update(class_fields(source, base.id, root))
        elif isinstance(base, ast.Name) and base.id in imported:
            path = root / (imported[base.id].replace(".", "/") + ".py")
            fields.update(class_fields(path.read_text(), base.id, root) if path.is_file() else {})
        elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
            path = root / f"{base.value.id}.py"
            fields.update(class_fields(path.read_text(), base.attr, root) if path.is_file() else {})
    for item in classes[name].body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            is_bool = isinstance(item.annotation, ast.Name) and item.annotation.id == "bool"
            fields[item.target.id] = is_bool
    return fields


def args_flags(source: str, root: Path = ROOT) -> set[str]:
    """The command-line flags tyro makes of the fields of the script's `Args` dataclass (its
    bases' fields included)."""
    flags = {"--help", "-h"}
    for field, is_bool in class_fields(source, "Args", root).items():
        flags.add("--" + field.replace("_", "-"))
        if is_bool:
            flags.add("--no-" + field.replace("_", "-"))
    return flags


# ---------------------------------------------------------------------------------------------
# One page
# ---------------------------------------------------------------------------------------------
def page_problems(text: str, root: Path, page_dir: Path) -> list[str]:
    """Every reference, equation row, command flag and link of a page that does not resolve."""
    problems: list[str] = []
    prose = FENCE.sub("", text)
    sources: dict[str, str | None] = {}

    def source(file: str) -> str | None:
        if file not in sources:
            path = root / file
            sources[file] = path.read_text() if path.is_file() else None
        return sources[file]

    for file, name in REF.findall(prose):
        src = source(file)
        eq = re.fullmatch(r"eq\. \((\d+)\)", name)
        if src is None:
            problems.append(f"`{file}::{name}`: no file {file}")
        elif eq:
            if int(eq[1]) not in equation_tags(src):
                problems.append(f"`{file}::{name}`: no comment `# eq. ({eq[1]})` in {file}")
        elif not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
            problems.append(f"`{file}::{name}`: not a name or `eq. (N)`")
        elif not resolves(src, name):
            problems.append(f"`{file}::{name}`: {file} defines no {name}")
    for stray in BARE_REF.findall(CODE_SPAN.sub("", prose)):
        problems.append(f"{stray}: a reference outside backticks")

    for number, row in EQ_ROW.findall(prose):
        own = [n for f, n in REF.findall(row) if n == f"eq. ({number})"]
        if not own and "not implemented" not in row.lower():
            problems.append(f"eq. ({number}): claimed without a `<file>.py::eq. ({number})` tag")

    code = [block.replace("\\\n", " ") for block in FENCE.findall(text)]
    for block in code + CODE_SPAN.findall(prose):
        for file, rest in COMMAND.findall(block):
            src = source(file)
            if src is None:
                problems.append(f"python {file}: no file {file}")
                continue
            known = args_flags(src, root)
            for flag in re.findall(r"(?<!\S)(--?[A-Za-z][\w-]*)", rest):
                if flag not in known:
                    problems.append(f"python {file} {flag}: {file}'s Args has no such field")

    for target in LINK.findall(prose):
        if re.match(r"[a-z]+:|#", target):
            continue
        if not (page_dir / target.split("#")[0]).exists():
            problems.append(f"link {target}: no such file")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_references_resolve(page: Path) -> None:
    problems = page_problems(page.read_text(), ROOT, page.parent)
    assert not problems, f"{page.name}:\n" + "\n".join(problems)


def test_the_algorithm_pages_exist() -> None:
    names = {p.name for p in PAGES}
    assert {"README.md", "aime.md", "bco0.md"} <= names, names


# ---------------------------------------------------------------------------------------------
# The checker itself catches what it is for
# ---------------------------------------------------------------------------------------------
SCRIPT = """
from dataclasses import dataclass

LIMIT = 3


@dataclass
class Args:
    num_demos: int = 1
    kl_only: bool = False


def loss(x):
    def inner():
        pass

    y = x * 2  # eq. (2)
    # eq. (3): the line below
    return y

# eq. (4) stands alone, above a blank line

z = 1
"""


def test_checker_accepts_good_references(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(SCRIPT)
    good = (
        "`s.py::loss`, `s.py::loss.inner`, `s.py::LIMIT`, `s.py::Args.num_demos`,\n"
        "`s.py::eq. (2)`, `s.py::eq. (3)`\n\n"
        "| eq. (2) | y | `s.py::eq. (2)` |\n| eq. (9) | planning | not implemented |\n\n"
        "```bash\npython s.py --num-demos 3 --no-kl-only --kl-only\n```\n"
    )
    assert page_problems(good, tmp_path, tmp_path) == []


@pytest.mark.parametrize(
    "bad",
    [
        "`s.py::los`",  # no such function
        "`s.py::Args.seed`",  # no such field
        "`s.py::y`",  # local to a function, not module level
        "`t.py::loss`",  # no such file
        "`s.py::eq. (4)`",  # the comment is not at a line of code
        "`s.py::eq. (5)`",  # no such comment
        "see s.py::loss",  # outside backticks
        "| eq. (3) | y | `s.py::loss` |",  # an equation row without its tag
        "```bash\npython s.py --num-demo 3\n```",  # no such flag
        "```bash\npython s.py --no-num-demos\n```",  # --no- only for bools
        "[x](missing.md)",  # a broken link
    ],
)
def test_checker_rejects_bad_references(tmp_path: Path, bad: str) -> None:
    (tmp_path / "s.py").write_text(SCRIPT)
    assert page_problems(bad + "\n", tmp_path, tmp_path) != []
