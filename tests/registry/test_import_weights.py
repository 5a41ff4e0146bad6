"""``pspnet import-weights`` end to end on a real MLflow store: an official semseg checkpoint
(written by the test with the authors' key names and shapes) is converted, logged and registered
with the alias ``official-ade20k``; ``pspnet predict`` with that alias segments a photo exactly
as the original network does; ``pspnet evaluate --model`` scores it on a prepared dataset of the
ADE20K layout, in a run of its own, without touching the pipeline's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from pspnet.cli import app
from pspnet.data.sources import ade20k
from tests.model.official_reference import semseg_checkpoint, semseg_reference_forward

#: Odd, non-square and smaller than any training crop: nothing here was tuned to a size.
PHOTO_SIZE = (45, 62)
VAL_SIZE = (40, 52)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
#: The exported program and the eager reference may differ by float rounding on near-ties only.
MAX_DIFFERING_SHARE = 0.002

runner = CliRunner()


def _reference_ids(state: dict, rgb: np.ndarray) -> np.ndarray:
    """The original network's class map of one uint8 RGB image (semseg: ImageNet mean / std)."""
    x = torch.from_numpy((rgb - IMAGENET_MEAN) / IMAGENET_STD).float().permute(2, 0, 1)[None]
    with torch.no_grad():
        return semseg_reference_forward(state, x).argmax(1)[0].numpy()


def _invoke(*args: str) -> dict:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project whose prepared data is a one-image ADE20K release, and the official model imported into its store."""
    base = tmp_path_factory.mktemp("official")
    root = base / "project"
    release = root / "data" / "raw" / ade20k.DATASET_DIR
    rng = np.random.default_rng(0)
    for folder, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        (release / "images" / folder).mkdir(parents=True)
        (release / "annotations" / folder).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (*VAL_SIZE, 3), dtype=np.uint8)).save(release / "images" / folder / f"{name}.jpg")
        Image.fromarray(rng.integers(0, 151, VAL_SIZE, dtype=np.uint8)).save(release / "annotations" / folder / f"{name}.png")
    (release / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n", encoding="utf-8")
    raw = {"data": {"source": {"name": "ade20k", "location": str(release)}}, "evaluate": {"num_overlays": 1},
           "register": {"export_onnx": False}}  # a ResNet-50 graph; the ONNX path is tested in test_register
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    saved = semseg_checkpoint(layers=50, classes=150, seed=7)
    source = base / "train_epoch_100.pth"
    torch.save(saved, source)
    # A module fixture runs before the per-test MLflow isolation of conftest.py: isolate it here,
    # so the import lands in the project's own store whatever an earlier test left behind.
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with pytest.MonkeyPatch.context() as mp:
        for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(variable, raising=False)
        mp.setattr(tracking_utils, "_tracking_uri", None)
        mp.setattr(registry_utils, "_registry_uri", None)
        _invoke("prepare", "--root", str(root))
        summary = _invoke("import-weights", str(source), "--format", "semseg", "--dataset", "ade20k", "--root", str(root))
    state = {k.removeprefix("module."): v for k, v in saved["state_dict"].items()}
    return {"root": root, "source": source, "summary": summary, "state": state, "release": release}


def test_import_registers_the_converted_model_under_its_alias(imported: dict) -> None:
    root, summary = imported["root"], imported["summary"]
    assert summary["model_uri"] == "models:/pspnet@official-ade20k"
    assert (summary["encoder"], summary["num_classes"], summary["parameters"]) == ("resnet50", 150, 49_180_908)
    assert summary["unmapped_keys"] == [] and summary["missing_keys"] == []
    assert Path(summary["checkpoint"]) == root / "models" / "imported" / "ade20k-resnet50.pt"

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", registry_uri=f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version_by_alias("pspnet", "official-ade20k")
    assert str(version.version) == summary["version"]
    assert json.loads(version.tags["class_names"])[:3] == ["wall", "building", "sky"]
    assert client.get_run(summary["run_id"]).data.params["import.source"] == "train_epoch_100.pth"
    # No champion: an imported model is not promoted.
    assert set(client.get_registered_model("pspnet").aliases) == {"official-ade20k"}

    # Importing the same file again reuses its version and only (re)sets the alias.
    again = _invoke("import-weights", str(imported["source"]), "--format", "semseg", "--dataset", "ade20k",
                    "--alias", "ade", "--root", str(root))
    assert again["version"] == summary["version"]
    assert str(client.get_model_version_by_alias("pspnet", "ade").version) == summary["version"]


def test_predict_with_the_alias_gives_the_original_networks_scene_parse(imported: dict, tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (*PHOTO_SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "street.jpg", quality=100)
    with Image.open(tmp_path / "street.jpg") as decoded:
        rgb = np.array(decoded.convert("RGB"))  # what predict reads (JPEG is lossy)

    _invoke("predict", str(tmp_path / "street.jpg"), "--out", str(tmp_path / "out"), "--model", "models:/pspnet@official-ade20k",
            "--mode", "whole", "--scales", "1.0", "--no-flip", "--device", "cpu", "--root", str(imported["root"]))

    mask = np.array(Image.open(tmp_path / "out" / "street.png"))
    assert mask.shape == PHOTO_SIZE
    assert (mask != _reference_ids(imported["state"], rgb)).mean() <= MAX_DIFFERING_SHARE
    overlay = np.array(Image.open(tmp_path / "out" / "street_overlay.png").convert("RGB"))
    assert overlay.shape == (*PHOTO_SIZE, 3) and not np.array_equal(overlay, rgb)  # the ADE20K colours blended in


def test_evaluate_model_scores_it_in_a_run_of_its_own(imported: dict) -> None:
    root = imported["root"]

    summary = _invoke("evaluate", "--model", "models:/pspnet@official-ade20k", "--root", str(root))

    out = Path(summary["out"])
    assert out == root / "metrics" / "models" / "models__pspnet_official-ade20k"
    report = json.loads((out / "eval.json").read_text())
    assert report["num_images"] == 1 and summary["miou"] == report["miou"]
    assert len(pd.read_csv(out / "per_class_iou.csv")) == 150
    assert (out / "confusion_matrix.png").is_file() and len(list((out / "overlays").glob("*.png"))) == 1
    # The pixel accuracy is the original network's on the val image.
    prepared = root / "data" / "prepared"
    manifest = pd.read_csv(prepared / "manifest.csv")
    row = manifest[manifest["split"] == "val"].iloc[0]
    rgb = np.array(Image.open(prepared / row["image"]).convert("RGB"))
    target = np.array(Image.open(prepared / row["mask"]))
    valid = target != 255
    expected = (_reference_ids(imported["state"], rgb)[valid] == target[valid]).mean()
    assert report["allacc"] == pytest.approx(expected, abs=MAX_DIFFERING_SHARE)

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(summary["run_id"])
    assert run.data.tags["evaluate.model"] == "models:/pspnet@official-ade20k"
    assert run.data.metrics["val_miou"] == pytest.approx(report["miou"])
    # The pipeline's own outputs were not written.
    assert not (root / "metrics" / "eval.json").exists() and not (root / "plots").exists()


def test_import_errors_name_the_problem(imported: dict, tmp_path: Path) -> None:
    result = runner.invoke(app, ["import-weights", str(imported["source"]), "--format", "semseg", "--dataset", "voc",
                                 "--root", str(imported["root"])])
    assert result.exit_code == 1
    assert "cls.4.weight has 150 classes but the dataset has 21" in result.output
    result = runner.invoke(app, ["import-weights", str(imported["source"]), "--format", "semseg", "--dataset", "coco",
                                 "--root", str(imported["root"])])
    assert result.exit_code == 1 and "--dataset: unknown dataset 'coco'; accepted: ade20k, voc, cityscapes" in result.output
