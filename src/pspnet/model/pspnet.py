"""PSPNet (Zhao et al., CVPR 2017): dilated ResNet + pyramid pooling module + head (+ aux head).

``encoder.layer4 -> PPM -> head`` gives the logits, ``encoder.layer3 -> aux head`` the deep
supervision (training mode only); both are upsampled to the input size. Head widths default
to the paper's proportions (layer4 / 4, layer3 / 4). Ablations: ``ppm=False`` (dilated-FCN
baseline), ``ppm_pooling="max"``, ``aux_weight=0`` (no aux head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.config import ModelConfig
from pspnet.model.encoder import ResNetEncoder
from pspnet.model.ppm import PyramidPoolingModule

#: Default head width = layer4 channels // this (2048 // 4 = 512 in the paper).
HEAD_WIDTH_DIVISOR = 4
#: Default aux-head width = layer3 channels // this (1024 // 4 = 256 in the paper).
AUX_WIDTH_DIVISOR = 4


class SegmentationHead(nn.Sequential):
    """``(N,C_in,h,w)`` -> 3x3 conv (no bias) + BN + ReLU + Dropout2d -> 1x1 conv -> ``(N,K,h,w)``."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=dropout),
            nn.Conv2d(mid_channels, num_classes, kernel_size=1),
        )


class PSPNet(nn.Module):
    """Pyramid scene parsing network.

    Args:
        encoder: a :class:`ResNetEncoder` (returns layer3 and layer4 features).
        ppm: the pyramid pooling module over the layer4 features, or ``None`` (the dilated-FCN
            baseline: the head reads layer4 directly).
        head: maps the PPM output to class logits at feature resolution.
        aux_head: maps layer3 features to class logits, or ``None`` (no deep supervision).

    ``forward(x)``, ``x`` float32 ``(N,3,H,W)`` already normalised:
        - eval mode: logits ``(N,K,H,W)``;
        - train mode: ``(logits, aux_logits)``, both ``(N,K,H,W)``; ``aux_logits`` is ``None``
          when there is no auxiliary head.
    """

    def __init__(
        self,
        encoder: ResNetEncoder,
        ppm: PyramidPoolingModule | None,
        head: nn.Module,
        aux_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.ppm = ppm
        self.head = head
        self.aux_head = aux_head

    @staticmethod
    def _upsample(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        size = x.shape[-2:]
        c3, c4 = self.encoder(x)
        features = self.ppm(c4) if self.ppm is not None else c4
        logits = self._upsample(self.head(features), size)
        if not self.training:
            return logits
        aux = self._upsample(self.aux_head(c3), size) if self.aux_head is not None else None
        return logits, aux

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the (pretrainable) encoder: trained at the base learning rate."""
        return list(self.encoder.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters of the layers the paper adds (PPM, head, aux head): 10x learning rate."""
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids]


def build_model(cfg: ModelConfig, num_classes: int) -> PSPNet:
    """Build the PSPNet that ``cfg`` describes, with ``num_classes`` output channels.

    ``cfg.encoder_weights`` is read here: a named set is downloaded, a local file loaded.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    encoder = ResNetEncoder(
        cfg.encoder,
        output_stride=cfg.output_stride,
        weights=cfg.encoder_weights,
        stem=cfg.resolved_stem,
        block_stride=cfg.block_stride,
    )
    ppm = None
    head_in = encoder.out_channels
    if cfg.ppm:
        ppm = PyramidPoolingModule(
            encoder.out_channels, bins=cfg.ppm_bins, reduction_channels=cfg.ppm_channels, pooling=cfg.ppm_pooling
        )
        head_in = ppm.out_channels
    head_channels = cfg.head_channels or max(1, encoder.out_channels // HEAD_WIDTH_DIVISOR)
    head = SegmentationHead(head_in, head_channels, num_classes, cfg.dropout)
    aux_head = None
    if cfg.aux_weight > 0:
        aux_channels = cfg.aux_channels or max(1, encoder.aux_channels // AUX_WIDTH_DIVISOR)
        aux_head = SegmentationHead(encoder.aux_channels, aux_channels, num_classes, cfg.dropout)
    return PSPNet(encoder, ppm, head, aux_head)


def count_parameters(module: nn.Module | None, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (only those that require grad with ``trainable_only``);
    0 for ``None``."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
