"""The ``keras-h5`` release: the Caffe models as the Keras port ships them.

The conversion makes the outputs equal ours: kernels transposed, the first conv's input
channels BGR -> RGB with the Caffe mean recorded as the model's normalisation, the pyramid
branches reordered, BatchNorm epsilon folded into the variance. The deploy nets have no
auxiliary head.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pspnet.config import ModelConfig
from pspnet.errors import PspnetError
from pspnet.model.normalize import to_fractions
from pspnet.model.official.common import ENCODER_BY_LAYER3_BLOCKS, OFFICIAL_BINS, TensorSources, count_blocks

#: Order of the pyramid branches in the Caffe / Keras concatenation after the features.
CAFFE_CONCAT_BINS = (6, 3, 2, 1)
#: Caffe mean (RGB order, 0..255) the Caffe models subtract; they divide by nothing (std 1).
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
CAFFE_STD_RGB = (1.0, 1.0, 1.0)
#: BatchNorm epsilon of the Keras port (its ``BatchNormalization(epsilon=...)``).
KERAS_BN_EPS = 1e-5
#: Stride placement of the Caffe releases by encoder: the PSPNet50 strides on the 1x1 conv.
CAFFE_BLOCK_STRIDE = {"resnet50": "1x1", "resnet101": "3x3", "resnet152": "3x3"}

#: Keras weight names (Keras 2, Keras 1) -> our parameter names. Keras 1 ``running_std`` holds
#: the variance despite its name.
_KERAS_PARAMS = {
    "kernel": "weight", "W": "weight", "bias": "bias", "b": "bias",
    "gamma": "weight", "beta": "bias",
    "moving_mean": "running_mean", "running_mean": "running_mean",
    "moving_variance": "running_var", "running_std": "running_var",
}
#: Caffe stem layer -> our stem module.
_CAFFE_STEM = {"conv1_1_3x3_s2": "conv1", "conv1_2_3x3": "conv2", "conv1_3_3x3": "conv3"}
#: Caffe bottleneck part -> ours.
_CAFFE_BLOCK = {"1x1_reduce": "conv1", "3x3": "conv2", "1x1_increase": "conv3", "1x1_proj": "downsample.0"}
_BN_OF = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "downsample.0": "downsample.1"}


def read_keras_h5(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {param: array}}`` from a Keras ``save_weights`` / ``save`` HDF5 file.

    ``param`` is the Keras name without its layer prefix and ``:0`` (``kernel``, ``gamma``,
    ``W``...). Layers without weights are skipped.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise PspnetError(f"{path}: not an HDF5 file ({err}). Check --format (keras-h5 reads the Keras port's .h5).") from None
    with handle as f:
        group = f["model_weights"] if "model_weights" in f else f
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("layer_names", list(group.keys()))]
        layers: dict[str, dict[str, np.ndarray]] = {}
        for name in names:
            if name not in group:
                raise PspnetError(f"{path}: layer {name!r} is listed in 'layer_names' but has no group; the file is damaged.")
            layer = group[name]
            weight_names = layer.attrs.get("weight_names")
            if weight_names is None:  # no attribute: every dataset below the group
                found: list[str] = []
                layer.visit(lambda n, found=found, layer=layer: found.append(n) if isinstance(layer[n], h5py.Dataset) else None)
                weight_names = found
            params = {}
            for wn in weight_names:
                wn = wn.decode() if isinstance(wn, bytes) else str(wn)
                short = wn.split("/")[-1].split(":")[0]
                if short.startswith(f"{name}_"):  # Keras 1: <layer>_W:0
                    short = short[len(name) + 1 :]
                params[short] = np.asarray(layer[wn])
            if params:
                layers[name] = params
    if not layers:
        raise PspnetError(f"{path}: no layer weights found; not a Keras weights file.")
    return layers


def caffe_target(layer: str, blocks: Mapping[int, int]) -> str | None:
    """Our module for a Caffe layer name (``None`` when no rule maps it); BN layers map to the BN
    of their conv. ``blocks``: level (2..5) -> number of blocks, to check block indices."""
    is_bn = layer.endswith("_bn")
    conv = layer[: -len("_bn")] if is_bn else layer
    if conv in _CAFFE_STEM:
        target = _CAFFE_STEM[conv]
        return f"encoder.body.{_BN_OF[target] if is_bn else target}"
    if m := re.fullmatch(r"conv([2-5])_(\d+)_(1x1_reduce|3x3|1x1_increase|1x1_proj)", conv):
        level, index = int(m.group(1)), int(m.group(2))
        if not 1 <= index <= blocks.get(level, 0):
            return None
        part = _CAFFE_BLOCK[m.group(3)]
        return f"encoder.body.layer{level - 1}.{index - 1}.{_BN_OF[part] if is_bn else part}"
    if m := re.fullmatch(r"conv5_3_pool(\d+)_conv", conv):
        bin_size = int(m.group(1))
        if bin_size not in OFFICIAL_BINS:
            return None
        return f"ppm.branches.{OFFICIAL_BINS.index(bin_size)}.{2 if is_bn else 1}"
    if conv == "conv5_4":
        return "head.1" if is_bn else "head.0"
    if conv == "conv6" and not is_bn:
        return "head.4"
    return None


def keras_tensor(target: str, param: str, array: np.ndarray, details: dict[str, Any]) -> torch.Tensor:
    """A Keras array as our tensor: kernels to ``(out, in, kh, kw)``, the first conv's input
    channels BGR -> RGB, ``conv5_4``'s input channels to our branch order, BN epsilon folded."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if param == "weight" and tensor.ndim == 4:
        tensor = tensor.permute(3, 2, 0, 1).contiguous()
        if target == "encoder.body.conv1":
            tensor = tensor.flip(1)  # Caffe reads BGR; our pipeline feeds RGB
        if target == "head.0":
            tensor = _reorder_pyramid_inputs(tensor, details["pyramid_channels"])
    if param == "running_var":
        tensor = tensor + (details["source_bn_eps"] - details["model_bn_eps"])
    return tensor


def _reorder_pyramid_inputs(weight: torch.Tensor, branch_channels: int) -> torch.Tensor:
    """``conv5_4`` reads ``[features, bin 6, 3, 2, 1]``; ours reads ``[features, bin 1, 2, 3, 6]``."""
    features = weight.shape[1] - branch_channels * len(CAFFE_CONCAT_BINS)
    blocks = {b: weight[:, features + i * branch_channels : features + (i + 1) * branch_channels]
              for i, b in enumerate(CAFFE_CONCAT_BINS)}
    return torch.cat([weight[:, :features], *(blocks[b] for b in OFFICIAL_BINS)], dim=1)


def keras_config(
    layers: Mapping[str, Mapping[str, np.ndarray]], source: str, block_stride: str | None
) -> tuple[ModelConfig, int, dict[int, int]]:
    """The model config, class count and blocks per level (2..5) a Keras-port file describes."""
    names = list(layers)
    blocks = {level: count_blocks(names, rf"conv{level}_(\d+)_1x1_reduce$") for level in (2, 3, 4, 5)}
    if blocks[4] not in ENCODER_BY_LAYER3_BLOCKS:
        raise PspnetError(
            f"{source}: found {blocks[4]} 'conv4_<i>_1x1_reduce' layers; a PSPNet50 / 101 has "
            f"{' / '.join(map(str, ENCODER_BY_LAYER3_BLOCKS))}. Not a Keras-port PSPNet file (check --format)."
        )
    classifier = layers.get("conv6", {})
    kernel = classifier.get("kernel", classifier.get("W"))
    if kernel is None or np.ndim(kernel) != 4:
        raise PspnetError(f"{source}: no classifier layer 'conv6' with a 4-d kernel; not a Keras-port PSPNet file.")
    encoder = ENCODER_BY_LAYER3_BLOCKS[blocks[4]]
    cfg = ModelConfig(
        encoder=encoder,
        stem="deep",
        output_stride=8,
        block_stride=block_stride or CAFFE_BLOCK_STRIDE[encoder],
        ppm_bins=OFFICIAL_BINS,
        aux_weight=0.0,
        input_mean=to_fractions(CAFFE_MEAN_RGB),
        input_std=to_fractions(CAFFE_STD_RGB),
    )
    return cfg, int(np.shape(kernel)[-1]), blocks


def keras_sources(
    path: Path, block_stride: str | None, details: dict[str, Any]
) -> tuple[ModelConfig, int, TensorSources, list[str]]:
    """Read a Keras-port ``.h5``: its config, class count, tensor sources by our key, unmapped
    names. The tensor thunks read ``details`` (``pyramid_channels``, ``model_bn_eps``), which
    the caller fills once the model is built; ``source_bn_eps`` is set here."""
    layers = read_keras_h5(path)
    cfg, classes, blocks = keras_config(layers, str(path), block_stride)
    details["source_bn_eps"] = KERAS_BN_EPS
    sources: TensorSources = {}
    unmapped: list[str] = []
    for layer, params in layers.items():
        target = caffe_target(layer, blocks)
        for param, array in params.items():
            ours = _KERAS_PARAMS.get(param)
            if target is None or ours is None:
                unmapped.append(f"{layer}/{param}")
                continue
            sources[f"{target}.{ours}"] = (
                f"{layer}/{param}", lambda t=target, p=ours, a=array: keras_tensor(t, p, a, details)
            )
    return cfg, classes, sources, unmapped
