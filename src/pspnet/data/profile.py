"""Per-sample profile of a prepared dataset: the table the Great Expectations gate checks.

One row per manifest row: does each file exist and decode, its mode, channels and size, do
image and mask sizes agree, which label values the mask holds and which of them are neither
a class id nor the ignore index, plus a human-readable ``problems`` column (what is wrong and
how to fix it). Files are opened by a few threads in parallel, one sample at a time per
thread: only small facts are kept, never the pixels.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pspnet.data.classes import ClassTable
from pspnet.data.manifest import MANIFEST_FILE, read_manifest

#: Columns of the profile table, in order.
PROFILE_COLUMNS = (
    "id",
    "split",
    "image",
    "mask",
    "image_exists",
    "image_readable",
    "image_error",
    "image_mode",
    "image_channels",
    "image_height",
    "image_width",
    "mask_exists",
    "mask_readable",
    "mask_error",
    "mask_mode",
    "mask_channels",
    "mask_height",
    "mask_width",
    "sizes_match",
    "labels",
    "invalid_labels",
    "labels_valid",
    "label_counts",
    "problems",
)
#: Nullable dtypes, so "not applicable" (e.g. the size of an unreadable file) stays missing.
_DTYPES = {
    "image_channels": "Int64",
    "image_height": "Int64",
    "image_width": "Int64",
    "mask_channels": "Int64",
    "mask_height": "Int64",
    "mask_width": "Int64",
    "sizes_match": "boolean",
    "labels_valid": "boolean",
}
#: Mask modes that hold one integer class id per pixel.
SINGLE_CHANNEL_MASK_MODES = ("L", "P", "I", "I;16")
#: Separator of the entries of the ``problems`` column.
PROBLEM_SEPARATOR = " | "


@dataclass(frozen=True)
class FileFacts:
    """What opening one image file told us; ``pixels`` only when asked for and decodable."""

    exists: bool
    readable: bool = False
    error: str = ""
    mode: str | None = None
    channels: int | None = None
    height: int | None = None
    width: int | None = None
    pixels: np.ndarray | None = None


def inspect_file(path: Path, want_pixels: bool = False) -> FileFacts:
    """Check that ``path`` exists and decodes fully (PIL ``verify`` then ``load``)."""
    if not path.is_file():
        return FileFacts(exists=False, error="file not found")
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
            pixels = np.asarray(img) if want_pixels else None
            return FileFacts(
                exists=True,
                readable=True,
                mode=img.mode,
                channels=len(img.getbands()),
                height=img.height,
                width=img.width,
                pixels=pixels,
            )
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files; all mean "unreadable"
        return FileFacts(exists=True, error=f"{type(err).__name__}: {err}")


def label_counts(mask: np.ndarray) -> dict[int, int]:
    """``{label value: pixel count}`` of a single-channel integer mask."""
    if mask.dtype == np.uint8:
        counts = np.bincount(mask.ravel(), minlength=256)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(mask, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _file_problems(kind: str, rel: str, facts: FileFacts) -> list[str]:
    """Problems of one file: missing, undecodable."""
    if not facts.exists:
        return [
            f"{kind} file {rel} not found (manifest column `{kind}`). "
            "Fix: restore the file, or drop the row from manifest.csv, or re-run `prepare`"
        ]
    if not facts.readable:
        return [
            f"{kind} file {rel} cannot be decoded ({facts.error}). "
            "Fix: re-export it as a valid PNG, or re-run `prepare`"
        ]
    return []


def _image_problems(rel: str, facts: FileFacts) -> list[str]:
    problems = _file_problems("image", rel, facts)
    if facts.readable and facts.mode != "RGB":
        problems.append(
            f"image {rel} is mode {facts.mode!r} ({facts.channels} channel(s)), expected RGB. "
            "Fix: convert it to 3-channel RGB in the source adapter"
        )
    return problems


def _mask_problems(rel: str, facts: FileFacts) -> list[str]:
    problems = _file_problems("mask", rel, facts)
    if facts.readable and facts.mode not in SINGLE_CHANNEL_MASK_MODES:
        problems.append(
            f"mask {rel} is mode {facts.mode!r} ({facts.channels} channel(s)), expected a single-channel class-id mask "
            "(mode L). Fix: map its colours to class ids (one uint8 channel) in the source adapter"
        )
    return problems


def _size_problem(image: FileFacts, mask: FileFacts) -> list[str]:
    if image.readable and mask.readable and (image.height, image.width) != (mask.height, mask.width):
        return [
            f"image is {image.width}x{image.height} (WxH) but mask is {mask.width}x{mask.height}. "
            "Fix: re-export the pair, or resize the mask to the image size with nearest-neighbour"
        ]
    return []


def _label_problem(rel: str, invalid: list[int], classes: ClassTable) -> list[str]:
    if not invalid:
        return []
    shown = ", ".join(str(v) for v in invalid)
    return [
        f"mask {rel} holds label value(s) {shown} outside the class ids 0..{classes.num_classes - 1} and the ignore "
        f"index {classes.ignore_index}. Fix: map them to a class or to {classes.ignore_index} in the source adapter, "
        "or add the classes to classes.json"
    ]


def profile_sample(prepared_dir: Path, row: dict[str, str], classes: ClassTable) -> dict[str, Any]:
    """The profile row of one manifest row (paths in the manifest are relative to ``prepared_dir``)."""
    image = inspect_file(prepared_dir / row["image"])
    mask = inspect_file(prepared_dir / row["mask"], want_pixels=True)
    single = mask.readable and mask.mode in SINGLE_CHANNEL_MASK_MODES and mask.pixels is not None and mask.pixels.ndim == 2
    counts = label_counts(mask.pixels) if single else {}
    allowed = set(range(classes.num_classes)) | {classes.ignore_index}
    invalid = sorted(v for v in counts if v not in allowed)
    both_readable = image.readable and mask.readable
    problems = (
        _image_problems(row["image"], image)
        + _mask_problems(row["mask"], mask)
        + _size_problem(image, mask)
        + _label_problem(row["mask"], invalid, classes)
    )
    return {
        "id": row["id"],
        "split": row["split"],
        "image": row["image"],
        "mask": row["mask"],
        "image_exists": image.exists,
        "image_readable": image.readable,
        "image_error": image.error,
        "image_mode": image.mode,
        "image_channels": image.channels,
        "image_height": image.height,
        "image_width": image.width,
        "mask_exists": mask.exists,
        "mask_readable": mask.readable,
        "mask_error": mask.error,
        "mask_mode": mask.mode,
        "mask_channels": mask.channels,
        "mask_height": mask.height,
        "mask_width": mask.width,
        "sizes_match": (image.height, image.width) == (mask.height, mask.width) if both_readable else None,
        "labels": " ".join(str(v) for v in counts) if single else None,
        "invalid_labels": " ".join(str(v) for v in invalid) if single else None,
        "labels_valid": not invalid if single else None,
        "label_counts": json.dumps({str(k): v for k, v in counts.items()}),
        "problems": PROBLEM_SEPARATOR.join(problems),
    }


def _annotate_duplicate_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """Add a problem to every row whose id another row also uses."""
    counts = frame["id"].map(frame["id"].value_counts())
    for index in frame.index[counts > 1]:
        note = (
            f"id {frame.at[index, 'id']!r} is used by {counts[index]} manifest rows. "
            "Fix: give every sample a unique id (e.g. <split>_<index>)"
        )
        existing = frame.at[index, "problems"]
        frame.at[index, "problems"] = PROBLEM_SEPARATOR.join(p for p in (existing, note) if p)
    return frame


def profile_dataset(
    prepared_dir: str | Path, classes: ClassTable, *, num_workers: int = 4, progress: bool = True
) -> pd.DataFrame:
    """Profile every sample of ``prepared_dir/manifest.csv``: one row each, in manifest order."""
    prepared_dir = Path(prepared_dir)
    rows = read_manifest(prepared_dir / MANIFEST_FILE).to_dict("records")
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        results = pool.map(lambda row: profile_sample(prepared_dir, row, classes), rows)
        records = list(tqdm(results, total=len(rows), desc="profile", unit="sample", disable=not progress))
    frame = pd.DataFrame.from_records(records, columns=list(PROFILE_COLUMNS))
    frame = frame.astype(_DTYPES)
    return _annotate_duplicate_ids(frame)


def problem_list(problems: str) -> list[str]:
    """Split a ``problems`` cell back into its entries."""
    return [p for p in str(problems).split(PROBLEM_SEPARATOR) if p] if isinstance(problems, str) else []
