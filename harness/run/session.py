"""The values every study command shares: the study file, its profile and `--set` values, the MLflow store and the
results folder. The CLI builds one `StudySession` per command and hands it to `harness.run.driver` (`harness
study`), `harness.run.commands` (`status`, `table`, `compare`) and `harness.cli.sample`; what they derive from it
(the loaded study, the results folder, the store's URI) is worked out here, once, when first asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UserError
from harness.tracking import Tracker, default_tracking_uri, sqlite_path

if TYPE_CHECKING:  # the study loader imports torch (seconds): `harness ui` needs only the store functions
    from harness.study.spec import LoadedStudy


@dataclass(frozen=True)
class StudySession:
    """One command's study and store. The fields are the command line's values as given; `loaded`, `results` and
    `store_uri` are derived on first use (so a command fails, when it does, at the same point as it always has:
    the study file first, then the results folder)."""

    path: str | Path  # the study file
    profile: str | None = None  # --profile (None: the study's default)
    sets: dict[str, Any] | None = None  # --set values, parsed
    tracking_uri: str | None = None  # --tracking-uri as given
    results_dir: str | Path | None = None  # --results-dir as given

    @cached_property
    def loaded(self) -> LoadedStudy:
        """The study file with its profile and `--set` values applied."""
        from harness.study.spec import load_study

        return load_study(self.path, self.profile, self.sets)

    @cached_property
    def results(self) -> Path:
        """The results folder: absolute, created and checked writable."""
        return results_dir_for(self.loaded, self.results_dir)

    @cached_property
    def store_uri(self) -> str:
        """The MLflow store the command reads and writes."""
        return resolve_tracking_uri(self.tracking_uri, self.results)

    def command(self, name: str, *extra: str) -> str:
        """The `harness <name> ...` line that addresses this session's trials (same study file as typed, profile,
        --set values, store and results folder), for messages that suggest a command."""
        from harness.errors import study_command

        return study_command(name, self.path, self.profile, self.sets or {}, self.tracking_uri, self.results_dir,
                             *extra)

    @property
    def out_dir(self) -> Path:
        """Where the study's tables, plots, comparisons and report go: ``<results>/<study>/<profile>``."""
        return self.results / self.loaded.study.name / self.loaded.profile

    def has_store(self) -> bool:
        return store_exists(self.store_uri)

    def tracker(self) -> Tracker:
        """A tracker on the study's experiment in the store (created if new), artifacts under the results folder."""
        return Tracker(self.store_uri, self.loaded.study.name, self.results / "mlartifacts")


def resolve_tracking_uri(tracking_uri: str | None, results_dir: Path) -> str:
    """The one place the MLflow store is chosen: --tracking-uri, else MLFLOW_TRACKING_URI, else the SQLite store in
    the results folder."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(results_dir)


def results_dir_for(loaded: LoadedStudy, results_dir: str | Path | None) -> Path:
    path = Path(results_dir) if results_dir else loaded.project_dir / "results"
    path = path.expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError:
        raise UserError(f"results directory {path} is not writable; pass --results-dir with a writable path") from None
    return path


def store_exists(uri: str) -> bool:
    """Whether there is a store to read: a SQLite file that exists, or any other (server) store."""
    store = sqlite_path(uri)
    return store is None or store.exists()


def no_store(uri: str, hint: str) -> UserError:
    """The sentence for a command that only reads a store that is not there."""
    return UserError(f"no MLflow store at {uri[len('sqlite:///'):]}; {hint}")
