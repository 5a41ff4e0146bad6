"""Your own dataset: images and masks in split folders, the classes in one small file.

Layout under ``data.source.location``::

    <location>/
      classes.yaml | classes.yml | classes.json | classes.csv | classes.txt   (exactly one)
      images/<split>/<name>.jpg|.jpeg|.png|.bmp|.tif|.tiff|.npy
      masks/<split>/<name>.png                          (same <split>, same <name>)

**Splits** are the folders under ``images/``: ``train`` and ``val`` are required, any other
(``test``, ``holdout`` ...) is kept as a split of that name; ``masks/`` has the same split
folders. Files may sit in sub-folders of a split (``images/train/site1/a.jpg`` pairs with
``masks/train/site1/a.png``); suffixes are matched in any case; hidden files and folders
(``.*``) are skipped. The sample id is ``<name>``, the file name without its suffix: it must be
unique across all splits and use only letters, digits, ``.``, ``_`` and ``-``. Every image
needs its mask and every mask its image. A split folder without images yields an empty split
(``validate`` fails when the split is required).

**Classes**: class id = position in the file, from 0. Colours (R, G, B, each 0..255) are
optional for id masks (a class without one is drawn in the Pascal VOC palette) and required
for colour masks.

- ``classes.txt``: one class per line, ``name`` or ``name:R,G,B`` (so no ``:`` in names).
  Blank lines and lines starting with ``#`` are skipped; fields after a second ``:`` are
  ignored, so a CVAT ``labelmap.txt`` works as it is::

      background:0,0,0
      road:128,64,128
      traffic light

- ``classes.csv``: the header ``id,name`` or ``id,name,r,g,b`` (any case; a spreadsheet's
  UTF-8 BOM is fine), then one row per class, ids ``0..K-1`` in any order.
- ``classes.json`` / ``classes.yaml`` (``.yml``): a list of names (``[background, road]``), or
  a list of ``{name: ..., color: [r, g, b]}`` objects (``color`` optional), or a mapping
  ``{classes: <such a list>, ignore: [...]}``. Only this mapping can declare more mask values
  that mean "not labelled": ids (for id masks) and ``[r, g, b]`` colours (for colour masks)::

      classes:
        - {name: background, color: [0, 0, 0]}
        - {name: road, color: [128, 64, 128]}
      ignore: [254, [255, 255, 255]]

**Masks**, each read according to its PNG mode:

- id masks, 8-bit single-channel (``L``) or palette (``P``: the index is the id): class ids
  ``0..K-1``; ``data.ignore_index`` (255 by default) and the ``ignore`` ids become ignore.
  16-bit masks are refused (save them as 8-bit).
- colour masks, ``RGB`` / ``RGBA`` (alpha unused): each colour is a class colour (every class
  then needs one, all different) or an ``ignore`` colour. A colour mask while some class has
  no colour is refused (an id mask was expected).

Any other id or colour is an error naming the mask and the values found (colours with their
pixel counts). **Images** are anything PIL reads: RGB PNG / JPEG files are copied as they are,
others follow ``data.non_rgb_images`` (exact conversions to RGB PNG, or rejection). **Float
images**: a ``.npy`` array (H, W, 3) or (H, W) of floats, or a float TIFF (mode ``F``), holds
intensities in [0, 1], stored as ``round(255 * x)``; NaN, inf or values outside [0, 1] reject
the sample (a ``.npy`` uint8 array is taken as it is). A mask must have its image's size. There
are no size expectations (user data).

A problem of one sample (unpaired file, unknown id or colour, wrong size, bad image ...)
rejects that sample only: ``prepare`` lists it in ``rejected.csv`` and ``validate`` reports it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from pspnet.config import Params
from pspnet.data.classes import ClassTable
from pspnet.data.imagefiles import NPY_SUFFIX, UNREADABLE
from pspnet.data.sources.base import (
    DUPLICATE_ID,
    IMAGE_MODE,
    MASK_MODE,
    MISSING_PAIR,
    UNKNOWN_LABELS,
    Expectations,
    ImageData,
    LabelMap,
    SampleError,
    SampleRef,
    SourceData,
    SourceFolders,
    check_same_size,
    files_by_stem,
    float_image,
    palette_colors,
    read_id_mask,
    require_dir,
)
from pspnet.errors import DataError

NAME = "folder"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", NPY_SUFFIX)
#: PIL mode of float images (e.g. 32-bit float TIFF).
FLOAT_MODE = "F"
MASK_SUFFIX = ".png"
REQUIRED_SPLITS = ("train", "val")
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json", "classes.csv", "classes.txt")
#: Mask modes read as colours (alpha dropped); every other mode is an id mask (base.read_id_mask).
COLOR_MASK_MODES = ("RGB", "RGBA")
#: The largest id an (8-bit) mask can store; extra ignore ids beyond it are refused.
MAX_MASK_ID = 255
CHANNEL_MAX = 255
#: Unknown colours listed in an error message (the most frequent first).
MAX_LISTED = 10
TXT_COMMENT = "#"
TXT_FIELD_SEP = ":"
COLOR_SEP = ","
CSV_COLUMNS = ("id", "name")
CSV_COLOR_COLUMNS = ("r", "g", "b")
MAPPING_KEYS = ("classes", "ignore")
ENTRY_KEYS = ("name", "color")
LAYOUT = (
    f"  {' | '.join(CLASS_FILES)}   (exactly one)\n"
    f"  {IMAGES_DIR}/<split>/<name>{'|'.join(IMAGE_SUFFIXES)}   (splits: train, val, any other)\n"
    f"  {MASKS_DIR}/<split>/<name>{MASK_SUFFIX}   (same split and name)"
)

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# The class file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSpec:
    """What the class file declares: names, colours (``None``: not given), extra ignore values."""

    file: Path
    names: tuple[str, ...]
    colors: tuple[RGB | None, ...]
    ignore_ids: tuple[int, ...] = ()
    ignore_colors: tuple[RGB, ...] = ()


def _bad(where: str, problem: str, fix: str) -> DataError:
    return DataError(f"{where}: {problem}. Fix: {fix}.")


def _color(value: Any, where: str) -> RGB:
    """``[r, g, b]`` (three integers 0..255) as a tuple, else an error at ``where``."""
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == len(CSV_COLOR_COLUMNS)
    if ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= CHANNEL_MAX for v in value):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise _bad(
        where, f"colour {value!r} is not three integers 0..{CHANNEL_MAX}", "write it as R, G, B, e.g. 128, 64, 128"
    )


def _int(text: str, where: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _bad(where, f"{what} {text!r} is not an integer", f"write the {what} as a whole number") from None


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(
            where, f"class name {value!r} is not a non-empty text", "write the name (quote it in YAML: 'no', '1')"
        )
    return value.strip()


def _read_txt(path: Path) -> ClassSpec:
    names: list[str] = []
    colors: list[RGB | None] = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith(TXT_COMMENT):
            continue
        fields = line.split(TXT_FIELD_SEP)
        where = f"{path}:{number}"
        names.append(_name(fields[0], where))
        channels = fields[1].strip() if len(fields) > 1 else ""
        colors.append(
            _color([_int(c, where, "colour value") for c in channels.split(COLOR_SEP)], where) if channels else None
        )
    return ClassSpec(path, tuple(names), tuple(colors))


def _read_csv(path: Path) -> ClassSpec:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = [h.strip().lower() for h in next(reader, [])]
        with_colors = header == [*CSV_COLUMNS, *CSV_COLOR_COLUMNS]
        if header != list(CSV_COLUMNS) and not with_colors:
            raise _bad(
                f"{path}:1",
                f"header {header} is not {','.join(CSV_COLUMNS)} nor {','.join(CSV_COLUMNS + CSV_COLOR_COLUMNS)}",
                "make the first line exactly one of those two",
            )
        by_id: dict[int, tuple[str, RGB | None, int]] = {}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise _bad(where, f"{len(row)} fields, the header has {len(header)}", f"write {','.join(header)}")
            class_id = _int(row[0], where, "id")
            if class_id in by_id:
                raise _bad(
                    where, f"id {class_id} again (first on line {by_id[class_id][2]})", "give each class its own id"
                )
            color = _color([_int(c, where, "colour value") for c in row[2:]], where) if with_colors else None
            by_id[class_id] = (_name(row[1], where), color, reader.line_num)
    missing = sorted(set(range(len(by_id))) - set(by_id))
    if missing:
        raise _bad(
            str(path),
            f"class ids must be 0..{len(by_id) - 1} without gaps; {missing[0]} is missing",
            "number the classes from 0",
        )
    rows = [by_id[i] for i in range(len(by_id))]
    return ClassSpec(path, tuple(r[0] for r in rows), tuple(r[1] for r in rows))


def _read_structured(path: Path) -> ClassSpec:
    """``classes.json`` / ``classes.yaml``: a list of entries, or ``{classes: [...], ignore: [...]}``."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise _bad(str(path), f"cannot parse it ({' '.join(str(err).split())})", "correct the syntax") from None
    ignore: Any = []
    if isinstance(raw, dict):
        unknown = sorted(str(k) for k in set(raw) - set(MAPPING_KEYS))
        if unknown or "classes" not in raw:
            raise _bad(
                str(path), f"keys {sorted(map(str, raw))}, expected 'classes' and optionally 'ignore'", "use those keys"
            )
        raw, ignore = raw["classes"], raw.get("ignore") or []
    if not isinstance(raw, list) or not isinstance(ignore, list):
        raise _bad(
            str(path),
            "expected a list of classes (or a mapping with 'classes': [...], 'ignore': [...])",
            "see the folder layout doc",
        )
    names: list[str] = []
    colors: list[RGB | None] = []
    for index, entry in enumerate(raw):
        where = f"{path}: classes[{index}]"
        if isinstance(entry, dict):
            unknown = sorted(str(k) for k in set(entry) - set(ENTRY_KEYS))
            if unknown or "name" not in entry:
                raise _bad(
                    where, f"keys {sorted(map(str, entry))}, expected 'name' and optionally 'color'", "use those keys"
                )
            names.append(_name(entry["name"], where))
            colors.append(_color(entry["color"], where) if entry.get("color") is not None else None)
        else:
            names.append(_name(entry, where))
            colors.append(None)
    ignore_ids: list[int] = []
    ignore_colors: list[RGB] = []
    for index, value in enumerate(ignore):
        where = f"{path}: ignore[{index}]"
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= MAX_MASK_ID:
                raise _bad(where, f"ignore id {value} is outside 0..{MAX_MASK_ID}", "list mask ids your masks can hold")
            ignore_ids.append(value)
        else:
            ignore_colors.append(_color(value, where))
    return ClassSpec(path, tuple(names), tuple(colors), tuple(ignore_ids), tuple(ignore_colors))


READERS = {
    ".txt": _read_txt,
    ".csv": _read_csv,
    ".json": _read_structured,
    ".yaml": _read_structured,
    ".yml": _read_structured,
}


def _check_spec(spec: ClassSpec, ignore_index: int) -> None:
    """Names unique, given colours unique, ignore values not classes, K below ``ignore_index``."""
    path = spec.file
    if not spec.names:
        raise _bad(str(path), "no classes", "list the class names, one per class (id = position from 0)")
    first: dict[str, int] = {}
    for class_id, name in enumerate(spec.names):
        if name in first:
            raise _bad(
                str(path), f"class name {name!r} twice (classes {first[name]} and {class_id})", "make the names unique"
            )
        first[name] = class_id
    owner: dict[RGB, int] = {}
    for class_id, color in enumerate(spec.colors):
        if color is None:
            continue
        if color in owner:
            raise _bad(
                str(path),
                f"classes {spec.names[owner[color]]!r} and {spec.names[class_id]!r} have the same colour {color}",
                "give every class its own colour (colour masks are mapped by colour)",
            )
        owner[color] = class_id
    for color in spec.ignore_colors:
        if color in owner:
            raise _bad(
                str(path),
                f"ignore colour {color} is the colour of class {spec.names[owner[color]]!r}",
                "remove one of them",
            )
    for value in spec.ignore_ids:
        if value < len(spec.names):
            raise _bad(
                str(path),
                f"ignore id {value} is class {spec.names[value]!r}",
                f"ignore ids must be {len(spec.names)} or more",
            )
    if len(spec.names) > ignore_index:
        raise _bad(
            str(path),
            f"{len(spec.names)} classes, but data.ignore_index is {ignore_index} (class ids must stay below it)",
            "set data.ignore_index in params.yaml above the last class id",
        )


def read_class_file(root: Path, ignore_index: int) -> ClassSpec:
    """The checked class declaration of the dataset at ``root`` (exactly one class file)."""
    found = [root / name for name in CLASS_FILES if (root / name).is_file()]
    if len(found) != 1:
        problem = f"{len(found)} class files ({', '.join(p.name for p in found)})" if found else "no class file"
        raise _bad(
            str(root),
            f"{problem}; data.source.name {NAME!r} needs exactly one of {', '.join(CLASS_FILES)}",
            "keep exactly one",
        )
    spec = READERS[found[0].suffix](found[0])
    _check_spec(spec, ignore_index)
    return spec


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


def _pair_missing(name: str, image: Path | None, mask: Path, image_dir: Path, mask_dir: Path) -> SampleError:
    """The error of an image without its mask (``image`` given) or of ``mask`` without its image."""
    if image is not None:
        expected = mask_dir / image.relative_to(image_dir).with_suffix(MASK_SUFFIX)
        return SampleError(image, MISSING_PAIR, f"no mask {expected}", "add the mask (same name, .png) or remove the image")
    return SampleError(mask, MISSING_PAIR, f"no image named {name!r} in {image_dir}", "add the image or remove the mask")


def _unpaired(problem: DataError) -> tuple[ImageData, np.ndarray]:
    """The loader of an image without mask (or mask without image): the writer records its error."""
    raise problem


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
            raise _bad(
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
        raise _bad(
            str(extra[0]), f"mask split folder without {images_root / extra[0].name}", "add the images or remove it"
        )
    return [*REQUIRED_SPLITS, *sorted(splits - set(REQUIRED_SPLITS))]


def folder_source(params: Params, folders: SourceFolders) -> SourceData:
    """List the samples of a user dataset in the folder layout; see the module doc."""
    root = folders.dataset(NAME)
    ignore = params.data.ignore_index
    splits = _split_dirs(root)
    spec = read_class_file(root, ignore)
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
            else:
                problem = _pair_missing(name, images.get(name), masks.get(name, mask_dir), image_dir, mask_dir)
                load = partial(_unpaired, problem)
            refs.append(SampleRef(name, split, load, tuple(str(p) for p in (images.get(name), masks.get(name)) if p)))
        for name, path in repeated:
            refs.append(SampleRef(name, split, partial(_duplicate, name, path), (str(path),)))
    classes = ClassTable(spec.names, tuple(c or p for c, p in zip(spec.colors, palette_colors(count))), ignore)
    return SourceData(classes, refs, len(refs), Expectations(), (root,))
