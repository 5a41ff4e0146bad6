"""Score a model on a split of the prepared data: the one scoring path.

The ``evaluate`` stage scores the trained checkpoint with :func:`score_split`, ``evaluate
--model`` any other model, and the promotion gate re-scores the champion with it, so every
score the gate compares was measured the same way (same images, same protocol, same counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pspnet.config import VAL_SPLIT, EvaluateConfig, ModelConfig, Params
from pspnet.data.dataset import SegmentationDataset
from pspnet.data.manifest import MANIFEST_FILE, load_dataset_record, read_manifest
from pspnet.data.quarantine import excluded_ids
from pspnet.data.transforms import eval_transform
from pspnet.errors import DataError
from pspnet.evaluate.inference import make_loader, predict_loader
from pspnet.evaluate.metrics import ConfusionMatrix, SegmentationMetrics
from pspnet.evaluate.scores import ImageScores, image_counts

#: The split that is scored (and gated on).
SPLIT = VAL_SPLIT
#: Data version recorded for prepared data that has no ``dataset.json`` (never trusted as a cache key).
UNVERSIONED = ""


def data_version(prepared: Path) -> str:
    """The prepared data's content version (``dataset.json``), or :data:`UNVERSIONED`."""
    return str(load_dataset_record(prepared).get("version") or UNVERSIONED)


def inference_tag(cfg: EvaluateConfig) -> str:
    """The test-time settings that produce the scores, e.g. ``slide 96x128 flip scales=[0.75, 1.0]``."""
    parts = [cfg.mode if cfg.mode == "whole" else f"{cfg.mode} {cfg.crop_size[0]}x{cfg.crop_size[1]}"]
    if cfg.flip:
        parts.append("flip")
    parts.append(f"scales={list(cfg.scales)}")
    if cfg.base_size is not None:
        parts.append(f"base_size={cfg.base_size}")
    return " ".join(parts)


def split_dataset(
    params: Params, prepared: Path, quarantine: Path, model_cfg: ModelConfig, split: str = SPLIT
) -> SegmentationDataset:
    """Split ``split`` (default :data:`SPLIT`) of the prepared data at ``prepared``, normalised as
    ``model_cfg`` says (the model's own statistics, not necessarily today's params), without the
    samples of the quarantine list at ``quarantine`` (when ``validate.quarantine`` is on)."""
    dataset = SegmentationDataset(
        prepared,
        split,
        eval_transform(params.model_copy(update={"model": model_cfg})),
        exclude=excluded_ids(quarantine, params.validate_.quarantine),
        max_image_pixels=params.data.max_image_pixels,
    )
    if len(dataset) == 0:
        raise DataError(f"{prepared / MANIFEST_FILE}: the '{split}' split is empty; nothing to evaluate.")
    return dataset


def split_counts(prepared: Path) -> dict[str, int]:
    """``{split: samples}`` of the prepared data at ``prepared``, in manifest order."""
    splits = read_manifest(prepared / MANIFEST_FILE)["split"]
    return {str(split): int(count) for split, count in splits.value_counts(sort=False).items()}


def extra_splits(prepared: Path, wanted: Sequence[str]) -> list[str]:
    """The splits of ``wanted`` (``evaluate.extra_splits``), besides :data:`SPLIT`, that the
    prepared data at ``prepared`` holds samples of, in ``wanted``'s order."""
    present = set(read_manifest(prepared / MANIFEST_FILE)["split"])
    return [split for split in dict.fromkeys(wanted) if split != SPLIT and split in present]


@dataclass
class Scored:
    """What :func:`score_split` returns: the overall metrics, the per-image scores, and the
    ``(mask, prediction)`` pairs kept for overlays, by dataset index."""

    metrics: SegmentationMetrics
    images: ImageScores
    kept: dict[int, tuple[np.ndarray, np.ndarray]]


def score_split(
    model: nn.Module,
    dataset: SegmentationDataset,
    class_names: Sequence[str],
    ignore_index: int,
    cfg: EvaluateConfig,
    device: torch.device,
    data_version: str,
    *,
    num_workers: int = 0,
    num_overlays: int = 0,
    desc: str = "evaluate",
) -> Scored:
    """Run ``model`` (moved to ``device``, eval mode) over ``dataset`` under ``cfg``'s protocol;
    accumulate the confusion matrix and the per-image counts, tagged with ``data_version`` and
    the protocol, and keep the first ``num_overlays`` images' masks and predictions."""
    model = model.to(device).eval()
    num_classes = len(class_names)
    loader = make_loader(dataset, cfg.batch_size, num_workers, pin_memory=device.type == "cuda")
    confusion = ConfusionMatrix(num_classes, ignore_index, device=device)
    inter = np.zeros((len(dataset), num_classes), dtype=np.int64)
    union = np.zeros_like(inter)
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for indices, preds, masks in predict_loader(model, loader, device, cfg, desc=desc):
        confusion.update(preds, masks)
        inter[indices], union[indices] = image_counts(preds, masks, num_classes, ignore_index)
        for row, index in enumerate(indices):
            if index < num_overlays:
                kept[index] = (masks[row].cpu().numpy(), preds[row].cpu().numpy())
    metrics = confusion.compute()
    if metrics.num_pixels == 0:
        raise DataError(f"every pixel of the '{dataset.split}' split is ignore ({ignore_index}); nothing to score.")
    ids = tuple(str(i) for i in dataset.ids)
    images = ImageScores(ids, inter, union, tuple(class_names), data_version, inference_tag(cfg))
    return Scored(metrics, images, kept)
