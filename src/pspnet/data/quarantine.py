"""The quarantine list: samples ``validate`` set aside (``validate.quarantine: true``).

``validate`` writes the quarantine list (``reports/validation/quarantine.csv``) on every run (atomically; only a
header when nothing is quarantined or quarantine is off): one row per failing sample, with
``id``, ``split``, ``files`` (prepared files, or the source files of a sample ``prepare``
rejected) and ``problems`` (each with its fix). Nothing is moved or deleted: the prepared data
stays what ``prepare`` wrote (a DVC output of that stage), and the stages that read it skip
these ids (:func:`excluded_ids` -> ``SegmentationDataset(..., exclude=ids)``).

The data a model sees is then the prepared data version minus these ids:
:func:`effective_version` names it (the prepared version itself when nothing is excluded).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pspnet import atomic_files
from pspnet.errors import DataError

QUARANTINE_COLUMNS = ("id", "split", "files", "problems")
#: Separator of the entries of the ``files`` and ``problems`` cells.
SEPARATOR = " | "


def write_quarantine(path: Path, rows: Iterable[dict[str, str]]) -> None:
    """Atomically write the quarantine list (a header only when ``rows`` is empty)."""
    frame = pd.DataFrame(list(rows), columns=list(QUARANTINE_COLUMNS))
    with atomic_files.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_quarantine(path: Path) -> pd.DataFrame:
    """The quarantine list at ``path`` (checked columns); empty when the file does not exist."""
    if not path.is_file():
        return pd.DataFrame(columns=list(QUARANTINE_COLUMNS), dtype=str)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(QUARANTINE_COLUMNS) - set(frame.columns)
    if missing:
        raise DataError(
            f"{path}: lacks column(s) {sorted(missing)}; expected {list(QUARANTINE_COLUMNS)}. Fix: re-run `validate`."
        )
    return frame


def excluded_ids(path: Path, enabled: bool) -> frozenset[str]:
    """The sample ids train / evaluate / register must skip: those of the quarantine list at
    ``path`` when quarantine is ``enabled`` (``validate.quarantine``); none when it is off or
    ``validate`` has not written the file."""
    if not enabled:
        return frozenset()
    return frozenset(read_quarantine(path)["id"])


def effective_version(version: str | None, excluded: Iterable[str]) -> str | None:
    """The version of the data a model sees: ``version`` when nothing is excluded, else an md5 of
    ``version`` and the sorted excluded ids (so a different quarantine is a different version)."""
    ids = sorted(set(excluded))
    if not ids or version is None:
        return version
    digest = hashlib.md5(str(version).encode())
    digest.update("\n".join(ids).encode())
    return digest.hexdigest()
