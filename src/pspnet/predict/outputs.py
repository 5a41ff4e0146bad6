"""What ``pspnet predict`` writes, every file atomically: masks, overlays and the JSON summary.

``<name>.png`` holds class ids (8-bit greyscale up to 256 classes, else 16-bit);
``<name>_overlay.png`` the class colours blended over the image; the summary lists per image
its paths, size and the share of the pixels of each class present, plus the model, the classes
and the inference settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pspnet import atomic_files
from pspnet.config import EvaluateConfig
from pspnet.errors import PspnetError
from pspnet.predict.inputs import PNG_SUFFIX, ImageJob, output_files

if TYPE_CHECKING:
    from pspnet.registry.segmenter import Segmenter

log = logging.getLogger(__name__)

#: Class ids fit 8-bit masks up to this many classes, 16-bit ones up to :data:`MAX_16BIT_CLASSES`.
MAX_8BIT_CLASSES = 256
MAX_16BIT_CLASSES = 65536
#: ``ignore_index`` for overlays: predictions have no ignore pixels, every id gets its colour.
NO_IGNORE = -1
#: The :class:`~pspnet.config.EvaluateConfig` fields recorded as the inference settings.
INFERENCE_FIELDS = ("mode", "batch_size", "crop_size", "stride_rate", "flip", "scales", "base_size")


def class_colors(segmenter: Segmenter) -> tuple[tuple[int, int, int], ...]:
    """The model's class colours; the Pascal VOC colour map when it records none (or too few)."""
    from pspnet.data.sources.base import palette_colors

    if len(segmenter.class_colors) >= segmenter.num_classes:
        return segmenter.class_colors
    log.info("%s records no colour for every class; overlays use the Pascal VOC colour map", segmenter.source)
    return palette_colors(segmenter.num_classes)


def mask_image(ids: np.ndarray, num_classes: int) -> Image.Image:
    """Class ids as a greyscale image: mode ``L`` up to 256 classes, else 16-bit ``I;16``."""
    if num_classes <= MAX_8BIT_CLASSES:
        return Image.fromarray(ids.astype(np.uint8))
    if num_classes <= MAX_16BIT_CLASSES:
        return Image.fromarray(ids.astype(np.uint16))
    raise PspnetError(f"{num_classes} classes do not fit a 16-bit mask (at most {MAX_16BIT_CLASSES}).")


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as a PNG atomically."""
    with atomic_files.atomic_path(path, suffix=PNG_SUFFIX) as tmp:
        image.save(tmp, format="PNG")


def class_shares(ids: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Share of the pixels of each class present in ``ids`` (absent classes left out; sums to 1)."""
    counts = np.bincount(ids.ravel(), minlength=len(class_names))
    shares: dict[str, float] = {}
    for index in np.flatnonzero(counts):
        name = class_names[index]
        shares[name] = shares.get(name, 0.0) + float(counts[index]) / ids.size
    return shares


def write_outputs(job: ImageJob, rgb: np.ndarray, ids: np.ndarray, out_dir: Path, segmenter: Segmenter,
                  colors: Sequence[Sequence[int]], alpha: float | None) -> dict[str, Any]:
    """Write ``job``'s mask (and overlay unless ``alpha`` is None); its summary record."""
    from pspnet.evaluate.plots import blend

    mask_name, overlay_name = output_files(job.name)
    save_png(mask_image(ids, segmenter.num_classes), out_dir / mask_name)
    overlay = None
    if alpha is not None:
        overlay = out_dir / overlay_name
        save_png(Image.fromarray(blend(rgb, ids, colors, NO_IGNORE, alpha)), overlay)
    height, width = job.size
    return {
        "image": str(job.path),
        "mask": str(out_dir / mask_name),
        "overlay": str(overlay) if overlay else None,
        "height": height,
        "width": width,
        "class_shares": class_shares(ids, segmenter.class_names),
    }


def inference_settings(cfg: EvaluateConfig, device: torch.device) -> dict[str, Any]:
    """The test-time settings the masks were made with (for the summary)."""
    settings = {key: value for key, value in cfg.model_dump(mode="json").items() if key in INFERENCE_FIELDS}
    return {**settings, "device": str(device)}


def write_summary(path: Path, segmenter: Segmenter, cfg: EvaluateConfig, device: torch.device, alpha: float | None,
                  records: Sequence[dict[str, Any]], skipped: Sequence[dict[str, str]]) -> None:
    """Write the JSON summary: the model, its classes, the inference settings, every image's
    record and the images left out."""
    atomic_files.write_json(path, {
        "model": segmenter.source,
        "class_names": list(segmenter.class_names),
        "inference": inference_settings(cfg, device),
        "overlay_alpha": alpha,
        "images": list(records),
        "skipped": list(skipped),
    })
