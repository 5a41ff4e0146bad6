"""``pspnet erf``: the effective receptive field of trained models, measured on prepared images.

The measurement itself is :mod:`pspnet.evaluate.receptive_field`; this app picks the images
(evenly spaced over a prepared split, normalised as each model was trained), loads the
checkpoints, and writes the radii (``<out>.json``) and the maps side by side (``<out>.png``).
The ablation (:mod:`pspnet.ablation`) measures every row's model the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pspnet import atomic_files
from pspnet.config import Params, load_params
from pspnet.errors import ConfigError
from pspnet.evaluate.plots import plot_receptive_fields
from pspnet.evaluate.receptive_field import ReceptiveField, effective_receptive_field
from pspnet.evaluate.scoring import SPLIT, split_dataset
from pspnet.layout import Layout
from pspnet.model.checkpoint import load_checkpoint
from pspnet.train.curve import evenly_spaced

#: Images whose maps are averaged by default.
DEFAULT_IMAGES = 16
#: Images per backward pass (bounds memory at CamVid's size).
BATCH_SIZE = 4


def measure(params: Params, root: Path, checkpoint: Path, split: str = SPLIT, images: int = DEFAULT_IMAGES) -> ReceptiveField:
    """The ERF of the checkpoint at ``checkpoint`` over up to ``images`` evenly spaced images of
    the prepared ``split`` that have the first one's size."""
    layout = Layout(root, params.paths)
    ckpt = load_checkpoint(checkpoint)
    dataset = split_dataset(params, layout.prepared, layout.quarantine, ckpt.model_cfg, split)
    picks = [dataset[i][0] for i in evenly_spaced(len(dataset), images)]
    batch = torch.stack([image for image in picks if image.shape == picks[0].shape])
    return effective_receptive_field(ckpt.model, batch, batch_size=BATCH_SIZE)


def _named(items: Sequence[str], root: Path, default: Path) -> dict[str, Path]:
    if not items:
        return {"model": default}
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--checkpoint {item!r}: expected NAME=PATH, e.g. fcn=models/fcn.pt.")
        named[name] = Path(path) if Path(path).is_absolute() else root / path
    return named


def measure_checkpoints(
    params_file: Path, root: Path, checkpoints: Sequence[str], split: str = SPLIT, images: int = DEFAULT_IMAGES,
    out: Path = Path("metrics/erf"),
) -> dict[str, Any]:
    """Measure each ``NAME=PATH`` checkpoint (none: the pipeline's trained model); write
    ``<out>.json`` (radii per model) and ``<out>.png``; return the JSON's content."""
    root = Path(root)
    params = load_params(params_file)
    default = Layout(root, params.paths).checkpoint
    fields = {name: measure(params, root, path, split, images) for name, path in _named(checkpoints, root, default).items()}
    out = out if out.is_absolute() else root / out
    report = {"split": split, "images": images, "models": {name: field.summary() for name, field in fields.items()}}
    atomic_files.write_json(out.with_suffix(".json"), report)
    plot_receptive_fields(fields, out.with_suffix(".png"))
    return {**report, "figure": str(out.with_suffix(".png"))}
