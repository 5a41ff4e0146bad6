"""Convert the authors' released PSPNet weights into this project's model.

Two release formats are read:

- ``semseg``: a checkpoint of the official PyTorch code (hszhao/semseg, ``train_epoch_*.pth``):
  ``{"epoch", "state_dict", "optimizer"}`` or a bare state dict, keys ``layer0.*`` (the deep
  stem as one ``nn.Sequential``: convs at 0 / 3 / 6, BatchNorms at 1 / 4 / 7), ``layer1..4.*``
  (torchvision bottleneck names), ``ppm.features.<i>.{1,2}.*``, ``cls.{0,1,4}.*``,
  ``aux.{0,1,4}.*``, often behind DDP's ``module.`` prefix. It is the same network as ours
  (stride on the 3x3 conv, RGB input normalised with the ImageNet mean / std): keys are
  renamed, nothing else changes.
- ``keras-h5``: the Caffe models as the Keras port ships them (``pspnet50_ade20k.h5``,
  ``pspnet101_voc2012.h5``, ``pspnet101_cityscapes.h5``): one HDF5 group per layer, named as
  in the Caffe prototxt (``conv1_1_3x3_s2``, ``conv3_1_1x1_reduce``, ``conv5_3_pool6_conv``,
  ``conv5_4``, ``conv6``, each BatchNorm as ``<conv>_bn``), written by Keras' ``save_weights``
  (Keras 2 ``kernel:0`` / ``gamma:0`` ... or Keras 1 ``<layer>_W:0`` ... names). What differs
  from our network, and how the conversion makes the outputs equal:

  * kernels are ``(kh, kw, in, out)``: transposed to ``(out, in, kh, kw)``;
  * the input is BGR with the mean subtracted and no std division: the first conv's input
    channels are reversed and the model records ``input_mean`` = the Caffe mean / 255 and
    ``input_std`` = 1 / 255, so our RGB pipeline feeds it exactly what Caffe fed it;
  * the PSPNet50 (ADE20K) strides on a block's first 1x1 conv (``model.block_stride: 1x1``),
    the PSPNet101 on its 3x3 conv, like ours;
  * the pyramid branches are concatenated coarse-to-fine after the features (bins 6, 3, 2, 1),
    ours fine-to-coarse (1, 2, 3, 6): the input channels of ``conv5_4`` are permuted;
  * BatchNorm epsilon: a source epsilon other than ours is folded into the running variance
    (``var + eps_src - eps_ours``), which gives the same normalisation exactly;
  * the released deploy nets have no auxiliary head: the model is built without one.

  The Caffe pyramid pooling uses fixed kernels sized for its crop (60 / 30 / 20 / 10 on the
  60x60 map of a 473 input, 90 / 45 / 30 / 15 at 713); our adaptive pooling is identical there
  and, like the official PyTorch code, adapts to other sizes.

Every source key is accounted for: a key no rule maps, a target the file does not fill, or a
shape that differs is named in the error. ``allow_partial=True`` loads what fits and leaves the
rest as initialised (reported in :attr:`Conversion.missing` / :attr:`Conversion.unmapped`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pspnet.config import ModelConfig
from pspnet.errors import PspnetError
from pspnet.model.encoder import BLOCK_STRIDES
from pspnet.model.pspnet import PSPNet, build_model

#: Release formats :func:`convert` reads.
FORMATS = ("semseg", "keras-h5")
#: Encoder depth by the number of blocks in layer3 (conv4_x): ResNet-50 / 101 / 152.
ENCODER_BY_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101", 36: "resnet152"}
#: The paper's pyramid (the official releases all use it).
OFFICIAL_BINS = (1, 2, 3, 6)
#: Order of the pyramid branches in the Caffe / Keras concatenation after the features.
CAFFE_CONCAT_BINS = (6, 3, 2, 1)
#: Caffe mean (RGB order, 0..255) the Caffe models subtract; they divide by nothing.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
#: Pixel scale of the model's normalisation fields (fractions of 255).
PIXEL_SCALE = 255.0
#: BatchNorm epsilon of the Keras port (its ``BatchNormalization(epsilon=...)``).
KERAS_BN_EPS = 1e-5
#: Stride placement of the Caffe releases by encoder: the PSPNet50 strides on the 1x1 conv.
CAFFE_BLOCK_STRIDE = {"resnet50": "1x1", "resnet101": "3x3", "resnet152": "3x3"}
#: Prefixes stripped from semseg keys (DataParallel / DDP).
SEMSEG_PREFIXES = ("module.",)
#: The first bytes of every HDF5 file (Keras ``.h5``).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
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


# --------------------------------------------------------------------------- semseg (PyTorch)

#: semseg ``layer0`` (deep stem Sequential) index -> our stem module.
_SEMSEG_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
#: semseg head Sequentials -> ours.
_SEMSEG_HEADS = {"cls": "head", "aux": "aux_head"}


def _semseg_target(key: str) -> str | None:
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


def _count_blocks(keys: list[str], pattern: str) -> int:
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


def _semseg_config(state: Mapping[str, torch.Tensor], source: str) -> tuple[ModelConfig, int]:
    keys = list(state)
    layer3 = _count_blocks(keys, r"layer3\.(\d+)\.")
    if layer3 not in ENCODER_BY_LAYER3_BLOCKS:
        raise PspnetError(
            f"{source}: found {layer3} blocks under 'layer3.*'; a PSPNet50 / 101 / 152 has "
            f"{' / '.join(map(str, ENCODER_BY_LAYER3_BLOCKS))}. Not an official PSPNet checkpoint (check --format)."
        )
    if "cls.4.weight" not in state:
        raise PspnetError(f"{source}: no classifier 'cls.4.weight'; not a semseg PSPNet checkpoint (check --format).")
    branches = _count_blocks(keys, r"ppm\.features\.(\d+)\.")
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


# --------------------------------------------------------------------------- Keras port (Caffe)

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


def _caffe_target(layer: str, blocks: Mapping[int, int]) -> str | None:
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


def _keras_tensor(target: str, param: str, array: np.ndarray, details: dict[str, Any]) -> torch.Tensor:
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


def _keras_config(layers: Mapping[str, Mapping[str, np.ndarray]], source: str, block_stride: str | None) -> tuple[ModelConfig, int, dict[int, int]]:
    names = list(layers)
    blocks = {level: _count_blocks(names, rf"conv{level}_(\d+)_1x1_reduce$") for level in (2, 3, 4, 5)}
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
        input_mean=tuple(m / PIXEL_SCALE for m in CAFFE_MEAN_RGB),
        input_std=(1 / PIXEL_SCALE,) * 3,
    )
    return cfg, int(np.shape(kernel)[-1]), blocks


# --------------------------------------------------------------------------- the conversion


def _fill(
    model: PSPNet,
    sources: dict[str, tuple[str, Callable[[], torch.Tensor]]],
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
    unmapped: list[str] = []
    sources: dict[str, tuple[str, Callable[[], torch.Tensor]]] = {}
    details: dict[str, Any] = {"format": fmt}
    if fmt == "semseg":
        state = semseg_state(_load_torch(path), str(path))
        cfg, classes = _semseg_config(state, str(path))
        if block_stride is not None:
            cfg = cfg.model_copy(update={"block_stride": block_stride})
        for key, value in state.items():
            target = _semseg_target(key)
            if target is None:
                unmapped.append(key)
            else:
                sources[target] = (key, lambda value=value: value)
    else:
        layers = read_keras_h5(path)
        cfg, classes, blocks = _keras_config(layers, str(path), block_stride)
        details["source_bn_eps"] = KERAS_BN_EPS
        for layer, params in layers.items():
            target = _caffe_target(layer, blocks)
            for param, array in params.items():
                ours = _KERAS_PARAMS.get(param)
                if target is None or ours is None:
                    unmapped.append(f"{layer}/{param}")
                    continue
                sources[f"{target}.{ours}"] = (
                    f"{layer}/{param}", lambda t=target, p=ours, a=array: _keras_tensor(t, p, a, details)
                )
    if num_classes is not None and num_classes != classes:
        classifier = "cls.4.weight" if fmt == "semseg" else "conv6/kernel"
        raise PspnetError(
            f"{path}: the classifier {classifier} has {classes} classes but the dataset has {num_classes}. "
            "Pick the --dataset the weights were trained on (ADE20K 150, VOC 21, Cityscapes 19)."
        )
    model = build_model(cfg, classes)
    if fmt == "keras-h5":  # read by the tensor thunks, which run in _fill
        details["pyramid_channels"] = model.ppm.reduction_channels
        details["model_bn_eps"] = model.head[1].eps
    missing = _fill(model, sources, unmapped, str(path), allow_partial)
    model.eval()
    details.update(encoder=cfg.encoder, block_stride=cfg.block_stride, aux_head=model.aux_head is not None)
    return Conversion(model, cfg, classes, unmapped=sorted(unmapped), missing=missing, details=details)


def _load_torch(path: Path) -> Any:
    """A ``.pth`` read with ``weights_only=True``: tensors and plain values only, no code runs."""
    import pickle

    from pspnet.model.checkpoint import WEIGHTS_ONLY_REFUSAL

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
