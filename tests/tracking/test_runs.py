"""Where MLflow tracks: one rule, absolute paths, DVC temp experiments mapped to the project."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pspnet.config import MlflowConfig
from pspnet.errors import PspnetError
from pspnet.tracking import runs, store


def test_default_store_is_absolute_sqlite_at_project_root(tmp_path: Path) -> None:
    uri = store.resolve_tracking_uri(MlflowConfig(), tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert store.default_artifact_location(uri, tmp_path) == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_dvc_temp_experiment_logs_into_the_parent_project(tmp_path: Path) -> None:
    inside = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "src"
    inside.mkdir(parents=True)
    assert store.project_root(inside) == tmp_path.resolve()
    assert store.resolve_tracking_uri(MlflowConfig(), inside) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_environment_overrides_params_overrides_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = MlflowConfig(tracking_uri="http://127.0.0.1:5005")
    assert store.resolve_tracking_uri(cfg, tmp_path) == "http://127.0.0.1:5005"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert store.resolve_tracking_uri(cfg, tmp_path) == "sqlite:////elsewhere/x.db"


def test_setup_creates_experiment_once_with_project_artifact_folder(tmp_path: Path) -> None:
    cfg = MlflowConfig(experiment_name="unit")
    first = store.setup_mlflow(cfg, tmp_path)
    assert store.setup_mlflow(cfg, tmp_path) == first
    experiment = mlflow.get_experiment(first)
    assert experiment.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert (tmp_path / "mlflow.db").is_file()


def test_run_ref_round_trip_and_clear_error(tmp_path: Path) -> None:
    ref = runs.RunRef(run_id="abc", experiment_id="1", tracking_uri="sqlite:///x.db")
    ref.save(tmp_path / "run.json")
    assert runs.RunRef.load(tmp_path / "run.json") == ref
    with pytest.raises(PspnetError, match="Run the `train` stage first"):
        runs.RunRef.load(tmp_path / "missing.json")


def test_runs_are_tagged_with_the_preset_run_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pspnet.tracking.runs import RUN_NAME_ENV, run_tags

    monkeypatch.setenv(RUN_NAME_ENV, "camvid-cpu-20261125")
    assert run_tags(tmp_path)["pspnet.run_name"] == "camvid-cpu-20261125"


def test_dataset_tags_name_the_source_and_both_data_versions(tmp_path: Path) -> None:
    import json

    from pspnet.tracking.runs import dataset_tags

    assert dataset_tags(tmp_path) == {}  # no record: no tags
    record = {
        "source": "camvid",
        "version": "d391e68e",
        "inputs": {"data.source.location": {"location": "../CamVid", "path": "data/raw/camvid", "dvc_version": "a33d.dir"}},
    }
    (tmp_path / "dataset.json").write_text(json.dumps(record))
    assert dataset_tags(tmp_path) == {
        "data.source": "camvid",
        "data.version": "d391e68e",
        "data.location": "../CamVid",
        "data.location.dvc_md5": "a33d.dir",
    }
