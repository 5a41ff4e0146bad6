"""Independent reference implementations of the authors' released PSPNet networks, for tests.

Two originals are re-implemented here from their published code alone (see
``/tmp/notes/official_layouts.md`` for the sources of every fact), with plain ``torch.nn.functional``
calls on the raw weight tensors, so that a test can compare our converted model with what the
original network computes from the same weights:

- **semseg** (hszhao/semseg, PyTorch): ``train_epoch_*.pth`` checkpoints. Keys ``layer0.*``,
  ``layer1..4.*``, ``ppm.features.*``, ``cls.*``, ``aux.*`` (``module.`` prefixed when saved by
  DDP / DataParallel training, which is always the case for the released files). RGB input
  normalised with the ImageNet mean/std; stride 2 of layer2 on the 3x3 conv; every 3x3 conv of
  layer3 / layer4 dilated 2 / 4; pyramid bins concatenated as ``[x, 1, 2, 3, 6]``.
- **Caffe / Keras port** (hszhao/PSPNet deploy prototxts, converted to ``.h5`` by
  Vladkryvoruchko/PSPNet-Keras-tensorflow): BGR input minus the Caffe mean, 0..255 scale;
  PSPNet50 puts the stride of conv3_1 on the 1x1 reduce conv, the Caffe PSPNet101 on the 3x3
  conv (the Keras port puts it on the 1x1 for both); pyramid bins concatenated as
  ``[x, 6, 3, 2, 1]``; fixed average-pool kernels ``feature side / bin``; no aux branch.

Weights are random but well conditioned (activations stay O(1) through 50 and 101 layers) and
carry the official names and shapes at full channel width; tests run them on small inputs
(e.g. 41x41 -> 6x6 features, see :func:`keras_reference_forward`).

This module must stay independent of ``pspnet`` (it is the yardstick for
``pspnet.model.official``): it imports only torch, numpy and h5py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Architecture constants shared by both originals (semseg model/pspnet.py + model/resnet.py,
# Caffe prototxts, Keras layers_builder.py).
# ---------------------------------------------------------------------------------------------

#: Bottleneck blocks per stage.
BLOCKS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
#: Widths of the deep stem's three 3x3 convs.
STEM_WIDTHS = (64, 64, 128)
#: Bottleneck widths of the four stages (output = 4x).
PLANES = (64, 128, 256, 512)
EXPANSION = 4
#: Dilation of the 3x3 convs per stage (output stride 8).
DILATIONS = (1, 1, 2, 4)
#: Stage (0-based) whose first block has stride 2.
STRIDED_STAGE = 1
#: Pyramid bins, in semseg's order (ppm.features.0..3).
BINS = (1, 2, 3, 6)
#: Channels of the backbone output, of each pyramid branch, of the head and of the aux head.
FEATURES = 2048
PPM_WIDTH = 512
HEAD_WIDTH = 512
AUX_IN = 1024
AUX_WIDTH = 256
#: BatchNorm epsilon: PyTorch default (semseg), Caffe BNParameter default, Keras port BN(epsilon=1e-5).
BN_EPS = 1e-5
#: Output stride of both networks.
OUTPUT_STRIDE = 8

#: Caffe / Keras port input mean, RGB order (Keras pspnet.py DATA_MEAN, Caffe eval_all.m).
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)

# ---------------------------------------------------------------------------------------------
# Random-weight conditioning (test data only, not from any source).
# ---------------------------------------------------------------------------------------------

#: Scale of the last conv of each residual branch relative to Kaiming: keeps the residual stream's
#: growth over 33 blocks (ResNet-101) moderate, since the random BN statistics do not normalise.
RESIDUAL_GAIN = 0.2
#: Range of BN weights and running variances; half-width of BN biases and running means.
BN_SCALE_RANGE = (0.5, 1.5)
BN_SHIFT = 0.1
#: Half-width of the classifier biases.
CLASSIFIER_BIAS = 0.1
#: Typical spread of a 0..255 pixel minus its mean: the first Caffe/Keras conv sees raw pixel
#: units, so its random weights are divided by this to keep activations O(1).
PIXEL_SCALE = 58.0
#: Range of the (meaningless) num_batches_tracked counters.
BATCHES_TRACKED_RANGE = (1_000, 100_000)

#: semseg optimizer: SGD, base LR, momentum, weight decay (config/*/*.yaml); new modules get 10x LR.
SGD_BASE_LR = 0.01
SGD_MOMENTUM = 0.9
SGD_WEIGHT_DECAY = 1e-4
NEW_MODULE_LR_FACTOR = 10
DEFAULT_EPOCH = 100

#: Keras metadata written into the h5 root (values assumed: the port pins keras==2.1.1; the
#: Keras-1 style is offered for converter robustness only, the released files are Keras 2).
KERAS_VERSION = {"keras2": "2.1.1", "keras1": "1.2.2"}
KERAS_BACKEND = "tensorflow"
#: Weight-name suffixes per role and style. Keras 2: ``<layer>/<role>:0`` (nested in the h5);
#: Keras 1: ``<layer>_<role>:0`` (``running_std`` holds the variance in Keras 1).
KERAS_ROLE_NAMES = {
    "keras2": {"kernel": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta",
               "mean": "moving_mean", "var": "moving_variance"},
    "keras1": {"kernel": "W", "bias": "b", "gamma": "gamma", "beta": "beta",
               "mean": "running_mean", "var": "running_std"},
}
KERAS_SEPARATOR = {"keras2": "/", "keras1": "_"}
CONV_ROLES = ("kernel", "bias")
BN_ROLES = ("gamma", "beta", "mean", "var")



# =============================================================================================
# semseg (PyTorch) checkpoints
# =============================================================================================


def _check_layers(layers: int) -> tuple[int, int, int, int]:
    if layers not in BLOCKS:
        raise ValueError(f"layers must be one of {sorted(BLOCKS)}, got {layers}")
    return BLOCKS[layers]


def _semseg_layout(layers: int, classes: int, aux: bool) -> Iterator[tuple[str, str, tuple[int, ...], str]]:
    """Yield ``(module prefix, kind, shape, role)`` in the official state-dict order.

    kind is ``conv`` (shape = weight shape, OIHW), ``conv_bias`` (shape = weight shape; the module
    has a bias) or ``bn`` (shape = (C,)); role tunes the random scale (``stem``, ``residual``,
    ``classifier`` or ``plain``).
    """
    stem_in = 3
    for index, width in zip((0, 3, 6), STEM_WIDTHS):
        yield f"layer0.{index}", "conv", (width, stem_in, 3, 3), "plain"
        yield f"layer0.{index + 1}", "bn", (width,), "plain"
        stem_in = width
    inplanes = STEM_WIDTHS[-1]
    for stage, (blocks, planes) in enumerate(zip(_check_layers(layers), PLANES)):
        for block in range(blocks):
            pre = f"layer{stage + 1}.{block}"
            yield f"{pre}.conv1", "conv", (planes, inplanes, 1, 1), "plain"
            yield f"{pre}.bn1", "bn", (planes,), "plain"
            yield f"{pre}.conv2", "conv", (planes, planes, 3, 3), "plain"
            yield f"{pre}.bn2", "bn", (planes,), "plain"
            yield f"{pre}.conv3", "conv", (planes * EXPANSION, planes, 1, 1), "residual"
            yield f"{pre}.bn3", "bn", (planes * EXPANSION,), "plain"
            if block == 0:
                yield f"{pre}.downsample.0", "conv", (planes * EXPANSION, inplanes, 1, 1), "plain"
                yield f"{pre}.downsample.1", "bn", (planes * EXPANSION,), "plain"
            inplanes = planes * EXPANSION
    for i in range(len(BINS)):
        yield f"ppm.features.{i}.1", "conv", (PPM_WIDTH, FEATURES, 1, 1), "plain"
        yield f"ppm.features.{i}.2", "bn", (PPM_WIDTH,), "plain"
    yield "cls.0", "conv", (HEAD_WIDTH, FEATURES + len(BINS) * PPM_WIDTH, 3, 3), "plain"
    yield "cls.1", "bn", (HEAD_WIDTH,), "plain"
    yield "cls.4", "conv_bias", (classes, HEAD_WIDTH, 1, 1), "classifier"
    if aux:
        yield "aux.0", "conv", (AUX_WIDTH, AUX_IN, 3, 3), "plain"
        yield "aux.1", "bn", (AUX_WIDTH,), "plain"
        yield "aux.4", "conv_bias", (classes, AUX_WIDTH, 1, 1), "classifier"


def _conv_std(fan_in: int, role: str) -> float:
    """Kaiming (fan_in, ReLU) std, shrunk for the last conv of a residual branch, 1/sqrt(fan_in)
    for a classifier, and divided by the pixel scale for a conv fed raw Caffe pixels."""
    if role == "classifier":
        return math.sqrt(1.0 / fan_in)
    std = math.sqrt(2.0 / fan_in)
    if role == "residual":
        return std * RESIDUAL_GAIN
    if role == "pixels":
        return std / PIXEL_SCALE
    return std


def _random_conv(rng: np.random.Generator, shape_oihw: tuple[int, ...], role: str) -> np.ndarray:
    fan_in = int(np.prod(shape_oihw[1:]))
    return (rng.standard_normal(shape_oihw, dtype=np.float32) * _conv_std(fan_in, role)).astype(np.float32)


def _random_bn(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    """Well-conditioned BN parameters: scale and variance in BN_SCALE_RANGE, small shifts."""
    low, high = BN_SCALE_RANGE
    return {
        "weight": rng.uniform(low, high, channels).astype(np.float32),
        "bias": rng.uniform(-BN_SHIFT, BN_SHIFT, channels).astype(np.float32),
        "running_mean": rng.uniform(-BN_SHIFT, BN_SHIFT, channels).astype(np.float32),
        "running_var": rng.uniform(low, high, channels).astype(np.float32),
    }


def semseg_state_dict(
    layers: int = 50,
    classes: int = 150,
    seed: int = 0,
    module_prefix: bool = False,
    aux: bool = True,
    *,
    num_batches_tracked: bool = True,
) -> dict[str, torch.Tensor]:
    """A random state dict with exactly the keys and shapes of an official semseg PSPNet.

    This is what ``checkpoint['state_dict']`` of the authors' ``train_epoch_*.pth`` holds
    (hszhao/semseg ``model/pspnet.py`` with the deep-base ResNet of ``model/resnet.py``), in
    the order ``model.state_dict()`` lists it:

    - ``layer0.{0,3,6}.weight`` convs 3->64 (s2), 64->64, 64->128, 3x3; ``layer0.{1,4,7}.*`` BN;
    - ``layer{1..4}.{b}.conv{1,2,3}.weight``, ``.bn{1,2,3}.*``, ``layer{1..4}.0.downsample.{0,1}.*``
      with [3, 4, 6, 3] (50) or [3, 4, 23, 3] (101) blocks;
    - ``ppm.features.{0..3}.1.weight`` (512, 2048, 1, 1), ``ppm.features.{0..3}.2.*`` BN(512);
    - ``cls.0.weight`` (512, 4096, 3, 3), ``cls.1.*``, ``cls.4.weight`` (K, 512, 1, 1), ``cls.4.bias`` (K,);
    - with ``aux``: ``aux.0.weight`` (256, 1024, 3, 3), ``aux.1.*``, ``aux.4.weight`` (K, 256, 1, 1), ``aux.4.bias``.

    Every BN has ``weight, bias, running_mean, running_var`` (float32, (C,)) and, unless
    ``num_batches_tracked=False`` (files saved by PyTorch < 0.4.1), an int64 scalar
    ``num_batches_tracked``. Only ``cls.4`` and ``aux.4`` have a bias.

    Args:
        layers: 50 or 101.
        classes: number of classes K (150 ADE20K, 21 VOC 2012, 19 Cityscapes).
        seed: seed of the NumPy generator; the same seed gives the same tensors.
        module_prefix: prefix every key with ``module.`` (as DDP / DataParallel training saves).
        aux: include the auxiliary head (the released checkpoints do).
        num_batches_tracked: include the BN counters.

    Returns:
        ``{key: tensor}``; float32 tensors, int64 scalar counters.
    """
    rng = np.random.default_rng(seed)
    prefix = "module." if module_prefix else ""
    state: dict[str, torch.Tensor] = {}
    for module, kind, shape, role in _semseg_layout(layers, classes, aux):
        if kind == "bn":
            for name, value in _random_bn(rng, shape[0]).items():
                state[f"{prefix}{module}.{name}"] = torch.from_numpy(value)
            if num_batches_tracked:
                count = int(rng.integers(*BATCHES_TRACKED_RANGE))
                state[f"{prefix}{module}.num_batches_tracked"] = torch.tensor(count, dtype=torch.int64)
            continue
        state[f"{prefix}{module}.weight"] = torch.from_numpy(_random_conv(rng, shape, role))
        if kind == "conv_bias":
            bias = rng.uniform(-CLASSIFIER_BIAS, CLASSIFIER_BIAS, shape[0]).astype(np.float32)
            state[f"{prefix}{module}.bias"] = torch.from_numpy(bias)
    return state


def _param_groups(state: Mapping[str, torch.Tensor]) -> list[dict]:
    """SGD param groups as semseg's train.py builds them: layer0..4 at base LR, ppm/cls/aux at 10x."""
    names = [k.removeprefix("module.") for k in state if not k.endswith(("running_mean", "running_var",
                                                                            "num_batches_tracked"))]
    groups, index = [], 0
    for module in ("layer0", "layer1", "layer2", "layer3", "layer4", "ppm", "cls", "aux"):
        count = sum(1 for n in names if n.split(".", 1)[0] == module)
        if count == 0:
            continue
        lr = SGD_BASE_LR * (1 if module.startswith("layer") else NEW_MODULE_LR_FACTOR)
        groups.append({
            "lr": lr, "initial_lr": lr, "momentum": SGD_MOMENTUM, "dampening": 0,
            "weight_decay": SGD_WEIGHT_DECAY, "nesterov": False,
            "params": list(range(index, index + count)),
        })
        index += count
    return groups


def semseg_checkpoint(
    layers: int = 50,
    classes: int = 150,
    seed: int = 0,
    module_prefix: bool = True,
    aux: bool = True,
    *,
    epoch: int = DEFAULT_EPOCH,
    num_batches_tracked: bool = True,
) -> dict:
    """The dict semseg's ``tool/train.py`` saves as ``train_epoch_<epoch>.pth``.

    ``{'epoch': int, 'state_dict': semseg_state_dict(...), 'optimizer': {'state': {}, 'param_groups': [...]}}``.
    The optimizer entry is a small plain dict shaped like ``torch.optim.SGD.state_dict()`` (8
    groups: layer0..4 at LR 0.01, ppm/cls/aux at 0.1; momentum buffers left out). ``module.`` is
    on by default: the released files were saved from a DDP / DataParallel-wrapped model.
    Save it with ``torch.save``; it loads with ``torch.load(..., weights_only=True)``.
    """
    state = semseg_state_dict(layers, classes, seed, module_prefix, aux, num_batches_tracked=num_batches_tracked)
    return {"epoch": epoch, "state_dict": state, "optimizer": {"state": {}, "param_groups": _param_groups(state)}}


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _bn(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    t = x.dtype
    return F.batch_norm(x, mean.to(t), var.to(t), weight.to(t), bias.to(t), training=False, eps=BN_EPS)


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


@torch.no_grad()
def semseg_reference_forward(state: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward of the official semseg PSPNet, from its state dict alone.

    Follows hszhao/semseg ``model/pspnet.py`` (deep-base ResNet, ``zoom_factor=8``): deep stem
    (3x3 s2, 3x3, 3x3, each BN + ReLU) and max-pool 3x3 s2 p1; bottlenecks with stride 2 on
    layer2's first **3x3** conv (and its downsample); every 3x3 of layer3 / layer4 dilated 2 / 4
    (padding = dilation, stride 1, downsample stride 1); PPM ``adaptive_avg_pool2d(bin)`` -> 1x1
    conv -> BN -> ReLU -> bilinear (align_corners=True) to the feature size, concatenated as
    ``[x, bin1, bin2, bin3, bin6]``; ``cls`` 3x3 conv -> BN -> ReLU -> (dropout: identity) -> 1x1
    conv + bias; bilinear (align_corners=True) upsampling of the logits. BN eps 1e-5. The aux
    head is not evaluated (eval mode).

    The official forward asserts ``(H - 1) % 8 == 0`` and upsamples to ``(H - 1) / 8 * 8 + 1``,
    i.e. exactly the input size; this reference upsamples to ``(H, W)`` for any size (identical
    for ``H = 8k + 1``).

    Args:
        state: the state dict (``module.`` prefixes allowed; ``aux.*`` ignored). Tensors are cast
            to ``x.dtype``, so a float64 ``x`` gives a float64 reference.
        x: (N, 3, H, W) RGB input normalised as semseg does:
            ``(pixel - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]``.

    Returns:
        (N, K, H, W) logits (no softmax).
    """
    sd = _strip_module(state)
    t = x.dtype

    def conv(h: torch.Tensor, key: str, stride: int = 1, padding: int = 0, dilation: int = 1) -> torch.Tensor:
        bias = sd.get(f"{key}.bias")
        return F.conv2d(h, sd[f"{key}.weight"].to(t), None if bias is None else bias.to(t),
                        stride=stride, padding=padding, dilation=dilation)

    def bn(h: torch.Tensor, key: str) -> torch.Tensor:
        return _bn(h, sd[f"{key}.weight"], sd[f"{key}.bias"], sd[f"{key}.running_mean"], sd[f"{key}.running_var"])

    size = (x.shape[2], x.shape[3])
    h = F.relu(bn(conv(x, "layer0.0", stride=2, padding=1), "layer0.1"))
    h = F.relu(bn(conv(h, "layer0.3", padding=1), "layer0.4"))
    h = F.relu(bn(conv(h, "layer0.6", padding=1), "layer0.7"))
    h = F.max_pool2d(h, kernel_size=3, stride=2, padding=1)
    blocks = [_count_blocks_stage(sd, stage + 1) for stage in range(4)]
    for stage, count in enumerate(blocks):
        dilation = DILATIONS[stage]
        for block in range(count):
            pre = f"layer{stage + 1}.{block}"
            stride = 2 if (stage == STRIDED_STAGE and block == 0) else 1
            out = F.relu(bn(conv(h, f"{pre}.conv1"), f"{pre}.bn1"))
            out = conv(out, f"{pre}.conv2", stride=stride, padding=dilation, dilation=dilation)
            out = F.relu(bn(out, f"{pre}.bn2"))
            out = bn(conv(out, f"{pre}.conv3"), f"{pre}.bn3")
            if f"{pre}.downsample.0.weight" in sd:
                shortcut = bn(conv(h, f"{pre}.downsample.0", stride=stride), f"{pre}.downsample.1")
            else:
                shortcut = h
            h = F.relu(out + shortcut)
    feature_size = (h.shape[2], h.shape[3])
    branches = [h]
    for i, bin_size in enumerate(BINS):
        pooled = F.adaptive_avg_pool2d(h, bin_size)
        pooled = F.relu(bn(conv(pooled, f"ppm.features.{i}.1"), f"ppm.features.{i}.2"))
        branches.append(_upsample(pooled, feature_size))
    h = torch.cat(branches, dim=1)
    h = F.relu(bn(conv(h, "cls.0", padding=1), "cls.1"))
    h = conv(h, "cls.4")
    return _upsample(h, size)


def _count_blocks_stage(sd: Mapping[str, object], stage: int) -> int:
    block = 0
    while f"layer{stage}.{block}.conv1.weight" in sd:
        block += 1
    return block


# =============================================================================================
# Caffe / Keras port (.h5)
# =============================================================================================


def _keras_weight_layers(layers: int, classes: int) -> Iterator[tuple[str, str, tuple[int, ...], str]]:
    """Yield ``(layer name, kind, shape, role)`` for every layer with weights, in model order.

    kind ``conv`` (shape = Keras kernel (kh, kw, in, out)), ``conv_bias`` (same, plus a bias) or
    ``bn`` (shape (C,)). Names follow layers_builder.py (= the Caffe names with ``/bn`` -> ``_bn``).
    """
    stem_in = 3
    for name, width in zip(("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3"), STEM_WIDTHS):
        yield name, "conv", (3, 3, stem_in, width), "pixels" if stem_in == 3 else "plain"
        yield f"{name}_bn", "bn", (width,), "plain"
        stem_in = width
    inplanes = STEM_WIDTHS[-1]
    for stage, (blocks, planes) in enumerate(zip(_check_layers(layers), PLANES)):
        level = stage + 2
        for block in range(1, blocks + 1):
            pre = f"conv{level}_{block}"
            yield f"{pre}_1x1_reduce", "conv", (1, 1, inplanes, planes), "plain"
            yield f"{pre}_1x1_reduce_bn", "bn", (planes,), "plain"
            yield f"{pre}_3x3", "conv", (3, 3, planes, planes), "plain"
            yield f"{pre}_3x3_bn", "bn", (planes,), "plain"
            yield f"{pre}_1x1_increase", "conv", (1, 1, planes, planes * EXPANSION), "residual"
            yield f"{pre}_1x1_increase_bn", "bn", (planes * EXPANSION,), "plain"
            if block == 1:
                yield f"{pre}_1x1_proj", "conv", (1, 1, inplanes, planes * EXPANSION), "plain"
                yield f"{pre}_1x1_proj_bn", "bn", (planes * EXPANSION,), "plain"
            inplanes = planes * EXPANSION
    for bin_size in BINS:  # interp_block(res, 1), (2), (3), (6) are built in this order
        yield f"conv5_3_pool{bin_size}_conv", "conv", (1, 1, FEATURES, PPM_WIDTH), "plain"
        yield f"conv5_3_pool{bin_size}_conv_bn", "bn", (PPM_WIDTH,), "plain"
    yield "conv5_4", "conv", (3, 3, FEATURES + len(BINS) * PPM_WIDTH, HEAD_WIDTH), "plain"
    yield "conv5_4_bn", "bn", (HEAD_WIDTH,), "plain"
    yield "conv6", "conv_bias", (1, 1, HEAD_WIDTH, classes), "classifier"


class _AutoNames:
    """Keras's default names for unnamed layers: ``<snake_case class>_<n>`` counted per class."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, prefix: str) -> str:
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        return f"{prefix}_{self.counts[prefix]}"


def _keras_all_layer_names(layers: int) -> list[str]:
    """Every layer name of the port's model in construction order (weightless layers included).

    Mirrors layers_builder.build_pspnet as released in 2017 (Interp as ``Lambda`` layers). Keras
    itself lists ``model.layers`` in a topological order that may interleave parallel branches
    differently; converters must go by name.
    """
    auto = _AutoNames()
    names = [auto("input")]
    for conv in ("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3"):
        names += [conv, f"{conv}_bn", auto("activation")]
    names.append(auto("max_pooling2d"))
    for stage, blocks in enumerate(_check_layers(layers)):
        level = stage + 2
        for block in range(1, blocks + 1):
            pre = f"conv{level}_{block}"
            names.append(auto("activation"))
            names += [f"{pre}_1x1_reduce", f"{pre}_1x1_reduce_bn", auto("activation"), auto("zero_padding2d"),
                      f"{pre}_3x3", f"{pre}_3x3_bn", auto("activation"), f"{pre}_1x1_increase",
                      f"{pre}_1x1_increase_bn"]
            if block == 1:
                names += [f"{pre}_1x1_proj", f"{pre}_1x1_proj_bn"]
            names.append(auto("add"))
    names.append(auto("activation"))
    for bin_size in BINS:
        names += [auto("average_pooling2d"), f"conv5_3_pool{bin_size}_conv", f"conv5_3_pool{bin_size}_conv_bn",
                  auto("activation"), auto("lambda")]
    names += [auto("concatenate"), "conv5_4", "conv5_4_bn", auto("activation"), auto("dropout"), "conv6",
              auto("lambda"), auto("activation")]
    return names


def keras_reference_weights(layers: int = 50, classes: int = 150, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random well-conditioned weights of the Keras port, by layer name and role.

    ``{layer: {"kernel": (kh, kw, in, out)[, "bias": (out,)]}}`` for convs and
    ``{layer: {"gamma", "beta", "mean", "var": (C,)}}`` for BN layers; float32. The first conv's
    kernel is scaled for raw (mean-subtracted 0..255) pixels. Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, kind, shape, role in _keras_weight_layers(layers, classes):
        if kind == "bn":
            bn = _random_bn(rng, shape[0])
            out[name] = {
                "gamma": bn["weight"], "beta": bn["bias"], "mean": bn["running_mean"], "var": bn["running_var"]
            }
            continue
        kh, kw, cin, cout = shape
        kernel = _random_conv(rng, (cout, cin, kh, kw), role).transpose(2, 3, 1, 0)
        out[name] = {"kernel": np.ascontiguousarray(kernel)}
        if kind == "conv_bias":
            out[name]["bias"] = rng.uniform(-CLASSIFIER_BIAS, CLASSIFIER_BIAS, cout).astype(np.float32)
    return out


def _keras_weight_name(layer: str, role: str, style: str) -> str:
    return f"{layer}{KERAS_SEPARATOR[style]}{KERAS_ROLE_NAMES[style][role]}:0"


def write_keras_h5(
    path: str | Path,
    layers: int = 50,
    classes: int = 150,
    seed: int = 0,
    style: str = "keras2",
    model_weights_group: bool = False,
) -> dict[str, np.ndarray]:
    """Write random weights in the layout of the Keras port's released ``pspnet*.h5`` files.

    Layout (Keras ``save_weights``; released files: Keras 2 names, no ``model_weights`` group):

    - root attrs ``layer_names`` (bytes, every layer of the model incl. weightless ones such as
      ``activation_1``, ``zero_padding2d_1``, ``add_1``, ``lambda_1``), ``backend``, ``keras_version``;
    - one group per layer, attr ``weight_names`` (bytes; empty for weightless layers), and one
      float32 dataset per weight at ``<layer>/<weight name>``. Keras 2 names
      (``style="keras2"``): ``conv1_1_3x3_s2/kernel:0``, ``conv6/bias:0``, ``<bn>/gamma:0``,
      ``beta:0``, ``moving_mean:0``, ``moving_variance:0`` (the ``/`` nests a subgroup, so the
      dataset path is ``conv1_1_3x3_s2/conv1_1_3x3_s2/kernel:0``). Keras 1 names
      (``style="keras1"``; NOT used by the released files, offered for robustness tests):
      ``<layer>_W:0``, ``_b:0``, ``_gamma:0``, ``_beta:0``, ``_running_mean:0``, ``_running_std:0``
      (the latter holding the variance);
    - ``model_weights_group=True`` nests all of it under ``model_weights`` as ``model.save`` does
      (root attrs ``keras_version``, ``backend``, a minimal ``model_config``).

    Kernels are (kh, kw, in, out); BN vectors (C,); ``conv6`` alone has a bias. No aux branch.
    50 layers: [3, 4, 6, 3] blocks; 101: [3, 4, 23, 3].

    Returns:
        ``{weight name: array}`` with the names as listed in ``weight_names`` (e.g.
        ``"conv1_1_3x3_s2/kernel:0"``); :func:`keras_reference_forward` accepts this dict.
    """
    if style not in KERAS_ROLE_NAMES:
        raise ValueError(f"style must be one of {sorted(KERAS_ROLE_NAMES)}, got {style!r}")
    by_layer = keras_reference_weights(layers, classes, seed)
    flat: dict[str, np.ndarray] = {}
    with h5py.File(path, "w") as f:
        if model_weights_group:
            f.attrs["keras_version"] = KERAS_VERSION[style].encode("utf8")
            f.attrs["backend"] = KERAS_BACKEND.encode("utf8")
            config = {"class_name": "Model", "config": {"name": f"pspnet{layers}", "layers": []}}
            f.attrs["model_config"] = json.dumps(config).encode("utf8")
            root = f.create_group("model_weights")
        else:
            root = f
        names = _keras_all_layer_names(layers)
        root.attrs["layer_names"] = np.array([n.encode("utf8") for n in names])
        root.attrs["backend"] = KERAS_BACKEND.encode("utf8")
        root.attrs["keras_version"] = KERAS_VERSION[style].encode("utf8")
        for layer in names:
            group = root.create_group(layer)
            roles = by_layer.get(layer, {})
            weight_names = [_keras_weight_name(layer, role, style) for role in roles]
            group.attrs["weight_names"] = (
                np.array([n.encode("utf8") for n in weight_names]) if weight_names else np.zeros((0,), dtype="S1")
            )
            for weight_name, value in zip(weight_names, roles.values()):
                group.create_dataset(weight_name, data=value)
                flat[weight_name] = value
    return flat


def _role_of(weight_name: str) -> tuple[str, str]:
    """Split a Keras weight name (either style) into ``(layer, role)``."""
    base = weight_name.removesuffix(":0")
    for style in ("keras2", "keras1"):
        sep = KERAS_SEPARATOR[style]
        for role, suffix in KERAS_ROLE_NAMES[style].items():
            if base.endswith(sep + suffix):
                return base[: -len(sep + suffix)], role
    raise ValueError(f"unrecognised Keras weight name {weight_name!r}")


def read_keras_h5(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read a Keras ``save_weights`` / ``model.save`` h5 into ``{layer: {role: array}}``.

    Goes through ``layer_names`` / ``weight_names`` as Keras does; the role comes from the weight
    name's suffix (Keras 2 or Keras 1 style). Weightless layers are skipped.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        for raw in root.attrs["layer_names"]:
            layer = raw.decode("utf8") if isinstance(raw, bytes) else str(raw)
            group = root[layer]
            for wraw in group.attrs.get("weight_names", []):
                weight_name = wraw.decode("utf8") if isinstance(wraw, bytes) else str(wraw)
                _, role = _role_of(weight_name)  # the group, not the variable's prefix, names the layer
                out.setdefault(layer, {})[role] = np.asarray(group[weight_name])
    return out


def _keras_by_layer(weights: Mapping[str, np.ndarray] | Mapping[str, Mapping[str, np.ndarray]] | str | Path
                    ) -> dict[str, dict[str, np.ndarray]]:
    if isinstance(weights, (str, Path)):
        return read_keras_h5(weights)
    first = next(iter(weights.values()))
    if isinstance(first, Mapping):  # already {layer: {role: array}}
        return {k: dict(v) for k, v in weights.items()}  # type: ignore[arg-type]
    out: dict[str, dict[str, np.ndarray]] = {}
    for weight_name, value in weights.items():
        layer, role = _role_of(weight_name)
        out.setdefault(layer, {})[role] = np.asarray(value)
    return out


def _tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def caffe_input(image: np.ndarray) -> np.ndarray:
    """The Keras port's preprocessing: ``(image - DATA_MEAN)[..., ::-1]`` as float32 (RGB -> BGR).

    ``image``: uint8 RGB (N, H, W, 3) or (H, W, 3). Mean ``[123.68, 116.779, 103.939]`` (RGB order),
    no division by a std (0..255 scale).
    """
    return (image.astype(np.float64) - np.asarray(CAFFE_MEAN_RGB))[..., ::-1].astype(np.float32)


@torch.no_grad()
def keras_reference_forward(
    weights: Mapping[str, np.ndarray] | Mapping[str, Mapping[str, np.ndarray]] | str | Path,
    image: np.ndarray,
    layers: int = 50,
    *,
    conv3_stride: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Forward of the original Caffe PSPNet as the Keras port runs it, from the port's weights.

    Semantics (hszhao/PSPNet deploy prototxts; Keras layers_builder.py / pspnet.py):

    - input: uint8 RGB minus ``[123.68, 116.779, 103.939]``, channels reversed to **BGR**, 0..255
      scale (:func:`caffe_input`);
    - stem: conv1_1_3x3_s2 (stride 2), conv1_2_3x3, conv1_3_3x3 with TF SAME padding, each BN +
      ReLU; max-pool 3x3 s2 SAME (padding -inf). For H, W with H and ceil(H/2) odd (473, 713,
      41, 49, ...) this is Caffe's symmetric pad 1; for other sizes TF SAME is asymmetric (the
      port), which differs from Caffe and semseg;
    - bottlenecks ``convL_B_{1x1_reduce, 3x3, 1x1_increase}`` (+ ``_1x1_proj`` in block 1) with
      BN after each conv, ReLU after reduce / 3x3 / the sum; 3x3 convs padded = dilation, dilation
      2 in conv4_x and 4 in conv5_x; conv3_1's stride 2 on ``conv3_1_1x1_reduce`` (PSPNet50;
      also what the Keras port does for 101) or on ``conv3_1_3x3`` with pad 1 (the Caffe
      PSPNet101 prototxts). ``conv3_stride``: ``None`` = the Caffe network's placement
      (``"reduce"`` for 50, ``"3x3"`` for 101); ``"reduce"`` / ``"3x3"`` force one;
    - pyramid pooling: average pooling with kernel = stride = feature side / bin for bins 1, 2, 3, 6
      (the port's fixed 60/30/20/10 at 473 and 90/45/30/15 at 713, generalised), 1x1 conv, BN,
      ReLU, bilinear align_corners=True back to the feature size; concatenated
      **[x, pool6, pool3, pool2, pool1]**;
    - head: conv5_4 3x3 (pad 1), BN, ReLU, dropout (identity), conv6 1x1 + bias, bilinear
      align_corners=True to the input size. BN eps 1e-5 everywhere.

    The feature map is ``ceil(H / 8) x ceil(W / 8)`` and each side must be divisible by 6 (every
    bin), e.g. H = 41: 41 -> 21 (conv1_1) -> 11 (pool1) -> 6 (conv3_1) and 6 / (1, 2, 3, 6) =
    (6, 3, 2, 1); 473 -> 237 -> 119 -> 60; 713 -> 357 -> 179 -> 90. Otherwise ``ValueError``.

    Returns the **logits** (the port's model ends with a softmax; apply ``softmax(dim=1)`` to get
    its output).

    Args:
        weights: the dict :func:`write_keras_h5` returns, ``{layer: {role: array}}``, or an h5 path.
        image: uint8 RGB images (N, H, W, 3).
        layers: 50 or 101 (selects the default stride placement; block counts must match).
        conv3_stride: see above.
        dtype: computation dtype (float64 for a tight reference).

    Returns:
        (N, K, H, W) logits.
    """
    blocks_expected = _check_layers(layers)
    if conv3_stride is None:
        conv3_stride = "reduce" if layers == 50 else "3x3"
    if conv3_stride not in ("reduce", "3x3"):
        raise ValueError(f"conv3_stride must be 'reduce' or '3x3', got {conv3_stride!r}")
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be (N, H, W, 3) uint8 RGB, got shape {image.shape}")
    w = _keras_by_layer(weights)
    blocks = []
    for level in range(2, 6):
        count = 0
        while f"conv{level}_{count + 1}_1x1_reduce" in w:
            count += 1
        blocks.append(count)
    if tuple(blocks) != blocks_expected:
        raise ValueError(f"weights hold {blocks} blocks per stage, PSPNet{layers} has {list(blocks_expected)}")

    def conv(h: torch.Tensor, name: str, stride: int = 1, padding: int = 0, dilation: int = 1) -> torch.Tensor:
        kernel = torch.from_numpy(w[name]["kernel"]).permute(3, 2, 0, 1).to(dtype).contiguous()
        bias = w[name].get("bias")
        return F.conv2d(h, kernel, None if bias is None else torch.from_numpy(bias).to(dtype),
                        stride=stride, padding=padding, dilation=dilation)

    def bn(h: torch.Tensor, name: str) -> torch.Tensor:
        p = {k: torch.from_numpy(v) for k, v in w[name].items()}
        return _bn(h, p["gamma"], p["beta"], p["mean"], p["var"])

    def same_pad(h: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
        top, bottom = _tf_same_pad(h.shape[2], kernel, stride)
        left, right = _tf_same_pad(h.shape[3], kernel, stride)
        return F.pad(h, (left, right, top, bottom), value=value)

    size = (image.shape[1], image.shape[2])
    h = torch.from_numpy(np.ascontiguousarray(caffe_input(image).transpose(0, 3, 1, 2))).to(dtype)
    h = F.relu(bn(conv(same_pad(h, 3, 2), "conv1_1_3x3_s2", stride=2), "conv1_1_3x3_s2_bn"))
    h = F.relu(bn(conv(same_pad(h, 3, 1), "conv1_2_3x3"), "conv1_2_3x3_bn"))
    h = F.relu(bn(conv(same_pad(h, 3, 1), "conv1_3_3x3"), "conv1_3_3x3_bn"))
    h = F.max_pool2d(same_pad(h, 3, 2, value=-math.inf), kernel_size=3, stride=2)
    for stage, count in enumerate(blocks):
        level, dilation = stage + 2, DILATIONS[stage]
        for block in range(1, count + 1):
            pre = f"conv{level}_{block}"
            strided = stage == STRIDED_STAGE and block == 1
            s_reduce = 2 if strided and conv3_stride == "reduce" else 1
            s_3x3 = 2 if strided and conv3_stride == "3x3" else 1
            x_in = F.relu(h)  # residual_short / residual_empty start with a ReLU (no-op after one)
            out = F.relu(bn(conv(x_in, f"{pre}_1x1_reduce", stride=s_reduce), f"{pre}_1x1_reduce_bn"))
            out = conv(out, f"{pre}_3x3", stride=s_3x3, padding=dilation, dilation=dilation)
            out = F.relu(bn(out, f"{pre}_3x3_bn"))
            out = bn(conv(out, f"{pre}_1x1_increase"), f"{pre}_1x1_increase_bn")
            if f"{pre}_1x1_proj" in w:
                shortcut = bn(conv(x_in, f"{pre}_1x1_proj", stride=2 if strided else 1), f"{pre}_1x1_proj_bn")
            else:
                shortcut = x_in
            h = out + shortcut
    h = F.relu(h)
    fh, fw = h.shape[2], h.shape[3]
    if fh % BINS[-1] or fw % BINS[-1]:
        raise ValueError(
            f"feature map {fh}x{fw} (input {size[0]}x{size[1]}): each side must be divisible by "
            f"{BINS[-1]} for the fixed average-pool kernels (e.g. 41, 473 or 713 pixels)"
        )
    pooled = {}
    for bin_size in BINS:
        kernel = (fh // bin_size, fw // bin_size)
        p = F.avg_pool2d(h, kernel_size=kernel, stride=kernel)
        p = F.relu(bn(conv(p, f"conv5_3_pool{bin_size}_conv"), f"conv5_3_pool{bin_size}_conv_bn"))
        pooled[bin_size] = _upsample(p, (fh, fw))
    h = torch.cat([h] + [pooled[b] for b in reversed(BINS)], dim=1)
    h = F.relu(bn(conv(h, "conv5_4", padding=1), "conv5_4_bn"))
    h = conv(h, "conv6")
    return _upsample(h, size)
