"""SegmentationDataset over a prepared directory written by the test itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.config import parse_params
from pspnet.data.dataset import SegmentationDataset
from pspnet.data.transforms import eval_transform, train_transform
from pspnet.errors import DataError
from tests.train.tinydata import COLORS, write_prepared

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    write_prepared(tmp_path / "prepared", n_train=5, n_val=3, height=33, width=45)
    return tmp_path / "prepared"


def test_items_follow_the_contract(prepared: Path) -> None:
    ds = SegmentationDataset(prepared, "val", eval_transform(parse_params({})))
    assert len(ds) == 3 and ds.ids == ["val_000", "val_001", "val_002"]
    image, mask = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 33, 45)
    assert mask.dtype == torch.int64 and mask.shape == (33, 45)
    assert set(mask.unique().tolist()) <= {0, 1, 2, 255}


def test_raw_items_without_transform(prepared: Path) -> None:
    ds = SegmentationDataset(prepared, "train")
    image, mask = ds[1]
    assert image.dtype == torch.float32 and image.max() <= 255 and image.max() > 1
    colors = torch.tensor(COLORS, dtype=torch.float32)
    labelled = mask != 255
    assert torch.equal(image.permute(1, 2, 0)[labelled], colors[mask[labelled]])


def test_train_items_stay_aligned(prepared: Path) -> None:
    params = parse_params({"train": {"crop_size": [24, 32], "scale_range": [0.7, 1.4], "rotate_p": 0, "blur_p": 0}})
    ds = SegmentationDataset(prepared, "train", train_transform(params))
    colors = torch.tensor(COLORS, dtype=torch.float32)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (3, 24, 32) and mask.shape == (24, 32)
        rgb = (image * STD + MEAN).permute(1, 2, 0) * 255
        # Away from the vertical boundary, the colour equals the label's colour.
        same = (mask == torch.roll(mask, 1, dims=1)) & (mask == torch.roll(mask, -1, dims=1)) & (mask != 255)
        same[:, [0, -1]] = False
        assert same.any()
        assert torch.allclose(rgb[same], colors[mask[same]], atol=2.0)


def test_unknown_split_is_a_data_error(prepared: Path) -> None:
    with pytest.raises(DataError, match="test"):
        SegmentationDataset(prepared, "test")


def test_missing_manifest_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest"):
        SegmentationDataset(tmp_path, "train")


def test_missing_image_and_size_mismatch_are_data_errors(prepared: Path) -> None:
    ds = SegmentationDataset(prepared, "train")
    ds.image_paths[0].unlink()
    with pytest.raises(DataError, match="train_000.png.*missing"):
        ds[0]
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(ds.mask_paths[1])
    with pytest.raises(DataError, match="train_001"):
        ds[1]


def test_rgb_mask_is_refused(prepared: Path) -> None:
    ds = SegmentationDataset(prepared, "val")
    Image.fromarray(np.zeros((33, 45, 3), np.uint8), "RGB").save(ds.mask_paths[0])
    with pytest.raises(DataError, match="mode L or P"):
        ds[0]
