"""``pspnet predict``: options checked, images found and read, the model run batch by batch.

The model is a checkpoint or any MLflow model URI (default: the registered champion), loaded
with :func:`pspnet.registry.segmenter.load_model`; images are normalised with the model's own
``input_mean`` / ``input_std``. Inference is :func:`pspnet.evaluate.inference.predict_logits`
under params.yaml's ``evaluate`` section with :data:`INFERENCE_OPTIONS` overridden; same-size
images run together, up to ``batch_size`` per pass.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import ValidationError

from pspnet.config import EvaluateConfig, Params
from pspnet.errors import ConfigError, DataError, PspnetError
from pspnet.model.normalize import normalize, pixel_stats
from pspnet.predict.inputs import (
    ImageJob,
    check_no_overwrite,
    find_images,
    load_batch,
    output_names,
    scan_images,
)
from pspnet.predict.outputs import class_colors, write_outputs, write_summary

if TYPE_CHECKING:
    from pspnet.registry.segmenter import Segmenter

log = logging.getLogger(__name__)

#: ``--device`` values (see :func:`pspnet.device.resolve_device`).
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Fields of :class:`~pspnet.config.EvaluateConfig` a caller may override -> the CLI option.
INFERENCE_OPTIONS: dict[str, str] = {
    "mode": "--mode",
    "flip": "--flip/--no-flip",
    "scales": "--scales",
    "crop_size": "--crop-size",
    "base_size": "--base-size",
    "batch_size": "--batch-size",
}


@dataclass(frozen=True)
class PredictOptions:
    """What :func:`predict` segments and how; ``None`` falls back to params.yaml.

    ``inference`` overrides fields of the ``evaluate`` section (keys of :data:`INFERENCE_OPTIONS`;
    ``None`` values are ignored). ``alpha`` defaults to ``evaluate.overlay_alpha``, ``device``
    to ``train.device``, ``model`` to the registered champion.
    """

    inputs: tuple[str, ...]
    out_dir: Path
    model: str | None = None
    recursive: bool = False
    overlay: bool = True
    alpha: float | None = None
    summary: Path | None = None
    skip_bad: bool = False
    device: str | None = None
    #: ``torch`` or ``onnxruntime`` (the model's ONNX graph, on the CPU).
    runtime: str = "torch"
    inference: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- options


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.75,1.0,1.25"`` -> ``(0.75, 1.0, 1.25)``; anything but positive numbers is a ConfigError."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"--scales {text!r}: give positive numbers separated by commas, e.g. 0.75,1.0,1.25.")
    return values


def inference_config(base: EvaluateConfig, overrides: Mapping[str, Any]) -> EvaluateConfig:
    """``base`` (params.yaml's ``evaluate``) with the non-``None`` ``overrides``, validated."""
    unknown = sorted(set(overrides) - set(INFERENCE_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown inference setting(s) {unknown}; accepted: {sorted(INFERENCE_OPTIONS)}.")
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return EvaluateConfig.model_validate({**base.model_dump(), **given})
    except ValidationError as err:
        problems = []
        for error in err.errors():
            key = str(error["loc"][0]) if error["loc"] else ""
            where = INFERENCE_OPTIONS[key] if key in given else f"evaluate.{key} in params.yaml"
            problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("invalid inference settings: " + "; ".join(problems) + ". Fix the value named.") from None


def overlay_alpha(alpha: float | None, cfg: EvaluateConfig) -> float:
    """The overlay opacity: ``alpha`` when given (0..1), else ``evaluate.overlay_alpha``."""
    if alpha is None:
        return cfg.overlay_alpha
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha {alpha}: the overlay opacity must be between 0 and 1.")
    return alpha


def pick_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> a torch device (``cuda`` without a GPU is a ConfigError)."""
    from pspnet.device import resolve_device

    if name not in DEVICE_CHOICES:
        raise ConfigError(f"--device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}.")
    try:
        return resolve_device(name)
    except ConfigError:
        raise ConfigError("--device cuda: no CUDA device is available here; use --device auto or --device cpu.") from None


def check_out_dir(out_dir: Path) -> None:
    """A ConfigError when ``out_dir`` exists and is not a folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a folder; name a folder for the masks.")


def make_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` (and its parents); a ConfigError naming it when that fails."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out_dir}: cannot create this folder ({err}).") from None


# --------------------------------------------------------------------------- inference


def plan_batches(jobs: Sequence[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """Same-size jobs grouped, up to ``batch_size`` per batch; sizes in order of first appearance."""
    groups: dict[tuple[int, int], list[ImageJob]] = {}
    for job in jobs:
        groups.setdefault(job.size, []).append(job)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def model_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float], device: torch.device) -> torch.Tensor:
    """uint8 RGB ``(N, H, W, 3)`` -> normalised float32 ``(N, 3, H, W)`` on ``device``."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    return normalize(x, *pixel_stats(mean, std, device))


def predict_ids(segmenter: Segmenter, images: np.ndarray, cfg: EvaluateConfig, device: torch.device) -> np.ndarray:
    """Class ids int64 ``(N, H, W)`` for uint8 RGB ``(N, H, W, 3)`` under ``cfg``'s test-time protocol."""
    from pspnet.evaluate.inference import predict_logits

    x = model_input(images, segmenter.input_mean, segmenter.input_std, device)
    scores = predict_logits(segmenter.model, x, cfg)
    if scores.shape[1] != segmenter.num_classes:
        raise PspnetError(
            f"{segmenter.source}: the model outputs {scores.shape[1]} classes but records "
            f"{segmenter.num_classes} class names; re-register or re-train it."
        )
    return scores.argmax(dim=1).cpu().numpy()


def run_batches(jobs: Sequence[ImageJob], segmenter: Segmenter, cfg: EvaluateConfig, device: torch.device,
                out_dir: Path, alpha: float | None, skip_bad: bool, skipped: list[dict[str, str]]) -> Iterator[dict[str, Any]]:
    """Segment ``jobs`` batch by batch and write their files; yields one record per image."""
    from tqdm import tqdm

    colors = class_colors(segmenter)
    with tqdm(total=len(jobs), desc="predict", unit="img") as bar:
        for batch in plan_batches(jobs, cfg.batch_size):
            loaded, arrays = load_batch(batch, skip_bad, skipped)
            if loaded:
                ids = predict_ids(segmenter, np.stack(arrays), cfg, device)
                for job, rgb, image_ids in zip(loaded, arrays, ids):
                    yield write_outputs(job, rgb, image_ids, out_dir, segmenter, colors, alpha)
            bar.update(len(batch))


# --------------------------------------------------------------------------- the run


def predict(params: Params, root: Path, options: PredictOptions) -> dict[str, Any]:
    """Segment the images ``options`` names and write masks, overlays and the summary.

    Options are checked and every image header read before the model loads, so mistakes cost
    nothing. Returns a short summary: counts, output folder, summary file, model, device.
    """
    started = time.perf_counter()
    cfg = inference_config(params.evaluate, options.inference)
    alpha = overlay_alpha(options.alpha, cfg) if options.overlay else None
    device = pick_device(options.device or params.train.device)
    out_dir = Path(os.path.abspath(options.out_dir.expanduser()))
    check_out_dir(out_dir)
    images = find_images(options.inputs, options.recursive, out_dir)
    names = output_names(images)
    check_no_overwrite(images, names, out_dir)
    jobs, skipped = scan_images(images, names, options.skip_bad)
    if not jobs:
        raise DataError(f"none of the {len(images)} image(s) found could be read; see the warnings above.")
    from pspnet.registry.segmenter import load_model, model_source

    source = model_source(options.model, params)
    loaded = load_model(source, params, root, options.runtime)
    segmenter = replace(loaded, model=loaded.model.to(device))
    make_out_dir(out_dir)
    log.info("predicting %d image(s) with %s on %s into %s", len(jobs), segmenter.source, device, out_dir)
    records = sorted(run_batches(jobs, segmenter, cfg, device, out_dir, alpha, options.skip_bad, skipped),
                     key=lambda record: record["image"])
    summary_path = None
    if options.summary is not None:
        summary_path = Path(os.path.abspath(options.summary.expanduser()))
        write_summary(summary_path, segmenter, cfg, device, alpha, records, skipped)
    return {
        "images": len(records),
        "skipped": len(skipped),
        "overlays": len(records) if alpha is not None else 0,
        "out_dir": str(out_dir),
        "summary": str(summary_path) if summary_path else None,
        "model": segmenter.source,
        "device": str(device),
        "runtime": options.runtime,
        "seconds": round(time.perf_counter() - started, 2),
    }
