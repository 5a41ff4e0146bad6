"""Per-image scores: what the promotion gate's paired bootstrap resamples.

For every validation image and class, :class:`ImageScores` keeps the pixel counts of the
intersection ``I`` and union ``U`` of prediction and ground truth (ignore pixels excluded).
Summed over any multiset of images they give that subset's IoU exactly as the confusion
matrix would (``IoU_c = sum I / sum U``), so resampling images needs no second pass of the
model. The file ``metrics/per_image.npz`` (written by ``evaluate``) stores them with the data
version and test-time protocol they were computed under, and the class names.
:func:`pspnet.evaluate.scoring.score_split` computes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pspnet import atomic_files
from pspnet.errors import PspnetError
from pspnet.evaluate.metrics import iou_from_sums, mean_iou


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
