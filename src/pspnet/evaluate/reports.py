"""The evaluation's files: metrics JSON, per-class CSV, confusion matrix and overlays of a
scored split, and its scores as flat ``val_*`` metrics for the tracking store."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pspnet import atomic_files
from pspnet.data.classes import ClassTable
from pspnet.data.dataset import SegmentationDataset, load_image
from pspnet.evaluate.metrics import SegmentationMetrics
from pspnet.evaluate.plots import plot_confusion_matrix, plot_overlay
from pspnet.evaluate.scoring import SPLIT, Scored

#: Summary entries that become ``val_<name>`` metrics (besides one IoU per class).
TRACKED_SUMMARY = ("miou", "miou_absent_as_zero", "macc", "allacc")


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_reports` writes: metrics JSON, per-class CSV, confusion matrix PNG,
    overlay folder, and the confusion matrix as rows for ``dvc plots``."""

    eval_metrics: Path
    per_class_iou: Path
    confusion_matrix: Path
    overlays: Path
    confusion_rows: Path


def confusion_rows(matrix: np.ndarray, names: Sequence[str], rows: int) -> list[dict[str, str]]:
    """``rows`` (actual, predicted) records whose counts follow ``matrix`` (``[target, pred]``
    pixel counts), apportioned by largest remainder so that they sum to ``rows`` exactly.

    DVC's confusion templates count records; one per pixel would be millions, so each record
    stands for ``matrix.sum() / rows`` pixels (cells below half of that may get none).
    """
    counts = matrix.astype(np.float64).ravel()
    total = counts.sum()
    if total <= 0:
        return []
    quota = counts * rows / total
    share = np.floor(quota).astype(np.int64)
    leftover = rows - int(share.sum())
    share[np.argsort(-(quota - share), kind="stable")[:leftover]] += 1
    n = len(names)
    return [
        {"actual": names[i // n], "predicted": names[i % n]}
        for i in np.flatnonzero(share) for _ in range(int(share[i]))
    ]


def safe_name(text: str) -> str:
    """``text`` reduced to characters safe in file names and MLflow metric keys."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


def write_per_class_csv(path: Path, result: SegmentationMetrics, names: tuple[str, ...]) -> None:
    frame = pd.DataFrame(
        {"class": list(names), "iou": result.iou, "acc": result.acc, "pixels": result.target.astype(np.int64)}
    )
    with atomic_files.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_reports(
    scored: Scored,
    dataset: SegmentationDataset,
    classes: ClassTable,
    overlay_alpha: float,
    paths: ReportPaths,
    extra: dict[str, dict[str, Any]] | None = None,
    confused_pairs: Sequence[tuple[str, str]] = (),
    confusion_plot_rows: int = 0,
) -> dict[str, Any]:
    """Write the metrics JSON (with the ``extra`` splits' summaries under ``splits``), the
    per-class CSV, the confusion matrix (PNG, and ``confusion_plot_rows`` rows of JSON) and the
    overlays of the images ``scored`` kept; returns the metrics summary (with the
    ``confused_pairs``' confusion rates)."""
    result = scored.metrics
    summary = result.summary(classes.names, confused_pairs)
    atomic_files.write_json(paths.eval_metrics, {**summary, "num_images": len(dataset), **({"splits": extra} if extra else {})})
    write_per_class_csv(paths.per_class_iou, result, classes.names)
    plot_confusion_matrix(result.matrix, classes.names, paths.confusion_matrix,
                          title=f"Confusion matrix, {SPLIT} (row-normalised), mIoU {result.miou:.3f}")
    atomic_files.write_json(paths.confusion_rows, confusion_rows(result.matrix, classes.names, confusion_plot_rows))
    with atomic_files.atomic_dir(paths.overlays) as tmp_dir:
        for index in sorted(scored.kept):
            target, pred = scored.kept[index]
            sample_id = str(dataset.ids[index])
            image = load_image(dataset.image_paths[index])  # the whole-image eval transform keeps the size
            out = tmp_dir / f"{safe_name(sample_id)}.png"
            if out.exists():  # two ids that sanitise to the same name
                out = tmp_dir / f"{safe_name(sample_id)}-{index}.png"
            plot_overlay(image, target, pred, classes.names, classes.colors, out,
                         ignore_index=classes.ignore_index, alpha=overlay_alpha, title=sample_id)
    return summary


def split_metrics(summary: dict[str, Any], split: str) -> dict[str, float]:
    """The ``<split>_*`` metrics of a summary (mIoU, mAcc, allAcc, one IoU per class, the look-alike
    pairs' confusion rates) for the tracking store."""
    prefix = safe_name(split)
    metrics = {f"{prefix}_{k}": v for k, v in summary.items() if k in TRACKED_SUMMARY}
    metrics.update({f"{prefix}_iou_{safe_name(name)}": v for name, v in summary["per_class_iou"].items()})
    metrics.update({f"{prefix}_confusion_{safe_name(pair)}": v for pair, v in summary.get("confusion", {}).items()})
    return {k: float(v) for k, v in metrics.items() if v is not None}


def val_metrics(summary: dict[str, Any], extra: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """The ``val_*`` metrics of a summary, and the ``<split>_*`` metrics of the ``extra`` splits' summaries."""
    metrics = split_metrics(summary, SPLIT)
    for split, split_summary in (extra or {}).items():
        metrics.update(split_metrics(split_summary, split))
    return metrics
