"""The training loss: deep-supervised pixel cross-entropy, optional class weights and OHEM.

Loss (paper section 3.4): ``CE(main) + aux_weight * CE(aux)`` over the pixels whose label is
not ``ignore_index``. Both terms use the same criterion:

- class weights (``train.class_weights``): pixel ``p`` of class ``y`` counts ``w[y]`` times;
  the mean is the weighted mean ``sum w[y_p] * ce_p / sum w[y_p]`` (PyTorch's convention).
  ``inverse_frequency``: ``w_c = 1 / (K' * share_c)``; ``median_frequency`` (Eigen & Fergus,
  SegNet): ``w_c = median(share) / share_c``; ``share_c`` = class ``c``'s fraction of the
  labelled train pixels, ``K'`` and the median over the classes present in train. A class
  absent from the train masks gets the largest weight of the present classes (and a warning):
  it cannot be learnt, but a 0 weight would hide it if it appears in a later split.
- OHEM (online hard example mining, ``train.ohem``): written here, segmentation_models_pytorch
  has no OHEM loss. Per batch (all images together) the labelled pixels whose predicted
  probability of their true class is below ``ohem_thresh`` are "hard"; if fewer than
  ``ohem_min_kept`` are, the ``ohem_min_kept`` lowest-probability labelled pixels are kept
  instead (all labelled pixels if fewer). The loss is the (weighted) mean over the kept pixels
  only. The selection uses detached probabilities: it picks pixels, it is not differentiated.

Every loss is 0 (not NaN) when no pixel counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pspnet.data.dataset import load_mask
from pspnet.data.profile import label_counts
from pspnet.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: ``train.class_weights`` values computed from the train masks' pixel counts.
WEIGHT_METHODS = ("inverse_frequency", "median_frequency")
#: ``train.class_weights`` value for an unweighted loss.
NO_WEIGHTS = "none"

#: ``(logits, aux_logits_or_None)`` from a train-mode PSPNet, or a bare logits tensor.
Outputs = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class Ohem:
    """OHEM settings: ``thresh`` on the true-class probability, ``min_kept`` pixels per batch."""

    thresh: float = 0.7
    min_kept: int = 100000


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """(Weighted) mean pixel cross-entropy over non-ignored pixels; 0 (not NaN) when none count.

    ``logits`` (N,K,H,W) float, ``target`` (N,H,W) int64, ``weight`` (K,) or ``None``.
    """
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    if weight is None:
        return total / valid.sum().clamp(min=1)
    denom = weight[target[valid]].sum()
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


def ohem_select(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, ohem: Ohem) -> torch.Tensor:
    """Boolean ``(N,H,W)`` mask of the pixels OHEM keeps (see the module docstring).

    Kept: the ``max(#hard, min(min_kept, #labelled))`` labelled pixels with the lowest
    probability of their true class, hard meaning a probability below ``ohem.thresh``.
    Ignored pixels are never kept.
    """
    valid = target != ignore_index
    with torch.no_grad():
        safe = torch.where(valid, target, torch.zeros_like(target))
        prob = logits.detach().float().softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        prob = torch.where(valid, prob, torch.full_like(prob, float("inf")))
        n_valid = int(valid.sum())
        n_hard = int((prob < ohem.thresh).sum())
        k = max(n_hard, min(ohem.min_kept, n_valid))
        if k == n_hard:  # the hard pixels are exactly the k lowest: no sort needed
            return prob < ohem.thresh
        if k == n_valid:  # every labelled pixel
            return valid
        keep = torch.zeros(prob.numel(), dtype=torch.bool, device=prob.device)
        keep[torch.topk(prob.flatten(), k, largest=False, sorted=False).indices] = True
    return keep.view_as(target)


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    ohem: Ohem,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """(Weighted) mean cross-entropy over the pixels :func:`ohem_select` keeps.

    ``logits`` (N,K,H,W) float, ``target`` (N,H,W) int64, ``weight`` (K,) or ``None``.
    """
    keep = ohem_select(logits, target, ignore_index, ohem)
    pixel_ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # (N,H,W)
    kept_target = target[keep]
    pixel_w = weight[kept_target] if weight is not None else torch.ones_like(kept_target, dtype=pixel_ce.dtype)
    denom = pixel_w.sum()
    total = (pixel_ce[keep] * pixel_w).sum()
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


class SegmentationCriterion(nn.Module):
    """``CE(main) + aux_weight * CE(aux)`` with optional class weights and OHEM.

    Args:
        aux_weight: weight of the auxiliary head's term (0: main term only).
        ignore_index: label of pixels that never count.
        class_weights: ``(K,)`` per-class weights, or ``None`` (unweighted). Kept as a buffer,
            so ``.to(device)`` moves it.
        ohem: OHEM settings, or ``None`` (every labelled pixel counts).

    ``forward(outputs, target)``: ``outputs`` is the train-mode ``(logits, aux_or_None)`` (a bare
    logits tensor is accepted too), each (N,K,H,W); ``target`` (N,H,W) int64 -> scalar loss.
    """

    class_weights: torch.Tensor | None

    def __init__(
        self,
        aux_weight: float,
        ignore_index: int = 255,
        class_weights: torch.Tensor | Sequence[float] | None = None,
        ohem: Ohem | None = None,
    ) -> None:
        super().__init__()
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)
        self.ohem = ohem
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One head's term: (weighted, OHEM-selected) mean cross-entropy."""
        weight = self.class_weights.to(logits.dtype) if self.class_weights is not None else None
        if self.ohem is not None:
            return ohem_cross_entropy(logits, target, self.ignore_index, self.ohem, weight)
        return cross_entropy(logits, target, self.ignore_index, weight)

    def forward(self, outputs: Outputs, target: torch.Tensor) -> torch.Tensor:
        main, aux = (outputs, None) if isinstance(outputs, torch.Tensor) else outputs
        loss = self.pixel_loss(main, target)
        if aux is not None and self.aux_weight > 0:
            loss = loss + self.aux_weight * self.pixel_loss(aux, target)
        return loss

    def describe(self) -> str:
        """One line for the log: the terms, the weights and OHEM."""
        terms = f"CE(main) + {self.aux_weight:g} * CE(aux)" if self.aux_weight > 0 else "CE(main)"
        weights = "none" if self.class_weights is None else format_weights(self.class_weights.tolist())
        ohem = "off" if self.ohem is None else f"thresh {self.ohem.thresh:g}, min_kept {self.ohem.min_kept}"
        return f"{terms}, ignore {self.ignore_index}, class weights {weights}, OHEM {ohem}"


def format_weights(weights: Sequence[float]) -> str:
    """``[w0, w1, ...]`` with 4 significant digits (for logs and MLflow params)."""
    return "[" + ", ".join(f"{w:.4g}" for w in weights) + "]"


def class_pixel_counts(mask_paths: Sequence[Path], num_classes: int) -> np.ndarray:
    """``(K,)`` int64: pixels of each class id over the given mask files (other values skipped)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for path in mask_paths:
        for label, n in label_counts(load_mask(path)).items():
            if 0 <= label < num_classes:
                counts[label] += n
    return counts


def class_weights_from_counts(
    counts: Sequence[int] | np.ndarray, method: Literal["inverse_frequency", "median_frequency"]
) -> np.ndarray:
    """``(K,)`` float weights from ``(K,)`` pixel counts (see the module docstring).

    Classes with no pixel get the largest weight of the others and a logged warning. Raises
    :class:`DataError` when no class has any pixel.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise DataError("the train masks hold no labelled pixel: class weights cannot be computed.")
    share = np.zeros_like(counts)
    share[present] = counts[present] / counts[present].sum()
    weights = np.zeros_like(counts)
    if method == "inverse_frequency":
        weights[present] = 1.0 / (present.sum() * share[present])
    elif method == "median_frequency":
        weights[present] = np.median(share[present]) / share[present]
    else:
        raise ValueError(f"unknown class weight method {method!r}; expected one of {WEIGHT_METHODS}")
    if not present.all():
        absent = np.flatnonzero(~present).tolist()
        weights[~present] = weights[present].max()
        log.warning(
            "class(es) %s have no pixel in the train masks: they cannot be learnt; "
            "giving them the largest class weight (%.4g)",
            absent,
            weights[present].max(),
        )
    return weights


def resolve_class_weights(
    setting: str | Sequence[float],
    num_classes: int,
    mask_paths: Sequence[Path] = (),
    class_names: Sequence[str] | None = None,
) -> np.ndarray | None:
    """``train.class_weights`` -> ``(K,)`` weights, or ``None`` for ``none``.

    ``inverse_frequency`` / ``median_frequency`` read the masks in ``mask_paths`` (the train
    split) once. An explicit list must hold exactly ``num_classes`` weights
    (:class:`ConfigError` otherwise, naming the classes).
    """
    if isinstance(setting, str):
        if setting == NO_WEIGHTS:
            return None
        if setting not in WEIGHT_METHODS:
            raise ConfigError(f"train.class_weights: unknown method {setting!r}; use none, {', '.join(WEIGHT_METHODS)} or a list.")
        counts = class_pixel_counts(mask_paths, num_classes)
        return class_weights_from_counts(counts, setting)  # type: ignore[arg-type]
    weights = np.asarray(list(setting), dtype=np.float64)
    if weights.shape != (num_classes,):
        names = f" ({', '.join(class_names)})" if class_names else ""
        raise ConfigError(
            f"train.class_weights lists {weights.size} weight(s) but the dataset has {num_classes} "
            f"classes{names}: give one weight per class, in class-id order, or use "
            f"{NO_WEIGHTS} / {' / '.join(WEIGHT_METHODS)}."
        )
    return weights
