"""What ``dvc.lock`` records, read without starting DVC (a stage reads it while DVC runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pspnet.errors import ConfigError
from pspnet.layout import DVC_LOCK_FILE


def locked_stages(root: Path) -> dict[str, Any] | None:
    """``dvc.lock``'s stages, ``None`` when there is no lock file; a malformed one is named."""
    path = Path(root) / DVC_LOCK_FILE
    if not path.is_file():
        return None
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(
            f"{path}: cannot be read ({err}). Fix: restore it with `git checkout -- {DVC_LOCK_FILE}`, or delete it "
            "and run `dvc repro` to rebuild it."
        ) from None
    stages = record.get("stages") if isinstance(record, dict) else None
    return stages if isinstance(stages, dict) else {}


def locked_out_md5(root: Path, stage: str, out: str) -> str | None:
    """The hash ``dvc.lock`` records for output ``out`` (a path relative to ``root``) of ``stage``;
    None when the project has no lock entry for it (never run through DVC)."""
    for entry in ((locked_stages(root) or {}).get(stage) or {}).get("outs") or []:
        if Path(str(entry.get("path"))) == Path(out):
            return entry.get("md5")
    return None
