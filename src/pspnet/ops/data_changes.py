"""Has the data changed since the pipeline last ran? (the new-data trigger of scheduled retraining)

"The data changed" means that DVC would give ``prepare`` different data than ``dvc.lock``
records, or that ``dvc update`` would bring a new version of an imported source:

- ``dvc.lock`` is missing or has no ``prepare`` entry: the pipeline never ran;
- an imported raw input (``data.source.location`` / ``sbd_location`` outside ``paths.raw``,
  brought in with ``dvc import-url`` by :mod:`pspnet.ops.import_data`) is not imported yet, was
  imported from another location, or its source's hash differs from the one its ``.dvc`` file
  recorded;
- the raw data folder (``paths.raw``, a dependency of ``prepare``) differs from its hash in
  ``dvc.lock`` (e.g. ``dvc update`` already ran, or files were added to a folder read in place);
- the ``data`` parameters (which define the embedded synthetic source) differ from those
  ``dvc.lock`` recorded.

Code changes are NOT data changes: ``dvc repro`` reruns a stage whose code changed, but no
new data arrived. Everything is hashed by DVC's Python API (``dvc status`` never looks at an
``import-url`` source: its ``.dvc`` file is frozen).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from pspnet.config import Params, flatten
from pspnet.errors import ConfigError, DataError, PspnetError
from pspnet.layout import DVC_LOCK_FILE
from pspnet.ops.dvc_lock import locked_stages
from pspnet.ops.import_data import RawInput, dvc_file_source, raw_inputs, same_location

#: The stage that reads the raw data and the ``data`` parameters.
PREPARE_STAGE = "prepare"
#: The parameter section that defines the data (``params:`` of the prepare stage).
DATA_PARAMS = "data"
PIPELINE_FILE = "dvc.yaml"
#: Hash digits shown in messages (DVC's md5s are 32 hex digits plus ``.dir`` for folders).
_SHORT_HASH = 12
#: Parameter values longer than this are shortened in messages.
_MAX_VALUE_CHARS = 60


@dataclass(frozen=True)
class HashCheck:
    """One data input as DVC recorded it and as it is now.

    Attributes:
        name: what was hashed: ``paths.raw`` (e.g. ``data/raw``) or the import's parameter
            (``data.source.location``).
        recorded_in: the file holding the recorded hash (``dvc.lock`` or the import's ``.dvc`` file).
        recorded: the recorded hash, ``None`` when nothing was recorded.
        current: the hash now, ``None`` when the input does not exist.
    """

    name: str
    recorded_in: str
    recorded: str | None
    current: str | None

    @property
    def changed(self) -> bool:
        return self.recorded != self.current

    def describe(self) -> str:
        """``data/raw 1bbd2afe011c as in dvc.lock`` or ``data/raw 1bbd2afe011c in dvc.lock, now 8344dbb57d5d``."""
        if not self.changed:
            return f"{self.name} {_short(self.recorded)} as in {self.recorded_in}"
        return f"{self.name} {_short(self.recorded)} in {self.recorded_in}, now {_short(self.current)}"


@dataclass(frozen=True)
class DataChange:
    """Whether the data changed since ``dvc.lock``, and why.

    Attributes:
        changed: ``True`` when a run would get new data (see the module doc).
        reasons: one human-readable line per change; empty when nothing changed.
        hashes: every hash compared (the raw folder, each imported source).
        params_changed: the ``data.*`` parameters whose values differ from ``dvc.lock``'s.
    """

    changed: bool
    reasons: list[str] = field(default_factory=list)
    hashes: list[HashCheck] = field(default_factory=list)
    params_changed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the reasons when changed, else what was found unchanged."""
        if self.changed:
            return "; ".join(self.reasons)
        return ", ".join([h.describe() for h in self.hashes] + [f"{DATA_PARAMS} params as in {DVC_LOCK_FILE}"])

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (for flow results and logs)."""
        return {
            "changed": self.changed,
            "reasons": list(self.reasons),
            "hashes": [
                {"name": h.name, "recorded_in": h.recorded_in, "recorded": h.recorded, "current": h.current}
                for h in self.hashes
            ],
            "params_changed": list(self.params_changed),
        }


def _short(value: str | None) -> str:
    return "none" if value is None else value[:_SHORT_HASH]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _hash_value(hash_info: Any) -> str | None:
    return str(hash_info.value) if hash_info and hash_info.value else None


def _current_hash(dep: Any) -> str | None:
    """DVC's hash of a dependency as it is now (``None`` when it does not exist)."""
    return _hash_value(dep.get_hash()) if dep.exists else None


def _raw_dependency(stage: Any, raw_dir: Path) -> Any:
    """The prepare stage's dependency on ``paths.raw``; a :class:`ConfigError` when dvc.yaml lacks it."""
    for dep in stage.deps:
        if os.path.normpath(dep.fs_path) == os.path.normpath(raw_dir):
            return dep
    raise ConfigError(
        f"{PIPELINE_FILE}: stage {PREPARE_STAGE!r} does not depend on the raw data folder {raw_dir}. "
        f"Fix: list `- ${{paths.raw}}` under its deps, so DVC tracks the raw data."
    )


def _params_dependency(stage: Any) -> Any | None:
    from dvc.dependency.param import ParamsDependency

    return next((dep for dep in stage.deps if isinstance(dep, ParamsDependency)), None)


def _is_data_key(key: str) -> bool:
    return key == DATA_PARAMS or key.startswith(DATA_PARAMS + ".")


def _changed_data_params(dep: Any) -> list[str]:
    """``data.*`` parameters DVC finds changed since dvc.lock, as ``key: old -> new``."""
    status = next(iter(dep.status().values()), {}) if dep is not None else {}
    if isinstance(status, str):  # "new" / "deleted": dvc.lock holds no parameters for the stage
        return [f"{DATA_PARAMS}: {status}"]
    if not any(_is_data_key(key) for key in status):
        return []
    recorded = flatten(dep.hash_info.value or {})
    current = flatten(dep.read_params())
    keys = sorted(k for k in recorded.keys() | current.keys() if _is_data_key(k) and recorded.get(k) != current.get(k))
    diffs = [f"{k}: {_shown(recorded.get(k))} -> {_shown(current.get(k))}" for k in keys]
    return diffs or [f"{key}: {state}" for key, state in status.items() if _is_data_key(key)]


def _import_check(repo: Any, item: RawInput, root: Path) -> tuple[HashCheck | None, str | None]:
    """The hash check of one imported input and the reason it changed (``None`` when it did not)."""
    dvc_file = item.dvc_file
    rel = dvc_file.relative_to(root)
    if not dvc_file.is_file():
        return None, f"{item.field} {item.location} is not imported yet (no {rel}; `pspnet import-data` imports it)"
    if not same_location(dvc_file_source(dvc_file), item.location, root):
        return None, f"{item.field} is now {item.location}, but {rel} was imported from {dvc_file_source(dvc_file)}"
    dep = repo.stage.load_one(path=str(dvc_file)).deps[0]
    if not dep.exists:
        raise DataError(
            f"{item.field}: the source {item.location} recorded in {rel} does not exist (any more). Fix: restore "
            f"it, or set {item.field} in params.yaml to where the data is now and run `pspnet import-data`."
        )
    check = HashCheck(item.field, str(rel), _hash_value(dep.hash_info), _current_hash(dep))
    return check, f"source {item.location} changed: {check.describe()}" if check.changed else None


def _compare(repo: Any, params: Params, root: Path) -> DataChange:
    """Every check of the module doc but "never run", inside an open, locked DVC repo."""
    hashes: list[HashCheck] = []
    reasons: list[str] = []
    for item in raw_inputs(params, root):
        if item.imported:
            check, reason = _import_check(repo, item, root)
            hashes += [check] if check else []
            reasons += [reason] if reason else []
    stage = repo.stage.load_one(path=str(root / PIPELINE_FILE), name=PREPARE_STAGE)
    raw = _raw_dependency(stage, root / params.paths.raw)
    raw_check = HashCheck(params.paths.raw, DVC_LOCK_FILE, _hash_value(raw.hash_info), _current_hash(raw))
    hashes.append(raw_check)
    if raw_check.changed:
        reasons.append(f"raw data changed: {raw_check.describe()}")
    params_changed = _changed_data_params(_params_dependency(stage))
    if params_changed:
        reasons.append(f"{DATA_PARAMS} params differ from {DVC_LOCK_FILE}: " + ", ".join(params_changed))
    return DataChange(bool(reasons), reasons, hashes, params_changed)


def data_changes(params: Params, root: str | Path) -> DataChange:
    """Whether the data changed since ``dvc.lock`` (see the module doc for what counts).

    Args:
        params: the project's parameters (``params.yaml``).
        root: the project root (holds ``dvc.yaml``, ``dvc.lock``, ``.dvc/``).

    Raises:
        ConfigError: not a DVC project, or ``dvc.yaml`` / ``dvc.lock`` unreadable.
        DataError: an imported source no longer exists.
        PspnetError: DVC failed otherwise (another DVC command holds the repo lock, a remote
            source did not answer): worth a retry.
    """
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.lock import LockError
    from dvc.repo import Repo

    root = Path(root).resolve()
    if not (root / PIPELINE_FILE).is_file():
        raise ConfigError(f"{root}: no {PIPELINE_FILE} here. Fix: pass the project root (the folder holding {PIPELINE_FILE}).")
    stages = locked_stages(root)
    if stages is None or PREPARE_STAGE not in stages:
        missing = f"no {DVC_LOCK_FILE}" if stages is None else f"{DVC_LOCK_FILE} has no {PREPARE_STAGE!r} entry"
        return DataChange(True, [f"never run: {missing}"])
    try:
        with Repo(str(root)) as repo, repo.lock:
            return _compare(repo, params, root)
    except NotDvcRepoError:
        raise ConfigError(f"{root}: not a DVC repository (no .dvc/). Fix: run `dvc init` there.") from None
    except LockError:
        raise PspnetError(
            f"{root}: another DVC command holds the repository lock ({root / '.dvc' / 'tmp' / 'lock'}). "
            "Fix: wait for it to finish and try again; remove the lock file only if no DVC process is running."
        ) from None
    except (DvcException, OSError) as err:
        raise PspnetError(
            f"{root}: DVC could not compare the data with {DVC_LOCK_FILE} and the .dvc files: {err}. "
            f"Fix: run `dvc status {PREPARE_STAGE}` there to see the problem."
        ) from err

