"""Weights files, read safely and identified by content: the base of harness.eval (the Inception weights module
and the image metrics both build on it). ``MetricsError`` is the user-fixable error of every evaluation module."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from harness.errors import UserError

INCEPTION_NAME = "inception-v3-compat"
INCEPTION_REQUIRED_KEY = "Mixed_7c.branch_pool.conv.weight"


class MetricsError(UserError):
    """A metrics problem the user can fix (missing weights, too few images); the message says how."""


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 hex of a tensor's dtype, shape and bytes (a content key for a reference image set)."""
    h = hashlib.sha256(f"{x.dtype}{tuple(x.shape)}".encode())
    h.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_dict_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 hex of a state dict's tensors (sorted names, dtype, shape, bytes): ``torch.save`` files are not
    byte-reproducible, so weights are identified by their contents, not by the file."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(tensor_digest(state_dict[name]).encode())
    return h.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def load_state_dict_file(path: str | os.PathLike, required_key: str) -> dict[str, torch.Tensor]:
    """A weights file read with ``weights_only=True`` (tensors and plain containers only: a pickle that would build
    any other object is refused, not run); ``{"state_dict": ...}`` is unwrapped. ``MetricsError`` if it is not a
    state dict holding ``required_key``."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MetricsError(f"Cannot read weights file {path} as a plain state dict ({type(e).__name__}).") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or required_key not in sd:
        raise MetricsError(f"Weights file {path} lacks '{required_key}': it is not the expected network's file.")
    return sd


def _weights_digest(path: Path, required_key: str) -> str:
    """Tensor digest of a weights file, memoised per (path, size, mtime); loads with ``weights_only=True``. The memo
    only names caches and results: the weights an extractor uses are read again, safely, when it is built."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        _DIGESTS[memo] = state_dict_digest(load_state_dict_file(path, required_key))
    return _DIGESTS[memo]


def verified_inception_weights(path: str | os.PathLike) -> io.BytesIO:
    """Inception weights to hand torch-fidelity's ``FeatureExtractorInceptionV3`` as
    ``feature_extractor_weights_path``: an in-memory ``torch.save`` of the file's state dict as read by
    ``load_state_dict_file`` (``weights_only=True``).

    torch-fidelity 0.4 builds the extractor with ``torch.load(feature_extractor_weights_path, weights_only=False)``,
    which runs whatever a pickled file says; it has no option to pass a state dict instead. Given this buffer it
    unpickles only what this process has just written from plain tensors, never the file itself, so a file swapped
    after an earlier check (same size and mtime: the digest memo would not notice) cannot run code either.
    """
    buf = io.BytesIO()
    torch.save(load_state_dict_file(path, INCEPTION_REQUIRED_KEY), buf)
    buf.seek(0)
    return buf


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
