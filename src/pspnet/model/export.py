"""The registered artefact: a trained PSPNet wrapped to take raw RGB pixels.

:class:`SegmentationModel` owns the input normalisation (callers never need the training
statistics) and only the inference parts of the network: the auxiliary head is dropped.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from pspnet.errors import PspnetError
from pspnet.model.normalize import PIXEL_SCALE, normalize, pixel_stats

#: Names of the normalisation buffers (RGB statistics in 0..255 units); ``torch.export`` keeps
#: them, and :mod:`pspnet.registry.segmenter` reads them back from a registered program.
MEAN_BUFFER = "mean"
STD_BUFFER = "std"


class SegmentationModel(nn.Module):
    """PSPNet for inference on raw images: float32 RGB ``(N, 3, H, W)`` in 0..255 -> logits
    ``(N, C, H, W)`` of the same H and W (any N, H, W); the class map is ``logits.argmax(1)``.

    ``mean`` / ``std``: RGB statistics as fractions of 255, stored as buffers so they travel
    with the weights. The network is deep-copied, put in eval mode and stripped of its aux head.
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
        mean_t, std_t = pixel_stats(mean, std)
        self.register_buffer(MEAN_BUFFER, mean_t)
        self.register_buffer(STD_BUFFER, std_t)
        self.eval()

    def train(self, mode: bool = True) -> SegmentationModel:
        """The export wrapper is inference-only: the network always stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB in 0..255 -> logits ``(N, C, H, W)``."""
        return self.net(normalize(x, self.mean, self.std))


#: Batch of the example the network is traced with: torch.export specialises a size-1
#: dimension, which would freeze the batch size.
EXPORT_BATCH = 2


def export_program(wrapped: torch.nn.Module, example_size: tuple[int, int]) -> torch.export.ExportedProgram:
    """``wrapped`` (raw RGB -> logits) as a ``torch.export`` program with dynamic batch, height
    and width, traced at ``example_size`` (h, w)."""
    h, w = example_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, int(PIXEL_SCALE) + 1, (EXPORT_BATCH, 3, h, w), generator=generator).float()
    dynamic = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    try:
        return torch.export.export(wrapped, (example,), dynamic_shapes=(dynamic,))
    except Exception as err:  # noqa: BLE001 - torch.export raises many types; all mean "not exportable"
        raise PspnetError(f"torch.export could not trace the model at {h}x{w}: {type(err).__name__}: {err}") from err
