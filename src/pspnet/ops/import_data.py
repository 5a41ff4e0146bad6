"""Where a source's raw files are, and bringing them under DVC: ``pspnet import-data``.

``prepare`` reads raw data only from inside ``paths.raw`` (``data/raw``), which is a
dependency of the prepare stage in ``dvc.yaml``: so whatever DVC knows about the raw data
(a new version after ``dvc update``, a changed ``dvc add``) reruns prepare and everything
downstream, and ``dvc.lock`` records which version each run used.

- A ``location`` inside ``paths.raw`` is read in place; ``import-data`` runs ``dvc add`` on it
  (again after files were added, so its ``.dvc`` file records the new version).
- A ``location`` elsewhere (another local folder or a URL: ``s3://``, ``https://`` ...) is
  imported into ``<paths.raw>/<name>`` with ``dvc import-url``; ``import-data`` later runs
  ``dvc update`` to pick up new files, or re-imports when the location changed.
- A tracked folder missing from the workspace (a fresh clone) is restored first: ``dvc
  checkout`` from the local cache, else ``dvc pull`` from the DVC remote.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pspnet.config import Params
from pspnet.errors import DataError, PspnetError
from pspnet.ops import dvc

log = logging.getLogger(__name__)

DVC_FILE_SUFFIX = ".dvc"
#: Folder name under ``paths.raw`` of the SBD import (``data.source.sbd_location``).
SBD_TARGET = "sbd"


@dataclass(frozen=True)
class RawInput:
    """One raw input of the source: which parameter names it, its value, its folder in the project."""

    field: str
    location: str
    #: Where prepare reads it (inside ``paths.raw``).
    path: Path
    #: ``True`` when it lives outside ``paths.raw`` and is brought in by ``dvc import-url``.
    imported: bool

    @property
    def dvc_file(self) -> Path:
        return self.path.with_name(self.path.name + DVC_FILE_SUFFIX)


def is_url(location: str) -> bool:
    """``True`` for ``scheme://...`` locations (what DVC imports from remote storage)."""
    return "://" in location


def _local_path(location: str, root: Path) -> Path:
    """The absolute path of a local location (symlinks kept: a link inside raw/ stays inside)."""
    path = Path(location).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else root / path))


def raw_inputs(params: Params, root: Path) -> list[RawInput]:
    """The raw inputs ``params.data.source`` names (none for ``synthetic``)."""
    source = params.data.source
    raw_root = _local_path(params.paths.raw, root)
    wanted = [("data.source.location", source.location, source.name)]
    if source.sbd_location:
        wanted.append(("data.source.sbd_location", source.sbd_location, SBD_TARGET))
    inputs = []
    for field, location, target in wanted:
        if not location:
            continue
        if not is_url(location):
            local = _local_path(location, root)
            if local == raw_root or raw_root in local.parents:
                inputs.append(RawInput(field, location, local, imported=False))
                continue
        inputs.append(RawInput(field, location, raw_root / target, imported=True))
    return inputs


def _dvc_yaml(dvc_file: Path) -> dict[str, Any]:
    """The parsed ``.dvc`` file, or ``{}`` when it is missing or unreadable."""
    try:
        record = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return record if isinstance(record, dict) else {}


def dvc_file_source(dvc_file: Path) -> str | None:
    """The location an import's ``.dvc`` file was imported from (absolute for local paths)."""
    try:
        source = str(_dvc_yaml(dvc_file)["deps"][0]["path"])
    except (KeyError, IndexError, TypeError):
        return None
    return source if is_url(source) else str(_local_path(source, dvc_file.parent))


def same_location(recorded: str | None, location: str, root: Path) -> bool:
    if recorded is None:
        return False
    if is_url(location):
        return recorded.rstrip("/") == location.rstrip("/")
    return recorded == str(_local_path(location, root))


def raw_version(item: RawInput) -> str | None:
    """The md5 DVC recorded for the input's folder (its data version), if it is DVC-tracked."""
    try:
        return str(_dvc_yaml(item.dvc_file)["outs"][0]["md5"])
    except (KeyError, IndexError, TypeError):
        return None


def resolve_input(item: RawInput, root: Path) -> Path:
    """The folder prepare reads for ``item``, checked; a :class:`DataError` says how to fix it."""
    if not item.imported:
        if not item.path.is_dir():
            raise DataError(f"{item.field}: {item.path} is not a folder. Fix the path in params.yaml.")
        return item.path
    command = "pspnet import-data"
    if not item.path.is_dir():
        raise DataError(
            f"{item.field}: {item.location} is outside the project's raw-data folder and has not been "
            f"imported into {item.path.relative_to(root)} yet. Fix: run `{command}`, which runs "
            f"`dvc import-url {item.location} {item.path.relative_to(root)}` so the raw data is versioned."
        )
    recorded = dvc_file_source(item.dvc_file)
    if not same_location(recorded, item.location, root):
        raise DataError(
            f"{item.field}: {item.path.relative_to(root)} was imported from {recorded or 'an unknown location'} "
            f"but params.yaml now says {item.location}. Fix: run `{command}` to re-import it."
        )
    return item.path


def escaping_links(folder: Path) -> list[tuple[Path, Path]]:
    """``(link, real target)`` of every symbolic link under ``folder`` whose target lies outside it
    (the folder itself may be a link). Linked folders are reported, not entered."""
    top = folder.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath) / name
            if path.is_symlink():
                real = path.resolve()
                if real != top and top not in real.parents:
                    found.append((path, real))
    return found


def refuse_escaping_links(field: str, folder: Path, root: Path) -> None:
    """Stop, before DVC reads ``folder``, when a link in it leads outside it: ``dvc add`` and
    ``dvc import-url`` follow links, so the target's bytes would enter ``data/raw``, the DVC cache
    and, with ``dvc push``, a shared remote. Links into the project's DVC cache (``cache.type:
    symlink``) are DVC's own and stay allowed."""
    links = escaping_links(folder)
    if links:
        cache = dvc.cache_dir(root)
        links = [(link, real) for link, real in links if cache not in real.parents]
    if not links:
        return
    link, real = links[0]
    raise DataError(
        f"{link}: a symbolic link to {real}, outside the source folder {folder} ({len(links)} such link(s) in "
        f"{field}); nothing was imported or cached. Fix: replace each link with a copy of the file it should be, or "
        "remove it (a dataset from elsewhere can carry links to files of yours)."
    )


def stage_in_git(root: Path, paths: list[Path]) -> None:
    """``git add`` the DVC metafiles an import wrote (what ``core.autostage`` would do), so that
    ``dvc exp run`` and the next commit carry them; a no-op outside a git repository."""
    existing = [str(p.relative_to(root)) for p in paths if p.exists()]
    if not existing or not (root / ".git").exists():
        return
    done = subprocess.run(["git", "add", "--", *existing], cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log.warning("git add %s failed: %s", " ".join(existing), done.stderr.strip())


def restore_tracked(root: Path, dvc_file: Path) -> str:
    """Put a DVC-tracked folder that is missing from the workspace back: from the local cache
    (``dvc checkout``), else from the DVC remote (``dvc pull``; a fresh clone on the machine a
    schedule runs on has an empty cache). Returns the command that did it."""
    rel = str(dvc_file.relative_to(root))
    try:
        dvc.checkout(root, rel)
        return "dvc checkout"
    except PspnetError as err:
        log.info("%s is not in the local DVC cache (%s); pulling it from the DVC remote", rel, err)
    # Probed first: DVC reports an unreachable remote as missing files, and would create the
    # folder of a local remote whose share is not mounted.
    remote = dvc.default_remote(root)
    why = dvc.remote_unreachable(root, remote[1]) if remote else None
    if remote and why:  # transient: a retry (the flow's) may find it back
        raise PspnetError(
            f"{rel}: not in the local DVC cache, and the DVC remote {remote[0]!r} ({remote[1]}) is unreachable: "
            f"{why}. Nothing was changed. Fix: bring the remote back (network, share, server) and run again."
        )
    try:
        dvc.pull(root, rel)
    except PspnetError as err:
        raise DataError(
            f"{rel}: its data is neither in the local DVC cache nor on a DVC remote ({err}). Fix: add the remote "
            "that holds it (`dvc remote add -d NAME URL`) and run `pspnet import-data` again, or import the data anew."
        ) from None
    return "dvc pull"


def import_data(params: Params, root: Path) -> dict[str, Any]:
    """Bring every raw input of ``params.data.source`` under DVC (see the module doc).

    The ``.dvc`` file and ``.gitignore`` DVC writes are staged in git (commit them with your
    change). Returns ``{"source": name, "inputs": [{field, location, path, action, version_before,
    version, changed}]}``; ``version`` is the md5 DVC records for the folder.
    """
    root = Path(root).resolve()
    results = []
    for item in raw_inputs(params, root):
        before = raw_version(item)
        rel = str(item.path.relative_to(root))
        if not item.imported:
            action = "dvc add"
            if not item.path.exists() and item.dvc_file.is_file():
                action = restore_tracked(root, item.dvc_file)
            if not item.path.is_dir():
                raise DataError(f"{item.field}: {item.path} is not a folder. Fix the path in params.yaml.")
            refuse_escaping_links(item.field, item.path, root)
            dvc.add(root, rel)
        elif item.dvc_file.is_file() and same_location(dvc_file_source(item.dvc_file), item.location, root):
            action = "dvc update"
            if not is_url(item.location):
                refuse_escaping_links(item.field, _local_path(item.location, root), root)
            dvc.update(root, str(item.dvc_file.relative_to(root)))
            if not item.path.exists():  # `dvc update` of an unchanged source does not restore a deleted copy
                restore_tracked(root, item.dvc_file)
        else:
            action = "dvc import-url"
            item.path.parent.mkdir(parents=True, exist_ok=True)
            location = item.location if is_url(item.location) else str(_local_path(item.location, root))
            if not is_url(location) and not Path(location).exists():
                raise DataError(
                    f"{item.field}: {location} does not exist. Fix: set {item.field} in params.yaml (or the "
                    "preset, or `--set`) to the dataset's folder or URL."
                )
            if not is_url(location):
                refuse_escaping_links(item.field, Path(location), root)
            if item.dvc_file.exists():  # imported from elsewhere before: drop that import (it stays in the cache)
                dvc.remove_outs(root, str(item.dvc_file.relative_to(root)))
            elif item.path.exists():
                raise DataError(
                    f"{item.path}: already exists and is not a DVC import; import-data will not overwrite it. "
                    f"Fix: move it away, or set {item.field} to it (data inside {params.paths.raw}/ is read in place)."
                )
            dvc.import_url(root, location, rel)
        stage_in_git(root, [item.dvc_file, item.path.parent / ".gitignore"])
        after = raw_version(item)
        results.append(
            {
                "field": item.field,
                "location": item.location,
                "path": rel,
                "action": action,
                "version_before": before,
                "version": after,
                "changed": before != after,
            }
        )
    return {"source": params.data.source.name, "inputs": results}
