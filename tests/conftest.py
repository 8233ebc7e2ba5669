"""Fixtures shared by the test files that read a fake MLflow store (no Ray)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.tracking import Tracker


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A migrated, empty SQLite store, made once: creating MLflow's schema takes seconds, copying the file does not."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    Tracker(f"sqlite:///{path}", "template")
    return path


@pytest.fixture
def store(tmp_path, empty_store):
    """A fresh store per test: ``store(study)`` opens it for that study's experiment."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, path)
    return lambda study: Tracker(f"sqlite:///{path}", study, tmp_path / "mlartifacts")
