"""Size and shape facts of a PSPNet configuration, computed without weights or data.

The model is built on PyTorch's ``meta`` device: parameters have shapes but no storage and the
forward pass only propagates shapes, so even PSPNet-101 at 713x713 is described in well under
a second and nothing is downloaded (``encoder_weights`` is ignored).
"""

from __future__ import annotations

from typing import Any

import torch

from pspnet.config import ModelConfig
from pspnet.model.pspnet import build_model, count_parameters


def model_info(cfg: ModelConfig, num_classes: int, size: tuple[int, int]) -> dict[str, Any]:
    """Describe the PSPNet of ``cfg`` with ``num_classes`` outputs for one ``size`` = (H, W) input.

    Returns ``params_total`` (auxiliary head included), ``params_without_aux`` (the exported /
    registered model), ``params_encoder``, ``feature_shape`` (layer4 output, e.g.
    ``[1, 2048, 60, 60]`` at 473x473 for ResNet-50), ``aux_feature_shape`` (layer3) and
    ``output_shape`` (``[1, K, H, W]``), plus the resolved architecture choices.
    """
    height, width = size
    with torch.device("meta"):
        model = build_model(cfg.model_copy(update={"encoder_weights": "none"}), num_classes)
        model.eval()
        x = torch.empty(1, 3, height, width)
        with torch.no_grad():
            c3, c4 = model.encoder(x)
            out = model(x)
    total = count_parameters(model)
    return {
        "encoder": cfg.encoder,
        "stem": cfg.resolved_stem,
        "output_stride": cfg.output_stride,
        "ppm": cfg.ppm,
        "ppm_bins": list(cfg.ppm_bins) if cfg.ppm else [],
        "ppm_pooling": cfg.ppm_pooling if cfg.ppm else None,
        "aux_head": model.aux_head is not None,
        "num_classes": num_classes,
        "input_shape": [1, 3, height, width],
        "params_total": total,
        "params_without_aux": total - count_parameters(model.aux_head),
        "params_encoder": count_parameters(model.encoder),
        "feature_shape": list(c4.shape),
        "aux_feature_shape": list(c3.shape),
        "output_shape": list(out.shape),
    }
