"""Train / eval transforms: output types and sizes, padding values, image/mask alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pspnet.config import Params, parse_params
from pspnet.data.transforms import eval_transform, train_transform

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: Label k is drawn with colour PALETTE[k]: far apart so bilinear blending can't reach another.
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def _params(**train: object) -> Params:
    return parse_params({"train": {"crop_size": [40, 48], "seed": 0, **train}})


def _coded_sample(rng: np.random.Generator, h: int = 37, w: int = 53) -> tuple[np.ndarray, np.ndarray]:
    """Blocky labels (8x8 cells) with colour PALETTE[label]."""
    cells = rng.integers(0, len(PALETTE), size=(h // 8 + 1, w // 8 + 1))
    mask = np.kron(cells, np.ones((8, 8), np.int64))[:h, :w].astype(np.uint8)
    return PALETTE[mask], mask


def _denormalise(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return ((image * std + mean) * 255.0).permute(1, 2, 0).numpy()


def test_train_transform_types_and_crop_size() -> None:
    t = train_transform(_params())
    image, mask = _coded_sample(np.random.default_rng(0))
    out = t(image=image, mask=mask)
    assert isinstance(out["image"], torch.Tensor) and out["image"].dtype == torch.float32
    assert out["image"].shape == (3, 40, 48)
    assert out["mask"].shape == (40, 48)


def test_eval_transform_keeps_the_whole_image_and_normalises() -> None:
    t = eval_transform(_params())
    image = np.full((37, 53, 3), 128, np.uint8)
    mask = np.zeros((37, 53), np.uint8)
    out = t(image=image, mask=mask)
    assert out["image"].shape == (3, 37, 53) and out["mask"].shape == (37, 53)
    expected = (128 / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(out["image"][:, 0, 0].numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_image_and_mask_stay_aligned_after_augmentation(seed: int) -> None:
    """After scale, pad, crop and flip, every labelled pixel still shows its label's colour."""
    t = train_transform(_params(scale_range=[0.6, 1.8], hflip=True, seed=seed))
    rng = np.random.default_rng(seed)
    for _ in range(5):
        image, mask = _coded_sample(rng)
        out = t(image=image, mask=mask)
        got_mask = out["mask"].numpy()
        got_image = _denormalise(out["image"])
        labelled = got_mask != 255
        assert labelled.any()
        # Nearest-neighbour mask vs bilinear image (which blends over ~2 px when upscaled):
        # compare pixels at least 2 px away from any label edge.
        interior = labelled.copy()
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                interior &= np.roll(got_mask, (dy, dx), axis=(0, 1)) == got_mask
        interior[:2, :] = interior[-2:, :] = False
        interior[:, :2] = interior[:, -2:] = False
        assert interior.sum() > 100
        expected = PALETTE[got_mask[interior]].astype(np.float32)
        np.testing.assert_allclose(got_image[interior], expected, atol=2.0)


def test_padding_uses_mean_colour_and_ignore_label() -> None:
    # No scaling, a small image: the crop is all padding around the centred image.
    t = train_transform(_params(scale_range=[1.0, 1.0], hflip=False))
    image = np.full((20, 24, 3), 200, np.uint8)
    mask = np.ones((20, 24), np.uint8)
    out = t(image=image, mask=mask)
    got_mask = out["mask"].numpy()
    assert (got_mask == 1).sum() == 20 * 24
    assert set(np.unique(got_mask)) == {1, 255}
    padded = got_mask == 255
    # Mean colour normalises to 0.
    assert torch.allclose(out["image"][:, torch.from_numpy(padded)], torch.zeros(1), atol=1e-2)


def test_scale_range_is_applied() -> None:
    t = train_transform(_params(scale_range=[0.5, 0.5], hflip=False))
    image, mask = _coded_sample(np.random.default_rng(1), h=40, w=48)
    out = t(image=image, mask=mask)
    # Half size (20x24) padded to 40x48: a quarter of the pixels are labelled.
    assert (out["mask"].numpy() != 255).sum() == 20 * 24


def test_train_transform_is_reproducible_from_the_seed() -> None:
    image, mask = _coded_sample(np.random.default_rng(2))
    a = [train_transform(_params())(image=image, mask=mask)["mask"] for _ in range(2)]
    assert torch.equal(a[0], a[1])
