"""Opening image files defensively, from the header before any pixel is decoded.

Used for source files (``prepare``), prepared files (``validate``'s profile) and the files a
:class:`~pspnet.data.dataset.SegmentationDataset` reads:

- an empty file, a file that is no image (whatever its extension says) and a file whose header
  declares more than ``data.max_image_pixels`` pixels (a decompression bomb: a few kilobytes
  that decode to gigabytes) are refused without decoding it;
- a path must stay inside its root (the dataset folder, the prepared folder): no absolute
  paths or ``..`` in listed paths, and no symlink that resolves outside it.

Problems are :class:`FileProblem` (a check code, what is wrong, the usual fix); callers wrap
them in their own error naming the sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Check codes (the ``check`` column of ``rejected.csv``).
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TOO_LARGE = "too_large"
UNREADABLE = "unreadable_file"
OUTSIDE_ROOT = "outside_root"
#: NumPy array files (float images of the ``folder`` source); their header is checked too.
NPY_SUFFIX = ".npy"
#: .npy format versions whose header NumPy reads publicly -> the reader (version 3 only
#: differs in allowing UTF-8 field names, which image arrays never have).
NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
    (3, 0): np.lib.format.read_array_header_2_0,
}
#: Bytes of a non-image file quoted in the message (to show what it really is).
SNIFF_BYTES = 16
#: What the error names as the size limit's setting.
LIMIT_SETTING = "data.max_image_pixels"


class FileProblem(Exception):
    """One file is unusable: ``check`` (a code above), ``problem`` (what), ``fix`` (what to do)."""

    def __init__(self, check: str, problem: str, fix: str) -> None:
        super().__init__(f"{problem}. Fix: {fix}")
        self.check, self.problem, self.fix = check, problem, fix


def _too_large(size: str, limit: int) -> FileProblem:
    return FileProblem(
        TOO_LARGE,
        f"declared image size {size} is above {LIMIT_SETTING} ({limit:,}); it was not decoded "
        "(decompression-bomb guard)",
        f"if the image is genuine, downscale it or raise {LIMIT_SETTING} in params.yaml; otherwise remove the sample",
    )


def _sniff(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            return repr(handle.read(SNIFF_BYTES))
    except OSError:
        return "unreadable bytes"


def check_pixels(width: int, height: int, limit: int) -> None:
    """A :class:`FileProblem` when ``width x height`` exceeds ``limit``."""
    if width * height > limit:
        raise _too_large(f"{width}x{height} (WxH) = {width * height:,} pixels", limit)


@contextmanager
def open_image(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """``Image.open(path)`` (lazy: nothing decoded yet) after the header checks; closed on exit.

    Raises :class:`FileProblem` for an empty file, a file PIL cannot identify, a header that
    declares more than ``max_pixels`` pixels (PIL's own bomb error included) or an I/O error.
    """
    try:
        if path.stat().st_size == 0:
            raise FileProblem(EMPTY_FILE, "file is empty (0 bytes)", "replace it with the real file, or remove the sample")
        image = Image.open(path)
    except FileProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_large(f"(beyond PIL's own limit: {err})", max_pixels) from None
    except UnidentifiedImageError:
        raise FileProblem(
            NOT_AN_IMAGE,
            f"not an image file: no image format recognises its content (it starts with {_sniff(path)}), "
            f"whatever its extension {path.suffix!r} says",
            "replace it with the real image, or remove the sample",
        ) from None
    except OSError as err:
        raise FileProblem(UNREADABLE, f"cannot open the file ({err})", "replace it with an intact copy, or remove the sample") from None
    try:
        check_pixels(image.width, image.height, max_pixels)
        yield image
    finally:
        image.close()


def npy_header(path: Path, max_pixels: int) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a ``.npy`` file from its header only; the same checks as :func:`open_image`.

    Only plain arrays are accepted (no pickled objects); an image array is (H, W) or (H, W, 3).
    """
    try:
        if path.stat().st_size == 0:
            raise FileProblem(EMPTY_FILE, "file is empty (0 bytes)", "replace it with the real file, or remove the sample")
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = NPY_HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = read_header(handle)
    except FileProblem:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise FileProblem(
            NOT_AN_IMAGE,
            f"not a NumPy .npy array file ({err}; it starts with {_sniff(path)})",
            "save the array with numpy.save, or remove the sample",
        ) from None
    if dtype.hasobject or len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3):
        raise FileProblem(
            NOT_AN_IMAGE,
            f"array of shape {tuple(shape)} and dtype {dtype} is not an image; expected (H, W) or (H, W, 3) numbers",
            "save the image as an (H, W, 3) (or (H, W) grey) array, or remove the sample",
        )
    check_pixels(int(shape[1]), int(shape[0]), max_pixels)
    return tuple(int(s) for s in shape), dtype


@cache
def image_suffixes() -> frozenset[str]:
    """File suffixes PIL opens (lower case, with the dot)."""
    Image.init()
    return frozenset(Image.registered_extensions())


def check_file(path: Path, max_pixels: int) -> None:
    """The header checks of one source file, chosen by its suffix: an image PIL opens, a
    ``.npy`` array, or anything else (e.g. a MATLAB ``.mat`` mask), which must not be empty."""
    suffix = path.suffix.lower()
    if suffix == NPY_SUFFIX:
        npy_header(path, max_pixels)
    elif suffix in image_suffixes():
        with open_image(path, max_pixels):
            pass
    else:
        try:
            empty = path.stat().st_size == 0
        except OSError as err:
            raise FileProblem(UNREADABLE, f"cannot open the file ({err})", "restore the file, or remove the sample") from None
        if empty:
            raise FileProblem(EMPTY_FILE, "file is empty (0 bytes)", "replace it with the real file, or remove the sample")


def outside(path: Path, roots: Iterable[Path]) -> Path | None:
    """Where ``path`` really is (symlinks resolved) when that is inside none of ``roots``, else ``None``."""
    real = path.resolve()
    if any(real == root or root in real.parents for root in (r.resolve() for r in roots)):
        return None
    return real


def escaping_entry(relative: str, root: Path) -> str | None:
    """Why a path listed relative to ``root`` (a manifest entry) leaves it, or ``None`` when it stays inside.

    Refused: an empty path, an absolute path, a ``..`` part, and a path whose symlinks resolve
    outside ``root``.
    """
    if not relative:
        return "is empty"
    parts = PurePosixPath(relative.replace("\\", "/"))
    if parts.is_absolute() or Path(relative).is_absolute() or relative[1:3] == ":/" or relative[1:3] == ":\\":
        return "is absolute"
    if ".." in parts.parts:
        return "contains '..'"
    real = outside(root / relative, [root])
    if real is not None:
        return f"resolves (through a symlink) to {real}"
    return None
