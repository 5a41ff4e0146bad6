"""The ``semseg`` release: checkpoints of the official PyTorch code (hszhao/semseg).

Same network as ours (stride on the 3x3 conv, RGB normalised with the ImageNet mean / std):
keys are renamed, nothing else changes.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pspnet.config import ModelConfig
from pspnet.errors import PspnetError
from pspnet.model.checkpoint import WEIGHTS_ONLY_REFUSAL
from pspnet.model.official.common import ENCODER_BY_LAYER3_BLOCKS, OFFICIAL_BINS, TensorSources, count_blocks

#: Prefixes stripped from semseg keys (DataParallel / DDP).
SEMSEG_PREFIXES = ("module.",)
#: The first bytes of every HDF5 file (Keras ``.h5``).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: semseg ``layer0`` (deep stem Sequential) index -> our stem module.
_SEMSEG_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
#: semseg head Sequentials -> ours.
_SEMSEG_HEADS = {"cls": "head", "aux": "aux_head"}


def semseg_target(key: str) -> str | None:
    """Our key for a semseg key, or ``None`` when no rule maps it."""
    parts = key.split(".")
    if parts[0] == "layer0" and len(parts) == 3 and parts[1] in _SEMSEG_STEM:
        return f"encoder.body.{_SEMSEG_STEM[parts[1]]}.{parts[2]}"
    if re.fullmatch(r"layer[1-4]", parts[0]):
        return f"encoder.body.{key}"
    if parts[:2] == ["ppm", "features"] and len(parts) == 5:
        return f"ppm.branches.{parts[2]}.{parts[3]}.{parts[4]}"
    if parts[0] in _SEMSEG_HEADS and len(parts) == 3:
        return f"{_SEMSEG_HEADS[parts[0]]}.{parts[1]}.{parts[2]}"
    return None


def semseg_state(raw: Any, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a semseg checkpoint (``state_dict`` entry or bare), prefixes stripped."""
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PspnetError(
            f"{source}: not a semseg checkpoint: expected a state dict of tensors (or a dict with a 'state_dict' "
            "entry, as hszhao/semseg's train.py saves). Check --format."
        )
    cleaned = {}
    for key, value in state.items():
        for prefix in SEMSEG_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def semseg_config(state: Mapping[str, torch.Tensor], source: str) -> tuple[ModelConfig, int]:
    """The model config and class count a semseg state dict describes."""
    keys = list(state)
    layer3 = count_blocks(keys, r"layer3\.(\d+)\.")
    if layer3 not in ENCODER_BY_LAYER3_BLOCKS:
        raise PspnetError(
            f"{source}: found {layer3} blocks under 'layer3.*'; a PSPNet50 / 101 / 152 has "
            f"{' / '.join(map(str, ENCODER_BY_LAYER3_BLOCKS))}. Not an official PSPNet checkpoint (check --format)."
        )
    if "cls.4.weight" not in state:
        raise PspnetError(f"{source}: no classifier 'cls.4.weight'; not a semseg PSPNet checkpoint (check --format).")
    branches = count_blocks(keys, r"ppm\.features\.(\d+)\.")
    if branches != len(OFFICIAL_BINS):
        raise PspnetError(
            f"{source}: {branches} pyramid branches under 'ppm.features.*' but the official PSPNet has "
            f"{len(OFFICIAL_BINS)} (bins {list(OFFICIAL_BINS)}); a PSPNet without its PPM or another model."
        )
    cfg = ModelConfig(
        encoder=ENCODER_BY_LAYER3_BLOCKS[layer3],
        stem="deep",
        output_stride=8,
        ppm_bins=OFFICIAL_BINS,
        aux_weight=ModelConfig().aux_weight if any(k.startswith("aux.") for k in keys) else 0.0,
    )
    return cfg, int(state["cls.4.weight"].shape[0])


def semseg_sources(path: Path, block_stride: str | None) -> tuple[ModelConfig, int, TensorSources, list[str]]:
    """Read a semseg ``.pth``: its config, class count, tensor sources by our key, unmapped keys."""
    state = semseg_state(load_torch(path), str(path))
    cfg, classes = semseg_config(state, str(path))
    if block_stride is not None:
        cfg = cfg.model_copy(update={"block_stride": block_stride})
    sources: TensorSources = {}
    unmapped: list[str] = []
    for key, value in state.items():
        target = semseg_target(key)
        if target is None:
            unmapped.append(key)
        else:
            sources[target] = (key, lambda value=value: value)
    return cfg, classes, sources, unmapped


def load_torch(path: Path) -> Any:
    """A ``.pth`` read with ``weights_only=True``: tensors and plain values only, no code runs."""
    with open(path, "rb") as f:
        if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            raise PspnetError(f"{path}: not a readable PyTorch file: it is an HDF5 file. Use --format keras-h5 for the Keras port's .h5.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if WEIGHTS_ONLY_REFUSAL not in str(err):
            raise PspnetError(f"{path}: not a readable PyTorch file (damaged, or another format). Check --format.") from None
        raise PspnetError(
            f"{path}: holds Python objects beyond tensors and plain values; "
            "refused, because loading them would run code from the file. Save its state dict alone "
            "(torch.save(ckpt['state_dict'], ...)) where you trust the file."
        ) from None
    except Exception as err:  # torch raises many types for a damaged or foreign file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PspnetError(f"{path}: not a readable PyTorch file ({first}). Check --format (semseg reads .pth).") from None
