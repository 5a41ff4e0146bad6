"""What every source adapter shares: the sample reference, the source's definition, and the
helpers that read a dataset's files and map its label ids onto ours with errors naming the file.

An adapter (``(params, folders: SourceFolders) -> SourceData``) only *lists* its samples: each
:class:`SampleRef` carries a ``load`` function that reads that one sample when called. The
writer (:mod:`pspnet.data.convert`) calls ``load`` from a few threads at a time, so a large
dataset is never held in memory and its files are decoded in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pspnet.config import PIL_PIXEL_CAP
from pspnet.data.classes import ClassTable
from pspnet.data.imagefiles import NPY_SUFFIX, UNREADABLE, FileProblem, npy_header
from pspnet.errors import DataError

#: An image: a decoded uint8 (H, W, 3) RGB array or (H, W) grey array (grey follows
#: ``data.non_rgb_images``), or the path of a file the writer copies verbatim when it is
#: already an RGB PNG or JPEG (no re-encoding, no quality loss) and converts to an RGB PNG when
#: the conversion is exact (see :mod:`pspnet.data.convert`).
ImageData = np.ndarray | Path
#: ``load()`` -> (image, mask): the mask is uint8 (H, W) in OUR label space (class ids 0..K-1,
#: ``ignore_index`` elsewhere), already mapped from the dataset's ids.
Loader = Callable[[], tuple[ImageData, np.ndarray]]

#: Mask modes that store one 8-bit id per pixel (palette PNGs: the index is the id). 16- and
#: 32-bit masks (``I;16``, ``I``) are refused: the prepared masks are 8-bit, ids above 255
#: cannot be kept, and no dataset we read ships them.
ID_MASK_MODES = ("L", "P")
#: Modes of masks with more than 8 bits per pixel.
DEEP_MASK_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

#: Check codes of per-sample problems (the ``check`` column of ``rejected.csv``), besides
#: those of :mod:`pspnet.data.imagefiles` (empty_file, not_an_image, too_large,
#: unreadable_file, outside_root).
MISSING_PAIR = "missing_pair"
SIZE_MISMATCH = "size_mismatch"
UNKNOWN_LABELS = "unknown_labels"
MASK_MODE = "mask_mode"
MASK_DEPTH = "mask_depth"
IMAGE_MODE = "image_mode"
FLOAT_VALUES = "float_values"
INVALID_ID = "invalid_id"
DUPLICATE_ID = "duplicate_id"
#: A per-sample problem an adapter reported without a code.
OTHER = "source"
#: Float images hold intensities in [FLOAT_MIN, FLOAT_MAX]; they are scaled by 255 and rounded.
FLOAT_MIN, FLOAT_MAX = 0.0, 1.0
UINT8_MAX = 255


class SampleError(DataError):
    """A problem of one sample, not of the dataset: ``prepare`` records it in ``rejected.csv``
    (id, split, files, check, problem, fix) and goes on with the other samples.

    The message is ``"<file>: <problem>. Fix: <fix>."``, like every source error.
    """

    def __init__(self, file: Path | str, check: str, problem: str, fix: str) -> None:
        super().__init__(f"{file}: {problem}. Fix: {fix}.")
        self.file, self.check, self.problem, self.fix = str(file), check, problem, fix


@dataclass(frozen=True)
class SourceFolders:
    """The local folders of a source's raw inputs (see :mod:`pspnet.ops.import_data`).

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


def files_by_stem(
    folder: Path, suffixes: Sequence[str], strip: str = "", duplicates: list[tuple[str, Path]] | None = None
) -> dict[str, Path]:
    """``{stem: path}`` for the files of ``folder`` (recursively) with one of ``suffixes``.

    ``strip`` is removed from the end of each stem (e.g. Cityscapes' ``_leftImg8bit``). Hidden
    files and folders are skipped. Two files with the same stem are an error naming both, or,
    when ``duplicates`` is given, the later one is appended to it as ``(stem, path)``.
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
            if duplicates is not None:
                duplicates.append((stem, path))
                continue
            raise DataError(f"{path}: same sample name {stem!r} as {found[stem]}. Fix: rename or remove one of them.")
        found[stem] = path
    return found


def _raise(problem: DataError) -> tuple[ImageData, np.ndarray]:
    """The loader of a sample that cannot be read: the writer records ``problem`` in ``rejected.csv``."""
    raise problem


def broken_pair(name: str, split: str, where: Path | str, problem: str, fix: str) -> SampleRef:
    """A sample whose image or label image is missing, listed so that the writer rejects it
    (``rejected.csv``: file, problem, fix) beside the others instead of stopping at the first.
    ``where`` is the file that is there, or the list line (``train.txt:2``) naming a missing one."""
    files = (str(where),) if Path(where).is_file() else ()  # the writer checks a sample's files first
    return SampleRef(name, split, partial(_raise, SampleError(where, MISSING_PAIR, problem, fix)), files)


def paired_refs(
    split: str,
    images: Mapping[str, Path],
    masks: Mapping[str, Path],
    load: Callable[[Path, Path], tuple[ImageData, np.ndarray]],
    mask_for: Callable[[str, Path], Path],
    image_for: Callable[[str, Path], Path],
) -> list[SampleRef]:
    """The samples of one split folder pair, by name: ``load(image, mask)`` for each image with
    its label image; a :func:`broken_pair` naming where the missing file should be
    (``mask_for(name, image)`` / ``image_for(name, mask)``) for an image without label image
    and a label image without image."""
    refs = []
    for name in sorted(images.keys() | masks.keys()):
        image, mask = images.get(name), masks.get(name)
        if image is not None and mask is not None:
            refs.append(SampleRef(name, split, partial(load, image, mask), (str(image), str(mask))))
        elif image is not None:
            refs.append(broken_pair(name, split, image, f"no label image {mask_for(name, image)}",
                                    "add the label image or remove the image"))  # fmt: skip
        else:
            refs.append(broken_pair(name, split, mask, f"no image {image_for(name, mask)}",
                                    "add the image or remove the label image"))  # fmt: skip
    return refs


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file (or ``.npy`` array), from its header only."""
    if path.suffix.lower() == NPY_SUFFIX:
        try:
            shape, _ = npy_header(path, PIL_PIXEL_CAP)
        except FileProblem as err:
            raise SampleError(path, err.check, err.problem, err.fix) from None
        return shape[0], shape[1]
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise SampleError(path, UNREADABLE, f"cannot read the image ({err})", "replace or remove the file") from None


def read_id_mask(path: Path) -> np.ndarray:
    """A label image as an integer (H, W) array of the ids it stores (palette indices for ``P``).

    RGB or RGBA label images are refused here: their colours are not ids (the ``folder`` source
    maps colours itself). So are 16-bit ones (see :data:`ID_MASK_MODES`).
    """
    try:
        with Image.open(path) as img:
            if img.mode in DEEP_MASK_MODES:
                raise SampleError(
                    path,
                    MASK_DEPTH,
                    f"label image is {'16' if img.mode.startswith('I;16') else '32'}-bit (mode {img.mode}); "
                    "class-id masks must be 8-bit",
                    "save it as an 8-bit single-channel PNG (mode L) of class ids",
                )
            if img.mode not in ID_MASK_MODES:
                raise SampleError(
                    path,
                    MASK_MODE,
                    f"label image has mode {img.mode}, expected one id per pixel (mode {', '.join(ID_MASK_MODES)})",
                    "save it as a single-channel (or palette) PNG of class ids",
                )
            return np.asarray(img)
    except DataError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise SampleError(path, UNREADABLE, f"cannot read the label image ({err})", "replace or remove the file") from None


def check_same_size(image: ImageData, mask: np.ndarray, image_file: Path | str, mask_file: Path | str) -> None:
    """A :class:`SampleError` naming both files when the mask's size differs from the image's."""
    height, width = image_size(image) if isinstance(image, Path) else image.shape[:2]
    if mask.shape[:2] != (height, width):
        raise SampleError(
            mask_file,
            SIZE_MISMATCH,
            f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_file} is {width}x{height}",
            "the mask must have the image's size; replace it or remove the pair",
        )


def float_image(array: np.ndarray, path: Path | str) -> np.ndarray:
    """A float (H, W, 3) or (H, W) image with intensities in [0, 1] -> uint8, ``round(x * 255)``.

    NaN, infinite and out-of-range values are a :class:`SampleError` naming how many there are:
    guessing a scale (0..1? 0..255? -1..1?) would be silently wrong.
    """
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    fix = (
        f"float images must hold finite intensities in [{FLOAT_MIN:g}, {FLOAT_MAX:g}] (they are scaled by "
        f"{UINT8_MAX} and rounded): replace NaN / inf values and rescale (e.g. divide 0..255 data by 255), "
        "or remove the sample"
    )
    if nan or inf:
        raise SampleError(path, FLOAT_VALUES, f"float image holds {nan} NaN and {inf} infinite value(s)", fix)
    low, high = float(array.min()), float(array.max())
    if low < FLOAT_MIN or high > FLOAT_MAX:
        raise SampleError(
            path, FLOAT_VALUES, f"float image values span [{low:g}, {high:g}], outside [{FLOAT_MIN:g}, {FLOAT_MAX:g}]", fix
        )
    return np.rint(array.astype(np.float64) * UINT8_MAX).astype(np.uint8)


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
            raise SampleError(
                path,
                UNKNOWN_LABELS,
                f"unknown label id(s) {shown}; this dataset's ids are {self.accepted or sorted(self.mapping)}",
                "correct the mask, or pick the data.source.name that matches the dataset",
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
