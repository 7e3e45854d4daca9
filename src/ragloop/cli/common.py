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
