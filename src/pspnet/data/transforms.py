"""Albumentations pipelines for training and evaluation (as in the official PSPNet recipe).

Train: random scale in ``train.scale_range`` (image bilinear, mask nearest) -> pad to at least
``train.crop_size`` (image with the mean colour, mask with ``data.ignore_index``) -> random
crop ``train.crop_size`` -> horizontal flip (if ``train.hflip``) -> normalise with
``model.input_mean`` / ``model.input_std`` -> tensor. Eval: normalise -> tensor, whole image.

The pad colour is the normalisation mean, so padded pixels become 0 after normalisation.

Each transform is called as ``t(image=HxWx3 uint8, mask=HxW uint8)`` and returns a dict with
``image`` float32 ``(3,H,W)`` and ``mask`` ``(H,W)`` tensors.

Randomness: albumentations 2.x has its own generators (it ignores the global seeds); they are
seeded from ``train.seed`` here, and :func:`reseed` gives each DataLoader worker its own stream.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from pspnet.config import Params


def _normalize(params: Params) -> A.Normalize:
    return A.Normalize(mean=params.model.input_mean, std=params.model.input_std, max_pixel_value=255.0)


def train_transform(params: Params) -> A.Compose:
    """Random scale, pad, random crop, flip, normalise, to tensor (see the module docstring)."""
    t = params.train
    crop_h, crop_w = t.crop_size
    low, high = t.scale_range
    fill = tuple(float(m) * 255.0 for m in params.model.input_mean)
    steps: list[Any] = []
    if (low, high) != (1.0, 1.0):
        steps.append(
            A.RandomScale(
                scale_limit=(low - 1.0, high - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )
    steps += [
        A.PadIfNeeded(
            min_height=crop_h,
            min_width=crop_w,
            position="center",
            border_mode=cv2.BORDER_CONSTANT,
            fill=fill,
            fill_mask=params.data.ignore_index,
        ),
        A.RandomCrop(height=crop_h, width=crop_w),
    ]
    if t.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps += [_normalize(params), ToTensorV2()]
    return A.Compose(steps, seed=t.seed)


def eval_transform(params: Params) -> A.Compose:
    """Normalise and convert the whole image (no resizing, no cropping)."""
    return A.Compose([_normalize(params), ToTensorV2()])


def reseed(transform: Any, seed: int) -> None:
    """Give ``transform`` (an albumentations Compose) a fresh random stream; no-op otherwise."""
    setter = getattr(transform, "set_random_seed", None)
    if callable(setter):
        setter(seed)
