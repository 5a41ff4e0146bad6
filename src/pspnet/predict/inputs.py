"""The images a ``pspnet predict`` call segments: inputs expanded, output names, headers read.

Inputs are image files, folders (``recursive``: subfolders too) and globs (expanded here, so
quoted globs work); folders and globs pick non-hidden files with an :data:`IMAGE_SUFFIXES`
suffix, a file named explicitly is taken whatever its suffix. Each file counts once, in sorted
path order; folders and globs skip the output folder, and no output may replace an input.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pspnet.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Suffixes (compared lower-case) of the files that folders and globs contribute.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Characters that make an input a glob pattern (when no file or folder has that exact name).
GLOB_CHARACTERS = frozenset("*?[")
#: Names starting with this are hidden: skipped by folders and globs.
HIDDEN_PREFIX = "."
#: Suffix of every written image.
PNG_SUFFIX = ".png"
#: Appended to an image's output name for its overlay file.
OVERLAY_TAG = "_overlay"
#: Joins parent folder names to a stem when stems collide (``day__frame1``).
PARENT_SEPARATOR = "__"
#: Joins the source suffix to a name when folders alone do not tell images apart (``frame1_jpg``).
SUFFIX_SEPARATOR = "_"
#: Joins a counter to a name that is still taken (``frame1-2``), the last resort.
COPY_SEPARATOR = "-"
#: First counter a still-taken name gets.
FIRST_COPY = 2
#: PIL modes of 16-bit greyscale images (``I;16``, ``I;16B``...), rescaled by 255 / 65535 on reading.
GREY16_MODE_PREFIX = "I;16"
MAX_8BIT_VALUE = 255
MAX_16BIT_VALUE = 65535
#: Errors PIL raises for a file it cannot decode (UnidentifiedImageError is an OSError).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageJob:
    """One image to segment: its path, its output name and its ``(height, width)``."""

    path: Path
    name: str
    size: tuple[int, int]


# --------------------------------------------------------------------------- finding images


def is_glob(text: str) -> bool:
    """Whether ``text`` holds a glob wildcard (``*``, ``?`` or ``[``)."""
    return any(char in GLOB_CHARACTERS for char in text)


def _is_hidden(name: str) -> bool:
    return name.startswith(HIDDEN_PREFIX)


def _has_image_suffix(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _inside(path: Path, folder: Path | None) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both resolved); False for no folder."""
    return folder is not None and path.resolve().is_relative_to(folder)


def images_in_folder(folder: Path, recursive: bool, exclude: Path | None = None) -> list[Path]:
    """Image files (by suffix, hidden ones skipped) in ``folder``; with ``recursive`` in its
    non-hidden subfolders too. Nothing under ``exclude`` (a resolved folder) is returned."""
    found: list[Path] = []
    for top, dirs, files in os.walk(folder):
        here = Path(top)
        dirs[:] = [d for d in dirs if not _is_hidden(d) and not _inside(here / d, exclude)] if recursive else []
        found += [here / f for f in files if not _is_hidden(f) and _has_image_suffix(Path(f))]
    return [path for path in found if not _inside(path, exclude)]


def glob_base(pattern: str) -> Path:
    """The folder a glob pattern searches from: its leading components without wildcards."""
    parts = Path(os.path.expanduser(pattern)).parts
    first_wildcard = next((i for i, part in enumerate(parts) if is_glob(part)), len(parts))
    return Path(*parts[:first_wildcard]) if first_wildcard else Path(".")


def _exclusion(base: Path, out_dir: Path | None) -> Path | None:
    """``out_dir`` when an input searching from ``base`` must skip it; ``None`` when ``base``
    itself lies in ``out_dir`` (the user pointed at it: the overwrite check guards the inputs)."""
    return None if out_dir is None or _inside(base, out_dir) else out_dir


def _glob_matches(pattern: str, recursive: bool, exclude: Path | None) -> list[Path]:
    """The images a glob pattern stands for: matched image files, and the images of matched folders."""
    found: list[Path] = []
    for match in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
        path = Path(match)
        if _inside(path, exclude):
            continue
        if path.is_dir():
            found += images_in_folder(path, recursive, exclude)
        elif _has_image_suffix(path) and not _is_hidden(path.name):
            found.append(path)
    return found


def expand_input(text: str, recursive: bool = False, out_dir: Path | None = None) -> list[Path]:
    """The image files one input stands for (see the module docstring); a path that does not
    exist and is no glob is a :class:`ConfigError`. ``out_dir`` (resolved) is skipped by a
    folder or glob that searches from outside it."""
    path = Path(text).expanduser()
    if path.is_dir():
        return images_in_folder(path, recursive, _exclusion(path, out_dir))
    if path.is_file():
        return [path]
    if is_glob(text):
        return _glob_matches(text, recursive, _exclusion(glob_base(text), out_dir))
    raise ConfigError(
        f"{text}: no such file or folder. Check the path; glob patterns (quoted or not) such as "
        "'photos/*.jpg' are expanded by pspnet."
    )


def find_images(inputs: Sequence[str], recursive: bool = False, out_dir: Path | None = None) -> list[Path]:
    """Every image the ``inputs`` stand for: absolute paths, sorted, each file once; folders
    and globs skip ``out_dir`` unless they search from inside it.

    An input that yields nothing is a warning; all of them yielding nothing is a
    :class:`ConfigError` naming the inputs.
    """
    if not inputs:
        raise ConfigError("no input given: name image files, folders or glob patterns, e.g. pspnet predict photos/ --out masks.")
    out_dir = out_dir.resolve() if out_dir is not None else None
    found: list[Path] = []
    for text in inputs:
        matches = expand_input(text, recursive, out_dir)
        if not matches:
            log.warning("%s: no images (%s) found here", text, ", ".join(sorted(IMAGE_SUFFIXES)))
        found += matches
    if not found:
        hint = "" if recursive else " Add --recursive to search subfolders."
        raise ConfigError(
            f"no images found in {', '.join(repr(t) for t in inputs)}: folders and globs pick hidden-free files "
            f"ending in {', '.join(sorted(IMAGE_SUFFIXES))} (any case).{hint}"
        )
    unique: dict[Path, Path] = {}
    for path in sorted({Path(os.path.abspath(p)) for p in found}, key=str):
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


# --------------------------------------------------------------------------- output names


def _qualified_name(path: Path, depth: int, with_suffix: bool) -> str:
    """``path``'s stem behind its last ``depth`` parent folder names, plus its suffix if asked."""
    parents = path.parent.relative_to(path.anchor).parts
    parts = [*(parents[-depth:] if depth else ()), path.stem]
    name = PARENT_SEPARATOR.join(parts)
    return f"{name}{SUFFIX_SEPARATOR}{path.suffix.lstrip('.')}" if with_suffix and path.suffix else name


def _all_differ(names: Sequence[str]) -> bool:
    """Whether ``names`` differ pairwise, ignoring case (case-insensitive file systems)."""
    return len({name.casefold() for name in names}) == len(names)


def _distinguish(paths: Sequence[Path]) -> list[str]:
    """Names for images sharing a stem: the fewest parent folders that tell them apart, then
    also the suffix (same folder, ``x.png`` and ``x.jpg``)."""
    deepest = max(len(p.parent.relative_to(p.anchor).parts) for p in paths)
    attempts = [(depth, False) for depth in range(1, deepest + 1)] + [(depth, True) for depth in range(deepest + 1)]
    for depth, with_suffix in attempts:
        names = [_qualified_name(p, depth, with_suffix) for p in paths]
        if _all_differ(names):
            return names
    return names  # only case differs: output_names numbers them


def output_files(name: str) -> tuple[str, str]:
    """The mask and overlay file names of output name ``name``."""
    return f"{name}{PNG_SUFFIX}", f"{name}{OVERLAY_TAG}{PNG_SUFFIX}"


def output_names(images: Sequence[Path]) -> list[str]:
    """One output name per image, so that no two written files collide (case ignored).

    The image's stem when no other image has it; otherwise :func:`_distinguish`'s names. A name
    whose mask or overlay file is still taken (``a__b`` from ``a/b.png`` next to ``a__b.png``,
    ``x_overlay.png`` next to ``x.png``) gets ``-2``, ``-3``... in image order. Deterministic
    for a given list of images.
    """
    names = [path.stem for path in images]
    by_stem: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(images):
        by_stem[path.stem.casefold()].append(index)
    for indices in by_stem.values():
        if len(indices) > 1:
            for index, name in zip(indices, _distinguish([images[i] for i in indices])):
                names[index] = name
    taken: set[str] = set()
    unique: list[str] = []
    for name in names:
        candidate, copy = name, FIRST_COPY
        while any(f.casefold() in taken for f in output_files(candidate)):
            candidate, copy = f"{name}{COPY_SEPARATOR}{copy}", copy + 1
        taken.update(f.casefold() for f in output_files(candidate))
        unique.append(candidate)
    return unique


def check_no_overwrite(images: Sequence[Path], names: Sequence[str], out_dir: Path) -> None:
    """A :class:`ConfigError` when a mask or overlay would replace one of the input images."""
    inputs = {path.resolve(): path for path in images}
    for name in names:
        for file_name in output_files(name):
            target = (out_dir / file_name).resolve()
            if target in inputs:
                raise ConfigError(
                    f"--out {out_dir}: writing {target} would overwrite the input image {inputs[target]}. "
                    "Choose an output folder that holds no input images."
                )


# --------------------------------------------------------------------------- reading images


def _unreadable(path: Path, err: BaseException) -> DataError:
    return DataError(
        f"{path}: cannot read this image ({type(err).__name__}: {err}). Fix or remove the file, "
        "or pass --skip-bad to leave unreadable images out."
    )


def read_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the image's header (no pixel decoding); unreadable: DataError."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except IMAGE_ERRORS as err:
        raise _unreadable(path, err) from None
    return height, width


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` converted to RGB; 16-bit greyscale rescaled to 0..255 (PIL would clip it)."""
    if img.mode.startswith(GREY16_MODE_PREFIX):
        grey = np.asarray(img, dtype=np.float64) * (MAX_8BIT_VALUE / MAX_16BIT_VALUE)
        return Image.fromarray(np.rint(grey).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL asks palette transparency to go through RGBA
    return img.convert("RGB")


def load_rgb(path: Path) -> np.ndarray:
    """The image as ``(H, W, 3)`` uint8 RGB: greyscale (8- or 16-bit), palette (transparency
    included), RGBA, CMYK... converted; alpha dropped. Pixels as stored: EXIF orientation is
    not applied (as in training). Unreadable: :class:`DataError` naming the file."""
    try:
        with Image.open(path) as img:
            return np.array(_to_rgb(img), dtype=np.uint8)
    except IMAGE_ERRORS as err:
        raise _unreadable(path, err) from None


def scan_images(images: Sequence[Path], names: Sequence[str], skip_bad: bool) -> tuple[list[ImageJob], list[dict[str, str]]]:
    """Read every header: the jobs, and the images left out (``skip_bad``) with their error.

    Without ``skip_bad`` the first unreadable image raises, before any model is loaded.
    """
    jobs: list[ImageJob] = []
    skipped: list[dict[str, str]] = []
    for path, name in zip(images, names):
        try:
            jobs.append(ImageJob(path, name, read_size(path)))
        except DataError as err:
            if not skip_bad:
                raise
            log.warning("skipped: %s", err)
            skipped.append({"image": str(path), "error": str(err)})
    return jobs, skipped


def load_batch(batch: Sequence[ImageJob], skip_bad: bool, skipped: list[dict[str, str]]) -> tuple[list[ImageJob], list[np.ndarray]]:
    """Decode a batch: the jobs that loaded and their RGB arrays (failures skipped or raised)."""
    jobs, arrays = [], []
    for job in batch:
        try:
            rgb = load_rgb(job.path)
            if rgb.shape[:2] != job.size:
                raise DataError(f"{job.path}: decoded as {rgb.shape[1]}x{rgb.shape[0]} but its header says "
                                f"{job.size[1]}x{job.size[0]}. Re-save the file, or pass --skip-bad.")
        except DataError as err:
            if not skip_bad:
                raise
            log.warning("skipped: %s", err)
            skipped.append({"image": str(job.path), "error": str(err)})
            continue
        jobs.append(job)
        arrays.append(rgb)
    return jobs, arrays
