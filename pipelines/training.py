"""The training pipeline as a Prefect 3 flow: import-data -> prepare -> validate -> train ->
evaluate -> register.

``import-data`` first brings the configured raw data under DVC (``pspnet import-data``:
``dvc import-url`` once, ``dvc update`` on later runs, so new files in the source are picked
up; nothing for the embedded dataset); it is retried like any transient failure (a remote
that did not answer).

Each task runs its stage THROUGH DVC (``python -m dvc repro <stage>`` in the project root), so
``dvc.lock`` always records what was run and an up-to-date stage is skipped, exactly as with a
plain ``dvc repro``. The stage's output is streamed line by line to the task's logger.

Retries: a failing stage is retried only when a retry can help. The stage commands
(``pspnet <stage>``) exit 2 for a configuration error and 3 for a data error
(:mod:`pspnet.errors`); those, and "command not found" (126/127), are never retried. DVC
itself always exits 255 when a stage fails; the stage command's own code is only in DVC's
error line, ``ERROR: failed to reproduce '<stage>': failed to run: <cmd>, exited with <N>``
(the DVC Python API carries it only in the same message), so it is parsed from there.
``validate`` is a gate and is never retried.

New-data trigger: with ``only_if_new_data=True`` the flow first asks
:func:`pspnet.ops.data_changes.data_changes` whether the data changed since ``dvc.lock`` (an
imported source's hash, the raw data folder's hash, the ``data`` parameters; code changes do
not count). Without a change it logs ``no new data since dvc.lock: ...`` and ends at once,
Completed in a state named ``Skipped``, running no stage. The scheduled deployment
(:mod:`pipelines.schedule`) runs it this way between its full, cron-timed runs.

Before import-data and the stages, the MLflow tracking store is checked
(:func:`pspnet.tracking.store.check_tracking_store`): a tracking server that does not answer
within ``mlflow.connect_timeout`` seconds fails the run at once, with the URI, where it came
from and the fix, instead of after prepare / validate (or after training).

Runs never interleave in one project, whatever started them (a schedule, ``make flow``, a
second scheduler): the flow holds a file lock (``.dvc/tmp/pspnet-pipeline.lock``) from start
to end; a second run waits for it and logs that it waits.

Running it::

    python -m pipelines.training [--project-dir DIR] [--only-if-new-data]

exits 0 when every stage succeeded (or the run was skipped: no new data), else the failing
stage's exit code (2 config, 3 data, 1 other). With no ``PREFECT_API_URL`` Prefect starts a
temporary local server (8-20 s, more on a slow first database migration). What the
environment should provide (``make flow`` sets all of it):

- ``PREFECT_HOME``: where Prefect keeps its database and settings; the flow respects
  whatever is set and never changes it (default ``~/.prefect``; the Makefile uses
  ``<project>/.prefect``);
- ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``: raise it (e.g. 120-180) on slow or
  busy machines; the default 20 s is often too short;
- ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` offline, to silence telemetry errors;
- the project's virtual environment: the flow puts the directory of the running Python
  first on ``PATH`` for DVC, so the ``pspnet`` stage commands resolve to the same
  environment even when it is not activated.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from pspnet.config import DEFAULT_PARAMS_FILE, load_params
from pspnet.ops.data_changes import DataChange, data_changes
from pspnet.stages import STAGE_NAMES
from pspnet.errors import PERMANENT_EXIT_CODES, ConfigError, PspnetError
from pspnet.tracking.store import check_tracking_store, redact
from pspnet.ops.environment import tool_env

#: The pipeline's stages in order: the ``pspnet`` command's stage subcommands.
STAGES = STAGE_NAMES

#: Exit codes of a stage command that a retry cannot fix: config (2), data (3), and a command
#: that cannot be executed / found (126 / 127).
NOT_RETRIED_EXIT_CODES = frozenset(PERMANENT_EXIT_CODES | {126, 127})

#: How many trailing output lines a failure message quotes.
_TAIL_LINES = 40

#: Held (relative to the project root) for a whole flow run: runs in one project never interleave.
PIPELINE_LOCK = Path(".dvc") / "tmp" / "pspnet-pipeline.lock"
#: While a run waits for the lock, it says so this often (seconds).
LOCK_WAIT_LOG_SECONDS = 60
#: Name of the (Completed) state of a run that found no new data.
SKIPPED_STATE = "Skipped"

_STAGE_FAILED = re.compile(r"failed to reproduce '(?P<stage>[^']*)'.*exited with (?P<code>-?\d+)\s*$")


class StageFailed(PspnetError):
    """``dvc repro <stage>`` failed; ``exit_code`` is the stage command's own code when known.

    Attributes:
        stage: the DVC stage that failed.
        exit_code: the stage command's exit code (2 config, 3 data, ...), or 1 when DVC failed
            before or around the command (no code in its error line).
        dvc_returncode: DVC's own exit code (255 for any failed stage).
        output_tail: the last lines of DVC's combined stdout/stderr.
    """

    def __init__(self, stage: str, exit_code: int, dvc_returncode: int, output_tail: str) -> None:
        self.stage = stage
        self.exit_code = exit_code
        self.dvc_returncode = dvc_returncode
        self.output_tail = output_tail
        super().__init__(
            f"stage {stage!r} failed (stage exit code {exit_code}, dvc exit code {dvc_returncode}). "
            f"Last output:\n{output_tail}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable with its fields (Prefect may persist it)
        return (type(self), (self.stage, self.exit_code, self.dvc_returncode, self.output_tail))


def last_failure(output: str) -> tuple[str, int] | None:
    """``(stage, exit code)`` from DVC's last ``failed to reproduce ... exited with N`` line, if any."""
    failure = None
    for line in output.splitlines():
        match = _STAGE_FAILED.search(line)
        if match:
            failure = (match.group("stage"), int(match.group("code")))
    return failure


def stage_exit_code(output: str) -> int | None:
    """The stage command's exit code from DVC's output (its last ``... exited with N`` line)."""
    failure = last_failure(output)
    return failure[1] if failure else None


def is_retryable_exit_code(code: int | None) -> bool:
    return code not in NOT_RETRIED_EXIT_CODES


def _state_exception(state: Any) -> BaseException | None:
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except Exception as err:  # noqa: BLE001 - the failure itself is what we want to classify
        return err
    return result if isinstance(result, BaseException) else None


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the stage failed for a config or data error."""
    exc = _state_exception(state)
    return is_retryable_exit_code(getattr(exc, "exit_code", None))


@contextmanager
def pipeline_lock(root: Path, logger: Any) -> Iterator[Path]:
    """Hold the project's pipeline lock (:data:`PIPELINE_LOCK`), waiting as long as another run holds it.

    It is an OS file lock, so it is released even when the holder dies. While waiting, says so
    every :data:`LOCK_WAIT_LOG_SECONDS`.
    """
    if not (root / ".dvc").is_dir():
        raise ConfigError(f"{root}: not a DVC repository (no .dvc/). Fix: run `dvc init` there.")
    path = root / PIPELINE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
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


def repro_stage(stage: str, project_dir: str | Path, logger: Any = None) -> dict[str, Any]:
    """Run ``dvc repro <stage>`` in ``project_dir``, streaming its output to ``logger``.

    Returns ``{"stage", "ran", "seconds"}`` (``ran`` is False when DVC found it up to date);
    raises :class:`StageFailed` on failure.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    cmd = [sys.executable, "-m", "dvc", "repro", stage]
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    ran = False
    if logger is not None:
        logger.info("$ %s  (in %s)", " ".join(cmd[2:]), project_dir)
    with subprocess.Popen(
        cmd,
        cwd=project_dir,
        env=tool_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            tail.append(line)
            if f"Running stage '{stage}'" in line:
                ran = True
            if logger is not None:
                logger.info(line)
        returncode = proc.wait()
    seconds = round(time.monotonic() - started, 2)
    if returncode != 0:
        # DVC names the stage that failed (an upstream one when it was out of date) on its last
        # line; without that line (DVC itself failed) the stage is the one asked for, code 1.
        output = "\n".join(tail)
        failed, code = last_failure(output) or (stage, 1)
        raise StageFailed(failed, code, returncode, output)
    return {"stage": stage, "ran": ran, "seconds": seconds}


_NEVER_CACHED = {
    "retry_condition_fn": retry_unless_permanent,
    # DVC decides what is up to date; Prefect must never skip a stage from its own cache.
    "cache_policy": NO_CACHE,
}
#: Delays before the 1st and 2nd retry of a stage that may hit a transient failure.
_RETRY_DELAYS = [10, 30]


@task(name="import-data", task_run_name="import-data", retries=2, retry_delay_seconds=_RETRY_DELAYS, **_NEVER_CACHED)
def import_data_task(project_dir: str) -> dict[str, Any]:
    """``pspnet import-data`` (the library function): the raw data's new DVC version, if any."""
    from pspnet.ops.import_data import import_data

    root = Path(project_dir).resolve()
    result = import_data(load_params(root / DEFAULT_PARAMS_FILE), root)
    for item in result["inputs"]:
        get_run_logger().info("%s: %s -> %s (%s)", item["field"], item["action"], item["path"], "new version" if item["changed"] else "unchanged")
    return result


@task(name="data-changes", task_run_name="data-changes", retries=2, retry_delay_seconds=_RETRY_DELAYS, **_NEVER_CACHED)
def data_changes_task(project_dir: str) -> DataChange:
    """Whether the data changed since ``dvc.lock`` (:func:`pspnet.ops.data_changes.data_changes`).

    Retried when DVC could not answer (a busy repository lock, a remote that did not answer);
    never for a config or data error.
    """
    root = Path(project_dir).resolve()
    return data_changes(load_params(root / DEFAULT_PARAMS_FILE), root)


@task(name="prepare", task_run_name="dvc-repro-prepare", retries=1, retry_delay_seconds=5, **_NEVER_CACHED)
def prepare_stage(project_dir: str) -> dict[str, Any]:
    """``dvc repro prepare``: one retry (a flaky filesystem); none for config / data errors."""
    return repro_stage("prepare", project_dir, get_run_logger())


@task(name="validate", task_run_name="dvc-repro-validate", retries=0, **_NEVER_CACHED)
def validate_stage(project_dir: str) -> dict[str, Any]:
    """``dvc repro validate``: the data gate; its verdict is deterministic, so never retried."""
    return repro_stage("validate", project_dir, get_run_logger())


@task(name="train", task_run_name="dvc-repro-train", retries=2, retry_delay_seconds=_RETRY_DELAYS, **_NEVER_CACHED)
def train_stage(project_dir: str) -> dict[str, Any]:
    """``dvc repro train``: retried twice on transient failures."""
    return repro_stage("train", project_dir, get_run_logger())


@task(name="evaluate", task_run_name="dvc-repro-evaluate", retries=2, retry_delay_seconds=_RETRY_DELAYS, **_NEVER_CACHED)
def evaluate_stage(project_dir: str) -> dict[str, Any]:
    """``dvc repro evaluate``: retried twice on transient failures."""
    return repro_stage("evaluate", project_dir, get_run_logger())


@task(name="register", task_run_name="dvc-repro-register", retries=2, retry_delay_seconds=_RETRY_DELAYS, **_NEVER_CACHED)
def register_stage(project_dir: str) -> dict[str, Any]:
    """``dvc repro register``: retried twice (e.g. a busy MLflow store); a retry reuses the version."""
    return repro_stage("register", project_dir, get_run_logger())


STAGE_TASKS = {
    "prepare": prepare_stage,
    "validate": validate_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "register": register_stage,
}


def _run_stages(root: Path, logger: Any) -> dict[str, Any]:
    """import-data, then every stage in order through DVC: the summary of a full run."""
    imported = import_data_task(str(root))
    results: dict[str, Any] = {}
    for stage, stage_task in STAGE_TASKS.items():
        result = stage_task(str(root))
        results[stage] = {k: v for k, v in result.items() if k != "stage"}
        logger.info("%s: %s in %.1f s", stage, "ran" if result["ran"] else "up to date", result["seconds"])
    report = root / load_params(root / DEFAULT_PARAMS_FILE).paths.reports / "registry.json"
    registry = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
    return {"imports": imported["inputs"], "stages": results, "registry": registry}


@flow(name="pspnet-training", flow_run_name="pspnet-training")
def training_pipeline(project_dir: str = ".", only_if_new_data: bool = False) -> dict[str, Any]:
    """Run every stage in order through DVC; a failed stage stops the flow (and fails it).

    Holds the project's pipeline lock throughout (a second run waits). With
    ``only_if_new_data`` it first checks whether the data changed since ``dvc.lock``; if not,
    it runs nothing and ends Completed in state ``Skipped``, with the reason.

    Returns ``{"project_dir", "skipped": bool, "reason", "data_change": <the check, or None when
    not asked>, "imports": [what import-data did], "stages": {stage: {"ran", "seconds"}},
    "registry": <reports/registry.json or None>}``.
    """
    root = Path(project_dir).resolve()
    if not (root / "dvc.yaml").is_file():
        raise ConfigError(f"{root}: no dvc.yaml here; pass the project root as --project-dir.")
    logger = get_run_logger()
    summary: dict[str, Any] = {"project_dir": str(root), "skipped": False, "reason": None, "data_change": None}
    with pipeline_lock(root, logger):
        if only_if_new_data:
            change = data_changes_task(str(root))
            summary["data_change"] = change.as_dict()
            if not change.changed:
                reason = f"no new data since dvc.lock: {change.summary()}"
                logger.info(reason)
                skipped = {**summary, "skipped": True, "reason": reason, "imports": [], "stages": {}, "registry": None}
                return Completed(name=SKIPPED_STATE, message=reason, data=skipped)  # type: ignore[return-value]
            summary["reason"] = f"new data: {change.summary()}"
            logger.info(summary["reason"])
        # Before any stage: an unreachable tracking server fails the run now, not after training.
        uri = check_tracking_store(load_params(root / DEFAULT_PARAMS_FILE).mlflow, root)
        logger.info("MLflow tracking store: %s", redact(uri))
        return {**summary, **_run_stages(root, logger)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.training",
        description="Run prepare -> validate -> train -> evaluate -> register as a Prefect flow (each stage via dvc repro).",
    )
    parser.add_argument("--project-dir", default=".", help="project root holding dvc.yaml and params.yaml (default: .)")
    parser.add_argument(
        "--only-if-new-data",
        action="store_true",
        help="run only when the data changed since dvc.lock (imported source, raw folder, data params); else exit 0 at once",
    )
    args = parser.parse_args(argv)
    try:
        summary = training_pipeline(project_dir=args.project_dir, only_if_new_data=args.only_if_new_data)
    except PspnetError as err:
        print(f"training pipeline failed: {err}", file=sys.stderr)
        return err.exit_code
    except RuntimeError as err:
        if "ephemeral Prefect API server" not in str(err):
            raise
        print(
            f"training pipeline: {err} Raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (e.g. 180), "
            "or point PREFECT_API_URL at a running `prefect server start`.",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
