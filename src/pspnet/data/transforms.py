"""Albumentations pipelines for training and evaluation (the official PSPNet recipe).

Train: random scale, rotation (mean-colour fill, ``ignore_index`` in the mask), Gaussian blur,
optional colour jitter (``train.color_jitter``, not in the paper), horizontal flip, centred pad + random crop to ``train.crop_size``, normalise -> tensor; eval:
normalise -> tensor. Masks are only resampled nearest-neighbour. Called as
``t(image=HxWx3 uint8, mask=HxW uint8)`` -> ``image`` float32 ``(3,H,W)``, ``mask`` ``(H,W)``.
:func:`reseed` gives a pipeline one shared random stream (see :mod:`pspnet.train.sampling`).
"""

from __future__ import annotations

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from pspnet.config import Params
from pspnet.model.normalize import PIXEL_SCALE, to_pixel_units

#: Side of the square Gaussian blur kernel (the official code's ``RandomGaussianBlur(radius=5)``).
BLUR_KERNEL_SIZE = 5


def opencv_gaussian_sigma(ksize: int) -> float:
    """The sigma ``cv2.GaussianBlur`` uses for a ``ksize`` kernel when given sigma 0."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


#: Standard deviation of the blur: what OpenCV derives from a 5x5 kernel (1.1).
BLUR_SIGMA = opencv_gaussian_sigma(BLUR_KERNEL_SIZE)


def _normalize(params: Params) -> A.Normalize:
    # albumentations' Normalize (a uint8 lookup table, (x - mean) * (1 / std): ULPs off normalize()'s
    # division), kept so training stays bit-identical; the pixel scale is pspnet.model.normalize's.
    return A.Normalize(mean=params.model.input_mean, std=params.model.input_std, max_pixel_value=PIXEL_SCALE)


def train_transform(params: Params) -> A.Compose:
    """Scale, rotate, blur, flip, pad, random crop, normalise, to tensor, in the official code's order."""
    t = params.train
    crop_h, crop_w = t.crop_size
    low, high = t.scale_range
    fill = to_pixel_units(params.model.input_mean)  # the mean colour: 0 after normalisation
    ignore = params.data.ignore_index
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
    if t.rotate_degrees > 0 and t.rotate_p > 0:
        steps.append(
            A.Rotate(
                limit=(-t.rotate_degrees, t.rotate_degrees),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=fill,
                fill_mask=ignore,
                crop_border=False,
                p=t.rotate_p,
            )
        )
    if t.blur_p > 0:
        steps.append(
            A.GaussianBlur(
                blur_limit=(BLUR_KERNEL_SIZE, BLUR_KERNEL_SIZE),
                sigma_limit=(BLUR_SIGMA, BLUR_SIGMA),
                p=t.blur_p,
            )
        )
    jitter = t.color_jitter
    if jitter.active:
        steps.append(
            A.ColorJitter(
                brightness=jitter.brightness,
                contrast=jitter.contrast,
                saturation=jitter.saturation,
                hue=jitter.hue,
                p=jitter.p,
            )
        )
    if t.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps += [
        A.PadIfNeeded(
            min_height=crop_h,
            min_width=crop_w,
            position="center",
            border_mode=cv2.BORDER_CONSTANT,
            fill=fill,
            fill_mask=ignore,
        ),
        A.RandomCrop(height=crop_h, width=crop_w),
        _normalize(params),
        ToTensorV2(),
    ]
    transform = A.Compose(steps)
    reseed(transform, t.seed)
    return transform


def eval_transform(params: Params) -> A.Compose:
    """Normalise and convert the whole image (no resizing, no cropping)."""
    return A.Compose([_normalize(params), ToTensorV2()])


def reseed(transform: Any, seed: int) -> None:
    """Give ``transform`` (an albumentations Compose) a fresh random stream from ``seed``: one
    numpy and one Python generator that all its steps draw from in turn; no-op for anything else."""
    setter = getattr(transform, "set_random_state", None)
    if callable(setter):
        setter(np.random.default_rng(seed), random.Random(seed))
