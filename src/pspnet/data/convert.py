"""Convert a data source into the canonical prepared dataset (the domain side of ``prepare``).

The prepared form, under ``params.paths.prepared``::

    images/<id>.png|.jpg  RGB (an RGB PNG or JPEG source file is copied byte for byte)
    masks/<id>.png        mode L, class ids, ``data.ignore_index`` (255) = ignore
    manifest.csv          id, split, image, mask (paths relative to the prepared folder)
    rejected.csv          id, split, files, check, problem, fix: samples that could not be converted
    classes.json          class names, display colours, ignore index
    dataset.json          source, its inputs and promises, counts, ``version`` (a content hash)

``data.num_workers`` threads read, convert, write and hash the samples, a bounded window at a
time; a problem of one sample makes it a row of ``rejected.csv`` instead of stopping the stage.
"""

from __future__ import annotations

import hashlib
import io as _bytes_io
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pspnet import atomic_files
from pspnet.config import DEFAULT_MAX_IMAGE_PIXELS, Params
from pspnet.data.imagefiles import OUTSIDE_ROOT, UNREADABLE, FileProblem, check_file, check_pixels, outside
from pspnet.data.manifest import (
    COLUMNS,
    FILES_SEPARATOR,
    REJECTED_COLUMNS,
)
from pspnet.data.sources.base import (
    DUPLICATE_ID,
    IMAGE_MODE,
    INVALID_ID,
    OTHER,
    ImageData,
    SampleError,
    SampleRef,
    SourceData,
)
from pspnet.errors import DataError

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
MASKS_DIR = "masks"
MASK_SUFFIX = ".png"
#: Source image formats copied byte for byte when RGB (PIL format name -> file suffix).
COPIED_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}
#: Sample ids become file names: letters, digits, ``.``, ``_`` and ``-`` only.
SAMPLE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Samples in flight per worker thread (bounds memory: at most workers x this are loaded).
IN_FLIGHT_PER_WORKER = 4
#: ``data.non_rgb_images`` values.
CONVERT, REJECT = "convert", "reject"
RGB_MODE = "RGB"
#: Modes converted to RGB exactly: each pixel's value is its grey level or palette colour.
OPAQUE_MODES = ("1", "L")
#: Modes with an alpha channel (or palette transparency): exact only when every pixel is opaque.
ALPHA_MODES = ("P", "LA", "La", "PA", "RGBA", "RGBa")
OPAQUE = 255
#: What the messages call the image modes.
MODE_NAMES = {
    "1": "1-bit black and white", "L": "8-bit grey", "P": "palette", "LA": "grey + alpha", "La": "grey + alpha",
    "PA": "palette + alpha", "RGBA": "RGB + alpha", "RGBa": "RGB + alpha", "CMYK": "CMYK", "YCbCr": "YCbCr",
    "LAB": "L*a*b*", "HSV": "HSV", "I": "32-bit integer", "F": "32-bit float", "I;16": "16-bit grey",
    "I;16B": "16-bit grey", "I;16L": "16-bit grey", "I;16N": "16-bit grey",
}  # fmt: skip
#: Modes whose values need a scaling choice to become 8 bits (prefix match: I;16, I;16B ...).
DEEP_MODE_PREFIXES = ("I", "F")
#: Errors PIL raises while decoding a damaged file.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
#: The EXIF tag saying how viewers must turn the stored pixels (1: as stored), and its check code.
EXIF_ORIENTATION_TAG = 0x0112
EXIF_ORIENTATION = "exif_orientation"


@dataclass(frozen=True)
class WriteOptions:
    """How the writer treats source files (from ``params.data``).

    ``roots``: the folders source files must resolve inside (symlinks followed); empty: no check.
    """

    non_rgb_images: str = CONVERT
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    roots: tuple[Path, ...] = ()

    @classmethod
    def from_params(cls, params: Params, roots: tuple[Path, ...] = ()) -> WriteOptions:
        return cls(params.data.non_rgb_images, params.data.max_image_pixels, roots)


@dataclass
class Converted:
    """What the writer produced: the manifest rows (with file md5s), the rejected samples
    (:data:`~pspnet.data.manifest.REJECTED_COLUMNS`) and ``{source image mode: count}`` of the
    images converted to RGB."""

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    conversions: dict[str, int]

    def messages(self) -> list[str]:
        """One line per rejected sample: ``<file>: <problem>. Fix: <fix>.``"""
        return [f"{row.problem}. Fix: {row.fix}." for row in self.rejected.itertuples()]


def _id_problem(ref: SampleRef, source: str, seen: dict[str, SampleRef]) -> SampleError | None:
    """Why the writer cannot store ``ref`` under its id (not a file name, or repeated), naming the files."""
    where = ref.files[0] if ref.files else f"source {source!r}"
    if not SAMPLE_ID_PATTERN.fullmatch(ref.id):
        return SampleError(
            where,
            INVALID_ID,
            f"sample id {ref.id!r} cannot be a file name (only letters, digits, '.', '_' and '-')",
            "rename the file",
        )
    if ref.id in seen:
        other = ", ".join(seen[ref.id].files) or "a generated sample"
        return SampleError(
            where, DUPLICATE_ID, f"same sample id {ref.id!r} as {other}", "rename or remove one of them (ids are unique across splits)"
        )
    return None


def _check_arrays(ref: SampleRef, image: ImageData, mask: np.ndarray, source: str) -> None:
    where = f"source {source!r}, sample {ref.id!r}"
    grey_or_rgb = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3) if isinstance(image, np.ndarray) else True
    if isinstance(image, np.ndarray) and (image.dtype != np.uint8 or not grey_or_rgb):
        raise DataError(f"{where}: image must be uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}. Fix the source adapter.")
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise DataError(f"{where}: mask must be uint8 (H, W) class ids, got {mask.dtype} {mask.shape}. Fix the source adapter.")


def check_source_files(ref: SampleRef, options: WriteOptions) -> None:
    """Before anything is decoded: every file of ``ref`` stays inside the dataset, is not empty,
    is what its suffix says, and declares at most ``max_image_pixels`` pixels."""
    for name in ref.files:
        path = Path(name)
        real = outside(path, options.roots) if options.roots else None
        if real is not None:
            roots = ", ".join(str(r) for r in options.roots)
            raise SampleError(
                path,
                OUTSIDE_ROOT,
                f"resolves to {real}, outside the dataset folder ({roots}): a symlink or a '..' path leads out of it",
                "copy the file into the dataset folder (or point data.source.location at the folder that holds it)",
            )
        try:
            check_file(path, options.max_image_pixels)
        except FileProblem as err:
            raise SampleError(path, err.check, err.problem, err.fix) from None


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, 3) array as PNG (mode L or RGB)."""
    buffer = _bytes_io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _not_rgb(where: Path | str, mode: str, policy: str) -> SampleError | None:
    """The rejection of a ``mode`` image under ``policy``, or ``None`` when it converts exactly."""
    name = f"mode {mode} ({MODE_NAMES.get(mode, 'not RGB')})"
    if policy == REJECT:
        return SampleError(
            where,
            IMAGE_MODE,
            f"image is {name}, not RGB, and data.non_rgb_images is 'reject'",
            "convert it to 8-bit RGB, or set data.non_rgb_images: convert in params.yaml (exact conversions only)",
        )
    if mode in OPAQUE_MODES or mode in ALPHA_MODES:
        return None
    if mode.startswith(DEEP_MODE_PREFIXES):
        fix = "convert it to 8-bit RGB with the intensity scaling you intend (the folder source also reads float images in [0, 1] as .npy)"
    else:
        fix = "convert it to RGB with its colour profile (e.g. in an image editor) and save it as PNG or JPEG"
    return SampleError(where, IMAGE_MODE, f"image is {name}, which has no exact RGB equivalent", fix)


def _opaque_rgb(rgba: np.ndarray, where: Path | str, mode: str) -> np.ndarray:
    """The RGB channels of an (H, W, 4) array whose alpha is fully opaque; else a rejection."""
    transparent = int((rgba[..., 3] < OPAQUE).sum())
    if transparent:
        raise SampleError(
            where,
            IMAGE_MODE,
            f"image is mode {mode} ({MODE_NAMES.get(mode, 'with alpha')}) and {transparent} of {rgba.shape[0] * rgba.shape[1]} "
            "pixels are (partly) transparent: the colour under transparency is undefined",
            "flatten it onto the background you intend and save it as RGB (PNG or JPEG), or remove the sample",
        )
    return np.ascontiguousarray(rgba[..., :3])


def _check_orientation(img: Image.Image, path: Path) -> None:
    """Refuse an image whose EXIF orientation turns it in viewers: its mask may have been drawn on
    the turned view, and training reads the stored pixels, so the pair would silently disagree."""
    orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
    if orientation != 1:
        raise SampleError(
            path,
            EXIF_ORIENTATION,
            f"EXIF orientation {orientation}: viewers (and annotation tools) show these pixels rotated or mirrored, "
            "training reads them as stored, so the mask may not match",
            "apply the rotation to the pixels and drop the tag (e.g. PIL ImageOps.exif_transpose), check the mask "
            "against the result, or remove the sample",
        )


def image_bytes(image: ImageData, options: WriteOptions, where: str = "image array") -> tuple[bytes, str, str | None]:
    """(file bytes, suffix, converted-from mode or ``None``) of the prepared image.

    An RGB PNG / JPEG file is copied as is (after decoding it fully: a damaged file is rejected
    here, naming the source file); other images follow ``data.non_rgb_images`` (see
    :class:`~pspnet.config.DataConfig`) and become RGB PNGs. ``where`` names a decoded array's
    source in errors.
    """
    if isinstance(image, np.ndarray):
        if image.ndim == 3:
            return png_bytes(image), ".png", None
        problem = _not_rgb(where, "L", options.non_rgb_images)
        if problem is not None:
            raise problem
        return png_bytes(np.repeat(image[..., None], 3, axis=2)), ".png", "L"
    data = image.read_bytes()
    try:
        with Image.open(_bytes_io.BytesIO(data)) as img:
            check_pixels(img.width, img.height, options.max_image_pixels)
            mode, source_format = img.mode, img.format
            _check_orientation(img, image)
            problem = None if mode == RGB_MODE else _not_rgb(image, mode, options.non_rgb_images)
            if problem is not None:
                raise problem
            img.load()  # decode it all: a truncated or corrupt file fails here
            if mode == RGB_MODE:
                if source_format in COPIED_FORMATS:
                    return data, COPIED_FORMATS[source_format], None
                return png_bytes(np.asarray(img)), ".png", None
            if mode in OPAQUE_MODES:
                return png_bytes(np.asarray(img.convert(RGB_MODE))), ".png", mode
            return png_bytes(_opaque_rgb(np.asarray(img.convert("RGBA")), image, mode)), ".png", mode
    except FileProblem as err:
        raise SampleError(image, err.check, err.problem, err.fix) from None
    except DECODE_ERRORS as err:
        raise SampleError(
            image,
            UNREADABLE,
            f"cannot decode the image ({type(err).__name__}: {err}): the file is damaged (truncated or corrupt)",
            "replace it with an intact copy, or remove the sample",
        ) from None


def write_sample(folder: Path, ref: SampleRef, source: str, options: WriteOptions = WriteOptions()) -> tuple[dict[str, str], str | None]:
    """Check, read and write one sample under ``folder``: (its manifest row + file md5s, the mode its
    image was converted from or ``None``). Problems of the sample raise :class:`SampleError`."""
    check_source_files(ref, options)
    image, mask = ref.load()
    _check_arrays(ref, image, mask, source)
    where = ref.files[0] if ref.files else f"source {source!r}, sample {ref.id!r}"
    image_data, suffix, converted = image_bytes(image, options, where)
    mask_data = png_bytes(mask)
    image_rel = f"{IMAGES_DIR}/{ref.id}{suffix}"
    mask_rel = f"{MASKS_DIR}/{ref.id}{MASK_SUFFIX}"
    atomic_files.write_bytes(folder / image_rel, image_data)
    atomic_files.write_bytes(folder / mask_rel, mask_data)
    row = {
        "id": ref.id,
        "split": ref.split,
        "image": image_rel,
        "mask": mask_rel,
        "image_md5": hashlib.md5(image_data).hexdigest(),
        "mask_md5": hashlib.md5(mask_data).hexdigest(),
    }
    return row, converted


def _bounded(executor: ThreadPoolExecutor, refs: Iterable[SampleRef], window: int, fn: Any) -> Iterator[tuple[SampleRef, Future]]:
    """Submit ``fn(ref)`` for each ref, at most ``window`` pending at a time; yield in order."""
    iterator = iter(refs)
    pending = [(ref, executor.submit(fn, ref)) for ref in islice(iterator, window)]
    while pending:
        ref, future = pending.pop(0)
        future.exception()  # wait for it
        nxt = next(iterator, None)
        if nxt is not None:
            pending.append((nxt, executor.submit(fn, nxt)))
        yield ref, future


def _relative(text: str, root: Path | None) -> str:
    """``text`` with ``root/`` removed from the paths it holds (rows stay valid on another machine)."""
    return text.replace(f"{root}{os.sep}", "") if root is not None else text


def rejected_row(ref: SampleRef, error: DataError, root: Path | None = None) -> dict[str, str]:
    """The ``rejected.csv`` row of ``ref`` rejected by ``error`` (paths relative to ``root``)."""
    if isinstance(error, SampleError):
        check, problem, fix = error.check, f"{error.file}: {error.problem}", error.fix
    else:  # an adapter's plain DataError: "<file>: <problem>. Fix: <fix>."
        problem, _, fix = str(error).partition(" Fix: ")
        check, fix = OTHER, fix or "replace or remove the sample's files"
    return {
        "id": ref.id,
        "split": ref.split,
        "files": _relative(FILES_SEPARATOR.join(ref.files), root),
        "check": check,
        "problem": _relative(problem.strip().rstrip("."), root),
        "fix": _relative(fix.strip().rstrip("."), root),
    }


def convert_source(
    folder: Path,
    data: SourceData,
    source: str,
    num_workers: int,
    options: WriteOptions = WriteOptions(),
    root: Path | None = None,
) -> Converted:
    """Write the canonical form of ``data`` into ``folder``, rejecting bad samples one by one.

    A sample whose files or content are bad (see :class:`SampleError`) becomes a row of
    ``Converted.rejected`` (paths relative to ``root`` when given) and the others go on; any
    other exception propagates. Samples are read ``num_workers`` at a time, a bounded window
    of them in flight.
    """
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (folder / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    rejected: list[tuple[int, dict[str, str]]] = []
    conversions: Counter[str] = Counter()
    seen: dict[str, SampleRef] = {}
    order: dict[int, int] = {}  # id(ref) -> its position in the source, while it is in flight
    progress = tqdm(total=data.total, desc=f"prepare {source}", unit="sample", mininterval=2.0)

    def checked(refs: Iterable[SampleRef]) -> Iterator[SampleRef]:
        for number, ref in enumerate(refs):
            problem = _id_problem(ref, source, seen)
            if problem is not None:
                rejected.append((number, rejected_row(ref, problem, root)))
                progress.update(1)
                continue
            seen[ref.id] = ref
            order[id(ref)] = number
            yield ref

    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="prepare") as pool:
        window = num_workers * IN_FLIGHT_PER_WORKER
        for ref, future in _bounded(pool, checked(data.samples), window, lambda r: write_sample(folder, r, source, options)):
            progress.update(1)
            error = future.exception()
            if isinstance(error, DataError):
                rejected.append((order.pop(id(ref)), rejected_row(ref, error, root)))
            elif error is not None:
                raise error
            else:
                order.pop(id(ref))
                row, converted = future.result()
                rows.append(row)
                if converted is not None:
                    conversions[converted] += 1
    progress.close()
    rejected_rows = [row for _, row in sorted(rejected, key=lambda item: item[0])]
    return Converted(
        pd.DataFrame(rows, columns=[*COLUMNS, "image_md5", "mask_md5"]),
        pd.DataFrame(rejected_rows, columns=list(REJECTED_COLUMNS)),
        dict(sorted(conversions.items())),
    )


def failure_message(head: str, messages: list[str], limit: int) -> str:
    more = [f"  ... and {len(messages) - limit} more"] if len(messages) > limit else []
    return "\n".join([head, *(f"  - {m}" for m in messages[:limit]), *more])


def content_version(manifest: pd.DataFrame, classes_json: bytes) -> str:
    """md5 over every prepared file's md5 and path (sorted) and the class table: the data version."""
    lines = sorted(
        f"{path} {md5}"
        for cols in (("image", "image_md5"), ("mask", "mask_md5"))
        for path, md5 in zip(manifest[cols[0]], manifest[cols[1]])
    )
    digest = hashlib.md5("\n".join(lines).encode())
    digest.update(manifest[["id", "split"]].to_csv(index=False).encode())
    digest.update(classes_json)
    return digest.hexdigest()
