"""`python -m harness.cli`: the `harness` command (how tests and Ray-less subprocesses start it)."""

from harness.cli.main import main

main()
