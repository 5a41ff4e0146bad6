"""The ``prepare`` stage: turn a data source into the canonical prepared dataset.

The prepared form, under ``params.paths.prepared``::

    images/<id>.png   RGB
    masks/<id>.png    mode L, class ids, ``data.ignore_index`` (255) = ignore
    manifest.csv      id, split, image, mask (paths relative to the prepared folder)
    classes.json      class names, display colours, ignore index

A *source adapter* (:data:`SOURCES`) knows one dataset: it returns its class table and yields
its samples as arrays. The writer below knows nothing of any particular dataset, so a new
source (CamVid, ADE20K, ...) is one function added to :data:`SOURCES` (and its name to
``SourceConfig.name``). The whole tree is built in a temp folder and swapped in at the end
(:func:`pspnet.io.atomic_dir`): a failure never leaves a half-written dataset behind.
"""

from __future__ import annotations

import io as _bytes_io
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pspnet import io
from pspnet.config import Params
from pspnet.data import synthetic
from pspnet.data.classes import CLASSES_FILE, ClassTable
from pspnet.data.manifest import MANIFEST_FILE, write_manifest
from pspnet.errors import DataError

IMAGES_DIR = "images"
MASKS_DIR = "masks"
IMAGE_SUFFIX = ".png"
#: Sample ids become file names: letters, digits, ``.``, ``_`` and ``-`` only.
SAMPLE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Sample:
    """One sample from a source: ``image`` uint8 (H, W, 3) RGB, ``mask`` uint8 (H, W) class ids."""

    id: str
    split: str
    image: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class SourceData:
    """What a source adapter hands the writer: the class table and a (lazy) stream of samples."""

    classes: ClassTable
    samples: Iterable[Sample]
    #: Number of samples ``samples`` yields (for the progress bar), or ``None`` if unknown.
    total: int | None = None


#: A source adapter: ``(params, root) -> SourceData``.
SourceAdapter = Callable[[Params, Path], SourceData]


def synthetic_source(params: Params, root: Path) -> SourceData:
    """The embedded context-scenes dataset (:mod:`pspnet.data.synthetic`); needs no files."""
    cfg = params.data.synthetic
    ignore = params.data.ignore_index
    classes = ClassTable(names=synthetic.CLASS_NAMES, colors=synthetic.CLASS_COLORS, ignore_index=ignore)

    def samples() -> Iterable[Sample]:
        for split in synthetic.SPLITS:
            for sample_id, image, mask in synthetic.iter_split(cfg, split, ignore):
                yield Sample(sample_id, split, image, mask)

    return SourceData(classes, samples(), sum(synthetic.split_sizes(cfg).values()))


#: Source name (``data.source.name``) -> adapter.
SOURCES: dict[str, SourceAdapter] = {"synthetic": synthetic_source}


def _adapter(name: str) -> SourceAdapter:
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(
            f"data.source.name: unknown source {name!r}; known sources: {sorted(SOURCES)}. Fix it in params.yaml."
        ) from None


def _png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, 3) array as PNG (mode L or RGB)."""
    buffer = _bytes_io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_sample(sample: Sample, source: str, seen: set[str]) -> None:
    """Refuse what the writer cannot store faithfully (the validate stage checks the rest)."""
    where = f"source {source!r}, sample {sample.id!r}"
    if not SAMPLE_ID_PATTERN.fullmatch(sample.id):
        raise DataError(
            f"{where}: the id becomes a file name; use only letters, digits, '.', '_' and '-'. Fix the source adapter."
        )
    if sample.id in seen:
        raise DataError(f"{where}: duplicate sample id. Fix the source adapter so every id is unique.")
    if sample.image.dtype != np.uint8 or sample.image.ndim != 3 or sample.image.shape[2] != 3:
        got = f"{sample.image.dtype} {sample.image.shape}"
        raise DataError(f"{where}: image must be uint8 (H, W, 3), got {got}. Fix the source adapter.")
    if sample.mask.dtype != np.uint8 or sample.mask.ndim != 2:
        got = f"{sample.mask.dtype} {sample.mask.shape}"
        raise DataError(f"{where}: mask must be uint8 (H, W) class ids, got {got}. Fix the source adapter.")


def write_sample(folder: Path, sample: Sample) -> dict[str, str]:
    """Write one sample's image and mask PNGs under ``folder``; return its manifest row."""
    image_rel = f"{IMAGES_DIR}/{sample.id}{IMAGE_SUFFIX}"
    mask_rel = f"{MASKS_DIR}/{sample.id}{IMAGE_SUFFIX}"
    io.write_bytes(folder / image_rel, _png_bytes(sample.image))
    io.write_bytes(folder / mask_rel, _png_bytes(sample.mask))
    return {"id": sample.id, "split": sample.split, "image": image_rel, "mask": mask_rel}


def write_prepared(folder: Path, data: SourceData, source: str) -> pd.DataFrame:
    """Write the whole canonical form of ``data`` into ``folder``; return the manifest."""
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (folder / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for sample in tqdm(data.samples, total=data.total, desc=f"prepare {source}", unit="sample"):
        _check_sample(sample, source, seen)
        seen.add(sample.id)
        rows.append(write_sample(folder, sample))
    manifest = pd.DataFrame(rows, columns=["id", "split", "image", "mask"])
    write_manifest(folder / MANIFEST_FILE, manifest)
    data.classes.save(folder / CLASSES_FILE)
    return manifest


def prepare(params: Params, root: Path) -> dict[str, Any]:
    """Stage ``prepare``: build ``root / params.paths.prepared`` from ``params.data.source``.

    Returns ``{"prepared": path, "source": name, "num_samples": n, "splits": {split: n},
    "num_classes": c, "seconds": s}``.
    """
    start = time.perf_counter()
    name = params.data.source.name
    data = _adapter(name)(params, Path(root))
    target = Path(root) / params.paths.prepared
    with io.atomic_dir(target) as tmp:
        manifest = write_prepared(tmp, data, name)
    return {
        "prepared": params.paths.prepared,
        "source": name,
        "num_samples": len(manifest),
        "splits": dict(Counter(manifest["split"])),
        "num_classes": data.classes.num_classes,
        "seconds": round(time.perf_counter() - start, 2),
    }
