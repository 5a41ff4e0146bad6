"""Stage ``prepare``: build ``paths.prepared`` from ``data.source`` (see :mod:`pspnet.data.convert`)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pspnet import atomic_files
from pspnet.config import Params
from pspnet.data.classes import CLASSES_FILE
from pspnet.data.convert import (
    WriteOptions,
    content_version,
    convert_source,
    failure_message,
)
from pspnet.data.holdout import hold_out
from pspnet.data.manifest import (
    DATASET_FILE,
    MANIFEST_FILE,
    REJECTED_FILE,
    write_manifest,
    write_rejected,
)
from pspnet.data.sources import get_adapter
from pspnet.data.sources.base import SourceData, SourceFolders
from pspnet.errors import DataError
from pspnet.layout import Layout
from pspnet.ops.import_data import raw_inputs, raw_version, resolve_input

log = logging.getLogger(__name__)


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


def allowed_roots(data: SourceData, cache: Path) -> tuple[Path, ...]:
    """The folders the source's files may resolve into: its input folders (and the project's DVC
    cache, which DVC may link raw files into); empty (no check) for a source without inputs."""
    if not data.inputs:
        return ()
    return (*data.inputs, cache) if cache.is_dir() else tuple(data.inputs)


def run(params: Params, root: Path) -> dict[str, Any]:
    """Stage ``prepare``: build ``root / params.paths.prepared`` from ``params.data.source``.

    Samples that cannot be converted are left out and listed in ``rejected.csv`` (``validate``
    fails on them, or quarantines them); a source without any convertible sample is an error.
    Returns ``{"prepared": path, "source": name, "num_samples": n, "splits": {split: n},
    "num_classes": c, "version": content hash, "rejected": n, "image_conversions": {mode: n},
    "seconds": s}``. With ``data.holdout.groups`` set, the samples of those groups form their own split.
    """
    start = time.perf_counter()
    root = Path(root).resolve()
    name = params.data.source.name
    folders, inputs = source_folders(params, root)
    data, holdout = hold_out(get_adapter(name)(params, folders), params.data.holdout)
    target = root / params.paths.prepared
    options = WriteOptions.from_params(params, allowed_roots(data, Layout(root, params.paths).dvc_cache))
    with atomic_files.atomic_dir(target) as tmp:
        converted = convert_source(tmp, data, name, params.data.num_workers, options, root)
        manifest, rejected = converted.manifest, converted.rejected
        if manifest.empty:
            if rejected.empty:
                raise DataError(f"prepare: source {name!r} yielded no samples. Fix data.source.location in params.yaml.")
            head = f"prepare: every sample of source {name!r} was rejected ({len(rejected)}); nothing was written:"
            raise DataError(failure_message(head, converted.messages(), params.validate_.max_failures_listed))
        write_manifest(tmp / MANIFEST_FILE, manifest)
        write_rejected(tmp / REJECTED_FILE, rejected)
        data.classes.save(tmp / CLASSES_FILE)
        version = content_version(manifest, (tmp / CLASSES_FILE).read_bytes())
        splits = dict(Counter(manifest["split"]))
        atomic_files.write_json(
            tmp / DATASET_FILE,
            {
                "source": name,
                "inputs": inputs,
                "expect": data.expect.to_json(),
                "num_samples": len(manifest),
                "splits": splits,
                "num_classes": data.classes.num_classes,
                "version": version,
                "num_rejected": len(rejected),
                "non_rgb_images": options.non_rgb_images,
                "image_conversions": converted.conversions,
                **({"holdout": holdout} if holdout else {}),
            },
        )
    if len(rejected):
        log.warning(
            "prepare: %d sample(s) of source %r rejected, listed in %s/%s; validate fails on them "
            "unless validate.quarantine is true",
            len(rejected), name, params.paths.prepared, REJECTED_FILE,
        )  # fmt: skip
    if converted.conversions:
        log.info("prepare: images converted to RGB, by source mode: %s", converted.conversions)
    return {
        "prepared": params.paths.prepared,
        "source": name,
        "num_samples": len(manifest),
        "splits": splits,
        "num_classes": data.classes.num_classes,
        "version": version,
        "rejected": len(rejected),
        "image_conversions": converted.conversions,
        "seconds": round(time.perf_counter() - start, 2),
    }
