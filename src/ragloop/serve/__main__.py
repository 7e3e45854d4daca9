"""``python -m ragloop.serve --home DIR [--host H] [--port P]``: serve a project home without the CLI,
e.g. as the process a supervisor (or a crash test) starts and kills."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ragloop.config import load_settings
from ragloop.errors import RagloopError
from ragloop.serve.app import run_server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ragloop.serve", description=__doc__)
    parser.add_argument("--home", type=Path, default=None, help="project home (default: found from here)")
    parser.add_argument("--host", default=None, help="address to bind (default: [server] host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: [server] port)")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.home)
    except RagloopError as exc:
        parser.exit(2, f"error: {exc}\n")
    run_server(
        settings,
        args.host or settings.server.host,
        settings.server.port if args.port is None else args.port,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
