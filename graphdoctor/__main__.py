"""`python -m graphdoctor` runs the CLI."""

from graphdoctor.cli import run

run()
