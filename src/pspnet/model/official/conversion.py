"""Convert a release file into our PSPNet, accounting for every key.

A source key no rule maps, a target the file does not fill, or a shape that differs is named
in the error; ``allow_partial=True`` loads what fits and leaves the rest as initialised
(reported in :attr:`Conversion.missing` / :attr:`Conversion.unmapped`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pspnet.config import ModelConfig
from pspnet.errors import PspnetError
from pspnet.model.encoder import BLOCK_STRIDES
from pspnet.model.official.common import TensorSources
from pspnet.model.official.keras_h5 import keras_sources
from pspnet.model.official.semseg import semseg_sources
from pspnet.model.pspnet import PSPNet, build_model

#: Release formats :func:`convert` reads.
FORMATS = ("semseg", "keras-h5")
#: How many names an error lists before summarising.
MAX_LISTED = 12
#: BatchNorm buffers a source may lack without changing any output (the batch counter).
OPTIONAL_SUFFIXES = (".num_batches_tracked",)


@dataclass
class Conversion:
    """A converted release: the model (eval mode), its config and what did not map."""

    model: PSPNet
    model_cfg: ModelConfig
    num_classes: int
    #: Source keys no rule maps (empty for a strict load).
    unmapped: list[str] = field(default_factory=list)
    #: Target keys the source did not fill (empty for a strict load).
    missing: list[str] = field(default_factory=list)
    #: What was converted, for the model's metadata.
    details: dict[str, Any] = field(default_factory=dict)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


def _fill(
    model: PSPNet,
    sources: TensorSources,
    unmapped: list[str],
    source: str,
    allow_partial: bool,
) -> list[str]:
    """Load ``sources`` (our key -> (source name, tensor thunk)) into ``model``; returns the
    missing target keys. Raises naming every problem unless ``allow_partial``."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in sources and not k.endswith(OPTIONAL_SUFFIXES))
    unexpected = sorted(name for key, (name, _) in sources.items() if key not in expected)
    tensors = {k: thunk() for k, (_, thunk) in sources.items() if k in expected}
    misshaped = sorted(
        f"{sources[k][0]} {tuple(v.shape)} vs {k} {tuple(expected[k].shape)}"
        for k, v in tensors.items() if v.shape != expected[k].shape
    )
    problems = []
    if unmapped or unexpected:
        problems.append(f"keys with no place in the model {_listing(sorted(unmapped + unexpected))}")
    if missing:
        problems.append(f"model keys the file does not fill {_listing(missing)}")
    if misshaped:
        problems.append(f"shape mismatches (file vs model) {_listing(misshaped)}")
    if misshaped or (problems and not allow_partial):
        raise PspnetError(
            f"{source}: does not convert to an official-shape PSPNet ({model_summary(model)}): "
            f"{'; '.join(problems)}. Check --format and the file (another architecture, or a damaged "
            f"download){'' if misshaped else '; --allow-partial loads what fits and leaves the rest initialised'}."
        )
    state = dict(expected)
    for key, value in tensors.items():
        state[key] = value.to(expected[key].dtype)
    model.load_state_dict(state, strict=True)
    unmapped.extend(unexpected)
    return missing


def model_summary(model: PSPNet) -> str:
    """``resnet50, deep stem, 150 classes``: what a conversion targeted, for messages."""
    return f"{model.encoder.name}, {model.encoder.stem} stem, {model.head[-1].out_channels} classes"


def convert(
    path: str | Path,
    fmt: str,
    *,
    num_classes: int | None = None,
    block_stride: str | None = None,
    allow_partial: bool = False,
) -> Conversion:
    """Convert the release file ``path`` (format ``fmt``, one of :data:`FORMATS`) into our PSPNet.

    The architecture (ResNet depth, class count, auxiliary head) is read from the file.
    ``num_classes``, when given, must equal the file's (the dataset's class list). ``block_stride``
    overrides where the encoder's downsampling block strides (default: the release's own). The
    model comes back in eval mode on the CPU.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise PspnetError(f"--format: unknown format {fmt!r}; accepted: {', '.join(FORMATS)}.")
    if block_stride is not None and block_stride not in BLOCK_STRIDES:
        raise PspnetError(f"--block-stride: unknown value {block_stride!r}; accepted: {', '.join(BLOCK_STRIDES)}.")
    if not path.is_file():
        raise PspnetError(f"{path}: file not found. Download the official weights first (see the README).")
    details: dict[str, Any] = {"format": fmt}
    if fmt == "semseg":
        cfg, classes, sources, unmapped = semseg_sources(path, block_stride)
    else:
        cfg, classes, sources, unmapped = keras_sources(path, block_stride, details)
    if num_classes is not None and num_classes != classes:
        classifier = "cls.4.weight" if fmt == "semseg" else "conv6/kernel"
        raise PspnetError(
            f"{path}: the classifier {classifier} has {classes} classes but the dataset has {num_classes}. "
            "Pick the --dataset the weights were trained on (ADE20K 150, VOC 21, Cityscapes 19)."
        )
    model = build_model(cfg, classes)
    if fmt == "keras-h5":  # read by the tensor thunks (keras_h5.keras_tensor), which run in _fill
        details["pyramid_channels"] = model.ppm.reduction_channels
        details["model_bn_eps"] = model.head[1].eps
    missing = _fill(model, sources, unmapped, str(path), allow_partial)
    model.eval()
    details.update(encoder=cfg.encoder, block_stride=cfg.block_stride, aux_head=model.aux_head is not None)
    return Conversion(model, cfg, classes, unmapped=sorted(unmapped), missing=missing, details=details)

