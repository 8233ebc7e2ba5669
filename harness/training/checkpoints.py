"""Training checkpoints on disk: atomic files named by step, the newest usable one found (unreadable, foreign
or wrong-recipe files moved aside), and checkpoints claimed by the data they were trained on."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHECKPOINTS_KEPT = 2
# the reports of the last two checkpoint intervals, this one's included: saved with a checkpoint, replayed on resume
REPORT_KEY = "_harness_report"
# the hash of the trial (or shared trained model) a checkpoint belongs to: a checkpoint copied in from another
# trial's directory is refused instead of resumed
IDENTITY_KEY = "_harness_identity"
# MLflow tag saying which checkpoints a (re)start skipped and what it resumed from instead
FALLBACK_TAG = "harness.checkpoint_fallback"
_CHECKPOINT_NAME = re.compile(r"step_(\d+)\.pt")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (unreadable, not a checkpoint, or another trial's) and moved aside."""


def checkpoint_step(path: str | Path) -> int | None:
    """The step in a checkpoint's name (``step_<digits>.pt``, any padding); None for any other name."""
    m = _CHECKPOINT_NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoints in ``directory``, oldest first by step number (names sort wrongly past 9 digits). Files
    moved aside (``.corrupt``, ``.foreign``) and a ``.tmp`` left by a kill mid-write are not checkpoints."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = ((checkpoint_step(p), p) for p in directory.glob("step_*.pt"))
    return [p for step, p in sorted((s, p) for s, p in steps if s is not None)]


@dataclasses.dataclass
class LoadedCheckpoint:
    """What :func:`load_newest_checkpoint` found: the checkpoint used (None: none usable), its state without the
    harness's own keys, the reports saved with it, and the newer files refused, newest first, with the reason."""

    path: Path | None
    state: dict[str, Any] | None
    reports: Any = None
    refused: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    @property
    def step(self) -> int | None:
        return checkpoint_step(self.path) if self.path is not None else None

    def describe(self) -> str:
        """The refused files and why, e.g. ``step_000000200.pt unreadable (EOFError: ...)``."""
        return "; ".join(f"{p.name} {why}" for p, why in self.refused)


def _reason(e: BaseException) -> str:
    """An exception in one short line: its first sentence; for torch's weights-only refusal, what it refused."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        text = "weights-only load refused: " + text.split("WeightsUnpickler error:", 1)[1].strip()
    elif text.startswith("Weights only load failed"):
        parts = [p.strip() for p in text.split("\n\n") if p.strip()]
        text = "weights-only load refused: " + (parts[1] if len(parts) > 1 else parts[0])
    line = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""
    if len(line) > 160:
        line = line[:157] + "..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def load_newest_checkpoint(directory: str | Path, identity: str = "", required: Iterable[str] = (),
                           move_aside: bool = True, warn: bool = True) -> LoadedCheckpoint:
    """The newest checkpoint in ``directory`` that can be used, trying them newest first (by step number).

    One is refused when ``torch.load(weights_only=True)`` fails (truncated or garbage file, a pickle of anything
    but tensors and containers), when it is not a dict with string keys and every ``required`` key, or when it
    is marked with another identity than ``identity`` (a checkpoint without a mark, from before marks were
    written, is accepted; so is any checkpoint when ``identity`` is ""). With ``move_aside``, a refused file is
    renamed to ``<name>.corrupt`` or ``<name>.foreign``, so globbing and pruning never see it again; with
    ``warn``, a :class:`CheckpointWarning` names it and the reason."""
    import torch

    required = tuple(required)
    refused: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(directory)):
        why, suffix = "", ".corrupt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - whatever the file holds, it is not a usable checkpoint
            why = f"unreadable ({_reason(e)})"
        else:
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                why = f"not a checkpoint (a {type(state).__name__}, not a dict of named entries)"
            elif missing := [k for k in required if k not in state]:
                why = f"not a checkpoint of this recipe (no {', '.join(missing)})"
            elif identity and state.get(IDENTITY_KEY, identity) != identity:
                why, suffix = f"from another trial ({str(state[IDENTITY_KEY])[:40]}, not {identity})", ".foreign"
        if not why:
            reports = state.pop(REPORT_KEY, None)
            state.pop(IDENTITY_KEY, None)
            return LoadedCheckpoint(path, state, reports, refused)
        refused.append((path, why))
        aside = ""
        if move_aside:
            target = path.with_name(path.name + suffix)
            try:
                os.replace(path, target)
                aside = f", moved aside to {target.name}"
            except OSError:  # gone already (another process moved it) or read-only: skipped all the same
                pass
        if warn:
            warnings.warn(f"skipped checkpoint {path}: {why}{aside}", CheckpointWarning, stacklevel=3)
    return LoadedCheckpoint(None, None, None, refused)

def claim_for_data(directory: Path, data_hash: str) -> None:
    """Checkpoints in ``directory`` belong to the data they were trained on (``data_hash`` file, written with the
    first checkpoint): when this trial's data (same config, e.g. another data.root) has another fingerprint, the
    old checkpoints move aside to checkpoints-data-<old> instead of being resumed. Directories from before
    fingerprints were recorded are taken as they are."""
    if not data_hash:
        return
    mark = directory / "data_hash"
    old = mark.read_text().strip() if mark.is_file() else ""
    ckpt = directory / "checkpoints"
    if old and old != data_hash and ckpt.exists():
        with contextlib.suppress(FileNotFoundError):  # a trial sharing the directory moved them first
            ckpt.rename(directory / f"checkpoints-data-{old}")
            mark.unlink()  # the next checkpoint saved here writes the new fingerprint
