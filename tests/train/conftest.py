"""A tiny prepared project (8 train / 2 val samples at 32x40) with its own SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.tinydata import write_prepared


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    write_prepared(root / "data" / "prepared", n_train=8, n_val=2, height=32, width=40)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return root
