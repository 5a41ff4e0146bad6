"""SGD with two learning rates, the poly schedule and an optional linear warm-up (the paper's
training recipe), encoder freezing, and weight averaging (EMA, off in the paper).

- Group ``encoder``: the (pretrainable) ResNet at ``train.lr``.
- Group ``new``: PPM, head and auxiliary head at ``train.lr * train.head_lr_multiplier`` (x10).
- Only parameters with ``requires_grad`` enter a group. A frozen encoder
  (:func:`freeze_encoder`) leaves the ``encoder`` group empty; the group stays, so group 0
  still reports the encoder's (scheduled) rate and the ``new`` group stays x10 of it.
- Poly decay per iteration: ``lr_i = base * (1 - i / max_iter) ** power`` for iteration ``i``
  (0-based: the first step uses the base rate), reaching 0 at ``max_iter``.
- Linear warm-up (``train.warmup_iters`` > 0; not in the paper): over the first
  ``warmup_iters`` iterations the factor ramps linearly from ``warmup_ratio`` times the poly
  value to the poly value: ``poly(i) * (r + (1 - r) * i / warmup_iters)``; poly after that.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pspnet.config import TrainConfig
from pspnet.model.pspnet import PSPNet

#: Names of the two parameter groups, in order.
ENCODER_GROUP = "encoder"
NEW_GROUP = "new"


def freeze_encoder(model: PSPNet) -> int:
    """Stop gradients through the encoder's parameters; returns how many were frozen.

    Its BatchNorm layers must also stay in eval mode while training (running statistics
    frozen): :func:`pspnet.train.loop.train_one_epoch` does that for the modules of
    ``TrainStep.frozen``.
    """
    params = model.encoder_parameters()
    for p in params:
        p.requires_grad_(False)
    return len(params)


def param_groups(model: PSPNet, lr: float, head_lr_multiplier: float) -> list[dict]:
    """The two parameter groups; every trainable parameter is in exactly one of them."""
    encoder = [p for p in model.encoder_parameters() if p.requires_grad]
    new = [p for p in model.new_parameters() if p.requires_grad]
    return [
        {"params": encoder, "lr": lr, "name": ENCODER_GROUP},
        {"params": new, "lr": lr * head_lr_multiplier, "name": NEW_GROUP},
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


def warmup_poly_factor(max_iter: int, power: float, warmup_iters: int = 0, warmup_ratio: float = 0.1) -> Callable[[int], float]:
    """Poly with a linear warm-up: ``poly(i) * (r + (1 - r) * i / warmup_iters)`` for
    ``i < warmup_iters`` (``r = warmup_ratio``), ``poly(i)`` afterwards; plain poly when
    ``warmup_iters`` is 0."""
    if warmup_iters < 0:
        raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
    if not 0 < warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio must be in (0, 1], got {warmup_ratio}")
    poly = poly_factor(max_iter, power)
    if warmup_iters == 0:
        return poly

    def factor(i: int) -> float:
        if i >= warmup_iters:
            return poly(i)
        return poly(i) * (warmup_ratio + (1.0 - warmup_ratio) * i / warmup_iters)

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_iter: int,
    power: float,
    warmup_iters: int = 0,
    warmup_ratio: float = 0.1,
) -> LambdaLR:
    """Poly schedule (after an optional linear warm-up) stepped once per iteration (call
    ``scheduler.step()`` after each ``optimizer.step()``)."""
    return LambdaLR(optimizer, lr_lambda=warmup_poly_factor(max_iter, power, warmup_iters, warmup_ratio))


def describe_groups(optimizer: torch.optim.Optimizer) -> str:
    """One line for the log: each group's name, parameter count and base (pre-schedule) rate."""
    parts = []
    for i, g in enumerate(optimizer.param_groups):
        n = sum(p.numel() for p in g["params"])
        parts.append(f"{g.get('name', i)} {n:,} params at lr {g.get('initial_lr', g['lr']):.3g}")
    return "; ".join(parts)


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers (``None`` when ``decay`` is 0)."""
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
