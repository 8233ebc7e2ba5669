"""The `harness` command line (click): `main` is the entry point."""
