"""The registered artefact: a trained PSPNet wrapped to take raw RGB pixels.

What a consumer of the model registry gets is :class:`SegmentationModel`: it owns the input
normalisation (so callers never need to know the training statistics) and only the parts of
the network used at inference: the auxiliary head, a training-time device, is dropped so
its weights are not shipped.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


class SegmentationModel(nn.Module):
    """PSPNet for inference on raw images.

    Input: ``x`` float32 of shape ``(N, 3, H, W)``, RGB, values in ``0..255`` (any N, H, W).
    Output: logits float32 of shape ``(N, C, H, W)``, the same H and W as the input; the
    predicted class map is ``logits.argmax(1)``.

    ``mean`` and ``std`` are per-channel RGB statistics as fractions of 255 (as in
    :class:`pspnet.config.ModelConfig`); they are stored as buffers, so they travel with the
    weights. The wrapped network is deep-copied, put in eval mode and stripped of its
    auxiliary head (``aux_head = None``); the caller's model is left untouched.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        net = copy.deepcopy(model)
        if getattr(net, "aux_head", None) is not None:
            net.aux_head = None
        net.eval()
        self.net = net
        scale = 255.0
        self.register_buffer("mean", torch.tensor([m * scale for m in mean], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([s * scale for s in std], dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()

    def train(self, mode: bool = True) -> SegmentationModel:
        """The export wrapper is inference-only: the network always stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB in 0..255 -> logits ``(N, C, H, W)``."""
        x = (x - self.mean) / self.std
        return self.net(x)
