"""The RGB input normalisation, ``(x - mean) / std``, and its inverse: the one definition.

``mean`` / ``std`` are recorded as fractions of :data:`PIXEL_SCALE` (``model.input_mean`` /
``model.input_std``); the arithmetic runs in pixel units (0..255) on float32 tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

#: Values of ``input_mean`` / ``input_std`` are fractions of this (the largest 8-bit value).
PIXEL_SCALE = 255.0
#: Shape the per-channel statistics take to broadcast over ``(N, 3, H, W)``.
STATS_SHAPE = (1, 3, 1, 1)


def to_pixel_units(fractions: Iterable[float]) -> tuple[float, ...]:
    """Fractions of :data:`PIXEL_SCALE` -> values in 0..255 units (Python floats)."""
    return tuple(float(v) * PIXEL_SCALE for v in fractions)


def to_fractions(values: Iterable[float]) -> tuple[float, ...]:
    """Values in 0..255 units -> fractions of :data:`PIXEL_SCALE` (the inverse of :func:`to_pixel_units`)."""
    return tuple(float(v) / PIXEL_SCALE for v in values)


def pixel_stats(mean: Sequence[float], std: Sequence[float], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` / ``std`` (fractions of 255) as float32 ``(1, 3, 1, 1)`` tensors in 0..255 units."""
    mean_t = torch.tensor(to_pixel_units(mean), dtype=torch.float32, device=device).view(STATS_SHAPE)
    std_t = torch.tensor(to_pixel_units(std), dtype=torch.float32, device=device).view(STATS_SHAPE)
    return mean_t, std_t


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw RGB ``(N, 3, H, W)`` in 0..255 -> normalised, with ``mean`` / ``std`` from :func:`pixel_stats`."""
    return (x - mean) / std


def denormalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised ``(N, 3, H, W)`` -> raw RGB in 0..255 (the inverse of :func:`normalize`, up to rounding)."""
    return x * std + mean
