"""``python -m ragloop.training.worker --home DIR [--once] [--idle-exit S]``: the background process that
runs a home's training jobs one at a time (``ragloop train`` starts one on demand).

With ``--job ID`` it is instead the child that runs one claimed job in-process; the worker starts it so a
crashing trainer takes down only its own job.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ragloop.config import load_settings
from ragloop.errors import RagloopError
from ragloop.training import jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragloop.training.worker", description=__doc__)
    parser.add_argument("--home", type=Path, default=None, help="project home (default: found from here)")
    parser.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    parser.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)  # the per-job child
    parser.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)  # from ensure_worker
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the schema check at every start is noise here
    jobs.install_sigterm_handler()
    try:
        settings = load_settings(args.home)
        if args.job:
            job = jobs.run_job(settings, args.job)
            return 0 if job.status == "succeeded" else 1
        ran = jobs.run_worker(settings, once=args.once, idle_exit_s=args.idle_exit, lock_fd=args.lock_fd)
        logging.getLogger("ragloop.worker").info("worker %s exits after %d job(s)", settings.home, ran)
        return 0
    except KeyboardInterrupt:
        return 130
    except RagloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
