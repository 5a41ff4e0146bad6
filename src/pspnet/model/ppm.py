"""The pyramid pooling module (PPM), section 3.3 of the paper.

Each bin size ``b``: adaptive average pool to ``b x b``, bias-free 1x1 conv + BN + ReLU to
``in_channels / len(bins)`` channels, bilinear upsampling (``align_corners=True``, as the
official code) back; the branches are concatenated with the input (2048 -> 4096 channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


#: Pooling operators by name: the paper's default (average) and its "max" ablation (Table 1).
POOLING: dict[str, type[nn.Module]] = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}


class PoolingBranch(nn.Sequential):
    """One pyramid level: ``(N,C,h,w)`` -> adaptive pool ``(N,C,b,b)`` -> ``(N,R,b,b)``."""

    def __init__(self, in_channels: int, reduction_channels: int, bin_size: int, pooling: str = "avg") -> None:
        if pooling not in POOLING:
            raise ValueError(f"unknown pooling {pooling!r}; known: {sorted(POOLING)}")
        super().__init__(
            POOLING[pooling](bin_size),
            nn.Conv2d(in_channels, reduction_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(reduction_channels),
            nn.ReLU(inplace=True),
        )
        self.bin_size = bin_size


def bin_weights(size: torch.Tensor | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``(bins, size)`` membership of each position in each adaptive-pooling bin: bin ``i``
    covers ``[floor(i*size/bins), ceil((i+1)*size/bins))``, PyTorch's adaptive-pooling rule.

    Built from tensor ops on the size, so an exported graph keeps it symbolic (any size)."""
    index = torch.arange(bins, device=like.device).unsqueeze(1)
    starts = (index * size) // bins
    ends = ((index + 1) * size + bins - 1) // bins
    positions = torch.arange(size, device=like.device).unsqueeze(0)
    return ((positions >= starts) & (positions < ends)).to(like.dtype)


class ExactAdaptivePool2d(nn.Module):
    """Adaptive average / max pooling to ``b x b`` written as bin-membership matrices.

    The same numbers as ``nn.AdaptiveAvgPool2d`` / ``nn.AdaptiveMaxPool2d`` (avg: up to float
    rounding), but traceable with symbolic height and width: the ONNX exporter decomposes the
    built-in ops into index arithmetic fixed at the traced size. Training keeps the built-ins.

    Shapes: ``(N, C, h, w)`` -> ``(N, C, b, b)``.
    """

    def __init__(self, bin_size: int, pooling: str = "avg") -> None:
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"unknown pooling {pooling!r}; known: {sorted(POOLING)}")
        self.bin_size = int(bin_size)
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = bin_weights(x.shape[-2], self.bin_size, x)  # (b, h)
        cols = bin_weights(x.shape[-1], self.bin_size, x)  # (b, w)
        if self.pooling == "avg":
            rows = rows / rows.sum(1, keepdim=True)
            cols = cols / cols.sum(1, keepdim=True)
            return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))
        lowest = torch.finfo(x.dtype).min  # masked-out positions never win the max
        by_rows = (x.unsqueeze(2) + (1 - rows).unsqueeze(-1) * lowest).amax(dim=3)  # (N, C, b, w)
        return (by_rows.unsqueeze(3) + (1 - cols) * lowest).amax(dim=-1)  # (N, C, b, b)


def with_exact_pooling(module: nn.Module) -> nn.Module:
    """``module`` with every PPM branch's pooling swapped, in place, for :class:`ExactAdaptivePool2d`."""
    for branch in module.modules():
        if isinstance(branch, PoolingBranch):
            pooling = "max" if isinstance(branch[0], nn.AdaptiveMaxPool2d) else "avg"
            branch[0] = ExactAdaptivePool2d(branch.bin_size, pooling)
    return module


class PyramidPoolingModule(nn.Module):
    """Concatenate a feature map with its pooled, reduced and upsampled pyramid.

    Args:
        in_channels: channels ``C`` of the input feature map.
        bins: pooled output sizes, one branch each (paper: 1, 2, 3, 6).
        reduction_channels: channels ``R`` of each branch; default ``C // len(bins)`` (the
            paper's dimension reduction to 1/N).
        pooling: ``"avg"`` (the paper's choice) or ``"max"``.

    Shapes:
        ``(N, C, h, w)`` -> ``(N, C + len(bins) * R, h, w)`` (``2C`` with the defaults when
        ``len(bins)`` divides ``C``); :attr:`out_channels` holds that number.

    Note:
        In training mode BatchNorm of the 1x1 bin needs more than one value per channel, so
        a training batch must hold at least two images.
    """

    def __init__(
        self,
        in_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        reduction_channels: int | None = None,
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        if not bins:
            raise ValueError("bins must name at least one pooled size")
        if any(b < 1 for b in bins):
            raise ValueError(f"bin sizes must be positive, got {list(bins)}")
        if reduction_channels is None:
            reduction_channels = in_channels // len(bins)
        if reduction_channels < 1:
            raise ValueError(f"{len(bins)} bins leave no channels per branch from {in_channels} input channels")
        self.in_channels = in_channels
        self.reduction_channels = reduction_channels
        self.bins = tuple(int(b) for b in bins)
        self.out_channels = in_channels + len(self.bins) * reduction_channels
        self.pooling = pooling
        self.branches = nn.ModuleList(PoolingBranch(in_channels, reduction_channels, b, pooling) for b in self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N,C,h,w) -> (N, out_channels, h, w): ``[x, up(branch_1(x)), ...]``."""
        size = x.shape[-2:]
        pyramid = [x]
        for branch in self.branches:
            pyramid.append(F.interpolate(branch(x), size=size, mode="bilinear", align_corners=True))
        return torch.cat(pyramid, dim=1)
