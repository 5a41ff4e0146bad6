"""End to end: the evaluate stage on a tiny prepared dataset, a real checkpoint and a SQLite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchmetrics.classification import MulticlassConfusionMatrix

from pspnet.config import Params, parse_params
from pspnet.data.classes import ClassTable
from pspnet.data.manifest import write_manifest
from pspnet.errors import ConfigError, PspnetError
from pspnet.stages.evaluate import run as evaluate
from pspnet.tracking.runs import RunRef
from pspnet.tracking.store import setup_mlflow

NAMES = ("sky", "road", "car person")  # a space: metric keys and file names must be sanitised
COLORS = ((70, 130, 180), (128, 64, 128), (0, 0, 142))
#: val images of two sizes, so batches must be split by size.
VAL = {"v_a": (32, 40), "v/b": (40, 48), "v_c": (32, 40)}


#: A held-out split (data.holdout) of two images, scored beside val by default.
HOLDOUT = {"h_a": (32, 40), "h_b": (36, 44)}


def _make_prepared(prepared: Path, holdout: bool = False) -> None:
    rng = np.random.default_rng(0)
    rows = []
    samples = {"t_0": ("train", (32, 40)), **{k: ("val", hw) for k, hw in VAL.items()}}
    if holdout:
        samples |= {k: ("holdout", hw) for k, hw in HOLDOUT.items()}
    for i, (sample_id, (split, (h, w))) in enumerate(samples.items()):
        mask = rng.integers(0, len(NAMES), (h, w), dtype=np.uint8)
        mask[: h // 4] = 0
        mask[-2:] = 255  # ignore strip
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image_rel, mask_rel = f"images/s{i}.png", f"masks/s{i}.png"
        for rel, array, mode in ((image_rel, image, "RGB"), (mask_rel, mask, "L")):
            (prepared / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array, mode=mode).save(prepared / rel)
        rows.append({"id": sample_id, "split": split, "image": image_rel, "mask": mask_rel})
    write_manifest(prepared / "manifest.csv", pd.DataFrame(rows))
    ClassTable(NAMES, COLORS, 255).save(prepared / "classes.json")


def _params(**evaluate: object) -> Params:
    return parse_params({
        "model": {"encoder": "resnet18", "head_channels": 16, "aux_channels": 16, "ppm_bins": [1, 2]},
        "train": {"device": "cpu", "num_workers": 0},
        "evaluate": {"batch_size": 2, "num_overlays": 2, **evaluate},
    })


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Params, str]:
    from pspnet.model.checkpoint import save_checkpoint
    from pspnet.model.pspnet import build_model

    root = tmp_path / "proj"
    params = _params()
    _make_prepared(root / params.paths.prepared)
    torch.manual_seed(0)
    model = build_model(params.model, len(NAMES))
    meta = {"class_names": list(NAMES), "class_colors": [list(c) for c in COLORS], "epoch": 1, "step": 3}
    save_checkpoint(root / "models" / "checkpoint.pt", model, params.model, len(NAMES), meta)
    (root / "metrics").mkdir(parents=True)
    history = {"epoch": [1, 2], "step": [2, 4], "loss": [1.3, 1.1], "lr": [0.01, 0.005], "seconds": [1.0, 1.0]}
    pd.DataFrame(history).to_csv(root / "metrics" / "train_history.csv", index=False)
    (root / "plots" / "overlays").mkdir(parents=True)
    (root / "plots" / "overlays" / "stale.png").write_bytes(b"old")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = setup_mlflow(params.mlflow, root)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_param("train.lr", 0.01)
    RunRef(run.info.run_id, experiment_id, mlflow.get_tracking_uri()).save(root / "models" / "mlflow_run.json")
    return root, params, run.info.run_id


def _confusion(root: Path, params: Params, split: str = "val", num_classes: int = len(NAMES)) -> np.ndarray:
    """Torchmetrics' confusion matrix (rows: truth) of the checkpoint's predictions on ``split``."""
    from pspnet.data.dataset import SegmentationDataset
    from pspnet.data.transforms import eval_transform
    from pspnet.model.checkpoint import load_checkpoint

    model = load_checkpoint(root / "models" / "checkpoint.pt").model
    cm = MulticlassConfusionMatrix(num_classes, ignore_index=255)
    ds = SegmentationDataset(root / params.paths.prepared, split, eval_transform(params))
    with torch.no_grad():
        for image, mask in ds:
            cm.update(model(image[None]).argmax(1), mask[None])
    return cm.compute().numpy().astype(float)


def _independent_scores(root: Path, params: Params, split: str = "val", num_classes: int = len(NAMES)) -> dict[str, float]:
    """Per-image predictions of the checkpoint on ``split``, scored with torchmetrics' confusion matrix."""
    m = _confusion(root, params, split, num_classes)
    inter, target, pred = np.diag(m), m.sum(1), m.sum(0)
    union = target + pred - inter
    iou = [i / u for i, u in zip(inter, union) if u > 0]
    return {"miou": float(np.mean(iou)), "allacc": float(inter.sum() / target.sum())}


def test_evaluate_end_to_end(project: tuple[Path, Params, str]) -> None:
    root, params, run_id = project
    summary = evaluate(params, root)

    text = (root / "metrics" / "eval.json").read_text()
    assert "NaN" not in text
    report = json.loads(text)
    assert set(report) == {"miou", "miou_absent_as_zero", "macc", "allacc", "num_images", "num_pixels", "per_class_iou"}
    assert report["num_images"] == len(VAL) == summary["num_images"]
    assert report["num_pixels"] == sum((h - 2) * w for h, w in VAL.values())
    assert set(report["per_class_iou"]) == set(NAMES)  # write_json sorts keys; the CSV keeps class order
    for value in [report["miou"], report["macc"], report["allacc"], *filter(None, report["per_class_iou"].values())]:
        assert 0.0 <= value <= 1.0
    expected = _independent_scores(root, params)
    assert report["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert report["allacc"] == pytest.approx(expected["allacc"], abs=1e-9)
    assert summary["miou"] == report["miou"] and summary["run_id"] == run_id

    per_class = pd.read_csv(root / "metrics" / "per_class_iou.csv")
    assert list(per_class.columns) == ["class", "iou", "acc", "pixels"]
    assert per_class["class"].tolist() == list(NAMES)
    assert per_class["pixels"].sum() == report["num_pixels"]
    rows = json.loads((root / "metrics" / "confusion.json").read_text())  # the `dvc plots` confusion data
    assert len(rows) == params.evaluate.confusion_plot_rows and {r["actual"] for r in rows} <= set(NAMES)

    plots = root / "plots"
    overlays = sorted(p.name for p in (plots / "overlays").iterdir())
    assert overlays == ["v_a.png", "v_b.png"]  # first two val images, ids sanitised; stale file gone
    for png in [plots / "confusion_matrix.png", plots / "training_curve.png", *(plots / "overlays").iterdir()]:
        with Image.open(png) as img:
            assert img.format == "PNG"
            img.verify()

    client = mlflow.tracking.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["val_miou"] == pytest.approx(report["miou"])
    assert metrics["val_macc"] == pytest.approx(report["macc"])
    assert metrics["val_allacc"] == pytest.approx(report["allacc"])
    for name, value in report["per_class_iou"].items():
        key = "val_iou_" + name.replace(" ", "_")
        assert (key in metrics) == (value is not None)
        if value is not None:
            assert metrics[key] == pytest.approx(value)
    assert run.data.params["train.lr"] == "0.01"  # the train run itself, reopened
    assert run.data.tags["evaluate.inference"] == "whole scales=[1.0]"

    # Re-scored with the paper's test-time protocol: the shown scores say where they come from.
    paper = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"mode": "slide", "crop_size": (16, 16), "flip": True, "scales": (0.75, 1.0)})})
    evaluate(paper, root)
    assert client.get_run(run_id).data.tags["evaluate.inference"] == "slide 16x16 flip scales=[0.75, 1.0]"

    def listing(path: str) -> set[str]:
        return {f.path for f in client.list_artifacts(run_id, path)}

    assert {"evaluation/eval.json", "evaluation/per_class_iou.csv", "evaluation/plots"} <= listing("evaluation")
    assert {"evaluation/plots/confusion_matrix.png", "evaluation/plots/training_curve.png"} <= listing("evaluation/plots")
    assert listing("evaluation/plots/overlays") == {"evaluation/plots/overlays/v_a.png", "evaluation/plots/overlays/v_b.png"}
    # ... and as logged images: the run page's and the compare view's image grid shows them.
    images = [f.path for f in client.list_artifacts(run_id, "images")]
    assert any("overlay_v_a" in path for path in images) and any("overlay_v_b" in path for path in images), images


def test_a_held_out_split_is_scored_beside_val_into_the_report_and_the_run(project: tuple[Path, Params, str]) -> None:
    root, params, run_id = project
    _make_prepared(root / params.paths.prepared, holdout=True)
    summary = evaluate(params, root)

    report = json.loads((root / "metrics" / "eval.json").read_text())
    held = report["splits"]["holdout"]
    assert held["num_images"] == len(HOLDOUT) and held["num_pixels"] == sum((h - 2) * w for h, w in HOLDOUT.values())
    expected = _independent_scores(root, params, "holdout")
    assert held["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert held["allacc"] == pytest.approx(expected["allacc"], abs=1e-9)
    assert report["num_images"] == len(VAL)  # val's own scores stay val's
    assert report["miou"] == pytest.approx(_independent_scores(root, params)["miou"], abs=1e-9)
    assert summary["holdout_miou"] == held["miou"]

    metrics = mlflow.tracking.MlflowClient().get_run(run_id).data.metrics
    assert metrics["holdout_miou"] == pytest.approx(held["miou"]) and metrics["holdout_allacc"] == pytest.approx(held["allacc"])
    assert "holdout_iou_sky" in metrics and metrics["val_miou"] == pytest.approx(report["miou"])

    # Not asked for: not scored.
    only_val = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"extra_splits": ()})})
    assert "holdout_miou" not in evaluate(only_val, root)
    assert "splits" not in json.loads((root / "metrics" / "eval.json").read_text())


def test_look_alike_confusion_is_reported_per_split_and_logged(project: tuple[Path, Params, str]) -> None:
    root, params, run_id = project
    _make_prepared(root / params.paths.prepared, holdout=True)
    pairs = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"confused_pairs": (("road", "car person"),)})})
    evaluate(pairs, root)

    report = json.loads((root / "metrics" / "eval.json").read_text())
    for split, scores in (("val", report), ("holdout", report["splits"]["holdout"])):
        m = _confusion(root, params, split)
        expected = (m[1, 2] + m[2, 1]) / (m[1].sum() + m[2].sum())
        assert scores["confusion"] == {"road/car person": pytest.approx(expected)}
        key = f"{split}_confusion_road_car_person"
        assert mlflow.tracking.MlflowClient().get_run(run_id).data.metrics[key] == pytest.approx(expected)

    # The default (`dataset`): the pairs classes.json declares, none when it declares none.
    ClassTable(NAMES, COLORS, 255, lookalikes=(("sky", "road"),)).save(root / params.paths.prepared / "classes.json")
    evaluate(params, root)
    report = json.loads((root / "metrics" / "eval.json").read_text())
    assert set(report["confusion"]) == {"sky/road"} and set(report["splits"]["holdout"]["confusion"]) == {"sky/road"}
    assert ClassTable.load(root / params.paths.prepared / "classes.json").lookalikes == (("sky", "road"),)

    unknown = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"confused_pairs": (("car", "boat"),)})})
    (root / "metrics" / "eval.json").unlink()
    with pytest.raises(ConfigError, match=r"evaluate.confused_pairs names \['boat', 'car'\]"):
        evaluate(unknown, root)
    assert not (root / "metrics" / "eval.json").exists()  # refused before any scoring


def test_evaluate_fails_fast_without_run_ref(project: tuple[Path, Params, str]) -> None:
    root, params, _ = project
    (root / "models" / "mlflow_run.json").unlink()
    with pytest.raises(PspnetError, match="train"):
        evaluate(params, root)
    assert not (root / "metrics" / "eval.json").exists()


def test_evaluate_rejects_unknown_run_and_ignore_mismatch(project: tuple[Path, Params, str]) -> None:
    root, params, run_id = project
    RunRef("0" * 32, "0", "sqlite:///elsewhere.db").save(root / "models" / "mlflow_run.json")
    with pytest.raises(PspnetError, match="not in the tracking store"):
        evaluate(params, root)
    mismatched = parse_params({**params.model_dump(mode="json", by_alias=True), "data": {"ignore_index": 254}})
    with pytest.raises(ConfigError, match="ignore_index"):
        evaluate(mismatched, root)


def test_any_model_scored_on_onnx_runtime_fp32_and_int8(project: tuple[Path, Params, str], tmp_path: Path) -> None:
    """`pspnet evaluate --model CKPT --runtime ...`: ONNX Runtime fp32 scores what PyTorch scores;
    int8 is calibrated on the prepared train split and scored the same way (its mIoU cost)."""
    import functools

    from pspnet.registry.segmenter import calibration_images, load_model
    from pspnet.stages.evaluate import evaluate_model

    root, params, _ = project
    ckpt = str(root / "models" / "checkpoint.pt")
    scores = {
        runtime: evaluate_model(params, root, ckpt, functools.partial(load_model, runtime=runtime), tmp_path / runtime)
        for runtime in ("torch", "onnxruntime", "onnxruntime-int8")
    }
    assert scores["onnxruntime"]["miou"] == pytest.approx(scores["torch"]["miou"], abs=1e-3)
    assert 0.0 <= scores["onnxruntime-int8"]["miou"] <= 1.0
    assert scores["onnxruntime-int8"]["num_images"] == scores["torch"]["num_images"]
    images = calibration_images(params, root)
    assert images and all(i.shape[:2] == (1, 3) and i.dtype == np.float32 for i in images)

    empty = tmp_path / "empty"
    with pytest.raises(ConfigError, match="calibrates on the prepared train split"):
        calibration_images(params, empty)
