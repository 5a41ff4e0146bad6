"""The whole pipeline through real `dvc repro`: GE gate, training, evaluation, MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pspnet.model.checkpoint import load_checkpoint
from pspnet.model.export import SegmentationModel
from tests.integration.conftest import run

pytestmark = pytest.mark.integration

STAGES = ("prepare", "validate", "train", "evaluate", "test", "register")


def ran_stages(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def test_repro_end_to_end_then_noop_then_param_change(tiny_project: Path) -> None:
    project = tiny_project
    first = run(["dvc", "repro"], project)
    assert ran_stages(first.stdout) == set(STAGES), first.stdout

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)

    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0
    # The optional test stage is off by default: it records the skip (the embedded data has no test split).
    assert json.loads((project / "metrics" / "test" / "eval.json").read_text())["skipped"] is True
    assert (project / "reports" / "validation" / "data_docs" / "index.html").is_file()
    assert (project / "plots" / "confusion_matrix.png").is_file()
    assert (project / "plots" / "training_curve.png").is_file()
    assert list((project / "plots" / "overlays").glob("*.png"))

    # The MLflow store sits at the project root, holds one run with params, metrics and artifacts.
    uri = f"sqlite:///{project.resolve()}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("pspnet").experiment_id])
    assert len(runs) == 1
    data = runs[0].data
    assert data.params["train.epochs"] == "1"
    assert {"train_loss", "val_miou", "val_macc", "val_allacc"} <= set(data.metrics)
    assert {f"val_iou_{name}" for name in ("car", "boat")} <= set(data.metrics)
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"checkpoint", "evaluation"} <= artifacts, artifacts

    # The champion alias resolves (the first version is also the challenger) and maps an image
    # of a size never seen in training to the checkpoint's own class map.
    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    champion = client.get_model_version_by_alias("pspnet", "champion")
    assert str(champion.version) == "1"
    assert str(client.get_model_version_by_alias("pspnet", "challenger").version) == "1"
    image = np.random.default_rng(0).integers(0, 256, (1, 91, 117, 3), dtype=np.uint8)
    served = mlflow.pyfunc.load_model("models:/pspnet@champion").predict(image)
    ckpt = load_checkpoint(project / "models" / "checkpoint.pt")
    reference = SegmentationModel(ckpt.model, ckpt.model_cfg.input_mean, ckpt.model_cfg.input_std)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(image).permute(0, 3, 1, 2).float()).argmax(1).numpy()
    assert served.shape == (1, 91, 117)
    assert (served == expected).mean() > 0.999
    registry = json.loads((project / "reports" / "registry.json").read_text())
    assert registry["decision"] == "promoted"
    assert (project / "reports" / "model_card.md").read_text().startswith("# pspnet v1")

    # Nothing changed: no stage runs.
    second = run(["dvc", "repro"], project)
    assert ran_stages(second.stdout) == set(), second.stdout

    # A gate parameter changed: only register reruns (data, training and scoring do not), and
    # reuses its version (same run and checkpoint). New data rerunning every stage after prepare:
    # tests/integration/test_data_versioning.py.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["register"]["min_improvement"] = params["register"]["min_improvement"] * 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run(["dvc", "repro"], project)
    assert ran_stages(third.stdout) == {"register"}, third.stdout
    assert len(client.search_model_versions("name='pspnet'")) == 1

    # A stage that fails leaves the previous outputs and dvc.lock as they were (persistent
    # outputs, written atomically at the stage's end).
    kept = ("models/checkpoint.pt", "models/mlflow_run.json", "metrics/train.json", "metrics/train_history.csv",
            "metrics/eval.json", "metrics/per_image.npz", "reports/registry.json", "dvc.lock")  # fmt: skip
    before = {name: (project / name).read_bytes() for name in kept}
    params["model"]["encoder_weights"] = str(project / "missing-weights.pth")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0
    assert "missing-weights.pth" in failed.stdout + failed.stderr
    for name, content in before.items():
        assert (project / name).read_bytes() == content, f"{name} changed after a failed stage"


def test_planted_bad_sample_stops_the_pipeline(tiny_project: Path) -> None:
    project = tiny_project
    run(["dvc", "repro", "prepare"], project)
    prepared = project / "data" / "prepared"
    victim = sorted((prepared / "masks").glob("*.png"))[0]
    mask = np.asarray(Image.open(victim)).copy()
    mask[0, 0] = 77  # a label id no class has
    Image.fromarray(mask).save(victim)

    result = run(["dvc", "repro", "--single-item", "validate"], project, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert victim.stem in output and "77" in output, output[-3000:]
    summary = json.loads((project / "reports" / "validation" / "summary.json").read_text())
    assert summary["success"] is False
    assert (project / "reports" / "validation" / "data_docs" / "index.html").is_file()
    assert not (project / "models" / "checkpoint.pt").exists()
