"""Watch the data folders and emit a Prefect event when new data lands (event-driven retraining).

Every ``schedule.watch_interval`` seconds it lists the watched folders (names, sizes, modification
times: cheap). When the listing changed, it asks :func:`pspnet.ops.data_changes.data_changes`
whether the data differs from what DVC recorded and, if so, emits one event per changed
dataset (:mod:`pspnet.data_events`: the dataset as resource, its old and new DVC hashes as
payload). Files arriving one by one give several events; the deployment's trigger gathers
those within ``schedule.event_window`` seconds into one run (prefect.yaml).

Watched by default: each local source folder of ``data.source`` (an imported one where it is,
not its copy in ``data/raw``), else ``paths.raw``. A URL source cannot be watched here: the
deployment's interval check (``schedule.data_check_interval``) covers it. While a pipeline run
holds the project's lock, the check waits for the next look (DVC and the run never collide).

    python -m pipelines.watch [--project-dir DIR] [--folder DIR ...] [--interval SECONDS]

needs ``PREFECT_API_URL`` (the server the deployment is on); Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pipelines import deployment, schedule
from pspnet.config import DEFAULT_PARAMS_FILE, Params, load_params
from pspnet.data_events import change_events, emit
from pspnet.errors import ConfigError, PspnetError
from pspnet.ops.data_changes import data_changes
from pspnet.ops.import_data import is_url, raw_inputs
from pspnet.ops.project_lock import pipeline_lock_if_free

EMITTER = "pipelines.watch"
#: A listing: (path, size, modification time in ns) of every file under the watched folders.
Listing = frozenset[tuple[str, int, int]]


def watched(params: Params, root: Path) -> dict[str, Path]:
    """The folders to watch, by the name :mod:`pspnet.ops.data_changes` gives their hash."""
    folders: dict[str, Path] = {}
    for item in raw_inputs(params, root):
        if not item.imported:
            folders[params.paths.raw] = item.path  # read in place: it is part of paths.raw's hash
        elif not is_url(item.location):
            folders[item.field] = Path(item.location) if Path(item.location).is_absolute() else root / item.location
    return folders or {params.paths.raw: root / params.paths.raw}


def listing(folders: list[Path]) -> Listing:
    """Every file under ``folders`` (links not followed) with its size and modification time."""
    found = set()
    for folder in folders:
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    stat = os.stat(path, follow_symlinks=False)
                except OSError:  # removed while listing: the next look sees it gone
                    continue
                found.add((path, stat.st_size, stat.st_mtime_ns))
    return frozenset(found)


def check(params: Params, root: Path, folders: dict[str, Path]) -> int | None:
    """Compare the data with DVC's record and emit its events: how many, or ``None`` when a
    pipeline run holds the project (checked at the next look)."""
    with pipeline_lock_if_free(root) as free:
        if not free:
            return None
        change = data_changes(params, root)
    if not change.changed:
        print(f"watch: no new data ({change.summary()})", flush=True)
        return 0
    print(f"watch: new data: {change.summary()}", flush=True)
    return emit(change_events(change, params, {name: str(path) for name, path in folders.items()}, EMITTER))


def watch(project_dir: str | Path, folders: list[str] | None = None, interval: float | None = None) -> None:
    """Look every ``interval`` seconds (default ``schedule.watch_interval``) until interrupted."""
    root = Path(project_dir).resolve()
    if not (root / "dvc.yaml").is_file():
        raise ConfigError(f"{root}: no dvc.yaml here; pass the project root as --project-dir.")
    params = load_params(root / DEFAULT_PARAMS_FILE)
    named = {str(f): Path(f).resolve() for f in folders} if folders else watched(params, root)
    url = schedule.require_server(deployment.SERVER_HINT)
    every = interval or params.schedule.watch_interval
    seen: Listing | None = None  # None: check at the first look (data may have landed while no one watched)
    print(f"watch: {', '.join(str(p) for p in named.values())} every {every} s; events to {url}", flush=True)
    while True:
        now = listing(list(named.values()))
        if now != seen:
            try:
                emitted = check(params, root, named)
            except PspnetError as err:  # e.g. DVC busy: the next look tries again
                print(f"watch: could not check the data ({err}); trying again in {every} s", file=sys.stderr, flush=True)
                emitted = None
            if emitted is not None:
                seen = now
                print(f"watch: ready ({emitted} event(s) emitted)", flush=True)
        time.sleep(every)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.watch", description="Emit a Prefect event when new data lands in the watched folders.")
    parser.add_argument("--project-dir", default=".", help="project root holding dvc.yaml and params.yaml (default: .)")
    parser.add_argument("--folder", action="append", help="a folder to watch (repeatable; default: data.source's folders, else paths.raw)")
    parser.add_argument("--interval", type=float, help="seconds between looks (default: schedule.watch_interval)")
    args = parser.parse_args(argv)
    try:
        watch(args.project_dir, args.folder, args.interval)
    except PspnetError as err:
        print(f"watch: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
