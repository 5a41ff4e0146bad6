"""Where MLflow tracks: one rule, absolute paths, DVC temp experiments mapped to the project."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pspnet.config import MlflowConfig
from pspnet.registry import tracking


def test_default_store_is_absolute_sqlite_at_project_root(tmp_path: Path) -> None:
    uri = tracking.resolve_tracking_uri(MlflowConfig(), tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.default_artifact_location(uri, tmp_path) == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_dvc_temp_experiment_logs_into_the_parent_project(tmp_path: Path) -> None:
    inside = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "src"
    inside.mkdir(parents=True)
    assert tracking.project_root(inside) == tmp_path.resolve()
    assert tracking.resolve_tracking_uri(MlflowConfig(), inside) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_environment_overrides_params_overrides_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = MlflowConfig(tracking_uri="http://127.0.0.1:5005")
    assert tracking.resolve_tracking_uri(cfg, tmp_path) == "http://127.0.0.1:5005"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking.resolve_tracking_uri(cfg, tmp_path) == "sqlite:////elsewhere/x.db"


def test_setup_creates_experiment_once_with_project_artifact_folder(tmp_path: Path) -> None:
    cfg = MlflowConfig(experiment_name="unit")
    first = tracking.setup_mlflow(cfg, tmp_path)
    assert tracking.setup_mlflow(cfg, tmp_path) == first
    experiment = mlflow.get_experiment(first)
    assert experiment.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert (tmp_path / "mlflow.db").is_file()


def test_run_ref_round_trip_and_clear_error(tmp_path: Path) -> None:
    ref = tracking.RunRef(run_id="abc", experiment_id="1", tracking_uri="sqlite:///x.db")
    ref.save(tmp_path / "run.json")
    assert tracking.RunRef.load(tmp_path / "run.json") == ref
    with pytest.raises(tracking.PspnetError, match="Run the `train` stage first"):
        tracking.RunRef.load(tmp_path / "missing.json")
