"""The package's layering, read from the source with ``ast``: doors → stages → store.

The loop's stages run ingest → retrieval → generation → feedback → curation → datasets → training →
evaluation → monitoring. A stage imports itself, earlier stages, ``store`` and the top-level helpers; the
store imports no stage; no stage imports a door (``ragloop.cli``, ``ragloop.serve``); and a door opens no
database session itself, it calls a stage that does. Imports inside functions (lazy ones) and under
``TYPE_CHECKING`` count like any other: they are the same dependency, paid later.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ragloop

PACKAGE = Path(ragloop.__file__).parent
ROOT = PACKAGE.parent

STAGES = (
    "ingest",
    "retrieval",
    "generation",
    "feedback",
    "curation",
    "datasets",
    "training",
    "evaluation",
    "monitoring",
)
DOORS = ("cli", "serve", "__main__")  # __main__ is `python -m ragloop`, the CLI's other name
STORE = "store"
# Top-level modules every layer may use: settings, errors and small helpers about the machine and the
# process. They import only one another, so no layer reaches a stage or the store through them.
HELPERS = ("config", "errors", "proc", "accel", "torch_thread", "testing")
# What opening a database session looks like in source: a door that needs data calls a stage for it.
SESSION_NAMES = frozenset({"session_scope", "sessionmaker", "Session", "get_engine", "create_engine"})
SESSION_CALLS = SESSION_NAMES | {"select"}


@dataclass(frozen=True)
class Use:
    """One reference from a module of the package: an import of ``target`` (a dotted module name, or
    ``module.name`` for ``from module import name``) or a call of ``target`` at ``line``."""

    where: str  # file:line
    target: str
    kind: str = "import"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str | None:
    """``door``, ``store``, ``helper``, ``stage:<name>`` or, for a name outside the rules, the name itself
    (the layering test fails on it, so a new top-level module has to be placed in a layer)."""
    parts = module.split(".")
    if parts[0] != "ragloop":
        return None
    if len(parts) == 1:
        return "package"
    top = parts[1]
    if top in DOORS:
        return "door"
    if top == STORE:
        return "store"
    if top in HELPERS:
        return "helper"
    if top in STAGES:
        return f"stage:{top}"
    return top


def uses(path: Path, root: Path = ROOT) -> Iterator[Use]:
    """Every ragloop import of the file (top-level, inside functions, under TYPE_CHECKING, relative, or
    through ``import_module("ragloop...")``) and every call whose name is a session opener."""
    module = module_name(path, root)
    rel = path.relative_to(root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Use(f"{rel}:{node.lineno}", alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from ragloop import training` imports a module; `from x.db import session_scope` a name.
                yield Use(f"{rel}:{node.lineno}", f"{source}.{alias.name}")
        elif isinstance(node, ast.Call):
            name = _called_name(node.func)
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                yield Use(f"{rel}:{node.lineno}", str(node.args[0].value))
            elif name in SESSION_CALLS:
                yield Use(f"{rel}:{node.lineno}", name, kind="call")


def _called_name(func: ast.expr) -> str:
    """``select`` for ``select(...)`` and for ``sa.select(...)``."""
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def violations(files: list[Path], root: Path = ROOT) -> list[str]:
    """One line per reference that breaks the layering, as ``file:line: what (why)``."""
    found = []
    for path in files:
        own = layer(module_name(path, root))
        for use in uses(path, root):
            if use.kind == "call":
                if own == "door":
                    found.append(f"{use.where}: calls {use.target}() (a door opens no database session)")
                continue
            last = use.target.rpartition(".")[2]
            if own == "door" and last in SESSION_NAMES:
                found.append(f"{use.where}: imports {use.target} (a door opens no database session)")
            target = layer(use.target)
            if target is None or target == "package":
                continue
            why = breach(own, target)
            if why:
                found.append(f"{use.where}: imports {use.target} ({why})")
    return sorted(found, key=_by_file_and_line)


def _by_file_and_line(line: str) -> tuple[str, int]:
    where = line.split(": ", 1)[0]
    file, _, number = where.rpartition(":")
    return file, int(number)


def breach(own: str | None, target: str) -> str | None:
    """Why a module of layer ``own`` may not import one of layer ``target``; None when it may."""
    if target not in ("door", "store", "helper") and not target.startswith("stage:"):
        return f"ragloop.{target} is in no layer: add it to the layering test's lists"
    if own == "door":
        return None
    if target == "door":
        return "only a door imports a door"
    if own == "helper":
        return None if target == "helper" else "a top-level helper imports only other helpers"
    if own == "store":
        return None if target in ("store", "helper") else "the store imports no stage"
    if own and own.startswith("stage:"):
        if target in ("store", "helper"):
            return None
        mine, theirs = STAGES.index(own[6:]), STAGES.index(target[6:])
        return None if theirs <= mine else f"stage {own[6:]} imports the later stage {target[6:]}"
    if own in (None, "package"):
        return None
    return f"ragloop.{own} is in no layer: add it to the layering test's lists"


def test_every_module_is_in_a_layer() -> None:
    unplaced = sorted({module_name(p) for p in source_files() if layer(module_name(p)) not in _LAYERS})
    assert not unplaced, f"modules outside every layer of the layering test: {unplaced}"


_LAYERS = {"door", "store", "helper", "package", *(f"stage:{s}" for s in STAGES)}


def test_imports_follow_the_loop() -> None:
    found = violations(source_files())
    assert not found, "imports that break doors → stages → store:\n" + "\n".join(found)


# The checker itself, on small files: a layering test that sees nothing passes forever. ----------------


def _write(tmp_path: Path, files: dict[str, str]) -> list[Path]:
    paths = []
    for name, text in files.items():
        path = tmp_path / "ragloop" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


def test_the_checker_finds_each_kind_of_breach(tmp_path: Path) -> None:
    files = _write(
        tmp_path,
        {
            "retrieval/search.py": "def f():\n    from ragloop.training.jobs import submit\n",
            "generation/__init__.py": "from ..evaluation import run\nfrom . import prompts\n",
            "store/db.py": "import ragloop.feedback.service\n",
            "ingest/kb.py": "from ragloop.serve import app\n",
            "cli.py": "from ragloop.store.db import session_scope\n",
            "serve/ui.py": "def page(s):\n    return s.scalars(select(X))\n",
            "proc.py": "from ragloop.store import models\n",
            "training/__init__.py": "import_module('ragloop.evaluation.run')\nfrom ragloop.ingest import kb\n",
            "datasets/build.py": "from ragloop.wizard import spell\n",
        },
    )
    found = violations(files, tmp_path)
    expected = [
        "ragloop/retrieval/search.py:2: imports ragloop.training.jobs.submit (stage retrieval imports the later stage training)",
        "ragloop/generation/__init__.py:1: imports ragloop.evaluation.run (stage generation imports the later stage evaluation)",
        "ragloop/store/db.py:1: imports ragloop.feedback.service (the store imports no stage)",
        "ragloop/ingest/kb.py:1: imports ragloop.serve.app (only a door imports a door)",
        "ragloop/cli.py:1: imports ragloop.store.db.session_scope (a door opens no database session)",
        "ragloop/serve/ui.py:2: calls select() (a door opens no database session)",
        "ragloop/proc.py:1: imports ragloop.store.models (a top-level helper imports only other helpers)",
        "ragloop/training/__init__.py:1: imports ragloop.evaluation.run (stage training imports the later stage evaluation)",
        "ragloop/datasets/build.py:1: imports ragloop.wizard.spell (ragloop.wizard is in no layer: add it to the layering test's lists)",
    ]
    assert sorted(found) == sorted(expected)
