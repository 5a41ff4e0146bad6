"""Load a model for inference from a checkpoint file or any MLflow model URI (the reader side).

:func:`load_segmenter` accepts

- a checkpoint path (``models/checkpoint.pt``, written by ``train``);
- an MLflow model URI: ``models:/pspnet@champion``, ``models:/pspnet/3``,
  ``runs:/<run id>/model``, ``models:/m-<id>`` or a local model folder. Versions logged by
  :mod:`pspnet.registry.packaging` (a pyfunc around a ``torch.export`` program) and the earlier
  layout (MLflow's pytorch flavour holding the same program) both load.

Either way the result is a :class:`Segmenter` whose ``model`` takes NORMALISED images
``(N, 3, H, W)`` of any size (as the evaluation's data pipeline produces them; passes under
:data:`MIN_SIDE` are padded, see :class:`MinSideInput`) and returns logits ``(N, C, H, W)``, so :func:`pspnet.evaluate.inference.predict_logits` runs every test-time
mode on it. A registered program takes raw RGB and normalises inside; :class:`FromNormalized`
undoes the normalisation in front of it (exact up to float rounding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.errors import ConfigError, PspnetError
from pspnet.registry import serving_model

log = logging.getLogger(__name__)

#: Names of the normalisation buffers of :class:`pspnet.model.export.SegmentationModel`
#: (RGB statistics in 0..255 units), kept by ``torch.export``.
MEAN_BUFFER = "mean"
STD_BUFFER = "std"
#: Values in the packaged metadata are fractions of this.
PIXEL_SCALE = 255.0
#: Smallest side a forward pass gets: exported networks reject smaller inputs (their shape
#: guards need 9+ pixels at output stride 8), so smaller passes (images, slide windows, test
#: scales) are edge-padded to this and the logits cropped back, as the served model does.
MIN_SIDE = serving_model.MIN_SIDE
#: File suffixes treated as checkpoint paths rather than MLflow URIs.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class Segmenter:
    """A model ready for :func:`~pspnet.evaluate.inference.predict_logits`, and what it predicts.

    ``model``: normalised ``(N, 3, H, W)`` -> logits ``(N, C, H, W)``, in eval mode.
    ``input_mean`` / ``input_std``: the RGB normalisation (fractions of 255) its inputs need.
    """

    model: nn.Module
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class FromNormalized(nn.Module):
    """Feeds a raw-RGB network from normalised input: ``net(x * std + mean)``.

    ``net`` takes float32 RGB ``(N, 3, H, W)`` in 0..255 (a loaded ``torch.export`` program);
    ``mean`` / ``std`` are its own normalisation in 0..255 units. A loaded program refuses
    ``.train()`` / ``.eval()``, and it always runs as exported (eval mode), so this wrapper
    keeps the mode to itself.
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().float().reshape(1, 3, 1, 1).clone())
        self.register_buffer("std", std.detach().float().reshape(1, 3, 1, 1).clone())
        self.training = False

    def train(self, mode: bool = True) -> FromNormalized:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, H, W)`` -> logits ``(N, C, H, W)``."""
        return self.net(x * self.std + self.mean)


class MinSideInput(nn.Module):
    """Runs ``net`` on passes at least ``min_side`` pixels a side: a smaller input is
    edge-padded at the bottom / right and the logits cropped back to its size.

    Inference-only: it stays in eval mode, and so does ``net`` (a loaded ``torch.export``
    program cannot switch modes and always runs as exported).
    """

    def __init__(self, net: nn.Module, min_side: int = MIN_SIDE) -> None:
        super().__init__()
        self.net = net
        self.min_side = min_side
        self.net.eval()
        self.training = False

    def train(self, mode: bool = True) -> MinSideInput:
        """Kept in eval mode whatever is asked (see the class docstring)."""
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, H, W)`` -> logits ``(N, C, H, W)`` for any ``H, W >= 1``."""
        height, width = x.shape[-2:]
        pad_h, pad_w = max(0, self.min_side - height), max(0, self.min_side - width)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out[..., :height, :width]


def is_checkpoint_path(source: str) -> bool:
    """True for an existing file, or a path ending in a checkpoint suffix (so a typo is named as a missing file)."""
    return Path(source).is_file() or (source.lower().endswith(CHECKPOINT_SUFFIXES) and "://" not in source)


def _from_checkpoint(path: Path) -> Segmenter:
    from pspnet.model.checkpoint import load_checkpoint

    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint. Pass a checkpoint file or an MLflow URI such as models:/pspnet@champion.")
    ckpt = load_checkpoint(path, map_location="cpu")
    names = tuple(ckpt.meta.get("class_names") or (str(i) for i in range(ckpt.num_classes)))
    colors = tuple(tuple(int(v) for v in c) for c in ckpt.meta.get("class_colors") or ())
    cfg = ckpt.model_cfg
    model = MinSideInput(ckpt.model.eval())
    return Segmenter(model, names, colors, tuple(cfg.input_mean), tuple(cfg.input_std), str(path))


def _program_and_classes(uri: str, flavors: dict[str, Any], meta: dict[str, Any]) -> tuple[nn.Module, list[str], list[list[int]]]:
    """The raw-RGB program of an MLflow model and its classes, for either artefact layout."""
    import mlflow.pyfunc

    from pspnet.registry.packaging import FORMAT, FORMAT_KEY

    if meta.get(FORMAT_KEY) == FORMAT:
        wrapper = mlflow.pyfunc.load_model(uri).unwrap_python_model()
        return wrapper.network, list(wrapper.class_names), [list(c) for c in wrapper.class_colors]
    if "pytorch" in flavors:  # the earlier layout: MLflow's pytorch flavour around the same program
        import mlflow.pytorch

        return mlflow.pytorch.load_model(uri), [], []
    raise PspnetError(
        f"{uri}: not a PSPNet model logged by this project (flavours: {', '.join(sorted(flavors))}; "
        f"metadata {FORMAT_KEY!r}: {meta.get(FORMAT_KEY)!r}). Register it with `pspnet register`, or pass a checkpoint file."
    )


def _from_mlflow(uri: str) -> Segmenter:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as err:
        raise PspnetError(
            f"{uri}: cannot load this model ({err}). Check the name / alias / version, and that "
            f"MLFLOW_TRACKING_URI points at the store holding it (now {mlflow.get_tracking_uri()!r})."
        ) from None
    meta = info.metadata or {}
    program, names, colors = _program_and_classes(uri, info.flavors, meta)
    buffers = dict(program.named_buffers())
    if MEAN_BUFFER not in buffers or STD_BUFFER not in buffers:
        raise PspnetError(f"{uri}: the network has no '{MEAN_BUFFER}' / '{STD_BUFFER}' normalisation buffers; not a PSPNet export.")
    mean, std = buffers[MEAN_BUFFER].flatten(), buffers[STD_BUFFER].flatten()
    names = names or list(meta.get("class_names") or [])
    colors = colors or [list(c) for c in meta.get("class_colors") or []]
    if not names:
        raise PspnetError(f"{uri}: the model records no class names (metadata 'class_names').")
    return Segmenter(
        model=MinSideInput(FromNormalized(program, mean, std)),
        class_names=tuple(names),
        class_colors=tuple(tuple(int(v) for v in c) for c in colors),
        input_mean=tuple(float(v) / PIXEL_SCALE for v in mean.tolist()),
        input_std=tuple(float(v) / PIXEL_SCALE for v in std.tolist()),
        source=uri,
    )


def load_segmenter(source: str | Path) -> Segmenter:
    """A :class:`Segmenter` from a checkpoint path or an MLflow model URI (see the module docstring).

    MLflow URIs resolve against the current tracking / registry URI (call
    :func:`pspnet.registry.tracking.setup_mlflow` first to use the project's store).
    """
    text = str(source)
    if is_checkpoint_path(text):
        return _from_checkpoint(Path(text))
    return _from_mlflow(text)
