"""``register``: log + register to a real SQLite MLflow store, promote only on improvement."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from pspnet.config import Params, parse_params
from pspnet.errors import ConfigError
from pspnet.model.checkpoint import save_checkpoint
from pspnet.model.pspnet import build_model
from pspnet.registry import register as reg
from pspnet.registry.tracking import RunRef, setup_mlflow

CLASS_NAMES = ["background", "disc", "bar"]
CLASS_COLORS = [[0, 0, 0], [220, 20, 60], [70, 130, 180]]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Params]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    params = parse_params(
        {
            "model": {"encoder": "resnet18", "head_channels": 8, "aux_channels": 8, "aux_weight": 0.4},
            "register": {"export_example_size": [32, 48], "probe_size": [40, 56]},
        }
    )
    return tmp_path, params


def make_candidate(root: Path, params: Params, seed: int, miou: float) -> str:
    """What train + evaluate leave behind: a checkpoint, an MLflow run + RunRef, eval.json."""
    torch.manual_seed(seed)
    model = build_model(params.model, len(CLASS_NAMES))
    meta = {"class_names": CLASS_NAMES, "class_colors": CLASS_COLORS, "epoch": 1, "step": 1}
    save_checkpoint(root / "models" / "checkpoint.pt", model, params.model, len(CLASS_NAMES), meta)
    experiment_id = setup_mlflow(params.mlflow, root)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("val_miou", miou)
    RunRef(run.info.run_id, experiment_id, mlflow.get_tracking_uri()).save(root / "models" / "mlflow_run.json")
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "eval.json").write_text(json.dumps({"miou": miou, "macc": 0.5}))
    return run.info.run_id


def test_first_is_champion_worse_rejected_better_promoted(project: tuple[Path, Params]) -> None:
    root, params = project
    client = MlflowClient()

    run1 = make_candidate(root, params, seed=1, miou=0.50)
    first = reg.register(params, root)
    assert (first["version"], first["decision"], first["champion_version"]) == ("1", "promoted", "1")
    assert first["previous_champion_version"] is None
    assert first["run_id"] == run1

    make_candidate(root, params, seed=2, miou=0.40)
    second = reg.register(params, root)
    assert (second["version"], second["decision"], second["champion_version"]) == ("2", "rejected", "1")
    assert second["previous_champion_version"] == "1" and second["previous_champion_metric"] == 0.50
    assert str(client.get_model_version_by_alias("pspnet", "champion").version) == "1"

    run3 = make_candidate(root, params, seed=3, miou=0.60)
    third = reg.register(params, root)
    assert (third["version"], third["decision"], third["champion_version"]) == ("3", "promoted", "3")
    assert third["previous_champion_version"] == "1"

    # The report on disk is the last decision; the version tags hold every decision.
    on_disk = json.loads((root / "reports" / "registry.json").read_text())
    assert on_disk["decision"] == "promoted" and on_disk["version"] == "3" and on_disk["run_id"] == run3
    assert on_disk["model_uri"] == "models:/pspnet/3" and on_disk["metric_value"] == 0.60
    tags = {v: client.get_model_version("pspnet", v).tags for v in ("1", "2", "3")}
    assert [tags[v]["decision"] for v in ("1", "2", "3")] == ["promoted", "rejected", "promoted"]
    assert tags["2"]["previous_champion_version"] == "1" and float(tags["2"]["previous_champion_metric"]) == 0.5
    assert float(tags["3"]["metric_value"]) == 0.6 and tags["3"]["metric_name"] == "miou"
    assert "does not beat" in tags["2"]["decision_reason"]
    assert json.loads(tags["3"]["class_names"]) == CLASS_NAMES
    assert json.loads(tags["3"]["class_colors"]) == CLASS_COLORS

    # A retry of the same registration reuses the version instead of logging another copy.
    again = reg.register(params, root)
    assert again["version"] == "3" and again["decision"] == "promoted"
    assert len(client.search_model_versions("name = 'pspnet'")) == 3

    # The champion serves any image size, not just the traced example's (nor the training size).
    loaded = mlflow.pytorch.load_model("models:/pspnet@champion")
    assert not any("aux" in k for k in loaded.state_dict())
    x = torch.rand(1, 3, 360, 480) * 255
    with torch.no_grad():
        y = loaded(x)
    assert y.shape == (1, len(CLASS_NAMES), 360, 480)
    assert torch.isfinite(y).all()
    served = mlflow.pyfunc.load_model("models:/pspnet@champion").predict(np.zeros((2, 3, 50, 70), np.float32))
    assert served.shape == (2, len(CLASS_NAMES), 50, 70)
    info = mlflow.models.get_model_info("models:/pspnet@champion")
    assert info.metadata["class_names"] == CLASS_NAMES
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, -1, -1]


def test_missing_metric_is_a_config_error(project: tuple[Path, Params]) -> None:
    root, _ = project
    path = root / "eval.json"
    path.write_text(json.dumps({"miou": 0.3, "macc": 0.5}))
    with pytest.raises(ConfigError, match="available: macc, miou"):
        reg.read_metric(path, "mIoU")
    assert reg.read_metric(path, "miou") == 0.3


@pytest.mark.parametrize(
    ("value", "champion", "min_improvement", "expected"),
    [
        (0.1, None, 0.0, "promoted"),
        (0.5, reg.Champion("1", 0.4), 0.0, "promoted"),
        (0.4, reg.Champion("1", 0.4), 0.0, "rejected"),  # a tie does not beat
        (0.45, reg.Champion("1", 0.4), 0.1, "rejected"),
        (0.55, reg.Champion("1", 0.4), 0.1, "promoted"),
        (0.9, reg.Champion("1", None), 0.0, "rejected"),  # champion cannot be compared
        (math.nan, None, 0.0, "rejected"),
    ],
)
def test_decision_rule(value: float, champion: reg.Champion | None, min_improvement: float, expected: str) -> None:
    decision, reason = reg.decide(value, champion, min_improvement)
    assert decision == expected, reason
