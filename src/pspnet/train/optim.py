"""SGD with two learning rates and the poly schedule (the paper's training recipe).

- Group ``encoder``: the (pretrainable) ResNet at ``train.lr``.
- Group ``new``: PPM, head and auxiliary head at ``train.lr * train.head_lr_multiplier`` (x10).
- Poly decay per iteration: ``lr_i = base * (1 - i / max_iter) ** power`` for iteration ``i``
  (0-based: the first step uses the base rate), reaching 0 at ``max_iter``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR

from pspnet.config import TrainConfig
from pspnet.model.pspnet import PSPNet


def param_groups(model: PSPNet, lr: float, head_lr_multiplier: float) -> list[dict]:
    """The two parameter groups; every trainable parameter is in exactly one of them."""
    encoder = [p for p in model.encoder_parameters() if p.requires_grad]
    new = [p for p in model.new_parameters() if p.requires_grad]
    return [
        {"params": encoder, "lr": lr, "name": "encoder"},
        {"params": new, "lr": lr * head_lr_multiplier, "name": "new"},
    ]


def build_optimizer(model: PSPNet, cfg: TrainConfig) -> SGD:
    """SGD (momentum, weight decay) over :func:`param_groups`."""
    return SGD(
        param_groups(model, cfg.lr, cfg.head_lr_multiplier),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )


def poly_factor(max_iter: int, power: float) -> Callable[[int], float]:
    """``i -> (1 - i / max_iter) ** power``, clamped to 0 past ``max_iter``."""
    if max_iter < 1:
        raise ValueError(f"max_iter must be positive, got {max_iter}")

    def factor(i: int) -> float:
        return max(0.0, 1.0 - i / max_iter) ** power

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, max_iter: int, power: float) -> LambdaLR:
    """Poly schedule stepped once per iteration (call ``scheduler.step()`` after each ``optimizer.step()``)."""
    return LambdaLR(optimizer, lr_lambda=poly_factor(max_iter, power))
