"""What every command module shares: the consoles it prints to, the ``--home`` and ``--json`` options, and
how a home's settings are found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ragloop.config import Settings, load_settings

console = Console()
err = Console(stderr=True)
HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Project home (default: RAGLOOP_HOME or the nearest ragloop.toml)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def home_settings(home: Path | None) -> Settings:
    return load_settings(home)


# Options whose value is a file: a stored rebuild command names it absolutely, so the command runs from any
# directory (a dataset built from a project's parent folder named ``demo-home/synth.jsonl``).
_FILE_OPTIONS = {"--policy", "--eval-set", "--import", "--pairs", "--home"}


def dataset_command(argv: list[str] | None = None) -> str:
    """The ``ragloop dataset ...`` command line as typed, file arguments made absolute and the project home
    named: what a dataset version stores so that drift reports and lineage can print a command that rebuilds
    it. Empty when ragloop was not run as ``ragloop dataset ...`` (a test, an import)."""
    import os
    import shlex
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["dataset"]:
        return ""
    out: list[str] = []
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name in _FILE_OPTIONS and (eq or i + 1 < len(args)):
            if not eq:
                i += 1
                value = args[i]
            out += [name, _absolute(name, value)]
        else:
            out.append(args[i])
        i += 1
    if "--home" not in out and os.environ.get("RAGLOOP_HOME"):
        out += ["--home", str(Path(os.environ["RAGLOOP_HOME"]).resolve())]
    return "ragloop " + " ".join(shlex.quote(a) for a in out)


def _absolute(option: str, value: str) -> str:
    if option == "--import" and ":" in value and not Path(value).exists():
        fmt, _, path = value.partition(":")  # FORMAT:FILE, as the option takes it
        return f"{fmt}:{Path(path).resolve()}"
    return str(Path(value).resolve())
