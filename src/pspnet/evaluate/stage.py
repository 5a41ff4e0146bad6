"""The ``evaluate`` stage: score the trained checkpoint on the val split, plot, log to MLflow.

Reads ``models/checkpoint.pt``, ``models/mlflow_run.json`` and the prepared dataset; writes
``metrics/eval.json``, ``metrics/per_class_iou.csv``, ``metrics/per_image.npz`` (per-image
intersection / union counts, for the promotion gate), ``plots/confusion_matrix.png``,
``plots/training_curve.png`` and ``plots/overlays/<id>.png``, then logs ``val_*`` metrics and
those files (under ``evaluation/``) into the MLflow run that ``train`` opened, so one run holds
a model's parameters, training curve and validation scores.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pspnet import atomic_files
from pspnet.config import EvaluateConfig, ModelConfig, Params
from pspnet.data.classes import CLASSES_FILE, load_classes
from pspnet.data.manifest import MANIFEST_FILE, load_dataset_record
from pspnet.device import resolve_device
from pspnet.errors import DataError, PspnetError
from pspnet.evaluate.metrics import SegmentationMetrics
from pspnet.evaluate.plots import plot_confusion_matrix, plot_overlay, plot_training_curve
from pspnet.evaluate.scores import score_dataset
from pspnet.tracking.runs import RUN_REF_FILE, RunRef
from pspnet.tracking.store import setup_mlflow

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
EVAL_JSON = "eval.json"
PER_CLASS_CSV = "per_class_iou.csv"
#: Per-image intersection / union counts (:class:`~pspnet.evaluate.scores.ImageScores`), for the promotion gate.
PER_IMAGE_NPZ = "per_image.npz"
#: Data version recorded for prepared data that has no ``dataset.json`` (never trusted as a cache key).
UNVERSIONED = ""
#: MLflow tag naming the test-time settings of the run's (latest) validation scores.
INFERENCE_TAG = "evaluate.inference"
TRAIN_HISTORY_CSV = "train_history.csv"
CONFUSION_PNG = "confusion_matrix.png"
TRAINING_CURVE_PNG = "training_curve.png"
OVERLAYS_DIR = "overlays"
#: The split scored by this stage.
SPLIT = "val"
#: Folder of the MLflow run's artifacts that receives this stage's files.
ARTIFACT_DIR = "evaluation"
#: Folder (under ``paths.metrics``) of ``evaluate --model`` reports, one subfolder per model.
MODEL_REPORTS_DIR = "models"
#: Tag of an ``evaluate --model`` run naming the model it scored.
MODEL_TAG = "evaluate.model"
#: How many class names a class-list mismatch message shows.
NAMES_PREVIEWED = 5


def _safe_name(text: str) -> str:
    """``text`` reduced to characters safe in file names and MLflow metric keys."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


def _write_per_class_csv(path: Path, result: SegmentationMetrics, names: tuple[str, ...]) -> None:
    frame = pd.DataFrame(
        {"class": list(names), "iou": result.iou, "acc": result.acc, "pixels": result.target.astype(np.int64)}
    )
    with atomic_files.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def data_version(prepared: Path) -> str:
    """The prepared data's content version (``dataset.json``), or :data:`UNVERSIONED`."""
    return str(load_dataset_record(prepared).get("version") or UNVERSIONED)


def inference_tag(cfg: EvaluateConfig) -> str:
    """The test-time settings that produced the scores, e.g. ``slide 96x128 flip scales=[0.75, 1.0]``."""
    parts = [cfg.mode if cfg.mode == "whole" else f"{cfg.mode} {cfg.crop_size[0]}x{cfg.crop_size[1]}"]
    if cfg.flip:
        parts.append("flip")
    parts.append(f"scales={list(cfg.scales)}")
    if cfg.base_size is not None:
        parts.append(f"base_size={cfg.base_size}")
    return " ".join(parts)


def split_dataset(params: Params, root: Path, model_cfg: ModelConfig) -> Any:
    """The scored split (:data:`SPLIT`) of the prepared data, normalised as ``model_cfg`` says
    (the model's own training statistics, not necessarily today's params), without the samples
    ``validate`` quarantined (:func:`pspnet.data.quarantine.excluded_ids`)."""
    from pspnet.data.dataset import SegmentationDataset
    from pspnet.data.quarantine import excluded_ids
    from pspnet.layout import Layout
    from pspnet.data.transforms import eval_transform

    prepared = Path(root) / params.paths.prepared
    dataset = SegmentationDataset(
        prepared,
        SPLIT,
        eval_transform(params.model_copy(update={"model": model_cfg})),
        exclude=excluded_ids(Layout(root, params.paths).quarantine, params.validate_.quarantine),
        max_image_pixels=params.data.max_image_pixels,
    )
    if len(dataset) == 0:
        raise DataError(f"{prepared / MANIFEST_FILE}: the '{SPLIT}' split is empty; nothing to evaluate.")
    return dataset


def _log_to_mlflow(
    ref: RunRef, metrics: dict[str, float], files: list[tuple[Path, str]], overlays: Path, tags: dict[str, str]
) -> None:
    import mlflow

    try:
        with mlflow.start_run(run_id=ref.run_id):
            # The latest evaluation of a run wins in the UI (the history keeps earlier ones); the
            # tag says which test-time settings the shown scores come from.
            mlflow.set_tags(tags)
            mlflow.log_metrics(metrics)
            for path, artifact_path in files:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)
            if any(overlays.iterdir()):
                mlflow.log_artifacts(str(overlays), artifact_path=f"{ARTIFACT_DIR}/plots/{OVERLAYS_DIR}")
    except mlflow.exceptions.MlflowException as err:
        raise PspnetError(f"could not log the evaluation into MLflow run {ref.run_id}: {err}") from None


def mlflow_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The ``val_*`` metrics of a summary (mIoU, mAcc, allAcc and one IoU per class) for MLflow."""
    metrics = {f"val_{k}": v for k, v in summary.items() if k in ("miou", "miou_absent_as_zero", "macc", "allacc")}
    metrics.update({f"val_iou_{_safe_name(name)}": v for name, v in summary["per_class_iou"].items()})
    return {k: float(v) for k, v in metrics.items() if v is not None}


def write_reports(
    result: SegmentationMetrics,
    kept: dict[int, Any],
    dataset: Any,
    classes: Any,
    cfg: EvaluateConfig,
    metrics_dir: Path,
    plots_dir: Path,
) -> dict[str, Any]:
    """Write ``eval.json``, ``per_class_iou.csv``, the confusion matrix and the overlays of the
    ``kept`` images (``index -> (target, prediction)``); returns the metrics summary."""
    from pspnet.data.dataset import load_image

    summary = result.summary(classes.names)
    atomic_files.write_json(metrics_dir / EVAL_JSON, {**summary, "num_images": len(dataset)})
    _write_per_class_csv(metrics_dir / PER_CLASS_CSV, result, classes.names)
    plot_confusion_matrix(result.matrix, classes.names, plots_dir / CONFUSION_PNG,
                          title=f"Confusion matrix, {SPLIT} (row-normalised), mIoU {result.miou:.3f}")
    with atomic_files.atomic_dir(plots_dir / OVERLAYS_DIR) as tmp_dir:
        for index in sorted(kept):
            target, pred = kept[index]
            sample_id = str(dataset.ids[index])
            image = load_image(dataset.image_paths[index])  # the whole-image eval transform keeps the size
            out = tmp_dir / f"{_safe_name(sample_id)}.png"
            if out.exists():  # two ids that sanitise to the same name
                out = tmp_dir / f"{_safe_name(sample_id)}-{index}.png"
            plot_overlay(image, target, pred, classes.names, classes.colors, out,
                         ignore_index=classes.ignore_index, alpha=cfg.overlay_alpha, title=sample_id)
    return summary


def evaluate(params: Params, root: Path) -> dict[str, Any]:
    """Score ``models/checkpoint.pt`` on the val split; write metrics and plots; log to MLflow.

    Returns ``{"miou", "miou_absent_as_zero", "macc", "allacc", "num_images", "run_id", "seconds"}``.
    """
    import mlflow

    from pspnet.model.checkpoint import load_checkpoint
    started = time.perf_counter()
    root = Path(root)
    cfg = params.evaluate
    prepared = root / params.paths.prepared
    models_dir = root / params.paths.models
    metrics_dir = root / params.paths.metrics
    plots_dir = root / params.paths.plots

    # Everything that can fail cheaply fails before inference.
    classes = load_classes(prepared, params.data.ignore_index)
    ref = RunRef.load(models_dir / RUN_REF_FILE)
    setup_mlflow(params.mlflow, root)
    try:
        mlflow.get_run(ref.run_id)
    except mlflow.exceptions.MlflowException as err:
        raise PspnetError(
            f"{models_dir / RUN_REF_FILE}: MLflow run {ref.run_id} is not in the tracking store "
            f"{mlflow.get_tracking_uri()!r} (train logged to {ref.tracking_uri!r}): {err}. Re-run `train`."
        ) from None
    device = resolve_device(params.train.device)
    ckpt = load_checkpoint(models_dir / CHECKPOINT_FILE, map_location="cpu")
    if ckpt.num_classes != classes.num_classes:
        raise PspnetError(
            f"{models_dir / CHECKPOINT_FILE} predicts {ckpt.num_classes} classes but {prepared / CLASSES_FILE} "
            f"lists {classes.num_classes}. Re-run `train` on the current dataset."
        )
    trained_names = ckpt.meta.get("class_names")
    if trained_names is not None and list(trained_names) != list(classes.names):
        raise PspnetError(
            f"{models_dir / CHECKPOINT_FILE} was trained on classes {list(trained_names)} but "
            f"{prepared / CLASSES_FILE} lists {list(classes.names)}. Re-run `train` on the current dataset."
        )
    model = ckpt.model.to(device).eval()

    # Normalise exactly as the checkpoint's model was trained (its stored config), not as params say now.
    dataset = split_dataset(params, root, ckpt.model_cfg)
    context = {"data_version": data_version(prepared), "protocol": inference_tag(cfg)}
    scored = score_dataset(
        model, dataset, [str(i) for i in dataset.ids], classes.names, classes.ignore_index, cfg, device, context,
        num_workers=params.train.num_workers, keep=lambda index: index < cfg.num_overlays, desc=f"evaluate {SPLIT}",
    )
    result, kept = scored.metrics, scored.kept
    if result.num_pixels == 0:
        raise DataError(f"every pixel of the '{SPLIT}' split is ignore ({classes.ignore_index}); nothing to score.")

    summary = write_reports(result, kept, dataset, classes, cfg, metrics_dir, plots_dir)
    scored.images.save(metrics_dir / PER_IMAGE_NPZ)
    plot_training_curve(metrics_dir / TRAIN_HISTORY_CSV, plots_dir / TRAINING_CURVE_PNG)
    overlays_dir = plots_dir / OVERLAYS_DIR

    # MLflow: the train stage's run gets the validation scores and the files.
    val_metrics = mlflow_metrics(summary)
    files = [
        (metrics_dir / EVAL_JSON, ARTIFACT_DIR),
        (metrics_dir / PER_CLASS_CSV, ARTIFACT_DIR),
        (plots_dir / CONFUSION_PNG, f"{ARTIFACT_DIR}/plots"),
        (plots_dir / TRAINING_CURVE_PNG, f"{ARTIFACT_DIR}/plots"),
    ]
    _log_to_mlflow(ref, val_metrics, files, overlays_dir, {INFERENCE_TAG: inference_tag(cfg)})

    seconds = round(time.perf_counter() - started, 2)
    log.info("evaluate: mIoU %.4f over %d images in %.1f s", result.miou, len(dataset), seconds)
    return {
        "miou": summary["miou"],
        "miou_absent_as_zero": summary["miou_absent_as_zero"],
        "macc": summary["macc"],
        "allacc": summary["allacc"],
        "num_images": len(dataset),
        "run_id": ref.run_id,
        "seconds": seconds,
    }


def evaluate_model(params: Params, root: Path, model: str, out: Path | None = None) -> dict[str, Any]:
    """Score any model on the prepared val split, outside the pipeline: a checkpoint path or an
    MLflow model URI (an imported official model, ``models:/pspnet@official-ade20k``, or an
    earlier version).

    Writes ``eval.json``, ``per_class_iou.csv``, ``confusion_matrix.png`` and ``overlays/`` into
    ``out`` (default ``<paths.metrics>/models/<model>/``) and logs them with the ``val_*``
    metrics into a new MLflow run ``evaluate <model>`` (tag :data:`MODEL_TAG`), so the model
    sits beside the trained runs in the UI. The pipeline's own outputs are not touched. The
    images are normalised as the model records (an imported Caffe model: its mean, no std).
    """
    import mlflow

    from pspnet.registry.segmenter import load_model
    from pspnet.tracking.runs import dataset_tags, run_tags

    started = time.perf_counter()
    root = Path(root)
    cfg = params.evaluate
    prepared = root / params.paths.prepared
    classes = load_classes(prepared, params.data.ignore_index)
    segmenter = load_model(model, params, root)
    if list(segmenter.class_names) != list(classes.names):
        raise PspnetError(
            f"{model} predicts {segmenter.num_classes} classes {_preview(segmenter.class_names)} but "
            f"{prepared / CLASSES_FILE} lists {classes.num_classes} {_preview(classes.names)}. Prepare the dataset "
            "the model was trained on (e.g. data.source.name: ade20k for an official ADE20K model), then `dvc repro validate`."
        )
    setup_mlflow(params.mlflow, root)
    device = resolve_device(params.train.device)
    network = segmenter.model.to(device).eval()
    model_cfg = params.model.model_copy(update={"input_mean": segmenter.input_mean, "input_std": segmenter.input_std})
    dataset = split_dataset(params, root, model_cfg)
    context = {"data_version": data_version(prepared), "protocol": inference_tag(cfg), "model": model}
    scored = score_dataset(
        network, dataset, [str(i) for i in dataset.ids], classes.names, classes.ignore_index, cfg, device, context,
        num_workers=params.train.num_workers, keep=lambda index: index < cfg.num_overlays, desc=f"evaluate {model}",
    )
    if scored.metrics.num_pixels == 0:
        raise DataError(f"every pixel of the '{SPLIT}' split is ignore ({classes.ignore_index}); nothing to score.")
    out = Path(out) if out is not None else root / params.paths.metrics / MODEL_REPORTS_DIR / _safe_name(model)
    summary = write_reports(scored.metrics, scored.kept, dataset, classes, cfg, out, out)

    mlflow.set_experiment(params.mlflow.experiment_name)
    tags = {**run_tags(root), **dataset_tags(prepared), MODEL_TAG: model, INFERENCE_TAG: inference_tag(cfg)}
    try:
        with mlflow.start_run(run_name=f"evaluate {model}", tags=tags) as run:
            mlflow.log_metrics(mlflow_metrics(summary))
            mlflow.log_artifacts(str(out), artifact_path=ARTIFACT_DIR)
    except mlflow.exceptions.MlflowException as err:
        raise PspnetError(f"could not log the evaluation of {model} into MLflow: {err}") from None
    seconds = round(time.perf_counter() - started, 2)
    log.info("evaluate %s: mIoU %.4f over %d images in %.1f s", model, scored.metrics.miou, len(dataset), seconds)
    return {
        "model": model,
        "miou": summary["miou"],
        "miou_absent_as_zero": summary["miou_absent_as_zero"],
        "macc": summary["macc"],
        "allacc": summary["allacc"],
        "num_images": len(dataset),
        "out": str(out),
        "run_id": run.info.run_id,
        "seconds": seconds,
    }


def _preview(names: Any) -> str:
    names = list(names)
    return f"{names[:NAMES_PREVIEWED]}{' ...' if len(names) > NAMES_PREVIEWED else ''}"
