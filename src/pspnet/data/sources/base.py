"""What every source adapter shares: the sample reference, the source's definition, and the
helpers that read a dataset's files and map its label ids onto ours with errors naming the file.

An adapter (``(params, folders: SourceFolders) -> SourceData``) only *lists* its samples: each
:class:`SampleRef` carries a ``load`` function that reads that one sample when called. The
writer (:mod:`pspnet.data.prepare`) calls ``load`` from a few threads at a time, so a large
dataset is never held in memory and its files are decoded in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pspnet.data.classes import ClassTable
from pspnet.errors import DataError

#: An image: a decoded uint8 (H, W, 3) RGB array, or the path of a file the writer copies
#: verbatim when it is already an RGB PNG or JPEG (no re-encoding, no quality loss) and
#: converts to an RGB PNG otherwise (grey, palette or CMYK files).
ImageData = np.ndarray | Path
#: ``load()`` -> (image, mask): the mask is uint8 (H, W) in OUR label space (class ids 0..K-1,
#: ``ignore_index`` elsewhere), already mapped from the dataset's ids.
Loader = Callable[[], tuple[ImageData, np.ndarray]]

#: Mask modes that store one integer id per pixel (palette PNGs: the index is the id).
ID_MASK_MODES = ("L", "P", "I", "I;16")


@dataclass(frozen=True)
class SourceFolders:
    """The local folders of a source's raw inputs (see :mod:`pspnet.data.location`).

    ``location``: the dataset (``data.source.location``), ``None`` for generated data;
    ``sbd``: the SBD release (``data.source.sbd_location``, ``voc`` only).
    """

    location: Path | None = None
    sbd: Path | None = None

    def dataset(self, source: str) -> Path:
        """``location``, which every file-based source needs."""
        if self.location is None:
            raise DataError(f"data.source.location is required for source {source!r}. Set it in params.yaml.")
        return self.location


@dataclass(frozen=True)
class SampleRef:
    """One sample of a source, not yet read: ``load()`` reads it (see :data:`Loader`).

    ``files`` names the source files it comes from, for error messages.
    """

    id: str
    split: str
    load: Loader
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Expectations:
    """What the source's definition promises about its images, checked by the validate stage.

    ``image_sizes``: the only (height, width) sizes the dataset ships (``None``: any);
    ``min_side`` / ``max_side``: bounds on both sides in pixels (``None``: unbounded).
    """

    image_sizes: tuple[tuple[int, int], ...] | None = None
    min_side: int | None = None
    max_side: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image_sizes": [list(s) for s in self.image_sizes] if self.image_sizes is not None else None,
            "min_side": self.min_side,
            "max_side": self.max_side,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Expectations:
        sizes = raw.get("image_sizes")
        return cls(
            image_sizes=tuple((int(h), int(w)) for h, w in sizes) if sizes is not None else None,
            min_side=raw.get("min_side"),
            max_side=raw.get("max_side"),
        )


@dataclass(frozen=True)
class SourceData:
    """What an adapter hands the writer: class table, samples (lazy), size hint, expectations."""

    classes: ClassTable
    samples: Iterable[SampleRef]
    #: Number of samples ``samples`` yields (for the progress bar), or ``None`` if unknown.
    total: int | None = None
    expect: Expectations = field(default_factory=Expectations)
    #: The local folders the adapter read (empty for generated data), for the dataset record.
    inputs: tuple[Path, ...] = ()


# --------------------------------------------------------------------------------------------
# Layout checks
# --------------------------------------------------------------------------------------------


def require_dir(root: Path, relative: str, source: str, layout: str) -> Path:
    """``root / relative``, or a :class:`DataError` naming the missing folder and the layout."""
    path = root / relative
    if not path.is_dir():
        raise DataError(
            f"{path}: folder not found; data.source.name {source!r} expects this layout under "
            f"data.source.location ({root}):\n{layout}\nFix: point data.source.location at the "
            "dataset's top folder, or pick the data.source.name that matches its layout."
        )
    return path


def require_file(path: Path, source: str, what: str) -> Path:
    """``path``, or a :class:`DataError` naming it and what it should be."""
    if not path.is_file():
        raise DataError(f"{path}: file not found ({what}, needed by data.source.name {source!r}).")
    return path


def read_list(path: Path) -> list[str]:
    """The non-empty, stripped lines of a split list file."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def files_by_stem(folder: Path, suffixes: Sequence[str], strip: str = "") -> dict[str, Path]:
    """``{stem: path}`` for the files of ``folder`` (recursively) with one of ``suffixes``.

    ``strip`` is removed from the end of each stem (e.g. Cityscapes' ``_leftImg8bit``). Hidden
    files and folders are skipped. Two files with the same stem are an error naming both.
    """
    found: dict[str, Path] = {}
    wanted = {s.lower() for s in suffixes}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in wanted or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # hidden files and folders (macOS ._* files, .ipynb_checkpoints)
        stem = path.stem[: -len(strip)] if strip and path.stem.endswith(strip) else path.stem
        if stem in found:
            raise DataError(f"{path}: same sample name {stem!r} as {found[stem]}. Fix: rename or remove one of them.")
        found[stem] = path
    return found


def check_paired(
    images: Mapping[str, Path],
    masks: Mapping[str, Path],
    mask_for: Callable[[str, Path], Path],
    image_for: Callable[[str, Path], Path],
) -> None:
    """A :class:`DataError` naming the first image without its label image (``mask_for(name,
    image)`` says where it should be), or label image without its image, and how many more."""
    if lone := sorted(images.keys() - masks.keys()):
        image = images[lone[0]]
        raise DataError(
            f"{image}: no label image {mask_for(lone[0], image)} ({len(lone)} image(s) lack one). "
            "Fix: add the label image or remove the image."
        )
    if lone := sorted(masks.keys() - images.keys()):
        mask = masks[lone[0]]
        raise DataError(
            f"{mask}: no image {image_for(lone[0], mask)} ({len(lone)} label image(s) lack one). "
            "Fix: add the image or remove the label image."
        )


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header only."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the image ({err}). Fix: replace or remove the file.") from None


def read_id_mask(path: Path) -> np.ndarray:
    """A label image as an integer (H, W) array of the ids it stores (palette indices for ``P``).

    RGB or RGBA label images are refused here: their colours are not ids (the ``folder`` source
    maps colours itself).
    """
    try:
        with Image.open(path) as img:
            if img.mode not in ID_MASK_MODES:
                raise DataError(
                    f"{path}: label image has mode {img.mode}, expected one id per pixel (mode "
                    f"{', '.join(ID_MASK_MODES)}). Fix: save it as a single-channel (or palette) PNG of class ids."
                )
            return np.asarray(img)
    except DataError:
        raise
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the label image ({err}). Fix: replace or remove the file.") from None


def check_same_size(image: ImageData, mask: np.ndarray, image_file: Path | str, mask_file: Path | str) -> None:
    """A :class:`DataError` naming both files when the mask's size differs from the image's."""
    height, width = image_size(image) if isinstance(image, Path) else image.shape[:2]
    if mask.shape[:2] != (height, width):
        raise DataError(
            f"{mask_file}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_file} is "
            f"{width}x{height}. Fix: the mask must have the image's size; replace it or remove the pair."
        )


# --------------------------------------------------------------------------------------------
# Label mapping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelMap:
    """The dataset's label ids -> ours: ``mapping[raw] = class id or ignore``; other ids are errors.

    ``ignore_ids`` map to ``ignore``. Mapping is one table lookup per pixel.
    """

    mapping: Mapping[int, int]
    ignore: int
    ignore_ids: tuple[int, ...] = ()
    #: What the error message calls the accepted ids, e.g. "0..11 (11 = void)".
    accepted: str = ""

    def __post_init__(self) -> None:
        table = np.full(max([*self.mapping, *self.ignore_ids, 255]) + 1, -1, dtype=np.int32)
        for raw, ours in self.mapping.items():
            table[raw] = ours
        for raw in self.ignore_ids:
            table[raw] = self.ignore
        object.__setattr__(self, "_table", table)

    def __call__(self, raw: np.ndarray, path: Path | str) -> np.ndarray:
        """Map a raw id array read from ``path``; unknown ids raise a :class:`DataError` naming them."""
        table: np.ndarray = self._table  # type: ignore[attr-defined]
        values = np.unique(raw)
        unknown = [int(v) for v in values if v < 0 or v >= len(table) or table[v] < 0]
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise DataError(
                f"{path}: unknown label id(s) {shown}; this dataset's ids are {self.accepted or sorted(self.mapping)}. "
                "Fix: correct the mask, or pick the data.source.name that matches the dataset."
            )
        return table[raw.astype(np.int64, copy=False)].astype(np.uint8)


def shifted_map(num_classes: int, ignore: int, first: int = 0, ignore_ids: tuple[int, ...] = (), accepted: str = "") -> LabelMap:
    """Ids ``first .. first + num_classes - 1`` -> ``0 .. num_classes - 1``; ``ignore_ids`` -> ignore."""
    return LabelMap({first + i: i for i in range(num_classes)}, ignore, ignore_ids, accepted)


def load_pair(image_file: Path, mask_file: Path, labels: LabelMap) -> tuple[ImageData, np.ndarray]:
    """The usual loader: image file as is, id mask mapped by ``labels``, sizes checked."""
    mask = labels(read_id_mask(mask_file), mask_file)
    check_same_size(image_file, mask, image_file, mask_file)
    return image_file, mask


def palette_colors(count: int) -> tuple[tuple[int, int, int], ...]:
    """The Pascal VOC colour map (bit-interleaved id bits), used where a dataset defines no colours."""
    colors = []
    for i in range(count):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)
