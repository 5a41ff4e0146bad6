"""Inference for evaluation: class scores at the input size under the paper's test-time protocol.

Images arrive normalised (ImageNet mean/std), so 0 is the mean colour. One call of
:func:`predict_logits` runs, for every scale of ``EvaluateConfig.scales``:

1. resize (bilinear) so the long side is ``round(scale * base_size)`` (``base_size`` null: the
   image's own long side, so scale 1.0 is the original size);
2. the mode named by ``EvaluateConfig.mode`` (:data:`INFERENCE_MODES`): ``whole`` (one pass over
   the image) or ``slide`` (windows of ``crop_size``, stride ``ceil(stride_rate * crop)``, the
   last window of a row / column aligned to the border, an image smaller than the window padded
   with the mean colour and the prediction cropped back, probabilities averaged over overlaps);
   with ``flip`` every pass also runs on the horizontally flipped input and the flipped-back
   probabilities are averaged in;
3. resize the scores back to the input size (bilinear) and average over scales.

What comes back, always ``(N, C, H, W)`` at the input's height and width (see
:func:`returns_logits`): the model's raw **logits** when nothing is averaged (``whole``, no
flip, one scale: the plain single pass, exactly the model's output); otherwise the averaged
**softmax probabilities** (the paper averages probabilities, not logits). Callers only take the
argmax over ``C``, which is meaningful for both.

Validation images of one dataset may differ in size, and the default collate can only stack
equal shapes: :func:`collate_same_size` turns one loader batch into same-size sub-batches, so
``evaluate.batch_size`` is honoured whenever sizes match and nothing fails when they don't.
It knows nothing of files or tracking, so ``predict`` reuses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pspnet.config import EvaluateConfig

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

#: ``images (n,3,h,w) -> scores (n,C,h,w)``: one (possibly flip-averaged) pass of the model.
Scorer = Callable[[torch.Tensor], torch.Tensor]
#: ``(scorer, images (N,3,H,W), cfg) -> scores (N,C,H,W)`` at the images' size: how a mode tiles
#: an image into passes of the scorer and merges them.
ModeFn = Callable[[Scorer, torch.Tensor, EvaluateConfig], torch.Tensor]


def _forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
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


def returns_logits(cfg: EvaluateConfig) -> bool:
    """Whether :func:`predict_logits` returns raw logits (True) or averaged softmax probabilities.

    Logits exactly when nothing is averaged: ``whole`` mode, no flip and a single scale.
    """
    return cfg.mode == "whole" and not cfg.flip and len(cfg.scales) == 1


def make_scorer(model: nn.Module, cfg: EvaluateConfig) -> Scorer:
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


def whole_image(score: Scorer, images: torch.Tensor, cfg: EvaluateConfig) -> torch.Tensor:
    """``whole`` mode: the full image in one pass (the model sees every pixel's context at once)."""
    return score(images)


def sliding_window(score: Scorer, images: torch.Tensor, cfg: EvaluateConfig) -> torch.Tensor:
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


#: Test-time modes by ``EvaluateConfig.mode`` name.
INFERENCE_MODES: dict[str, ModeFn] = {"whole": whole_image, "slide": sliding_window}


def predict_logits(model: nn.Module, images: torch.Tensor, cfg: EvaluateConfig | None = None) -> torch.Tensor:
    """Scores ``(N, C, H, W)`` for normalised ``images`` ``(N, 3, H, W)``, at the images' size.

    Runs the test-time protocol of ``cfg`` (default: ``whole``, no flip, scale 1.0) under
    :func:`torch.inference_mode`. Returns raw logits when nothing is averaged (see
    :func:`returns_logits`), else softmax probabilities averaged over windows, flips and scales;
    argmax over ``C`` gives the prediction either way. ``model`` must be in eval mode: scoring
    with train-mode BatchNorm and dropout would silently give different numbers, so that is an
    error.
    """
    cfg = cfg or EvaluateConfig()
    if model.training:
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
        assert total is not None  # scales is never empty (validated by EvaluateConfig)
        return total if len(cfg.scales) == 1 else total / len(cfg.scales)


class IndexedDataset(Dataset):
    """Wraps a dataset of ``(image, mask)`` so items carry their index: ``(index, image, mask)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any, Any]:
        image, mask = self.dataset[index]
        return index, image, mask


class Batch(NamedTuple):
    """Same-size samples stacked: dataset ``indices``, ``images`` (N,3,H,W), ``masks`` (N,H,W)."""

    indices: list[int]
    images: torch.Tensor
    masks: torch.Tensor


def collate_same_size(samples: Sequence[tuple[int, torch.Tensor, torch.Tensor]]) -> list[Batch]:
    """Group ``(index, image, mask)`` samples into stacked batches of equal image size (order kept
    within each size)."""
    groups: dict[tuple[int, ...], list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for sample in samples:
        index, image, mask = sample
        image, mask = torch.as_tensor(image), torch.as_tensor(mask)
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"sample {index}: image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        groups.setdefault(tuple(image.shape), []).append((index, image, mask))
    return [
        Batch([s[0] for s in group], torch.stack([s[1] for s in group]), torch.stack([s[2] for s in group]))
        for group in groups.values()
    ]


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A sequential loader over ``dataset`` whose batches are lists of same-size :class:`Batch` es."""
    return DataLoader(
        IndexedDataset(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_same_size,
        pin_memory=pin_memory,
    )


def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    cfg: EvaluateConfig | None = None,
    desc: str = "evaluate",
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield ``(indices, preds, masks)`` per same-size batch of a :func:`make_loader` loader.

    ``preds`` (argmax class ids, int64, of :func:`predict_logits` under ``cfg``'s test-time
    protocol) and ``masks`` are ``(N, H, W)`` on ``device``. A tqdm bar counts images.
    """
    device = torch.device(device)
    with tqdm(total=len(loader.dataset), desc=desc, unit="img") as bar:  # type: ignore[arg-type]
        for groups in loader:
            for batch in groups:
                images = batch.images.to(device, non_blocking=True)
                masks = batch.masks.to(device, non_blocking=True)
                preds = predict_logits(model, images, cfg).argmax(dim=1)
                yield batch.indices, preds, masks
                bar.update(len(batch.indices))
