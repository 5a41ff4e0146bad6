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
    """No test may touch the developer's own MLflow store: drop any inherited tracking URI."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
