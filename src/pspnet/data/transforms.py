"""Albumentations pipelines for training and evaluation (the official PSPNet recipe).

Train, in this order (the official code's order):

1. random scale by a factor uniform in ``train.scale_range`` (image bilinear, mask nearest);
2. random rotation by an angle uniform in +-``train.rotate_degrees`` with probability
   ``train.rotate_p``, about the image centre, same size: image bilinear with the mean colour
   in the uncovered corners, mask nearest with ``data.ignore_index`` there;
3. Gaussian blur of the image only, with probability ``train.blur_p``: a
   :data:`BLUR_KERNEL_SIZE` x :data:`BLUR_KERNEL_SIZE` kernel with the sigma OpenCV derives
   from that size (:data:`BLUR_SIGMA`), as the official code's ``cv2.GaussianBlur(img, (5, 5), 0)``
   (for that call OpenCV actually uses its tabulated binomial kernel ``[1 4 6 4 1] / 16``;
   albumentations samples a true Gaussian, which differs by less than 0.01 per tap);
4. horizontal flip with probability 0.5 (if ``train.hflip``);
5. pad to at least ``train.crop_size``, centred (image with the mean colour, mask with
   ``data.ignore_index``), then a random crop of ``train.crop_size``;
6. normalise with ``model.input_mean`` / ``model.input_std`` -> tensor.

Eval: normalise -> tensor, whole image. Masks are only ever resampled nearest-neighbour.

The fill colour is the normalisation mean, so padded / rotated-in pixels become 0 after
normalisation.

Each transform is called as ``t(image=HxWx3 uint8, mask=HxW uint8)`` and returns a dict with
``image`` float32 ``(3,H,W)`` and ``mask`` ``(H,W)`` tensors.

Randomness: albumentations 2.x has its own generators (it ignores the global seeds).
:func:`reseed` gives a pipeline ONE numpy and ONE Python generator shared by all its steps. (Not
``A.Compose(seed=...)``: albumentations 2.0 then gives every step its own generator with the
same seed, so the steps' random draws coincide: two flips with ``p=0.5`` fire together or not
at all.) The training loop reseeds the pipeline for every sample from (seed, epoch, position)
(:mod:`pspnet.train.sampling`), so augmentation does not depend on the number of loader
workers and a run resumed mid-epoch repeats it exactly.
"""

from __future__ import annotations

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from pspnet.config import Params

#: Side of the square Gaussian blur kernel (the official code's ``RandomGaussianBlur(radius=5)``).
BLUR_KERNEL_SIZE = 5


def opencv_gaussian_sigma(ksize: int) -> float:
    """The sigma ``cv2.GaussianBlur`` uses for a ``ksize`` kernel when given sigma 0."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


#: Standard deviation of the blur: what OpenCV derives from a 5x5 kernel (1.1).
BLUR_SIGMA = opencv_gaussian_sigma(BLUR_KERNEL_SIZE)


def _normalize(params: Params) -> A.Normalize:
    return A.Normalize(mean=params.model.input_mean, std=params.model.input_std, max_pixel_value=255.0)


def train_transform(params: Params) -> A.Compose:
    """Scale, rotate, blur, flip, pad, random crop, normalise, to tensor (see the module docstring)."""
    t = params.train
    crop_h, crop_w = t.crop_size
    low, high = t.scale_range
    fill = tuple(float(m) * 255.0 for m in params.model.input_mean)
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
