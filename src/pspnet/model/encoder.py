"""Dilated ResNet encoder: segmentation_models_pytorch's ResNet with strides traded for dilation.

At ``output_stride=8`` layer3 / layer4 are dilated 2 / 4, first block included, as in the
official PSPNet code; the feature map is ``ceil(H / 8) x ceil(W / 8)``. Stems: ``standard``
(torchvision's 7x7 conv) or ``deep`` (the official three 3x3 convs, official module names).
``block_stride`` puts a downsampling block's stride on its 3x3 or its first 1x1 conv. Returns
the layer3 (aux head input) and layer4 (PPM input) feature maps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pspnet.config import resolve_stem
from pspnet.errors import ConfigError, PspnetError

#: Stem names: the official PSPNet's three 3x3 convs, or torchvision's single 7x7 conv.
STEMS = ("deep", "standard")
#: Widths of the deep stem's three convs (3 -> 64 -> 64 -> 128), as in the official code.
DEEP_STEM_WIDTHS = (64, 64, 128)

#: (layer3 channels, layer4 channels) of each supported ResNet.
ENCODER_CHANNELS: dict[str, tuple[int, int]] = {
    "resnet18": (256, 512),
    "resnet34": (256, 512),
    "resnet50": (1024, 2048),
    "resnet101": (1024, 2048),
    "resnet152": (1024, 2048),
}

#: Which conv of a downsampling bottleneck block strides (see :class:`ResNetEncoder`).
BLOCK_STRIDES = ("3x3", "1x1")

#: The ``format`` entry of a pspnet checkpoint (``pspnet.model.checkpoint``; not imported from
#: there, which imports this module) and the key prefix of its encoder.
PSPNET_CHECKPOINT_FORMAT = "pspnet-checkpoint"
ENCODER_PREFIX = "encoder."

#: Named weights that smp downloads from the Hugging Face hub (needs internet).
_NAMED_WEIGHTS = ("imagenet", "ssl", "swsl")


class ResNetEncoder(nn.Module):
    """A (dilated) ResNet returning its layer3 and layer4 feature maps.

    Args:
        name: ``resnet18`` ... ``resnet152``.
        output_stride: 8 (layer3 and layer4 dilated, the paper's setting), 16 (layer4
            dilated) or 32 (no dilation).
        weights: ``"none"`` for random initialisation, a named smp weight set
            (``"imagenet"``; downloaded, needs internet; standard stem only) or the path of a
            local ResNet state dict (torchvision / smp / official key names; ``fc.*`` dropped).
        stem: ``"deep"`` (official three 3x3 convs), ``"standard"`` (torchvision 7x7) or
            ``"auto"`` (deep for ResNet-50 and deeper, standard for 18/34).
        block_stride: ``"3x3"`` (default) or ``"1x1"``: the conv of a downsampling bottleneck
            block that carries its stride (``1x1`` for ResNet-50 and deeper only).

    Attributes:
        aux_channels: channels of the layer3 features (256 for ResNet-18/34, 1024 for 50+).
        out_channels: channels of the layer4 features (512 for ResNet-18/34, 2048 for 50+).
        output_stride: the encoder's total downsampling factor.
    """

    def __init__(
        self,
        name: str = "resnet50",
        output_stride: int = 8,
        weights: str = "none",
        stem: str = "auto",
        block_stride: str = "3x3",
    ) -> None:
        super().__init__()
        if name not in ENCODER_CHANNELS:
            raise ConfigError(f"model.encoder: unknown encoder {name!r}; accepted: {', '.join(ENCODER_CHANNELS)}.")
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"model.output_stride: must be 8, 16 or 32, got {output_stride}.")
        stem = resolve_stem(name, stem)
        if stem not in STEMS:
            raise ConfigError(f"model.stem: unknown stem {stem!r}; accepted: {', '.join(STEMS)}.")
        if stem == "deep" and weights in _NAMED_WEIGHTS:
            raise ConfigError(
                f"model.encoder_weights={weights!r} with model.stem='deep': segmentation-models-pytorch "
                "publishes these weights for the standard 7x7 stem only. Set model.stem: standard, or "
                "give the path of a local deep-stem ResNet state dict (e.g. the official PSPNet "
                "ImageNet initialisation, resnet50_v2.pth)."
            )
        if block_stride not in BLOCK_STRIDES:
            raise ConfigError(f"model.block_stride: unknown value {block_stride!r}; accepted: {', '.join(BLOCK_STRIDES)}.")
        self.name = name
        self.output_stride = output_stride
        self.stem = stem
        self.block_stride = block_stride
        self.aux_channels, self.out_channels = ENCODER_CHANNELS[name]
        body, source_stride = _build_smp_resnet(name, output_stride, weights if stem == "standard" else "none")
        if stem == "deep":
            _make_deep_stem(body)
            if weights != "none":
                source_stride = load_encoder_state(body, Path(weights))
        if source_stride not in (None, block_stride):
            raise ConfigError(
                f"model.encoder_weights={weights!r} comes from a model whose downsampling blocks stride on "
                f"their {source_stride} conv, but model.block_stride is {block_stride!r}: the weights would "
                f"run in another network. Set model.block_stride: {source_stride}."
            )
        if block_stride == "1x1":
            _stride_on_first_conv(body, name)
        self.body = body

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        x = b.relu(b.bn1(b.conv1(x)))
        if self.stem == "deep":
            x = b.relu(b.bn2(b.conv2(x)))
            x = b.relu(b.bn3(b.conv3(x)))
        return b.maxpool(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N,3,H,W) -> ``(layer3 (N,aux_channels,h,w), layer4 (N,out_channels,h,w))``.

        At output stride 8 and 16 both maps are ``ceil(H / os) x ceil(W / os)`` (the conv /
        pool arithmetic rounds up at each stride-2 step); at 32 layer3 is at stride 16.
        """
        b = self.body
        x = self._stem(x)
        x = b.layer1(x)
        x = b.layer2(x)
        c3 = b.layer3(x)
        c4 = b.layer4(c3)
        return c3, c4


def _build_smp_resnet(name: str, output_stride: int, weights: str) -> tuple[nn.Module, str | None]:
    """The smp ResNet and, for weights from a pspnet checkpoint, its ``block_stride``."""
    from segmentation_models_pytorch.encoders import get_encoder

    if weights in _NAMED_WEIGHTS:
        try:
            return get_encoder(name, in_channels=3, depth=5, weights=weights, output_stride=output_stride), None
        except Exception as err:  # network, hub or key errors: all mean "no weights"
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise PspnetError(
                f"model.encoder_weights={weights!r}: could not obtain the pretrained {name} weights "
                f"({first_line}). segmentation-models-pytorch downloads them from the Hugging Face hub, "
                "which needs internet (or a Hugging Face cache that already holds them, see HF_HOME). "
                "Offline, set model.encoder_weights to 'none' or to the path of a local ResNet state dict."
            ) from None
    encoder = get_encoder(name, in_channels=3, depth=5, weights=None, output_stride=output_stride)
    source_stride = load_encoder_state(encoder, Path(weights)) if weights != "none" else None
    return encoder, source_stride


def _stride_on_first_conv(body: nn.Module, name: str) -> None:
    """Move the stride of every downsampling bottleneck block from its 3x3 conv to its first 1x1
    conv (the original ResNet / Caffe layout). Output sizes are unchanged: a stride-2 1x1 conv
    and a stride-2 padded 3x3 conv both give ``ceil(side / 2)``."""
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        for block in getattr(body, layer_name):
            if not hasattr(block, "conv3"):
                raise ConfigError(
                    f"model.block_stride='1x1' needs bottleneck blocks (ResNet-50 and deeper); {name} has "
                    "basic blocks without a 1x1 conv. Set model.block_stride: 3x3."
                )
            if block.conv2.stride != (1, 1):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


def _init_like_torchvision(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs and unit BatchNorm, as torchvision initialises a ResNet."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _make_deep_stem(body: nn.Module) -> None:
    """Turn an smp (torchvision) ResNet's 7x7 stem into the official three-conv deep stem.

    ``conv1`` becomes a 3x3 stride-2 conv 3->64 and ``conv2`` / ``conv3`` (64->64, 64->128) with
    ``bn2`` / ``bn3`` are added; layer1 is rebuilt for its wider (128-channel) input, which
    gives its first block a projection shortcut. Dilation lives in layer3/4 and is untouched.
    """
    w1, w2, w3 = DEEP_STEM_WIDTHS
    body.conv1 = nn.Conv2d(3, w1, kernel_size=3, stride=2, padding=1, bias=False)
    body.bn1 = nn.BatchNorm2d(w1)
    body.conv2 = nn.Conv2d(w1, w2, kernel_size=3, stride=1, padding=1, bias=False)
    body.bn2 = nn.BatchNorm2d(w2)
    body.conv3 = nn.Conv2d(w2, w3, kernel_size=3, stride=1, padding=1, bias=False)
    body.bn3 = nn.BatchNorm2d(w3)
    block = type(body.layer1[0])
    body.inplanes = w3
    body.layer1 = body._make_layer(block, DEEP_STEM_WIDTHS[0], len(body.layer1))
    for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1"):
        _init_like_torchvision(getattr(body, name))


def load_encoder_state(encoder: nn.Module, path: Path) -> str | None:
    """Load a local ResNet state dict into an smp ResNet encoder (strict, ``fc.*`` dropped).

    Accepts a plain state dict, or a dict holding it under ``state_dict`` / ``model``; key
    prefixes ``module.`` (DataParallel), ``encoder.`` (smp models) and ``body.`` (this
    module) are stripped. A pspnet checkpoint (``pspnet train`` or ``pspnet import-weights``,
    e.g. the authors' ADE20K model) gives its encoder, and its ``model.block_stride`` is
    returned (``None`` for other files) for the caller to check. Missing and unexpected keys
    are named in the error.
    """
    if not path.is_file():
        raise ConfigError(
            f"model.encoder_weights: {str(path)!r} is neither 'none', one of {list(_NAMED_WEIGHTS)} "
            "nor an existing state-dict file."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PspnetError(f"{path}: not a loadable PyTorch state dict ({err}).") from None
    source_stride = None
    if isinstance(state, dict):
        whole_model = state.get("format") == PSPNET_CHECKPOINT_FORMAT
        if whole_model and isinstance(state.get("model_cfg"), dict):
            source_stride = str(state["model_cfg"].get("block_stride", BLOCK_STRIDES[0]))
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
        if whole_model:  # a pspnet checkpoint (trained or imported): its encoder only
            state = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PspnetError(f"{path}: expected a mapping of parameter names to tensors (a ResNet state dict).")
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "encoder.", "body."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if not key.startswith("fc."):
            cleaned[key] = value
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(cleaned) if expected[k].shape != cleaned[k].shape)
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"missing keys {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_listing(unexpected)}")
        if misshaped:
            shapes = [f"{k} {tuple(cleaned[k].shape)} vs {tuple(expected[k].shape)}" for k in misshaped]
            problems.append(f"shape mismatches (file vs encoder) {_listing(shapes)}")
        raise PspnetError(
            f"{path}: the state dict does not fit a {_describe(encoder)} encoder: {'; '.join(problems)}. "
            "Check model.encoder and model.stem against the file, or use another file."
        )
    # nn.Module.load_state_dict directly: smp's override mutates its argument.
    nn.Module.load_state_dict(encoder, cleaned, strict=True)
    return source_stride


#: How many keys an error message lists before summarising the rest.
MAX_KEYS_LISTED = 10


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_LISTED])
    more = len(keys) - MAX_KEYS_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


def _describe(encoder: nn.Module) -> str:
    stem = "deep-stem" if hasattr(encoder, "conv3") else "standard-stem"
    depth = sum(len(getattr(encoder, f"layer{i}")) for i in range(1, 5))
    return f"{stem} ResNet ({depth} blocks)"
