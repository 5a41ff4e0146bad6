"""Section ``model``: the network the paper describes and its switches."""

from __future__ import annotations

from typing import Literal

from pspnet.config.base import (
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Probability,
    StrictModel,
)

#: ResNets built from basic blocks; ``stem: auto`` keeps torchvision's stem for them.
SHALLOW_RESNETS = ("resnet18", "resnet34")


def resolve_stem(encoder: str, stem: str) -> str:
    """``stem`` with ``auto`` resolved: ``standard`` for :data:`SHALLOW_RESNETS`, else ``deep``."""
    if stem != "auto":
        return stem
    return "standard" if encoder in SHALLOW_RESNETS else "deep"


class ModelConfig(StrictModel):
    """PSPNet: dilated ResNet encoder + pyramid pooling module + head (+ auxiliary head)."""

    encoder: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet18"
    #: ``none`` (random init), ``imagenet`` (smp's weights, downloaded at the start of training;
    #: needs internet; standard stem only) or the path of a local ResNet state dict.
    encoder_weights: str = "none"
    #: ``deep``: the official three 3x3 convs (3->64->64->128); ``standard``: torchvision's 7x7
    #: conv; ``auto``: deep for ResNet-50/101/152 (the paper's networks), standard for 18/34.
    stem: Literal["auto", "deep", "standard"] = "auto"
    #: 8: layer3 and layer4 dilated (the paper); 16: only layer4 dilated (cheaper).
    output_stride: Literal[8, 16] = 8
    #: Which conv of a downsampling bottleneck block carries its stride: ``3x3`` (the official
    #: PyTorch code, torchvision, the Caffe PSPNet101) or ``1x1`` (its first 1x1 conv, as in the
    #: Caffe PSPNet50 for ADE20K; ``import-weights`` sets it for those weights). Same weights,
    #: other outputs. ResNet-18/34 (basic blocks) have no 1x1 conv: ``3x3`` only.
    block_stride: Literal["3x3", "1x1"] = "3x3"
    #: The pyramid pooling module; ``false`` gives the paper's dilated-FCN baseline (the head
    #: sits directly on the layer4 features).
    ppm: bool = True
    ppm_bins: tuple[PositiveInt, ...] = (1, 2, 3, 6)
    #: Pooling of the pyramid levels: ``avg`` (the paper's choice) or ``max`` (its ablation).
    ppm_pooling: Literal["avg", "max"] = "avg"
    #: Channels of each pyramid branch after its 1x1 conv; ``null``: layer4 channels / number of
    #: bins (the paper's dimension reduction: 2048 / 4 = 512).
    ppm_channels: PositiveInt | None = None
    #: Dropout2d before the classifier of the head and the auxiliary head (paper: 0.1).
    dropout: Probability = 0.1
    #: Weight of the auxiliary (stage-3 / layer3) loss; 0 turns deep supervision off.
    aux_weight: NonNegativeFloat = 0.4
    #: Width of the head's 3x3 conv; ``null``: layer4 channels / 4 (512 for ResNet-50+, as in
    #: the paper; 128 for ResNet-18/34), with or without the PPM.
    head_channels: PositiveInt | None = None
    #: Width of the auxiliary head's 3x3 conv; ``null``: layer3 channels / 4 (256 for
    #: ResNet-50+, as in the paper; 64 for ResNet-18/34).
    aux_channels: PositiveInt | None = None
    #: Per-channel RGB mean and std, as fractions of 255, subtracted / divided at the model's
    #: input (ImageNet statistics, which the encoders were pretrained with).
    input_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    input_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)

    @property
    def resolved_stem(self) -> str:
        """The stem ``auto`` stands for: deep for ResNet-50 and deeper, standard for 18/34."""
        return resolve_stem(self.encoder, self.stem)

