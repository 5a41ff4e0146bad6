"""A tiny prepared dataset written directly (no dependency on the synthetic generator).

Each image is split by a vertical boundary at a random column into two flat-coloured regions
whose colours encode their labels (:data:`COLORS`), plus a 1-pixel ignore column at the
boundary: an easy task a few SGD steps improve on, and a way to check image/mask alignment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pspnet.data.classes import CLASSES_FILE, ClassTable
from pspnet.data.manifest import MANIFEST_FILE, write_manifest

#: Class id -> RGB colour used both in the image and in classes.json.
COLORS: tuple[tuple[int, int, int], ...] = ((220, 30, 30), (30, 30, 220), (30, 200, 30))
NAMES = ("red", "blue", "green")


def make_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(H,W,3)`` uint8 image and ``(H,W)`` uint8 mask; colour ``COLORS[k]`` wherever label ``k``."""
    left, right = rng.choice(len(COLORS), size=2, replace=False)
    col = int(rng.integers(width // 4, 3 * width // 4))
    mask = np.empty((height, width), np.uint8)
    mask[:, :col] = left
    mask[:, col:] = right
    image = np.asarray(COLORS, np.uint8)[mask]
    mask[:, col] = 255
    return image, mask


def write_prepared(
    prepared: Path, n_train: int = 8, n_val: int = 4, height: int = 32, width: int = 40, seed: int = 0
) -> ClassTable:
    """Write images/, masks/, manifest.csv and classes.json under ``prepared``."""
    rng = np.random.default_rng(seed)
    (prepared / "images").mkdir(parents=True, exist_ok=True)
    (prepared / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            sid = f"{split}_{i:03d}"
            image, mask = make_sample(rng, height, width)
            Image.fromarray(image, "RGB").save(prepared / "images" / f"{sid}.png")
            Image.fromarray(mask, "L").save(prepared / "masks" / f"{sid}.png")
            rows.append({"id": sid, "split": split, "image": f"images/{sid}.png", "mask": f"masks/{sid}.png"})
    write_manifest(prepared / MANIFEST_FILE, pd.DataFrame(rows))
    table = ClassTable(names=NAMES, colors=COLORS, ignore_index=255)
    table.save(prepared / CLASSES_FILE)
    return table
