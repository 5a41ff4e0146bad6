"""Per-image scores: what the promotion gate's paired bootstrap resamples.

For every validation image and class, :class:`ImageScores` keeps the pixel counts of the
intersection ``I`` and union ``U`` of prediction and ground truth (ignore pixels excluded).
Summed over any multiset of images they give that subset's IoU exactly as the confusion
matrix would (``IoU_c = sum I / sum U``), so resampling images needs no second pass of the
model. The file ``metrics/per_image.npz`` (written by ``evaluate``) stores them with the data
version and test-time protocol they were computed under, and the class names.

:func:`score_dataset` is the one scoring loop: ``evaluate`` scores the challenger with it and
the gate re-scores a champion with it, so both are measured the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pspnet import atomic_files
from pspnet.config import EvaluateConfig
from pspnet.errors import PspnetError
from pspnet.evaluate.inference import make_loader, predict_loader
from pspnet.evaluate.metrics import ConfusionMatrix, SegmentationMetrics, iou_from_sums, mean_iou


def image_counts(preds: torch.Tensor, masks: torch.Tensor, num_classes: int, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``(intersection, union)`` pixel counts, each int64 ``(N, C)``.

    ``preds`` and ``masks`` are ``(N, H, W)`` class ids; pixels whose mask is ``ignore_index``
    (or outside ``0..C-1``) are left out, as in :class:`ConfusionMatrix`.
    """
    n = preds.shape[0]
    valid = (masks >= 0) & (masks < num_classes) & (masks != ignore_index)
    offsets = torch.arange(n, device=preds.device).view(n, 1, 1) * num_classes

    def per_image(ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.bincount((ids + offsets)[keep], minlength=n * num_classes).view(n, num_classes)

    target = per_image(masks.long(), valid)
    pred = per_image(preds.long(), valid)
    inter = per_image(masks.long(), valid & (preds == masks))
    union = target + pred - inter
    return inter.cpu().numpy().astype(np.int64), union.cpu().numpy().astype(np.int64)


@dataclass(frozen=True)
class ImageScores:
    """Intersection / union counts per image and class, and how they were obtained.

    ``inter`` and ``union`` are int64 ``(num_images, num_classes)``, rows in ``ids`` order.
    """

    ids: tuple[str, ...]
    inter: np.ndarray
    union: np.ndarray
    class_names: tuple[str, ...]
    data_version: str
    protocol: str

    def __post_init__(self) -> None:
        if self.inter.shape != self.union.shape or self.inter.shape != (len(self.ids), len(self.class_names)):
            raise ValueError(
                f"inconsistent scores: inter {self.inter.shape}, union {self.union.shape}, "
                f"{len(self.ids)} ids, {len(self.class_names)} classes"
            )

    @property
    def class_iou(self) -> np.ndarray:
        """IoU per class over all images ``(C,)`` (NaN: class absent from prediction and truth)."""
        return iou_from_sums(self.inter.sum(0), self.union.sum(0))

    def metric(self, name: str) -> float:
        return float(mean_iou(self.class_iou, name))

    def save(self, path: Path) -> None:
        """Write an ``.npz`` (atomically): the counts, plus the ids and context as JSON."""
        context = {
            "ids": list(self.ids),
            "class_names": list(self.class_names),
            "data_version": self.data_version,
            "protocol": self.protocol,
        }
        with atomic_files.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, inter=self.inter, union=self.union, context=np.array(json.dumps(context)))

    @classmethod
    def load(cls, path: Path) -> ImageScores:
        try:
            with np.load(path, allow_pickle=False) as data:
                context = json.loads(str(data["context"]))
                return cls(
                    ids=tuple(context["ids"]),
                    inter=data["inter"].astype(np.int64),
                    union=data["union"].astype(np.int64),
                    class_names=tuple(context["class_names"]),
                    data_version=str(context["data_version"]),
                    protocol=str(context["protocol"]),
                )
        except FileNotFoundError:
            raise PspnetError(f"{path}: per-image scores not found. Run the `evaluate` stage first.") from None
        except (KeyError, ValueError, OSError) as err:
            raise PspnetError(f"{path}: unreadable per-image scores ({err}). Re-run `evaluate`.") from None


@dataclass
class Scored:
    """What :func:`score_dataset` returns: the overall metrics, the per-image scores, and the
    ``(mask, prediction)`` pairs kept for overlays, by dataset index."""

    metrics: SegmentationMetrics
    images: ImageScores
    kept: dict[int, tuple[np.ndarray, np.ndarray]]


def score_dataset(
    model: nn.Module,
    dataset: Dataset,
    ids: list[str],
    class_names: tuple[str, ...],
    ignore_index: int,
    cfg: EvaluateConfig,
    device: torch.device,
    context: dict[str, str],
    *,
    num_workers: int = 0,
    keep: Callable[[int], bool] = lambda index: False,
    desc: str = "evaluate",
) -> Scored:
    """Run ``model`` over ``dataset`` under ``cfg``'s protocol; accumulate the confusion matrix
    and the per-image counts. ``context`` holds ``data_version`` and ``protocol``."""
    num_classes = len(class_names)
    loader = make_loader(dataset, cfg.batch_size, num_workers, pin_memory=device.type == "cuda")
    confusion = ConfusionMatrix(num_classes, ignore_index, device=device)
    inter = np.zeros((len(dataset), num_classes), dtype=np.int64)  # type: ignore[arg-type]
    union = np.zeros_like(inter)
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for indices, preds, masks in predict_loader(model, loader, device, cfg, desc=desc):
        confusion.update(preds, masks)
        batch_inter, batch_union = image_counts(preds, masks, num_classes, ignore_index)
        inter[indices], union[indices] = batch_inter, batch_union
        for row, index in enumerate(indices):
            if keep(index):
                kept[index] = (masks[row].cpu().numpy(), preds[row].cpu().numpy())
    images = ImageScores(tuple(ids), inter, union, tuple(class_names), context["data_version"], context["protocol"])
    return Scored(confusion.compute(), images, kept)
