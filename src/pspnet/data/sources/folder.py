"""Your own dataset: images and masks in split folders, the classes in one small file.

Layout under ``data.source.location`` (the full format: docs/datasets.md, "The folder source")::

    <location>/
      classes.yaml | classes.yml | classes.json | classes.csv | classes.txt   (exactly one)
      images/<split>/<name>.jpg|.jpeg|.png|.bmp|.tif|.tiff|.npy
      masks/<split>/<name>.png                          (same <split>, same <name>)

``train`` and ``val`` are required splits; the sample id is ``<name>``, unique across splits.
Masks hold class ids (8-bit ``L`` / ``P``) or class colours (``RGB`` / ``RGBA``); the class
file is read by :mod:`pspnet.data.sources.folder_classes`. A problem of one sample rejects
that sample only: ``prepare`` lists it in ``rejected.csv`` and ``validate`` reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pspnet.config import Params
from pspnet.data.classes import ClassTable
from pspnet.data.imagefiles import NPY_SUFFIX, UNREADABLE
from pspnet.data.sources.base import (
    DUPLICATE_ID,
    IMAGE_MODE,
    MASK_MODE,
    UNKNOWN_LABELS,
    Expectations,
    ImageData,
    LabelMap,
    SampleError,
    SampleRef,
    SourceData,
    SourceFolders,
    broken_pair,
    check_same_size,
    files_by_stem,
    float_image,
    palette_colors,
    read_id_mask,
    require_dir,
)
from pspnet.data.sources.folder_classes import CHANNEL_MAX, CLASS_FILES, RGB, ClassSpec, input_error, read_class_file

NAME = "folder"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", NPY_SUFFIX)
#: PIL mode of float images (e.g. 32-bit float TIFF).
FLOAT_MODE = "F"
MASK_SUFFIX = ".png"
REQUIRED_SPLITS = ("train", "val")
#: Mask modes read as colours (alpha dropped); every other mode is an id mask (base.read_id_mask).
COLOR_MASK_MODES = ("RGB", "RGBA")
#: Unknown colours listed in an error message (the most frequent first).
MAX_LISTED = 10
LAYOUT = (
    f"  {' | '.join(CLASS_FILES)}   (exactly one)\n"
    f"  {IMAGES_DIR}/<split>/<name>{'|'.join(IMAGE_SUFFIXES)}   (splits: train, val, any other)\n"
    f"  {MASKS_DIR}/<split>/<name>{MASK_SUFFIX}   (same split and name)"
)

# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> one int32 per colour: ``r << 16 | g << 8 | b``."""
    wide = rgb.astype(np.int32)
    return (wide[..., 0] << 16) | (wide[..., 1] << 8) | wide[..., 2]


def _unpack(packed: int) -> RGB:
    return (packed >> 16) & CHANNEL_MAX, (packed >> 8) & CHANNEL_MAX, packed & CHANNEL_MAX


@dataclass(frozen=True)
class ColorMap:
    """Mask colours -> class ids (or ignore), one binary search per pixel; other colours are errors."""

    spec: ClassSpec
    ignore: int

    def __post_init__(self) -> None:
        pairs = {c: i for i, c in enumerate(self.spec.colors) if c is not None}
        pairs.update({c: self.ignore for c in self.spec.ignore_colors})
        keys = _pack(np.array(list(pairs), dtype=np.uint8).reshape(-1, 3))
        order = np.argsort(keys)
        object.__setattr__(self, "_keys", keys[order])
        object.__setattr__(self, "_values", np.array(list(pairs.values()), dtype=np.uint8)[order])

    def __call__(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        """Map an (H, W, 3) colour mask read from ``path`` to class ids."""
        uncolored = [n for n, c in zip(self.spec.names, self.spec.colors) if c is None]
        if uncolored:
            raise SampleError(
                path,
                MASK_MODE,
                f"colour (RGB) mask where a class-id mask is expected: class(es) "
                f"{', '.join(map(repr, uncolored[:MAX_LISTED]))} of {self.spec.file} have no colour",
                "save the mask as an 8-bit single-channel PNG of class ids (mode L or P); or, to use colour "
                f"masks, give every class its colour in {self.spec.file.name}",
            )
        keys: np.ndarray = self._keys  # type: ignore[attr-defined]
        packed = _pack(rgb)
        index = np.minimum(np.searchsorted(keys, packed), len(keys) - 1)
        known = keys[index] == packed
        if not known.all():
            colors, counts = np.unique(packed[~known], return_counts=True)
            order = np.argsort(-counts, kind="stable")
            shown = ", ".join(f"{_unpack(int(colors[i]))} x{int(counts[i])} px" for i in order[:MAX_LISTED])
            more = f" and {len(colors) - MAX_LISTED} more" if len(colors) > MAX_LISTED else ""
            grey = all(len(set(_unpack(int(c)))) == 1 for c in colors)
            hint = "; if it stores class ids, save it as a single-channel PNG" if grey else ""
            raise SampleError(
                path,
                UNKNOWN_LABELS,
                f"unknown mask colour(s) {shown}{more}; the known colours are those in {self.spec.file}",
                f"correct the mask, or add the colour to {self.spec.file.name} (a class or an 'ignore' colour){hint}",
            )
        values: np.ndarray = self._values  # type: ignore[attr-defined]
        return values[index]


def read_image(path: Path) -> ImageData:
    """The image of a sample: ``path`` itself (the writer converts it), or a decoded uint8 array
    for float images (``.npy`` arrays, float TIFFs; see :func:`~pspnet.data.sources.base.float_image`)."""
    try:
        if path.suffix.lower() == NPY_SUFFIX:
            array = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as img:
                if img.mode != FLOAT_MODE:
                    return path
                array = np.asarray(img, dtype=np.float32)
    except (OSError, ValueError) as err:
        raise SampleError(path, UNREADABLE, f"cannot read the image ({err})", "replace or remove the file") from None
    if np.issubdtype(array.dtype, np.floating):
        return float_image(array, path)
    if array.dtype != np.uint8:
        raise SampleError(
            path,
            IMAGE_MODE,
            f"array of dtype {array.dtype}; image arrays are uint8 (0..255) or float (0..1)",
            "save it as uint8, or as float scaled to [0, 1]",
        )
    return array


def load_sample(image_file: Path, mask_file: Path, ids: LabelMap, colors: ColorMap) -> tuple[ImageData, np.ndarray]:
    """One sample: the image (file as is, or float data converted), its id or colour mask mapped
    to class ids, sizes checked."""
    try:
        with Image.open(mask_file) as img:
            rgb = np.asarray(img.convert("RGB")) if img.mode in COLOR_MASK_MODES else None
    except (OSError, ValueError) as err:
        raise SampleError(mask_file, UNREADABLE, f"cannot read the mask ({err})", "replace or remove the file") from None
    mask = ids(read_id_mask(mask_file), mask_file) if rgb is None else colors(rgb, mask_file)
    image = read_image(image_file)
    check_same_size(image, mask, image_file, mask_file)
    return image, mask


def _unpaired(name: str, split: str, image: Path | None, mask: Path, image_dir: Path, mask_dir: Path) -> SampleRef:
    """The rejected sample of an image without its mask (``image`` given) or of ``mask`` without its image."""
    if image is not None:
        expected = mask_dir / image.relative_to(image_dir).with_suffix(MASK_SUFFIX)
        return broken_pair(name, split, image, f"no mask {expected}", "add the mask (same name, .png) or remove the image")
    return broken_pair(name, split, mask, f"no image named {name!r} in {image_dir}", "add the image or remove the mask")


def _duplicate(name: str, path: Path) -> tuple[ImageData, np.ndarray]:
    """The loader of a second file named ``name``: never called, the writer rejects the repeated id."""
    raise SampleError(path, DUPLICATE_ID, f"same sample name {name!r} as another file", "rename or remove one of them")


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


def _visible(files: dict[str, Path], folder: Path) -> dict[str, Path]:
    """``files`` less hidden ones (``.name`` files or folders: macOS ``._*``, ``.ipynb_checkpoints``)."""
    return {k: p for k, p in files.items() if not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _split_dirs(root: Path) -> list[str]:
    """The split folders under images/ (train, val first), checked against masks/."""
    images_root = require_dir(root, IMAGES_DIR, NAME, LAYOUT)
    masks_root = require_dir(root, MASKS_DIR, NAME, LAYOUT)
    for folder, suffixes in ((images_root, IMAGE_SUFFIXES), (masks_root, (MASK_SUFFIX,))):
        stray = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if stray:
            raise input_error(
                str(stray[0]),
                f"file outside a split folder ({len(stray)} such)",
                f"move it into {folder.name}/<split>/ (train, val ...)",
            )
    splits = {p.name for p in images_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for split in REQUIRED_SPLITS:
        require_dir(root, f"{IMAGES_DIR}/{split}", NAME, LAYOUT)
    extra = sorted(
        p for p in masks_root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in splits
    )
    if extra:
        raise input_error(
            str(extra[0]), f"mask split folder without {images_root / extra[0].name}", "add the images or remove it"
        )
    return [*REQUIRED_SPLITS, *sorted(splits - set(REQUIRED_SPLITS))]


def folder_source(params: Params, folders: SourceFolders) -> SourceData:
    """List the samples of a user dataset in the folder layout; see the module doc."""
    root = folders.dataset(NAME)
    ignore = params.data.ignore_index
    splits = _split_dirs(root)
    spec = read_class_file(root, ignore, NAME)
    count = len(spec.names)
    ignored = ", ".join(map(str, sorted({ignore, *spec.ignore_ids})))
    accepted = f"0..{count - 1} (classes of {spec.file.name}), ignored: {ignored}"
    ids = LabelMap({i: i for i in range(count)}, ignore, (ignore, *spec.ignore_ids), accepted)
    colors = ColorMap(spec, ignore)
    refs: list[SampleRef] = []
    for split in splits:
        image_dir = root / IMAGES_DIR / split
        mask_dir = require_dir(root, f"{MASKS_DIR}/{split}", NAME, LAYOUT)
        # Repeated names (here or across splits) are listed as they are: the writer rejects every
        # repetition of an id, naming the files of its first occurrence.
        repeated: list[tuple[str, Path]] = []
        images = _visible(files_by_stem(image_dir, IMAGE_SUFFIXES, duplicates=repeated), image_dir)
        masks = _visible(files_by_stem(mask_dir, (MASK_SUFFIX,), duplicates=repeated), mask_dir)
        for name in sorted(images.keys() | masks.keys()):
            if name in images and name in masks:
                load = partial(load_sample, images[name], masks[name], ids, colors)
                refs.append(SampleRef(name, split, load, (str(images[name]), str(masks[name]))))
            else:
                refs.append(_unpaired(name, split, images.get(name), masks.get(name, mask_dir), image_dir, mask_dir))
        for name, path in repeated:
            refs.append(SampleRef(name, split, partial(_duplicate, name, path), (str(path),)))
    classes = ClassTable(spec.names, tuple(c or p for c, p in zip(spec.colors, palette_colors(count))), ignore)
    return SourceData(classes, refs, len(refs), Expectations(), (root,))
