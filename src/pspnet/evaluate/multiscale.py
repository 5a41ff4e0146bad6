"""The paper's test-time protocol as torch-only functions: scales, flip, whole image or sliding window.

For every scale of ``cfg.scales`` :func:`predict_scores` resizes (bilinear) so the long side is
``round(scale * base_size)`` (``base_size`` None: the image's own), runs the ``cfg.mode`` of
:data:`INFERENCE_MODES` (``whole``: one pass; ``slide``: windows of ``crop_size`` at stride
``ceil(stride_rate * crop)``, the last one aligned to the border, probabilities averaged over
overlaps), with ``flip`` also on the mirrored input, resizes the scores back and averages them.
Raw logits when nothing is averaged, else softmax probabilities (the paper averages
probabilities); callers take the argmax.

It imports nothing but torch: every registered model carries this file, so the served model
(:mod:`pspnet.registry.serving_model`) runs the same protocol as ``pspnet evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class TestTimeSettings(Protocol):
    """What the protocol reads (``EvaluateConfig`` has these fields; the served model a plain namespace)."""

    mode: str
    batch_size: int
    crop_size: Sequence[int]
    stride_rate: float
    flip: bool
    scales: Sequence[float]
    base_size: int | None


#: Value that pads an image smaller than the window: 0 in normalised space is the mean colour.
PAD_VALUE = 0.0
#: Slack in ``ceil(stride_rate * crop)``: a rate such as 0.7 times 10 lands a hair above 7 in
#: binary floating point, which must not add a pixel to the stride.
STRIDE_TOLERANCE = 1e-6
#: Interpolation used to resize images to a test scale and scores back to the input size.
RESIZE_MODE = "bilinear"
#: Class dimension of the scores ``(N, C, H, W)``.
CLASS_DIM = 1
#: Width dimension, the one a horizontal flip reverses.
WIDTH_DIM = -1

#: ``images (n,3,h,w) -> logits (n,C,h',w')``: a network given as a plain function (the served model's).
Network = Callable[[torch.Tensor], torch.Tensor]
#: ``images (n,3,h,w) -> scores (n,C,h,w)``: one (possibly flip-averaged) pass of the model.
Scorer = Callable[[torch.Tensor], torch.Tensor]
#: ``(scorer, images (N,3,H,W), cfg) -> scores (N,C,H,W)`` at the images' size: how a mode tiles
#: an image into passes of the scorer and merges them.
ModeFn = Callable[[Scorer, torch.Tensor, TestTimeSettings], torch.Tensor]


def _forward(model: nn.Module | Network, images: torch.Tensor) -> torch.Tensor:
    """One forward pass: logits ``(N, C, H, W)`` at the input's size.

    Tolerates models that return ``(logits, aux)`` and resizes lower-resolution logits to the input.
    """
    out = model(images)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim != 4 or out.shape[0] != images.shape[0]:
        raise ValueError(f"model returned shape {tuple(out.shape)} for input {tuple(images.shape)}; expected (N, C, H, W)")
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode=RESIZE_MODE, align_corners=False)
    return out


def returns_logits(cfg: TestTimeSettings) -> bool:
    """Whether :func:`predict_logits` returns raw logits (True) or averaged softmax probabilities.

    Logits exactly when nothing is averaged: ``whole`` mode, no flip and a single scale.
    """
    return cfg.mode == "whole" and not cfg.flip and len(cfg.scales) == 1


def make_scorer(model: nn.Module | Network, cfg: TestTimeSettings) -> Scorer:
    """The per-pass scorer ``images (n,3,h,w) -> (n,C,h,w)`` that ``cfg`` asks for.

    Logits when :func:`returns_logits`; otherwise softmax probabilities, averaged with those of
    the horizontally flipped input (flipped back) when ``cfg.flip``. The flipped pass is a
    second forward of the same size, so memory stays that of one pass.
    """
    if returns_logits(cfg):
        return lambda images: _forward(model, images)

    def score(images: torch.Tensor) -> torch.Tensor:
        probs = _forward(model, images).float().softmax(CLASS_DIM)
        if cfg.flip:
            flipped = _forward(model, images.flip(WIDTH_DIM)).float().softmax(CLASS_DIM).flip(WIDTH_DIM)
            probs = (probs + flipped) / 2
        return probs

    return score


def window_stride(crop_size: Sequence[int], stride_rate: float) -> tuple[int, int]:
    """``(stride_h, stride_w)`` = ``ceil(stride_rate * crop)`` per side (at least 1 pixel)."""
    return tuple(max(1, math.ceil(stride_rate * c - STRIDE_TOLERANCE)) for c in crop_size)  # type: ignore[return-value]


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of ``crop`` pixels every ``stride`` along ``length`` pixels.

    The last window ends at the border, so every pixel is covered; ``[0]`` when ``length <= crop``
    (the caller pads the image up to the window).
    """
    if length <= crop:
        return [0]
    count = math.ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(count)]


def sliding_windows(height: int, width: int, crop_size: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    """``(top, left)`` of every window over an image of ``height x width``, row by row."""
    return [
        (top, left)
        for top in window_starts(height, crop_size[0], stride[0])
        for left in window_starts(width, crop_size[1], stride[1])
    ]


def scaled_size(height: int, width: int, scale: float, base_size: int | None) -> tuple[int, int]:
    """``(h, w)`` with the long side ``round(scale * base_size)`` (``base_size`` None: the long
    side itself) and the aspect ratio kept; each side at least 1 pixel."""
    long_side = max(height, width)
    target = max(1, round(scale * (base_size if base_size is not None else long_side)))
    if height >= width:
        return target, max(1, round(width * target / height))
    return max(1, round(height * target / width)), target


def whole_image(score: Scorer, images: torch.Tensor, cfg: TestTimeSettings) -> torch.Tensor:
    """``whole`` mode: the full image in one pass (the model sees every pixel's context at once)."""
    return score(images)


def sliding_window(score: Scorer, images: torch.Tensor, cfg: TestTimeSettings) -> torch.Tensor:
    """``slide`` mode: windows of ``cfg.crop_size``; scores ``(N, C, H, W)`` averaged over overlaps.

    An image smaller than the window is padded at the bottom / right with the mean colour and
    the scores cropped back. Each forward pass holds the same window of every image of the
    batch and, when the batch has fewer than ``cfg.batch_size`` images, several windows, so a
    pass never exceeds ``max(N, batch_size)`` crops.
    """
    n, _, height, width = images.shape
    crop_h, crop_w = cfg.crop_size
    padded = F.pad(images, (0, max(crop_w - width, 0), 0, max(crop_h - height, 0)), value=PAD_VALUE)
    pad_h, pad_w = padded.shape[-2:]
    windows = sliding_windows(pad_h, pad_w, cfg.crop_size, window_stride(cfg.crop_size, cfg.stride_rate))
    per_pass = max(1, cfg.batch_size // n)
    total: torch.Tensor | None = None
    count = padded.new_zeros((1, 1, pad_h, pad_w))
    for first in range(0, len(windows), per_pass):
        chunk = windows[first : first + per_pass]
        crops = torch.cat([padded[:, :, top : top + crop_h, left : left + crop_w] for top, left in chunk])
        scores = score(crops)  # (len(chunk) * n, C, crop_h, crop_w), window-major
        if total is None:
            total = scores.new_zeros((n, scores.shape[CLASS_DIM], pad_h, pad_w))
        for j, (top, left) in enumerate(chunk):
            total[:, :, top : top + crop_h, left : left + crop_w] += scores[j * n : (j + 1) * n]
            count[:, :, top : top + crop_h, left : left + crop_w] += 1
    assert total is not None  # at least one window always exists
    return (total / count)[:, :, :height, :width]


#: Test-time modes by ``TestTimeSettings.mode`` name.
INFERENCE_MODES: dict[str, ModeFn] = {"whole": whole_image, "slide": sliding_window}


def predict_scores(model: nn.Module | Network, images: torch.Tensor, cfg: TestTimeSettings) -> torch.Tensor:
    """Scores ``(N, C, H, W)`` for normalised ``images`` ``(N, 3, H, W)`` under ``cfg``, at the
    images' size (see the module docstring); ``model``: a module in eval mode, or a function."""
    if getattr(model, "training", False):
        raise ValueError("predict_logits needs the model in eval mode; call model.eval() first")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    try:
        mode_fn = INFERENCE_MODES[cfg.mode]
    except KeyError:
        raise ValueError(f"unknown inference mode {cfg.mode!r}; known: {sorted(INFERENCE_MODES)}") from None
    height, width = images.shape[-2:]
    with torch.inference_mode():
        score = make_scorer(model, cfg)
        total: torch.Tensor | None = None
        for scale in cfg.scales:
            size = scaled_size(height, width, scale, cfg.base_size)
            scaled = images if size == (height, width) else F.interpolate(
                images, size=size, mode=RESIZE_MODE, align_corners=False
            )
            out = mode_fn(score, scaled, cfg)
            if out.shape[-2:] != (height, width):
                out = F.interpolate(out, size=(height, width), mode=RESIZE_MODE, align_corners=False)
            total = out if total is None else total + out
        assert total is not None  # scales is never empty (validated by EvaluateConfig and the served model)
        return total if len(cfg.scales) == 1 else total / len(cfg.scales)
