"""`python -m ragloop` runs the CLI (where no `ragloop` script is on the PATH: a wheel-less checkout, a GPU box)."""

from ragloop.cli import main

main()
