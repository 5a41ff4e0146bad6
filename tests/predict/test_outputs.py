"""What ``pspnet predict`` writes: class-id masks, 16-bit when the classes do not fit 8 bits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pspnet.predict.outputs import mask_image


def test_many_classes_give_16_bit_masks(tmp_path: Path) -> None:
    ids = np.array([[0, 255, 256, 299]])
    assert mask_image(ids, 256).mode == "L" and mask_image(ids[:, :2], 256).getpixel((1, 0)) == 255
    wide = mask_image(ids, 300)
    wide.save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as back:
        assert back.mode == "I;16"
        np.testing.assert_array_equal(np.array(back), ids)
