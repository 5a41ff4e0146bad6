"""The ``prepare`` stage: turn a data source into the canonical prepared dataset.

The prepared form, under ``params.paths.prepared``::

    images/<id>.png|.jpg  RGB (an RGB PNG or JPEG source file is copied byte for byte)
    masks/<id>.png        mode L, class ids, ``data.ignore_index`` (255) = ignore
    manifest.csv          id, split, image, mask (paths relative to the prepared folder)
    classes.json          class names, display colours, ignore index
    dataset.json          the source (name, location, raw data version), what its definition
                          promises (image sizes; checked by ``validate``) and ``version``: a
                          content hash of every file above, logged as an MLflow run tag

A *source adapter* (:mod:`pspnet.data.sources`) knows one dataset layout: it lists the
samples, each with a function that reads it and maps its labels to ours. The writer below
knows nothing of any layout: ``data.num_workers`` threads read, convert, write and hash the
samples (a bounded window of them at a time, so memory stays flat however large the dataset),
with a progress bar. Problems in the source files are collected (up to
``validate.max_failures_listed``) and reported together, each naming its file. The whole tree
is built in a temp folder and swapped in at the end (:func:`pspnet.io.atomic_dir`): a failure
never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import io as _bytes_io
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pspnet import io
from pspnet.config import Params
from pspnet.data.classes import CLASSES_FILE
from pspnet.data.location import raw_inputs, raw_version, resolve_input
from pspnet.data.manifest import DATASET_FILE, MANIFEST_FILE, write_manifest
from pspnet.data.sources import get_adapter
from pspnet.data.sources.base import ImageData, SampleRef, SourceData, SourceFolders
from pspnet.errors import DataError

IMAGES_DIR = "images"
MASKS_DIR = "masks"
MASK_SUFFIX = ".png"
#: Source image formats copied byte for byte when RGB (PIL format name -> file suffix).
COPIED_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}
#: Sample ids become file names: letters, digits, ``.``, ``_`` and ``-`` only.
SAMPLE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Samples in flight per worker thread (bounds memory: at most workers x this are loaded).
IN_FLIGHT_PER_WORKER = 4


def _check_id(ref: SampleRef, source: str, seen: dict[str, SampleRef]) -> None:
    """Refuse ids the writer cannot store (a file name) or that repeat, naming the files."""
    where = f"{ref.files[0]}: sample {ref.id!r}" if ref.files else f"source {source!r}, sample {ref.id!r}"
    if not SAMPLE_ID_PATTERN.fullmatch(ref.id):
        raise DataError(
            f"{where}: the id becomes a file name; use only letters, digits, '.', '_' and '-'. Fix: rename the file."
        )
    if ref.id in seen:
        other = ", ".join(seen[ref.id].files) or "generated"
        raise DataError(f"{where}: same sample id as {other}. Fix: rename or remove one of them.")


def _check_arrays(ref: SampleRef, image: ImageData, mask: np.ndarray, source: str) -> None:
    where = f"source {source!r}, sample {ref.id!r}"
    if isinstance(image, np.ndarray) and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3):
        raise DataError(f"{where}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}. Fix the source adapter.")
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise DataError(f"{where}: mask must be uint8 (H, W) class ids, got {mask.dtype} {mask.shape}. Fix the source adapter.")


def _png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, 3) array as PNG (mode L or RGB)."""
    buffer = _bytes_io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_bytes(image: ImageData) -> tuple[bytes, str]:
    """(file bytes, suffix) of the prepared image: an RGB PNG / JPEG file as is, else an RGB PNG."""
    if isinstance(image, np.ndarray):
        return _png_bytes(image), ".png"
    data = image.read_bytes()
    try:
        with Image.open(_bytes_io.BytesIO(data)) as img:
            if img.mode == "RGB" and img.format in COPIED_FORMATS:
                return data, COPIED_FORMATS[img.format]
            return _png_bytes(np.asarray(img.convert("RGB"))), ".png"
    except (OSError, ValueError) as err:
        raise DataError(f"{image}: cannot read the image ({err}). Fix: replace or remove the file.") from None


def write_sample(folder: Path, ref: SampleRef, source: str) -> dict[str, str]:
    """Read one sample, write its image and mask under ``folder``; its manifest row + file md5s."""
    image, mask = ref.load()
    _check_arrays(ref, image, mask, source)
    image_data, suffix = _image_bytes(image)
    mask_data = _png_bytes(mask)
    image_rel = f"{IMAGES_DIR}/{ref.id}{suffix}"
    mask_rel = f"{MASKS_DIR}/{ref.id}{MASK_SUFFIX}"
    io.write_bytes(folder / image_rel, image_data)
    io.write_bytes(folder / mask_rel, mask_data)
    return {
        "id": ref.id,
        "split": ref.split,
        "image": image_rel,
        "mask": mask_rel,
        "image_md5": hashlib.md5(image_data).hexdigest(),
        "mask_md5": hashlib.md5(mask_data).hexdigest(),
    }


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


def _failure_message(source: str, failures: list[str], stopped: bool, limit: int) -> str:
    head = f"prepare: source {source!r} has {len(failures)}{'+' if stopped else ''} problem(s)"
    more = f" (stopped after {limit}; fix these and run again)" if stopped else ""
    return "\n".join([head + more + "; nothing was written:", *(f"  - {f}" for f in failures)])


def write_prepared(folder: Path, data: SourceData, source: str, num_workers: int, max_failures: int) -> pd.DataFrame:
    """Write the canonical form of ``data`` into ``folder``; return the manifest (with file md5s)."""
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (folder / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    failures: list[str] = []
    seen: dict[str, SampleRef] = {}

    def checked(refs: Iterable[SampleRef]) -> Iterator[SampleRef]:
        for ref in refs:
            try:
                _check_id(ref, source, seen)
            except DataError as err:
                failures.append(str(err))
                continue
            seen[ref.id] = ref
            yield ref

    progress = tqdm(total=data.total, desc=f"prepare {source}", unit="sample", mininterval=2.0)
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="prepare") as pool:
        window = num_workers * IN_FLIGHT_PER_WORKER
        for ref, future in _bounded(pool, checked(data.samples), window, lambda r: write_sample(folder, r, source)):
            progress.update(1)
            error = future.exception()
            if isinstance(error, DataError):
                failures.append(str(error))
            elif error is not None:
                raise error
            else:
                rows.append(future.result())
            if len(failures) >= max_failures:
                progress.close()
                raise DataError(_failure_message(source, failures, True, max_failures))
    progress.close()
    if failures:
        raise DataError(_failure_message(source, failures, False, max_failures))
    if not rows:
        raise DataError(f"prepare: source {source!r} yielded no samples. Fix data.source.location in params.yaml.")
    return pd.DataFrame(rows)


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


def source_folders(params: Params, root: Path) -> tuple[SourceFolders, dict[str, Any]]:
    """The checked local folders of the source's raw inputs, and their record for dataset.json."""
    found: dict[str, Path] = {}
    record: dict[str, Any] = {}
    for item in raw_inputs(params, root):
        found[item.field] = resolve_input(item, root)
        record[item.field] = {
            "location": item.location,
            "path": str(item.path.relative_to(root)) if root in item.path.parents else str(item.path),
            "dvc_version": raw_version(item),
        }
    folders = SourceFolders(found.get("data.source.location"), found.get("data.source.sbd_location"))
    return folders, record


def prepare(params: Params, root: Path) -> dict[str, Any]:
    """Stage ``prepare``: build ``root / params.paths.prepared`` from ``params.data.source``.

    Returns ``{"prepared": path, "source": name, "num_samples": n, "splits": {split: n},
    "num_classes": c, "version": content hash, "seconds": s}``.
    """
    start = time.perf_counter()
    root = Path(root).resolve()
    name = params.data.source.name
    folders, inputs = source_folders(params, root)
    data = get_adapter(name)(params, folders)
    target = root / params.paths.prepared
    with io.atomic_dir(target) as tmp:
        manifest = write_prepared(
            tmp, data, name, params.data.num_workers, params.validate_.max_failures_listed
        )
        write_manifest(tmp / MANIFEST_FILE, manifest)
        data.classes.save(tmp / CLASSES_FILE)
        version = content_version(manifest, (tmp / CLASSES_FILE).read_bytes())
        splits = dict(Counter(manifest["split"]))
        io.write_json(
            tmp / DATASET_FILE,
            {
                "source": name,
                "inputs": inputs,
                "expect": data.expect.to_json(),
                "num_samples": len(manifest),
                "splits": splits,
                "num_classes": data.classes.num_classes,
                "version": version,
            },
        )
    return {
        "prepared": params.paths.prepared,
        "source": name,
        "num_samples": len(manifest),
        "splits": splits,
        "num_classes": data.classes.num_classes,
        "version": version,
        "seconds": round(time.perf_counter() - start, 2),
    }
