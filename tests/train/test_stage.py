"""The train stage end to end on a tiny prepared dataset with a real SQLite MLflow store."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pspnet.config import Params, parse_params
from pspnet.device import resolve_device
from pspnet.errors import ConfigError, PspnetError
from pspnet.model.checkpoint import load_checkpoint
from pspnet.stages import train as train_stage
from pspnet.tracking.runs import RunRef
from pspnet.train.accel import resolve_precision
from tests.train.tinydata import NAMES, write_prepared

TINY = {
    "model": {"encoder": "resnet18", "head_channels": 32, "aux_channels": 16},
    "train": {
        "epochs": 4,
        "batch_size": 4,
        "crop_size": [32, 40],
        "scale_range": [0.9, 1.1],
        "lr": 0.01,
        "log_every_n_steps": 1,
        "device": "cpu",
    },
    "mlflow": {"experiment_name": "unit-train"},
}


def _params(**overrides: dict) -> Params:
    raw = json.loads(json.dumps(TINY))
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return parse_params(raw)


def test_train_writes_outputs_and_tracks_the_run(project: Path, tmp_path: Path) -> None:
    summary = train_stage.run(_params(), project)

    # Files.
    checkpoint = project / "models" / "checkpoint.pt"
    assert checkpoint.is_file()
    ref = RunRef.load(project / "models" / "mlflow_run.json")
    assert ref.run_id == summary["run_id"]
    assert ref.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    assert metrics["epochs"] == 4 and metrics["steps"] == 8  # 8 images / batch 4 = 2 steps x 4 epochs
    assert metrics["device"] == "cpu"
    assert metrics["seconds"] > 0 and metrics["images_per_second"] > 0
    with (project / "metrics" / "train_history.csv").open() as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in history] == [2, 4, 6, 8]
    assert {"epoch", "step", "loss", "lr"} <= set(history[0])
    losses = [float(r["loss"]) for r in history]
    assert losses[-1] < losses[0], losses  # an easy task: training helps
    assert metrics["final_loss"] == pytest.approx(losses[-1], rel=1e-4)
    lrs = [float(r["lr"]) for r in history]
    assert lrs == sorted(lrs, reverse=True)  # poly decay
    # No temp files left behind by the atomic writes.
    assert not [p for p in project.rglob(".*") if p.is_file()]

    # Checkpoint content.
    loaded = load_checkpoint(checkpoint)
    assert loaded.num_classes == 3
    assert loaded.meta["class_names"] == list(NAMES)
    assert loaded.meta["epoch"] == 4 and loaded.meta["step"] == 8
    assert len(loaded.meta["class_colors"]) == 3

    # MLflow run.
    client = MlflowClient(tracking_uri=ref.tracking_uri)
    run = client.get_run(ref.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == ref.experiment_id
    assert client.get_experiment(ref.experiment_id).name == "unit-train"
    assert run.data.params["train.epochs"] == "4"
    assert run.data.params["model.encoder"] == "resnet18"
    assert run.data.params["data.num_classes"] == "3"
    assert {"train_loss", "lr", "step_loss", "step_lr", "final_loss"} <= set(run.data.metrics)
    assert len(client.get_metric_history(ref.run_id, "step_loss")) == 8
    assert len(client.get_metric_history(ref.run_id, "train_loss")) == 4
    artifacts = {a.path for a in client.list_artifacts(ref.run_id, "checkpoint")}
    assert "checkpoint/checkpoint.pt" in artifacts


def test_training_is_reproducible(project: Path) -> None:
    params = _params(train={"epochs": 1, "precision": "fp32"})  # also covers the float32 path
    first = train_stage.run(params, project)
    second = train_stage.run(params, project)
    assert first["final_loss"] == second["final_loss"]
    assert first["precision"] == "fp32" and first["amp"] is False
    assert first["run_id"] != second["run_id"]


def test_unusable_store_fails_before_training(project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # MLflow 3 refuses the plain-folder store.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    with pytest.raises(PspnetError, match="MLflow"):
        train_stage.run(_params(), project)
    assert not (project / "models").exists()
    assert not (project / "metrics").exists()
    assert mlflow.active_run() is None


def test_device_and_precision_resolution() -> None:
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) in ("bf16", "fp32")  # no fp16 by default on a CPU
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            resolve_device("cuda")


def test_too_small_train_split_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pspnet.errors import DataError

    root = tmp_path / "small"
    write_prepared(root / "data" / "prepared", n_train=1, n_val=1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(DataError, match="at least 2"):
        train_stage.run(_params(), root)
    assert not (root / "models").exists()


def test_quarantined_samples_are_not_trained_on(project: Path) -> None:
    from pspnet.data.manifest import DATASET_FILE
    from pspnet.data.quarantine import effective_version, write_quarantine
    from pspnet.layout import Layout

    (project / "data" / "prepared" / DATASET_FILE).write_text(json.dumps({"version": "v1"}))
    params = _params(train={"epochs": 1}, validate={"quarantine": True})
    ids = ["train_000", "train_001"]
    write_quarantine(
        Layout(project, params.paths).quarantine,
        [{"id": sid, "split": "train", "files": f"images/{sid}.png", "problems": "bad. Fix: x"} for sid in ids],
    )

    summary = train_stage.run(params, project)

    run = MlflowClient().get_run(summary["run_id"])
    assert run.data.params["data.train_samples"] == "6"  # 8 train samples, 2 set aside
    assert run.data.tags["data.quarantined"] == "2"
    assert run.data.tags["data.version"] == "v1"
    assert run.data.tags["data.training_version"] == effective_version("v1", ids) != "v1"
    # Quarantine off: the list is ignored.
    assert MlflowClient().get_run(train_stage.run(_params(train={"epochs": 1}), project)["run_id"]).data.params["data.train_samples"] == "8"


def test_the_run_says_what_ran_on_which_data_in_the_mlflow_ui(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Experiment kind, run name, dataset input (digest = data version, source = DVC path + hash),
    system metrics and per-epoch val mIoU: what the MLflow UI's runs table and charts show."""
    (project / "data/prepared/dataset.json").write_text(json.dumps({"source": "tiny", "version": "d391e68e4f0a9b"}))
    (project / "dvc.lock").write_text("schema: '2.0'\nstages:\n  prepare:\n    cmd: pspnet prepare\n    outs:\n"
                                      "    - path: data/prepared\n      md5: 5f2b.dir\n      size: 1\n      nfiles: 1\n")
    monkeypatch.setenv("DVC_EXP_NAME", "abl-fcn-s0")
    params = _params(train={"curve_every_n_epochs": 1, "curve_images": 0}, model={"ppm": False},
                     mlflow={"experiment_name": "unit-ui", "system_metrics_interval": 0.2})
    first = train_stage.run(params, project)
    second = train_stage.run(params, project)  # the same settings on the same data again

    client = MlflowClient()
    run = client.get_run(first["run_id"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name == "abl-fcn-s0 · resnet18 os8 fcn · 4 ep bs 4 lr 0.01 · data d391e68e"
    assert client.get_run(second["run_id"]).info.run_name == run.info.run_name + " #2"  # unique

    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == "d391e68e4f0a9b"
    assert dataset_input.dataset.source_type == "dvc"
    assert json.loads(dataset_input.dataset.source) == {"path": "data/prepared", "md5": "5f2b.dir"}
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 10  # the manifest: 8 train + 2 val

    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), sorted(run.data.metrics)
    curve = client.get_metric_history(run.info.run_id, "curve_val_miou")
    assert [m.step for m in curve] == [1, 2, 3, 4] and all(0.0 <= m.value <= 1.0 for m in curve)
