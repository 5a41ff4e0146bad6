"""The manifest (``manifest.csv``): one row per sample, the index of the prepared dataset.

Columns: ``id`` (unique across the dataset), ``split`` (``train``/``val``/...), ``image`` and
``mask`` (paths relative to the prepared directory). Next to it, ``rejected.csv`` lists the
source samples ``prepare`` could not convert (:data:`REJECTED_COLUMNS`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pspnet import atomic_files
from pspnet.errors import DataError

MANIFEST_FILE = "manifest.csv"
#: The prepared dataset's record, next to the manifest: source, inputs, expectations, data version.
DATASET_FILE = "dataset.json"
COLUMNS = ("id", "split", "image", "mask")
#: The source samples ``prepare`` could not convert (always written, maybe empty): one row each.
REJECTED_FILE = "rejected.csv"
#: ``files``: the sample's source files (joined by :data:`FILES_SEPARATOR`); ``check``: a short
#: code (``unreadable_file``, ``too_large``, ``missing_pair`` ...: see
#: :mod:`pspnet.data.sources.base` and :mod:`pspnet.data.imagefiles`); ``problem``: what is wrong,
#: starting with the offending file; ``fix``: what to do about it.
REJECTED_COLUMNS = ("id", "split", "files", "check", "problem", "fix")
FILES_SEPARATOR = " ; "


def write_manifest(path: str | Path, rows: pd.DataFrame) -> None:
    """Atomically write the manifest; ``rows`` must hold exactly :data:`COLUMNS`."""
    missing = set(COLUMNS) - set(rows.columns)
    if missing:
        raise ValueError(f"manifest rows lack columns {sorted(missing)}")
    with atomic_files.atomic_path(path) as tmp:
        rows.loc[:, list(COLUMNS)].to_csv(tmp, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest, checking its columns; paths stay relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found. Run the `prepare` stage first (dvc repro prepare).")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(COLUMNS) - set(frame.columns)
    if missing:
        raise DataError(f"{path}: manifest lacks column(s) {sorted(missing)}; expected {list(COLUMNS)}. Re-run `prepare`.")
    return frame


def write_rejected(path: str | Path, rows: pd.DataFrame) -> None:
    """Atomically write ``rejected.csv`` (header only when nothing was rejected)."""
    with atomic_files.atomic_path(path) as tmp:
        rows.reindex(columns=list(REJECTED_COLUMNS)).to_csv(tmp, index=False)


def read_rejected(prepared_dir: str | Path) -> pd.DataFrame:
    """The rejected samples of a prepared dataset; empty when it has no ``rejected.csv`` (a
    dataset prepared before the file existed)."""
    path = Path(prepared_dir) / REJECTED_FILE
    if not path.is_file():
        return pd.DataFrame(columns=list(REJECTED_COLUMNS), dtype=str)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(REJECTED_COLUMNS) - set(frame.columns)
    if missing:
        raise DataError(f"{path}: lacks column(s) {sorted(missing)}; expected {list(REJECTED_COLUMNS)}. Re-run `prepare`.")
    return frame


def load_dataset_record(prepared_dir: str | Path) -> dict[str, Any]:
    """The prepared dataset's ``dataset.json`` (source, inputs, expectations, version), or ``{}``
    when there is none (a dataset prepared before the record existed)."""
    path = Path(prepared_dir) / DATASET_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(f"{path}: malformed ({err}). Re-run `prepare` to rewrite it.") from None


def split_rows(frame: pd.DataFrame, split: str | Sequence[str]) -> pd.DataFrame:
    """The rows of one split (or of several: a sequence of names), in manifest order."""
    wanted = [split] if isinstance(split, str) else list(split)
    return frame[frame["split"].isin(wanted)].reset_index(drop=True)
