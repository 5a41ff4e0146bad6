"""A torch Dataset over one split of the prepared directory (``manifest.csv``).

Items are ``(image, mask)``: ``image`` float32 ``(3,H,W)`` (normalised by the transform),
``mask`` int64 ``(H,W)`` of class ids with ``ignore_index`` (255) for pixels that never count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pspnet.data.manifest import MANIFEST_FILE, read_manifest, split_rows
from pspnet.errors import DataError

Transform = Callable[..., dict[str, Any]]


def load_image(path: Path) -> np.ndarray:
    """An image file as ``(H,W,3)`` uint8 RGB."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: image listed in the manifest is missing. Re-run `prepare`.") from None
    except OSError as err:
        raise DataError(f"{path}: unreadable image ({err}).") from None


def load_mask(path: Path) -> np.ndarray:
    """A label file (mode ``L`` or ``P``: the pixel values are the class ids) as ``(H,W)`` uint8."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise DataError(f"{path}: a mask must be a single-channel (mode L or P) PNG of class ids, got mode {img.mode}.")
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: mask listed in the manifest is missing. Re-run `prepare`.") from None
    except DataError:
        raise
    except OSError as err:
        raise DataError(f"{path}: unreadable mask ({err}).") from None


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The samples of one ``split`` of a prepared dataset, in manifest order.

    Args:
        prepared_dir: the folder holding ``manifest.csv`` (paths in it are relative to it).
        split: ``train``, ``val``, ...; a split with no rows raises :class:`DataError`.
        transform: an albumentations-style callable ``t(image=..., mask=...) -> dict``
            (:func:`pspnet.data.transforms.train_transform` / ``eval_transform``). ``None``
            returns the raw image as float32 ``(3,H,W)`` in 0..255, not normalised.

    Attributes:
        ids: sample ids, index-aligned with the items.
    """

    def __init__(self, prepared_dir: str | Path, split: str, transform: Transform | None = None) -> None:
        self.root = Path(prepared_dir)
        rows = split_rows(read_manifest(self.root / MANIFEST_FILE), split)
        if rows.empty:
            raise DataError(f"{self.root / MANIFEST_FILE}: split {split!r} has no samples.")
        self.split = split
        self.ids: list[str] = rows["id"].tolist()
        self.image_paths: list[Path] = [self.root / p for p in rows["image"]]
        self.mask_paths: list[Path] = [self.root / p for p in rows["mask"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` untransformed: ``(H,W,3)`` uint8 RGB image, ``(H,W)`` uint8 mask."""
        image = load_image(self.image_paths[index])
        mask = load_mask(self.mask_paths[index])
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"sample {self.ids[index]!r}: image {self.image_paths[index]} is {image.shape[1]}x{image.shape[0]} "
                f"but mask {self.mask_paths[index]} is {mask.shape[1]}x{mask.shape[0]}."
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_raw(index)
        if self.transform is None:
            return torch.from_numpy(image).permute(2, 0, 1).float(), torch.from_numpy(mask).long()
        out = self.transform(image=image, mask=mask)
        img_t, mask_t = out["image"], out["mask"]
        if not isinstance(img_t, torch.Tensor):
            img_t = torch.from_numpy(np.ascontiguousarray(img_t)).permute(2, 0, 1)
        if not isinstance(mask_t, torch.Tensor):
            mask_t = torch.from_numpy(np.ascontiguousarray(mask_t))
        return img_t.float().contiguous(), mask_t.long().contiguous()
