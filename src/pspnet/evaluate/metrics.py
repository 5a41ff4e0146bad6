"""Segmentation metrics accumulated over a whole dataset: IoU, mIoU, mAcc, allAcc.

As in the paper's official code and mmsegmentation, per-class counts are summed over EVERY
pixel of the dataset first and the ratios taken once at the end (never a mean of per-image
scores). Everything derives from one ``num_classes x num_classes`` confusion matrix ``M``
(rows: ground truth, columns: prediction); pixels whose ground truth is ``ignore_index`` are
never counted:

- intersection ``I_c = M[c, c]``, target ``T_c = sum_j M[c, j]``, prediction ``P_c = sum_i M[i, c]``,
  union ``U_c = T_c + P_c - I_c``;
- ``IoU_c = I_c / U_c`` and ``Acc_c = I_c / T_c``;
- ``allAcc = sum I / sum T`` (pixel accuracy).

mIoU is reported two ways, since published numbers use both:

- ``miou`` (the headline): classes absent from both prediction and ground truth (``U_c = 0``,
  IoU undefined) are left out of the mean, as mmsegmentation does (a NaN-mean);
- ``miou_absent_as_zero``: such classes count as IoU 0, as the official PSPNet code does
  (``I / (U + 1e-10)``).

``macc`` is the mean of ``Acc_c`` over classes with ground-truth pixels (``T_c > 0``); a class
only ever predicted, never present, has IoU 0 but no accuracy.

The matrix is built with :func:`torch.bincount` on ``target * C + pred`` (exact int64 counts
on the predictions' device; labels that are neither a class nor the ignore index are refused
by value).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pspnet.errors import DataError


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """The ``(C, C)`` int64 confusion matrix of one batch (rows: ground truth, columns: prediction).

    ``preds`` and ``target`` are integer tensors of the same shape (any shape, e.g. ``(N, H, W)``);
    pixels with ``target == ignore_index`` are dropped. Raises :class:`DataError` when ``target``
    holds a value that is neither a class id nor ``ignore_index``, and :class:`ValueError` for
    out-of-range predictions or mismatched shapes.
    """
    if preds.shape != target.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} and targets {tuple(target.shape)} differ in shape")
    if preds.is_floating_point() or target.is_floating_point():
        raise ValueError("confusion_matrix expects integer class ids; take argmax of the logits first")
    preds = preds.reshape(-1).long()
    target = target.reshape(-1).to(preds.device).long()
    keep = target != ignore_index
    preds, target = preds[keep], target[keep]
    bad_target = (target < 0) | (target >= num_classes)
    if bool(bad_target.any()):
        values = torch.unique(target[bad_target]).tolist()[:10]
        raise DataError(
            f"mask values {values} are neither a class id (0..{num_classes - 1}) nor the ignore index "
            f"{ignore_index}. Remap void/unlabelled ids to {ignore_index} in `prepare`."
        )
    if preds.numel() and (int(preds.min()) < 0 or int(preds.max()) >= num_classes):
        raise ValueError(f"predicted class ids must lie in 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationMetrics:
    """Scores derived from a dataset-level confusion matrix. Per-class arrays are float64 ``(C,)``.

    ``iou[c]`` is NaN when class ``c`` is absent from both prediction and ground truth;
    ``acc[c]`` is NaN when it has no ground-truth pixels.
    """

    matrix: np.ndarray
    intersection: np.ndarray
    union: np.ndarray
    target: np.ndarray
    iou: np.ndarray
    acc: np.ndarray
    miou: float
    miou_absent_as_zero: float
    macc: float
    allacc: float

    @classmethod
    def from_matrix(cls, matrix: np.ndarray | torch.Tensor) -> SegmentationMetrics:
        m = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
        m = m.astype(np.int64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
        inter = np.diag(m).astype(np.float64)
        target = m.sum(axis=1).astype(np.float64)
        pred = m.sum(axis=0).astype(np.float64)
        union = target + pred - inter
        iou = iou_from_sums(inter, union)
        with np.errstate(divide="ignore", invalid="ignore"):
            acc = np.where(target > 0, inter / target, np.nan)
        return cls(
            matrix=m,
            intersection=inter,
            union=union,
            target=target,
            iou=iou,
            acc=acc,
            miou=float(mean_iou(iou, "miou")),
            miou_absent_as_zero=float(mean_iou(iou, "miou_absent_as_zero")) if iou.size else math.nan,
            macc=_nanmean(acc),
            allacc=float(inter.sum() / target.sum()) if target.sum() > 0 else math.nan,
        )

    @property
    def num_classes(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def num_pixels(self) -> int:
        """Labelled (non-ignored) pixels counted."""
        return int(self.target.sum())

    def confusion_rate(self, a: int, b: int) -> float:
        """Share of the ground-truth pixels of classes ``a`` and ``b`` predicted as the other one
        of the two (a look-alike pair's confusion); NaN when neither class has pixels."""
        pixels = self.target[a] + self.target[b]
        return float((self.matrix[a, b] + self.matrix[b, a]) / pixels) if pixels > 0 else math.nan

    def summary(
        self, class_names: tuple[str, ...] | list[str], confused_pairs: Sequence[tuple[str, str]] = ()
    ) -> dict[str, Any]:
        """JSON-safe scores: ``miou``, ``miou_absent_as_zero``, ``macc``, ``allacc``, ``num_pixels``,
        ``per_class_iou`` ``{name: iou}``, and with ``confused_pairs`` (class names) ``confusion``
        ``{"a/b": rate}`` (:meth:`confusion_rate`). Undefined values (NaN) become ``None`` (JSON ``null``)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {self.num_classes}-class matrix")
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({name for pair in confused_pairs for name in pair} - index.keys())
        if unknown:
            raise ValueError(f"confused pair classes {unknown} are not among the classes {list(class_names)}")
        out = {
            "miou": json_float(self.miou),
            "miou_absent_as_zero": json_float(self.miou_absent_as_zero),
            "macc": json_float(self.macc),
            "allacc": json_float(self.allacc),
            "num_pixels": self.num_pixels,
            "per_class_iou": {name: json_float(v) for name, v in zip(class_names, self.iou)},
        }
        if confused_pairs:
            out["confusion"] = {f"{a}/{b}": json_float(self.confusion_rate(index[a], index[b])) for a, b in confused_pairs}
        return out


class ConfusionMatrix:
    """Accumulates the confusion matrix batch by batch, on the predictions' device."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with class id {ignore_index}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``preds`` (class ids, e.g. ``logits.argmax(1)``) and ``target`` of one shape."""
        batch = confusion_matrix(preds, target, self.num_classes, self.ignore_index)
        self.matrix += batch.to(self.matrix.device)

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> SegmentationMetrics:
        return SegmentationMetrics.from_matrix(self.matrix)


def iou_from_sums(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """IoU per class from summed counts ``(..., C)``; NaN where the union is 0 (class absent)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


#: The two mIoU definitions (see the module docstring), by name.
MIOU_METRICS = ("miou", "miou_absent_as_zero")


def mean_iou(iou: np.ndarray, metric: str) -> np.ndarray:
    """mIoU over the last axis of ``iou`` (``(..., C)``): ``miou`` skips NaN (absent) classes,
    ``miou_absent_as_zero`` counts them as 0. Vectorised, so the gate's bootstrap scores every
    resample at once."""
    if metric == "miou":
        with warnings.catch_warnings():  # an all-NaN row (no class present) is NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(iou, axis=-1)
    if metric == "miou_absent_as_zero":
        return np.nan_to_num(iou, nan=0.0).mean(axis=-1)
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(MIOU_METRICS)}")


def json_float(value: float) -> float | None:
    """``value`` as a plain float, or ``None`` when it is NaN / infinite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan
