"""Shared test set-up: quiet, offline, deterministic tools; helpers for tiny projects."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Offline and quiet: no telemetry from DVC / Prefect, no GUI backend for matplotlib.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def repo_root() -> Path:
    """The checkout under test (holds dvc.yaml, params.yaml, src/)."""
    return REPO_ROOT


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no MLflow store chosen: no inherited URI, no earlier test's.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` (called by every stage through
    ``setup_mlflow``) set process-wide globals AND export ``MLFLOW_TRACKING_URI`` /
    ``MLFLOW_REGISTRY_URI``; left over from an earlier test, either would point a later test's
    ``MlflowClient()`` at the wrong store (seen: a registry test reading another test's
    champion). MLflow has no public "unset", so both globals and both variables are reset here
    (monkeypatch restores them afterwards).
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
