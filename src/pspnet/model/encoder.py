"""Dilated ResNet encoder: segmentation_models_pytorch's ResNet with strides traded for dilation.

With ``output_stride=8`` smp sets the stride of layer3 and layer4 to 1 and gives every conv
of layer3 dilation 2 and every conv of layer4 dilation 4, first block included, which is what
the official PSPNet code does (timm's ``tu-`` ResNets instead use dilation 1 / 2 in the first
block of each stage). A 473x473 input gives 60x60 features; any input size works, the feature
map is ``ceil(H / 8) x ceil(W / 8)``.

The encoder returns the two feature maps PSPNet uses: layer3 (input of the auxiliary head) and
layer4 (input of the pyramid pooling module).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pspnet.errors import ConfigError, PspnetError

#: (layer3 channels, layer4 channels) of each supported ResNet.
ENCODER_CHANNELS: dict[str, tuple[int, int]] = {
    "resnet18": (256, 512),
    "resnet34": (256, 512),
    "resnet50": (1024, 2048),
    "resnet101": (1024, 2048),
    "resnet152": (1024, 2048),
}

#: Named weights that smp downloads from the Hugging Face hub (needs internet).
_NAMED_WEIGHTS = ("imagenet", "ssl", "swsl")


class ResNetEncoder(nn.Module):
    """A (dilated) ResNet returning its layer3 and layer4 feature maps.

    Args:
        name: ``resnet18`` ... ``resnet152``.
        output_stride: 8 (layer3 and layer4 dilated, the paper's setting), 16 (layer4
            dilated) or 32 (no dilation).
        weights: ``"none"`` for random initialisation, a named smp weight set
            (``"imagenet"``; downloaded, needs internet) or the path of a local ResNet
            state dict (torchvision / smp key names; ``fc.*`` keys are dropped).

    Attributes:
        aux_channels: channels of the layer3 features (256 for ResNet-18/34, 1024 for 50+).
        out_channels: channels of the layer4 features (512 for ResNet-18/34, 2048 for 50+).
        output_stride: the encoder's total downsampling factor.
    """

    def __init__(self, name: str = "resnet50", output_stride: int = 8, weights: str = "none") -> None:
        super().__init__()
        if name not in ENCODER_CHANNELS:
            raise ConfigError(f"model.encoder: unknown encoder {name!r}; accepted: {', '.join(ENCODER_CHANNELS)}.")
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"model.output_stride: must be 8, 16 or 32, got {output_stride}.")
        self.name = name
        self.output_stride = output_stride
        self.aux_channels, self.out_channels = ENCODER_CHANNELS[name]
        self.body = _build_smp_resnet(name, output_stride, weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N,3,H,W) -> ``(layer3 (N,aux_channels,h,w), layer4 (N,out_channels,h,w))``.

        At output stride 8 and 16 both maps are ``ceil(H / os) x ceil(W / os)`` (the conv /
        pool arithmetic rounds up at each stride-2 step); at 32 layer3 is at stride 16.
        """
        b = self.body
        x = b.relu(b.bn1(b.conv1(x)))
        x = b.maxpool(x)
        x = b.layer1(x)
        x = b.layer2(x)
        c3 = b.layer3(x)
        c4 = b.layer4(c3)
        return c3, c4


def _build_smp_resnet(name: str, output_stride: int, weights: str) -> nn.Module:
    from segmentation_models_pytorch.encoders import get_encoder

    if weights in _NAMED_WEIGHTS:
        try:
            return get_encoder(name, in_channels=3, depth=5, weights=weights, output_stride=output_stride)
        except Exception as err:  # network, hub or key errors: all mean "no weights"
            raise PspnetError(
                f"model.encoder_weights={weights!r}: could not obtain the pretrained {name} weights ({err}). "
                "They are downloaded from the Hugging Face hub and need internet; offline, set "
                "model.encoder_weights to 'none' or to the path of a local ResNet state dict."
            ) from None
    encoder = get_encoder(name, in_channels=3, depth=5, weights=None, output_stride=output_stride)
    if weights != "none":
        load_encoder_state(encoder, Path(weights))
    return encoder


def load_encoder_state(encoder: nn.Module, path: Path) -> None:
    """Load a local ResNet state dict into an smp ResNet encoder (strict, ``fc.*`` dropped).

    Accepts a plain state dict, or a dict holding it under ``state_dict`` / ``model``; key
    prefixes ``module.`` (DataParallel) and ``encoder.`` (smp models) are stripped.
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
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PspnetError(f"{path}: expected a mapping of parameter names to tensors (a ResNet state dict).")
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "encoder."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if not key.startswith("fc."):
            cleaned[key] = value
    try:
        # nn.Module.load_state_dict directly: smp's override mutates its argument.
        nn.Module.load_state_dict(encoder, cleaned, strict=True)
    except RuntimeError as err:
        raise PspnetError(f"{path}: state dict does not fit the encoder: {err}") from None
