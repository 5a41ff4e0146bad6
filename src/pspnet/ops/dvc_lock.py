"""What ``dvc.lock`` records, read without starting DVC (a stage reads it while DVC runs it)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pspnet.errors import PspnetError

LOCK_FILE = "dvc.lock"


def locked_out_md5(root: Path, stage: str, out: str) -> str | None:
    """The hash ``dvc.lock`` records for output ``out`` (a path relative to ``root``) of ``stage``;
    None when the project has no lock entry for it (never run through DVC)."""
    lock_file = Path(root) / LOCK_FILE
    try:
        lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return None
    except yaml.YAMLError as err:
        raise PspnetError(f"{lock_file}: not valid YAML ({err}). Fix: restore it from git, or rerun `dvc repro`.") from None
    for entry in ((lock.get("stages") or {}).get(stage) or {}).get("outs") or []:
        if Path(str(entry.get("path"))) == Path(out):
            return entry.get("md5")
    return None
