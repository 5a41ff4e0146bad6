"""Save / load a trained PSPNet with everything needed to rebuild it.

The file is a plain ``torch.save`` dict of tensors and JSON-like values, so it loads with
``weights_only=True`` (no pickled code runs on load)::

    {"format": "pspnet-checkpoint", "version": 1, "model_cfg": {...ModelConfig...},
     "num_classes": K, "meta": {"class_names": [...], "class_colors": [...], "epoch": E,
     "step": S, ...}, "state_dict": {...}}
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from pspnet import atomic_files
from pspnet.config import ModelConfig
from pspnet.errors import PspnetError
from pspnet.model.encoder import PSPNET_CHECKPOINT_FORMAT
from pspnet.model.pspnet import PSPNet, build_model

CHECKPOINT_FORMAT = PSPNET_CHECKPOINT_FORMAT
CHECKPOINT_VERSION = 1
#: What torch's ``weights_only`` unpickler says when a file holds objects of arbitrary classes.
WEIGHTS_ONLY_REFUSAL = "Unsupported global"


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back: the model (eval mode, on ``map_location``) and its metadata."""

    model: PSPNet
    model_cfg: ModelConfig
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path, model: PSPNet, model_cfg: ModelConfig, num_classes: int, meta: dict[str, Any]
) -> None:
    """Atomically write ``model``'s weights, its config, class count and ``meta`` to ``path``.

    ``meta`` must be JSON-serialisable (names, colours, counters); tensors are stored on the CPU.
    """
    try:
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {err}") from None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_cfg": model_cfg.model_dump(mode="json"),
        "num_classes": int(num_classes),
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_files.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; the model comes back in eval mode.

    Raises :class:`PspnetError` naming the file when it is missing, not a checkpoint, from
    another format version, or its weights do not fit the model its config describes.
    """
    path = Path(path)
    if not path.is_file():
        raise PspnetError(f"{path}: checkpoint not found. Run the `train` stage first (dvc repro train).")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if WEIGHTS_ONLY_REFUSAL not in str(err):
            raise PspnetError(f"{path}: not a readable PyTorch checkpoint (damaged, or not a checkpoint). Re-run `train`.") from None
        raise PspnetError(
            f"{path}: holds Python objects beyond tensors and plain values; refused, because loading "
            "them would run code from the file. Only checkpoints written by `pspnet train` load; "
            "re-run `train`, or convert the file to a plain state dict where you trust it."
        ) from None
    except Exception as err:  # torch raises many types for a corrupt file (even IndexError)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PspnetError(f"{path}: not a readable PyTorch checkpoint ({first_line}). Re-run `train`.") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise PspnetError(f"{path}: not a pspnet checkpoint (no 'format': {CHECKPOINT_FORMAT!r} entry). Re-run `train`.")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise PspnetError(
            f"{path}: checkpoint version {payload.get('version')!r} is not supported (expected "
            f"{CHECKPOINT_VERSION}). Re-run `train` with this version of the code."
        )
    missing = [k for k in ("model_cfg", "num_classes", "meta", "state_dict") if k not in payload]
    if missing:
        raise PspnetError(f"{path}: malformed checkpoint, missing {missing}. Re-run `train`.")
    try:
        model_cfg = ModelConfig.model_validate(payload["model_cfg"])
    except ValidationError as err:
        raise PspnetError(f"{path}: the stored model configuration is invalid: {err}") from None
    num_classes = int(payload["num_classes"])
    # The weights come from the state dict: never re-read encoder_weights (a path or a download).
    model = build_model(model_cfg.model_copy(update={"encoder_weights": "none"}), num_classes)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise PspnetError(f"{path}: weights do not fit the stored model configuration: {err}") from None
    model.to(map_location)
    model.eval()
    return LoadedCheckpoint(model=model, model_cfg=model_cfg, num_classes=num_classes, meta=dict(payload["meta"]))
