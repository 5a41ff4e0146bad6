"""The project's pipeline lock: runs of the training flow in one project never interleave.

An OS file lock (:data:`pspnet.layout.PIPELINE_LOCK_FILE`), so it is released even when its
holder dies; a second run waits for it and says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pspnet.errors import ConfigError
from pspnet.layout import PIPELINE_LOCK_FILE

#: While a run waits for the lock, it says so this often (seconds).
LOCK_WAIT_LOG_SECONDS = 60


def _lock(root: Path) -> tuple[Path, FileLock]:
    """The project's lock file (its folder made) and a lock on it."""
    path = root / PIPELINE_LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, FileLock(str(path))


@contextmanager
def pipeline_lock(root: Path, logger: Any) -> Iterator[Path]:
    """Hold the project's pipeline lock, waiting as long as another run holds it (logging every
    :data:`LOCK_WAIT_LOG_SECONDS`); yields the lock file's path."""
    if not (root / ".dvc").is_dir():
        raise ConfigError(f"{root}: not a DVC repository (no .dvc/). Fix: run `dvc init` there.")
    path, lock = _lock(root)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        logger.info("another pipeline run in %s holds %s: waiting for it to finish", root, path)
        started = time.monotonic()
        while True:
            try:
                lock.acquire(timeout=LOCK_WAIT_LOG_SECONDS)
                break
            except Timeout:
                logger.info("still waiting for %s (%.0f s)", path, time.monotonic() - started)
        logger.info("got %s after %.1f s", path, time.monotonic() - started)
    try:
        yield path
    finally:
        lock.release()


@contextmanager
def pipeline_lock_if_free(root: Path) -> Iterator[bool]:
    """Hold the project's pipeline lock if no run holds it: yields ``True`` while held, or
    ``False`` at once when a run has it (for checks that can wait for their next turn)."""
    _, lock = _lock(root)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
