"""The command-line door: ``ragloop init | ingest | ask | serve | replay | logs | keys | models | kb | ...``.

One module per stage's commands (``ingest``, ``answers``, ``keys``, ``models``, ``feedback``, ``datasets``,
``training``, ``evaluation``), assembled in ``main``. Each command parses its arguments, calls stage
functions, and prints; no logic and no database session live here.
"""

from ragloop.cli.main import app, main

__all__ = ["app", "main"]
