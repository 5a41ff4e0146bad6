"""The learning curve: the model scored on val and the held-out split while it trains.

Every ``train.curve_every_n_epochs`` epochs and after the last, the trainer scores the model on
a fixed, evenly spaced subset (``train.curve_images``) of each of ``train.curve_splits``, whole
image, single scale, no flip, through the one scoring path (:func:`pspnet.evaluate.scoring.score_split`). The points
give mIoU against *training* minutes (scoring time is not counted): what 10, 20, 30 minutes
buy. With weight averaging on, each point also scores the raw weights (``<split>_raw``).
Scoring leaves the random number generators as it found them, so a run trains the same
weights with the curve on or off.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pspnet.config import EvaluateConfig, Params
from pspnet.data.classes import ClassTable
from pspnet.data.dataset import SegmentationDataset
from pspnet.data.manifest import MANIFEST_FILE, read_manifest
from pspnet.data.transforms import eval_transform
from pspnet.evaluate.scoring import score_split

log = logging.getLogger(__name__)

#: Suffix of a split's score for the raw (not averaged) weights.
RAW_SUFFIX = "_raw"


@dataclass(frozen=True)
class CurvePoint:
    """The scores after ``epoch``: mIoU by split (``val``, ``holdout``, ``val_raw``, ...)."""

    epoch: int
    train_seconds: float
    miou: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "train_seconds": self.train_seconds, "miou": dict(self.miou)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CurvePoint:
        return cls(int(raw["epoch"]), float(raw["train_seconds"]), {str(k): float(v) for k, v in raw["miou"].items()})


def evenly_spaced(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(count)`` (all of them when ``wanted`` is 0 or more than ``count``)."""
    if wanted <= 0 or wanted >= count:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, wanted).round()})


def curve_due(epoch: int, epochs: int, every: int) -> bool:
    """Whether epoch ``epoch`` of ``epochs`` ends with a curve point (every ``every``, and the last)."""
    return every > 0 and (epoch % every == 0 or epoch == epochs)


class CurveScorer:
    """Scores a model on the curve's fixed subsets of ``train.curve_splits`` (those present)."""

    def __init__(self, params: Params, prepared: Path, classes: ClassTable, excluded: Collection[str], device: torch.device) -> None:
        t = params.train
        self.classes, self.device = classes, device
        self.cfg = EvaluateConfig(mode="whole", batch_size=t.batch_size, flip=False, scales=(1.0,))
        self.datasets: dict[str, SegmentationDataset] = {}
        transform = eval_transform(params)
        present = set(read_manifest(prepared / MANIFEST_FILE)["split"])
        for split in [s for s in dict.fromkeys(t.curve_splits) if s in present]:
            whole = SegmentationDataset(prepared, split, exclude=excluded, max_image_pixels=params.data.max_image_pixels)
            chosen = {whole.ids[i] for i in evenly_spaced(len(whole), t.curve_images)}
            if chosen:
                left_out = set(excluded) | (set(whole.ids) - chosen)
                self.datasets[split] = SegmentationDataset(
                    prepared, split, transform, exclude=left_out, max_image_pixels=params.data.max_image_pixels
                )

    @property
    def splits(self) -> list[str]:
        return list(self.datasets)

    def score(self, model: nn.Module, suffix: str = "") -> dict[str, float]:
        """mIoU of ``model`` on each split (keys ``<split><suffix>``); RNG states and train mode restored."""
        was_training = model.training
        devices = [self.device] if self.device.type == "cuda" else []
        scores: dict[str, float] = {}
        with torch.random.fork_rng(devices=devices):
            for split, dataset in self.datasets.items():
                scored = score_split(
                    model, dataset, self.classes.names, self.classes.ignore_index, self.cfg, self.device, "",
                    desc=f"curve {split}{suffix}",
                )  # fmt: skip
                scores[f"{split}{suffix}"] = scored.metrics.miou
        model.train(was_training)
        return scores


    def point(self, epoch: int, train_seconds: float, model: nn.Module, raw: nn.Module | None = None) -> CurvePoint:
        """The curve point after ``epoch``: ``model`` scored, and ``raw`` (``<split>_raw``) when given."""
        miou = self.score(model) | (self.score(raw, RAW_SUFFIX) if raw is not None else {})
        log.info("curve after epoch %d (%.1f training minutes): %s", epoch, train_seconds / 60,
                 ", ".join(f"{k} mIoU {v:.4f}" for k, v in miou.items()))  # fmt: skip
        return CurvePoint(epoch, train_seconds, miou)


def curve_csv(points: Sequence[CurvePoint]) -> str:
    """``train_curve.csv``'s text: epoch, training minutes, then one mIoU column per scored split."""
    columns = list(dict.fromkeys(k for p in points for k in p.miou))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", "train_minutes", *columns])
    for p in points:
        writer.writerow([p.epoch, f"{p.train_seconds / 60:.3f}", *(f"{p.miou[c]:.4f}" if c in p.miou else "" for c in columns)])
    return buf.getvalue()
