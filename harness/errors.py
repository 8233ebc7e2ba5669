"""User-caused errors. The CLI prints their message (one sentence) and exits non-zero, without a traceback."""

import os
from collections.abc import Iterable, Mapping
from typing import Any


class UserError(Exception):
    """An error the user can fix (bad study file, bad option, missing data or weights); the message says how."""


def study_command(command: str, study_file: str | os.PathLike, profile: str | None = None,
                  sets: Mapping[str, Any] | Iterable[str] = (), tracking_uri: str | None = None,
                  results_dir: str | os.PathLike | None = None, *extra: str) -> str:
    """The ``harness <command> STUDY_FILE ...`` line a message suggests, with the profile, ``--set`` values, store and
    results folder the user gave, so that it addresses the same trials (another profile or ``--set`` is another set
    of trials). ``sets`` is the command line's ``key=value`` strings, or the parsed mapping; ``extra`` is appended.
    Shell-quoted, so it runs as printed."""
    import shlex

    words = ["harness", *command.split(), os.fspath(study_file)]
    if profile is not None:
        words += ["--profile", profile]
    items = [f"{k}={_set_value(v)}" for k, v in sets.items()] if isinstance(sets, Mapping) else list(sets)
    for item in items:
        words += ["--set", item]
    if tracking_uri:
        words += ["--tracking-uri", tracking_uri]
    if results_dir:
        words += ["--results-dir", os.fspath(results_dir)]
    return " ".join(shlex.quote(w) for w in [*words, *extra])


def _set_value(value: Any) -> str:
    """A parsed ``--set`` value written back so that the CLI reads the same value (YAML scalars and flow lists)."""
    import json

    import yaml

    if isinstance(value, str):
        try:
            same = yaml.safe_load(value) == value
        except (yaml.YAMLError, *YAML_VALUE_ERRORS):
            same = False
        return value if same else json.dumps(value)
    return json.dumps(value)


# What yaml.safe_load raises, beyond YAMLError, on a value it cannot build (Python refuses int() past 4,300 digits)
YAML_VALUE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)


def unreadable_value(e: BaseException) -> str:
    """Why YAML could not build a value (one of ``YAML_VALUE_ERRORS``), in words for a one-sentence error."""
    return "a number with too many digits for any setting" if "digits" in str(e) else one_line(e, 200)


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its lines joined, whitespace collapsed), at most ``limit`` characters;
    the exception's type name when it has no message."""
    return " ".join(str(e).split())[:limit] or type(e).__name__


# What Ray, the kernel or the filesystem did to a trial, as opposed to what its recipe did: (text in the error, the
# reason in words). A trial stopped by one of these is interrupted (closed as KILLED and resumed by the same command),
# not failed. Checked in order; the first match names the reason.
DISK_FULL = "the disk is full"
LOW_DISK_BYTES = 64 << 20  # below this much free space, any write error is taken for a full disk
INFRASTRUCTURE = (
    (("No space left on device", "[Errno 28]", "database or disk is full", "ENOSPC"), DISK_FULL),
    (("OutOfMemoryError", "running low on memory", "killed due to memory"),
     "Ray's memory monitor killed a trial process (the node ran low on memory)"),
    (("NodeDiedError", "node died", "Node died", "node was lost", "NodeDied"), "a Ray node was lost"),
    (("GcsRpcError", "Failed to connect to GCS", "GCS has", "GCS server", "RaySystemError"),
     "the Ray cluster's control service (GCS) went away"),
    (("RayActorError", "ActorDiedError", "The actor is dead", "ActorUnavailableError",
      "The actor is temporarily unavailable", "WorkerCrashedError", "OwnerDiedError", "worker process has died",
      "Worker unexpectedly exits"),
     "a trial's Ray worker process died (killed, out of memory, or its node was lost)"),
)


def infrastructure_reason(error: BaseException | str | None) -> str | None:
    """Why Ray or the machine, not the recipe, stopped a trial (see ``INFRASTRUCTURE``); None for any other error.
    An exception is searched through its causes (an OSError with errno ENOSPC is a full disk)."""
    import errno

    texts = []
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return INFRASTRUCTURE[0][1]
        texts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    if isinstance(error, str):
        texts.append(error)
    text = " ".join(" ".join(texts).split())  # Ray wraps long messages over lines
    for needles, reason in INFRASTRUCTURE:
        if any(n in text for n in needles):
            return reason
    return None


def infrastructure_reason_at(error: BaseException, where: str | os.PathLike) -> str | None:
    """``infrastructure_reason``, and a full disk for any error while the disk holding ``where`` has less than
    ``LOW_DISK_BYTES`` free: torch.save on a full disk raises an opaque "unexpected pos" RuntimeError."""
    import shutil

    why = infrastructure_reason(error)
    if why is None:
        try:
            why = DISK_FULL if shutil.disk_usage(where).free < LOW_DISK_BYTES else None
        except OSError:
            pass
    return why
