"""The labelled test split, scored apart from val: ``pspnet evaluate --split test`` and the optional
``test`` stage on a generated CamVid (SegNet layout: train/ val/ test/ with their annot/ folders and
lists), prepared by the real ``prepare`` stage, with a real checkpoint and a SQLite MLflow store.
The score goes to metrics/test/, the train run and the model card; never to the promotion gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pspnet.cli import app
from pspnet.config import Params, deep_merge, parse_params
from pspnet.data.sources.camvid import CLASS_COLORS, CLASS_NAMES
from pspnet.errors import ConfigError, DataError
from pspnet.evaluate.scores import ImageScores
from pspnet.stages import prepare
from pspnet.stages import test as stage_test
from pspnet.stages.evaluate import run as evaluate
from pspnet.tracking.runs import RunRef
from pspnet.tracking.store import setup_mlflow
from tests.data.sources.test_camvid import write_segnet_camvid
from tests.evaluate.test_stage import _independent_scores

TRAIN = ("0001TP_006690", "0006R0_f00930", "0016E5_00390")
VAL = ("0016E5_07959", "0016E5_07961")
TEST = ("0001TP_008550", "Seq05VD_f00000", "Seq05VD_f00030")
#: Small enough to prepare, score and register in seconds.
RAW: dict[str, Any] = {
    "data": {"source": {"name": "camvid", "location": "data/raw/camvid"}, "num_workers": 1},
    "model": {"encoder": "resnet18", "head_channels": 16, "aux_channels": 8, "ppm_bins": [1, 2]},
    "train": {"device": "cpu", "num_workers": 0},
    "evaluate": {"batch_size": 4, "num_overlays": 0},
    "register": {"export_example_size": [32, 48], "probe_size": [40, 56], "bootstrap_samples": 200, "export_onnx": False},
}


def _project(root: Path, splits: dict[str, tuple[str, ...]], **sections: Any) -> Params:
    """A project whose raw data is a generated CamVid of ``splits``, prepared; params.yaml written
    (the CLI reads it)."""
    raw = deep_merge(RAW, sections)
    write_segnet_camvid(root / "data" / "raw" / "camvid", splits)
    root.joinpath("params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    prepare.run(params, root)
    return params


@pytest.fixture
def camvid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Params, str]:
    """A prepared CamVid with a test split, an (untrained, seeded) checkpoint of its classes and
    the MLflow run ``train`` would have opened."""
    from pspnet.model.checkpoint import save_checkpoint
    from pspnet.model.pspnet import build_model

    root = tmp_path / "proj"
    params = _project(root, {"train": TRAIN, "val": VAL, "test": TEST})
    torch.manual_seed(0)
    meta = {"class_names": list(CLASS_NAMES), "class_colors": [list(c) for c in CLASS_COLORS]}
    save_checkpoint(root / "models" / "checkpoint.pt", build_model(params.model, len(CLASS_NAMES)), params.model, len(CLASS_NAMES), meta)
    history = {"epoch": [1], "step": [1], "loss": [1.0], "lr": [0.01], "seconds": [1.0]}
    (root / "metrics").mkdir(parents=True)
    pd.DataFrame(history).to_csv(root / "metrics" / "train_history.csv", index=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = setup_mlflow(params.mlflow, root)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tag("note", "train")
    RunRef(run.info.run_id, experiment_id, mlflow.get_tracking_uri()).save(root / "models" / "mlflow_run.json")
    return root, params, run.info.run_id


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _flat(output: str) -> str:
    """CLI output as one line, without the frame of a usage error's box."""
    return " ".join(output.replace("│", " ").split())


def _val_outputs(root: Path) -> dict[str, bytes]:
    """What val's scoring wrote and the promotion gate reads."""
    return {name: (root / "metrics" / name).read_bytes() for name in ("eval.json", "per_image.npz", "per_class_iou.csv")}


def test_evaluate_split_test_scores_the_camvid_test_split_apart_from_val(camvid: tuple[Path, Params, str]) -> None:
    root, params, run_id = camvid
    manifest = pd.read_csv(root / "data" / "prepared" / "manifest.csv")
    assert sorted(manifest.loc[manifest["split"] == "test", "id"]) == sorted(TEST)
    evaluate(params, root)
    val_before = _val_outputs(root)

    result = _cli("evaluate", "--split", "test", "--root", str(root))
    assert result.exit_code == 0, result.output

    record = json.loads((root / "metrics" / "test" / "eval.json").read_text())
    assert (record["split"], record["num_images"], record["run_id"]) == ("test", len(TEST), run_id)
    assert record["protocol"] == "whole scales=[1.0]" and record["data_version"]
    expected = _independent_scores(root, params, "test", num_classes=len(CLASS_NAMES))
    assert record["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert record["allacc"] == pytest.approx(expected["allacc"], abs=1e-9)
    per_class = pd.read_csv(root / "metrics" / "test" / "per_class_iou.csv")
    assert per_class["class"].tolist() == list(CLASS_NAMES) and per_class["pixels"].sum() == record["num_pixels"]

    # Val's files (what the gate reads) are untouched, and eval.json carries no test score.
    assert _val_outputs(root) == val_before
    assert "test" not in json.loads(val_before["eval.json"]).get("splits", {})
    assert set(ImageScores.load(root / "metrics" / "per_image.npz").ids) == set(VAL)

    client = mlflow.tracking.MlflowClient()
    run = client.get_run(run_id)
    assert run.data.metrics["test_miou"] == pytest.approx(record["miou"])
    assert run.data.metrics["test_allacc"] == pytest.approx(record["allacc"])
    assert run.data.metrics["val_miou"] == pytest.approx(json.loads(val_before["eval.json"])["miou"])
    assert run.data.tags["test.inference"] == "whole scales=[1.0]"
    logged = {f.path for f in client.list_artifacts(run_id, "evaluation/test")}
    assert logged == {"evaluation/test/eval.json", "evaluation/test/per_class_iou.csv"}


def test_the_test_stage_is_off_by_default_and_records_why(camvid: tuple[Path, Params, str]) -> None:
    root, params, run_id = camvid
    assert params.test.enabled is False
    checkpoint = root / "models" / "checkpoint.pt"
    kept = checkpoint.read_bytes()
    checkpoint.unlink()  # a skip loads nothing

    summary = stage_test.run(params, root)
    record = json.loads((root / "metrics" / "test" / "eval.json").read_text())
    assert summary == record and record["skipped"] is True and "test.enabled is false" in record["reason"]
    assert "pspnet evaluate --split test" in record["reason"]
    skipped_csv = pd.read_csv(root / "metrics" / "test" / "per_class_iou.csv")
    assert skipped_csv.empty
    assert not any(key.startswith("test_") for key in mlflow.tracking.MlflowClient().get_run(run_id).data.metrics)

    checkpoint.write_bytes(kept)
    enabled = params.model_copy(update={"test": params.test.model_copy(update={"enabled": True})})
    scored = stage_test.run(enabled, root)
    assert (scored["split"], scored["num_images"], scored["run_id"]) == ("test", len(TEST), run_id)
    assert json.loads((root / "metrics" / "test" / "eval.json").read_text())["miou"] == scored["miou"]
    # The skip's header-only CSV has the scored CSV's columns (DVC sees one output, either way).
    assert list(skipped_csv.columns) == list(pd.read_csv(root / "metrics" / "test" / "per_class_iou.csv").columns)


def test_a_split_the_prepared_data_lacks_is_named_with_what_it_holds_and_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    params = _project(root, {"train": TRAIN, "val": VAL})  # CamVid shipped without test/ + testannot/

    result = _cli("evaluate", "--split", "test", "--root", str(root))
    assert result.exit_code == DataError.exit_code, result.output
    message = _flat(result.output)
    assert "has no 'test' split" in message and f"train ({len(TRAIN)}), val ({len(VAL)})" in message, message
    assert "source 'camvid'" in message and "Fix:" in message and "test/ + testannot/" in message
    assert "Traceback" not in result.output
    enabled = params.model_copy(update={"test": params.test.model_copy(update={"enabled": True})})
    with pytest.raises(DataError, match="has no 'test' split"):
        stage_test.run(enabled, root)
    assert not (root / "metrics" / "test").exists()

    # Only val and test are --split values; the test split goes with the trained checkpoint.
    other = _cli("evaluate", "--split", "holdout", "--root", str(root))
    assert other.exit_code == 2 and "'holdout': val or test" in _flat(other.output)
    with_model = _cli("evaluate", "--split", "test", "--model", "models:/pspnet@champion", "--root", str(root))
    assert with_model.exit_code == 2 and "--model / --out score val only" in _flat(with_model.output)


def test_the_test_split_cannot_be_scored_beside_val() -> None:
    """evaluate.extra_splits feeds eval.json, val's report: the test split has its own stage."""
    with pytest.raises(ConfigError, match=r"evaluate.extra_splits.*scored apart from val.*`test` stage"):
        parse_params({"evaluate": {"extra_splits": ["holdout", "test"]}}, "params.yaml")


@pytest.mark.integration  # a registration (export, pyfunc, probe) through a real store
def test_the_model_card_shows_the_test_score_and_the_gate_never_sees_it(camvid: tuple[Path, Params, str]) -> None:
    from pspnet.stages import register

    root, params, _ = camvid
    evaluate(params, root)
    val = json.loads((root / "metrics" / "eval.json").read_text())
    test = stage_test.score_test(params, root)
    assert test["miou"] != pytest.approx(val["miou"])  # the two scores can be told apart below

    report = register.run(params, root)
    # The gate judged val: its metric, its image count; no test number in its report.
    assert report["metric_value"] == pytest.approx(val["miou"])
    assert report["num_val_images"] == len(VAL)
    assert "test" not in json.dumps(report["gate"])
    card = (root / "reports" / "model_card.md").read_text()
    assert "## Metrics (test split)" in card and "never compared by the promotion gate" in card
    assert f"| test | {len(TEST)} | {test['miou']:.4f} |" in card

    # Scores of another run are stale: left off the card, not shown as this model's.
    record = json.loads((root / "metrics" / "test" / "eval.json").read_text())
    (root / "metrics" / "test" / "eval.json").write_text(json.dumps({**record, "run_id": "0" * 32}))
    register.run(params, root)
    assert "## Metrics (test split)" not in (root / "reports" / "model_card.md").read_text()
