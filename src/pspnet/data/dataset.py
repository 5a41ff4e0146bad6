"""A torch Dataset over one split of the prepared directory (``manifest.csv``).

Items are ``(image, mask)``: ``image`` float32 ``(3,H,W)`` (normalised by the transform),
``mask`` int64 ``(H,W)`` of class ids with ``ignore_index`` (255) for pixels that never count.

It reads defensively: manifest paths must stay inside the prepared folder, a file whose header
declares more than ``max_image_pixels`` pixels is refused before decoding, and the ids of the
quarantine list (:func:`pspnet.data.quarantine.excluded_ids`) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pspnet.config import DEFAULT_MAX_IMAGE_PIXELS
from pspnet.data.imagefiles import FileProblem, escaping_entry, open_image
from pspnet.data.manifest import MANIFEST_FILE, read_manifest, split_rows
from pspnet.errors import DataError

Transform = Callable[..., dict[str, Any]]
#: Modes of prepared masks (one 8-bit class id per pixel).
MASK_MODES = ("L", "P")


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file as ``(H,W,3)`` uint8 RGB (at most ``max_pixels`` pixels, checked before decoding)."""
    try:
        with open_image(path, max_pixels) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: image listed in the manifest is missing. Re-run `prepare`.") from None
    except FileProblem as err:
        raise DataError(f"{path}: {err.problem}. Fix: re-run `prepare` and `validate`.") from None
    except OSError as err:
        raise DataError(f"{path}: unreadable image ({err}).") from None


def load_mask(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """A label file (mode ``L`` or ``P``: the pixel values are the class ids) as ``(H,W)`` uint8."""
    try:
        with open_image(path, max_pixels) as img:
            if img.mode not in MASK_MODES:
                raise DataError(f"{path}: a mask must be a single-channel (mode L or P) PNG of class ids, got mode {img.mode}.")
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: mask listed in the manifest is missing. Re-run `prepare`.") from None
    except DataError:
        raise
    except FileProblem as err:
        raise DataError(f"{path}: {err.problem}. Fix: re-run `prepare` and `validate`.") from None
    except OSError as err:
        raise DataError(f"{path}: unreadable mask ({err}).") from None


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The samples of one ``split`` of a prepared dataset, in manifest order.

    Args:
        prepared_dir: the folder holding ``manifest.csv`` (paths in it are relative to it and
            must stay inside it: a row with an absolute path, ``..`` or a symlink leading out
            raises :class:`DataError`).
        split: ``train``, ``val``, ...; a split with no rows raises :class:`DataError`.
        transform: an albumentations-style callable ``t(image=..., mask=...) -> dict``
            (:func:`pspnet.data.transforms.train_transform` / ``eval_transform``). ``None``
            returns the raw image as float32 ``(3,H,W)`` in 0..255, not normalised.
        exclude: sample ids to leave out (the quarantine list:
            :func:`pspnet.data.quarantine.excluded_ids`).
        max_image_pixels: files declaring more pixels are refused before decoding
            (``params.data.max_image_pixels``).

    Attributes:
        ids: sample ids, index-aligned with the items.
        excluded: how many rows of the split ``exclude`` left out.
    """

    def __init__(
        self,
        prepared_dir: str | Path,
        split: str | Sequence[str],
        transform: Transform | None = None,
        *,
        exclude: Collection[str] = frozenset(),
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.root = Path(prepared_dir)
        manifest = self.root / MANIFEST_FILE
        rows = split_rows(read_manifest(manifest), split)
        kept = ~rows["id"].isin(set(exclude))
        self.excluded = int((~kept).sum())
        rows = rows[kept].reset_index(drop=True)
        if rows.empty:
            left_out = f" ({self.excluded} quarantined sample(s) left out)" if self.excluded else ""
            raise DataError(f"{manifest}: split {split!r} has no samples{left_out}.")
        for row in rows.to_dict("records"):
            for kind in ("image", "mask"):
                escape = escaping_entry(row[kind], self.root)
                if escape is not None:
                    raise DataError(
                        f"{manifest}: sample {row['id']!r}: {kind} path {row[kind]!r} {escape}, outside the prepared "
                        "folder; it is not read. Fix: manifest paths must be relative to the prepared folder and "
                        "stay inside it; re-run `prepare` and `validate`."
                    )
        self.split = split if isinstance(split, str) else "+".join(split)
        self.ids: list[str] = rows["id"].tolist()
        self.image_paths: list[Path] = [self.root / p for p in rows["image"]]
        self.mask_paths: list[Path] = [self.root / p for p in rows["mask"]]
        self.transform = transform
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` untransformed: ``(H,W,3)`` uint8 RGB image, ``(H,W)`` uint8 mask."""
        image = load_image(self.image_paths[index], self.max_image_pixels)
        mask = load_mask(self.mask_paths[index], self.max_image_pixels)
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
