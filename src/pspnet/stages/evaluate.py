"""Stage ``evaluate``: score the trained checkpoint on the val split, write metrics and plots,
log them into the MLflow run that ``train`` opened (one run holds a model's parameters,
training curve and validation scores).

:func:`evaluate_model` (``pspnet evaluate --model``) scores any other model the same way, into
a report folder and a run of its own, without touching the pipeline's outputs.
:func:`evaluate_apart` scores the checkpoint on a split kept apart from val (the test split of
the ``test`` stage), into files of its own that the promotion gate never reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from pspnet import atomic_files
from pspnet.config import Params
from pspnet.data.classes import CLASSES_FILE, ClassTable, load_classes
from pspnet.device import resolve_device
from pspnet.errors import ConfigError, PspnetError
from pspnet.evaluate.plots import plot_training_curve
from pspnet.evaluate.reports import (
    ReportPaths,
    safe_name,
    split_metrics,
    val_metrics,
    write_per_class_csv,
    write_reports,
)
from pspnet.evaluate.scoring import (
    SPLIT,
    data_version,
    extra_splits,
    inference_tag,
    score_split,
    split_dataset,
)
from pspnet.layout import (
    CONFUSION_MATRIX_FILE,
    CONFUSION_ROWS_FILE,
    EVAL_METRICS_FILE,
    OVERLAYS_DIR,
    PER_CLASS_IOU_FILE,
    Layout,
)
from pspnet.tracking.runs import RunRef, dataset_tags, run_tags
from pspnet.tracking.store import setup_mlflow

log = logging.getLogger(__name__)

#: MLflow tag naming the test-time settings of the run's (latest) validation scores.
INFERENCE_TAG = "evaluate.inference"
#: MLflow tag naming the test-time settings of a split scored apart: ``<split>.inference``.
APART_INFERENCE_TAG = "{split}.inference"
#: Tag of an ``evaluate --model`` run naming the model it scored.
MODEL_TAG = "evaluate.model"
#: Folder of the MLflow run's artifacts that receives this stage's files.
ARTIFACT_DIR = "evaluation"
#: How many class names a class-list mismatch message shows.
NAMES_PREVIEWED = 5
#: Summary entries returned by both entry points.
RETURNED_METRICS = ("miou", "miou_absent_as_zero", "macc", "allacc")

#: ``(model, params, root) -> Segmenter`` (:func:`pspnet.registry.segmenter.load_model`).
ModelLoader = Callable[[str, Params, Path], Any]


def _check_run(ref: RunRef, layout: Layout) -> None:
    """Fail unless the run ``train`` recorded is in the current tracking store."""
    import mlflow

    try:
        mlflow.get_run(ref.run_id)
    except mlflow.exceptions.MlflowException as err:
        raise PspnetError(
            f"{layout.run_ref}: MLflow run {ref.run_id} is not in the tracking store "
            f"{mlflow.get_tracking_uri()!r} (train logged to {ref.tracking_uri!r}): {err}. Re-run `train`."
        ) from None


def _load_trained(layout: Layout, classes: ClassTable) -> Any:
    """The trained checkpoint, checked to predict the prepared data's classes."""
    from pspnet.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(layout.checkpoint, map_location="cpu")
    if ckpt.num_classes != classes.num_classes:
        raise PspnetError(
            f"{layout.checkpoint} predicts {ckpt.num_classes} classes but {layout.prepared / CLASSES_FILE} "
            f"lists {classes.num_classes}. Re-run `train` on the current dataset."
        )
    trained_names = ckpt.meta.get("class_names")
    if trained_names is not None and list(trained_names) != list(classes.names):
        raise PspnetError(
            f"{layout.checkpoint} was trained on classes {list(trained_names)} but "
            f"{layout.prepared / CLASSES_FILE} lists {list(classes.names)}. Re-run `train` on the current dataset."
        )
    return ckpt


def confused_pairs(cfg: Any, classes: ClassTable) -> tuple[tuple[str, str], ...]:
    """The look-alike pairs to report: ``evaluate.confused_pairs``, or the dataset's own ones."""
    pairs = classes.lookalikes if cfg.confused_pairs == "dataset" else cfg.confused_pairs
    unknown = sorted({name for pair in pairs for name in pair} - set(classes.names))
    if unknown:
        raise ConfigError(
            f"evaluate.confused_pairs names {unknown}, not classes of the prepared data "
            f"({_preview(classes.names)}). Fix: list pairs of its classes in params.yaml, or `dataset`."
        )
    return tuple(pairs)


def _score_extra_splits(
    params: Params, layout: Layout, model: Any, model_cfg: Any, classes: ClassTable, device: Any
) -> dict[str, dict[str, Any]]:
    """``{split: summary}`` of the ``evaluate.extra_splits`` the prepared data has (e.g. the
    held-out sequences of ``data.holdout``), scored as val is."""
    summaries = {}
    for split in extra_splits(layout.prepared, params.evaluate.extra_splits):
        dataset = split_dataset(params, layout.prepared, layout.quarantine, model_cfg, split)
        scored = score_split(
            model, dataset, classes.names, classes.ignore_index, params.evaluate, device, data_version(layout.prepared),
            num_workers=params.train.num_workers, desc=f"evaluate {split}",
        )
        summaries[split] = {**scored.metrics.summary(classes.names, confused_pairs(params.evaluate, classes)), "num_images": len(dataset)}
        log.info("evaluate: %s mIoU %.4f over %d images", split, scored.metrics.miou, len(dataset))
    return summaries


def _headline(summary: dict[str, Any], extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The returned scores: val's, and ``<split>_miou`` of each extra split."""
    return {**{key: summary[key] for key in RETURNED_METRICS}, **{f"{s}_miou": e["miou"] for s, e in extra.items()}}


def _log_to_run(ref: RunRef, layout: Layout, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Log the scores and this stage's files into the train stage's run."""
    import mlflow

    files = [
        (layout.eval_metrics, ARTIFACT_DIR),
        (layout.per_class_iou, ARTIFACT_DIR),
        (layout.confusion_matrix, f"{ARTIFACT_DIR}/plots"),
        (layout.training_curve, f"{ARTIFACT_DIR}/plots"),
    ]
    try:
        with mlflow.start_run(run_id=ref.run_id):
            # The latest evaluation of a run wins in the UI (the history keeps earlier ones); the
            # tag says which test-time settings the shown scores come from.
            mlflow.set_tags(tags)
            mlflow.log_metrics(metrics)
            for path, artifact_path in files:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)
            if any(layout.overlays.iterdir()):
                mlflow.log_artifacts(str(layout.overlays), artifact_path=f"{ARTIFACT_DIR}/plots/{OVERLAYS_DIR}")
            for overlay in sorted(layout.overlays.glob("*.png")):  # the UI's image grid (chart view, compare)
                with Image.open(overlay) as image:
                    mlflow.log_image(image.convert("RGB"), key=f"overlay_{overlay.stem}")
    except mlflow.exceptions.MlflowException as err:
        raise PspnetError(f"could not log the evaluation into MLflow run {ref.run_id}: {err}") from None


def _open_trained(params: Params, root: Path) -> tuple[Layout, ClassTable, tuple[tuple[str, str], ...], RunRef, Any, Any]:
    """What scoring the pipeline's checkpoint needs, each part checked before any inference
    (what can fail cheaply fails first): layout, classes, look-alike pairs, the train run (its
    store set up), the device and the loaded checkpoint."""
    layout = Layout(root, params.paths)
    classes = load_classes(layout.prepared, params.data.ignore_index)
    pairs = confused_pairs(params.evaluate, classes)
    ref = RunRef.load(layout.run_ref)
    setup_mlflow(params.mlflow, root)
    _check_run(ref, layout)
    device = resolve_device(params.train.device)
    return layout, classes, pairs, ref, device, _load_trained(layout, classes)


def run(params: Params, root: Path) -> dict[str, Any]:
    """Stage ``evaluate``: score the checkpoint on the val split (and ``evaluate.extra_splits``);
    write metrics and plots; log to MLflow.

    Returns ``{"miou", "miou_absent_as_zero", "macc", "allacc", "<extra split>_miou" ...,
    "num_images", "run_id", "seconds"}``.
    """
    started = time.perf_counter()
    cfg = params.evaluate
    layout, classes, pairs, ref, device, ckpt = _open_trained(params, Path(root))

    # Normalise exactly as the checkpoint's model was trained (its stored config), not as params say now.
    dataset = split_dataset(params, layout.prepared, layout.quarantine, ckpt.model_cfg)
    scored = score_split(
        ckpt.model, dataset, classes.names, classes.ignore_index, cfg, device, data_version(layout.prepared),
        num_workers=params.train.num_workers, num_overlays=cfg.num_overlays, desc=f"evaluate {SPLIT}",
    )
    extra = _score_extra_splits(params, layout, ckpt.model, ckpt.model_cfg, classes, device)
    paths = ReportPaths(layout.eval_metrics, layout.per_class_iou, layout.confusion_matrix, layout.overlays, layout.confusion_rows)
    summary = write_reports(scored, dataset, classes, cfg.overlay_alpha, paths, extra, pairs, cfg.confusion_plot_rows)
    scored.images.save(layout.per_image_scores)
    plot_training_curve(layout.train_history, layout.training_curve)
    _log_to_run(ref, layout, val_metrics(summary, extra), {INFERENCE_TAG: inference_tag(cfg)})

    seconds = round(time.perf_counter() - started, 2)
    log.info("evaluate: mIoU %.4f over %d images in %.1f s", scored.metrics.miou, len(dataset), seconds)
    return {
        **_headline(summary, extra),
        "num_images": len(dataset),
        "run_id": ref.run_id,
        "seconds": seconds,
    }


def _log_apart_to_run(ref: RunRef, split: str, metrics: dict[str, float], tags: dict[str, str], files: list[Path]) -> None:
    """Log a split scored apart (its ``<split>_*`` metrics and files) into the train stage's run."""
    import mlflow

    try:
        with mlflow.start_run(run_id=ref.run_id):
            mlflow.set_tags(tags)
            mlflow.log_metrics(metrics)
            for path in files:
                mlflow.log_artifact(str(path), artifact_path=f"{ARTIFACT_DIR}/{safe_name(split)}")
    except mlflow.exceptions.MlflowException as err:
        raise PspnetError(f"could not log the {split} scores into MLflow run {ref.run_id}: {err}") from None


def evaluate_apart(params: Params, root: Path, split: str, metrics_file: Path, per_class_file: Path) -> dict[str, Any]:
    """Score the trained checkpoint on ``split`` (which the prepared data must hold; the caller
    checks) apart from val: its summary, with the run, data version and protocol it belongs to,
    into ``metrics_file``, per-class IoU into ``per_class_file``, both and the ``<split>_*``
    metrics into the train stage's MLflow run. Nothing that val's reports or the promotion gate
    read is written (no per-image scores, no eval.json).

    Returns ``{"split", "miou", "miou_absent_as_zero", "macc", "allacc", "num_images", "run_id", "seconds"}``.
    """
    started = time.perf_counter()
    cfg = params.evaluate
    layout, classes, pairs, ref, device, ckpt = _open_trained(params, Path(root))

    version = data_version(layout.prepared)
    dataset = split_dataset(params, layout.prepared, layout.quarantine, ckpt.model_cfg, split)
    scored = score_split(
        ckpt.model, dataset, classes.names, classes.ignore_index, cfg, device, version,
        num_workers=params.train.num_workers, desc=f"evaluate {split}",
    )
    summary = {**scored.metrics.summary(classes.names, pairs), "num_images": len(dataset)}
    # What the scores belong to, so that a reader (register's model card) can tell a stale file.
    record = {**summary, "split": split, "run_id": ref.run_id, "data_version": version, "protocol": inference_tag(cfg)}
    atomic_files.write_json(metrics_file, record)
    write_per_class_csv(per_class_file, scored.metrics, classes.names)
    tags = {APART_INFERENCE_TAG.format(split=split): inference_tag(cfg)}
    _log_apart_to_run(ref, split, split_metrics(summary, split), tags, [metrics_file, per_class_file])

    seconds = round(time.perf_counter() - started, 2)
    log.info("evaluate: %s mIoU %.4f over %d images in %.1f s", split, scored.metrics.miou, len(dataset), seconds)
    return {
        "split": split,
        **{key: summary[key] for key in RETURNED_METRICS},
        "num_images": len(dataset),
        "run_id": ref.run_id,
        "seconds": seconds,
    }


def _preview(names: Any) -> str:
    names = list(names)
    return f"{names[:NAMES_PREVIEWED]}{' ...' if len(names) > NAMES_PREVIEWED else ''}"


def evaluate_model(params: Params, root: Path, model: str, load_model: ModelLoader, out: Path | None = None) -> dict[str, Any]:
    """Score any model on the prepared val split, outside the pipeline: a checkpoint path or an
    MLflow model URI (an imported official model, ``models:/pspnet@official-ade20k``, or an
    earlier version), loaded by ``load_model`` (:func:`pspnet.registry.segmenter.load_model`;
    passed in, so that the pipeline's stage does not depend on the registry's code).

    Writes ``eval.json``, ``per_class_iou.csv``, ``confusion_matrix.png`` and ``overlays/`` into
    ``out`` (default ``<paths.metrics>/models/<model>/``) and logs them with the ``val_*``
    metrics into a new MLflow run ``evaluate <model>`` (tag :data:`MODEL_TAG`). The images are
    normalised as the model records (an imported Caffe model: its mean, no std).
    """
    import mlflow

    started = time.perf_counter()
    root = Path(root)
    layout = Layout(root, params.paths)
    cfg = params.evaluate
    classes = load_classes(layout.prepared, params.data.ignore_index)
    pairs = confused_pairs(cfg, classes)
    segmenter = load_model(model, params, root)
    if list(segmenter.class_names) != list(classes.names):
        raise PspnetError(
            f"{model} predicts {segmenter.num_classes} classes {_preview(segmenter.class_names)} but "
            f"{layout.prepared / CLASSES_FILE} lists {classes.num_classes} {_preview(classes.names)}. Prepare the dataset "
            "the model was trained on (e.g. data.source.name: ade20k for an official ADE20K model), then `dvc repro validate`."
        )
    setup_mlflow(params.mlflow, root)
    device = resolve_device(params.train.device)
    model_cfg = params.model.model_copy(update={"input_mean": segmenter.input_mean, "input_std": segmenter.input_std})
    dataset = split_dataset(params, layout.prepared, layout.quarantine, model_cfg)
    scored = score_split(
        segmenter.model, dataset, classes.names, classes.ignore_index, cfg, device, data_version(layout.prepared),
        num_workers=params.train.num_workers, num_overlays=cfg.num_overlays, desc=f"evaluate {model}",
    )
    extra = _score_extra_splits(params, layout, segmenter.model, model_cfg, classes, device)
    out = Path(out) if out is not None else layout.model_reports / safe_name(model)
    paths = ReportPaths(out / EVAL_METRICS_FILE, out / PER_CLASS_IOU_FILE, out / CONFUSION_MATRIX_FILE, out / OVERLAYS_DIR,
                        out / CONFUSION_ROWS_FILE)
    summary = write_reports(scored, dataset, classes, cfg.overlay_alpha, paths, extra, pairs, cfg.confusion_plot_rows)

    mlflow.set_experiment(params.mlflow.experiment_name)
    tags = {**run_tags(root), **dataset_tags(layout.prepared), MODEL_TAG: model, INFERENCE_TAG: inference_tag(cfg)}
    try:
        with mlflow.start_run(run_name=f"evaluate {model}", tags=tags) as run_info:
            mlflow.log_metrics(val_metrics(summary, extra))
            mlflow.log_artifacts(str(out), artifact_path=ARTIFACT_DIR)
    except mlflow.exceptions.MlflowException as err:
        raise PspnetError(f"could not log the evaluation of {model} into MLflow: {err}") from None
    seconds = round(time.perf_counter() - started, 2)
    log.info("evaluate %s: mIoU %.4f over %d images in %.1f s", model, scored.metrics.miou, len(dataset), seconds)
    return {
        "model": model,
        **_headline(summary, extra),
        "num_images": len(dataset),
        "out": str(out),
        "run_id": run_info.info.run_id,
        "seconds": seconds,
    }
