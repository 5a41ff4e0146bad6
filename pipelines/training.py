"""The training pipeline as a Prefect 3 flow: import-data -> prepare -> validate -> train ->
evaluate -> test -> register (Prefect wiring only; the work is in :mod:`pspnet.ops`).

Each stage runs through DVC (:func:`pspnet.ops.dvc.repro_stage`), so ``dvc.lock`` records it and
an up-to-date stage is skipped. A failed stage is retried unless its exit code says a retry
cannot help; ``validate`` is never retried. The flow holds the project lock throughout, checks
the MLflow tracking store before any stage and, with ``only_if_new_data``, ends at once in state
``Skipped`` when the data did not change since ``dvc.lock``.

    python -m pipelines.training [--project-dir DIR] [--only-if-new-data]

exits 0 when every stage succeeded (or the run was skipped), else the failing stage's exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from pspnet.config import DEFAULT_PARAMS_FILE, load_params
from pspnet.errors import PERMANENT_EXIT_CODES, ConfigError, PspnetError
from pspnet.layout import Layout
from pspnet.ops import import_data as data_import
from pspnet.ops.data_changes import DataChange, data_changes
from pspnet.ops.dvc import repro_stage
from pspnet.ops.project_lock import pipeline_lock
from pspnet.stages import STAGE_NAMES
from pspnet.tracking.store import check_tracking_store, redact

#: Exit codes of a stage command that a retry cannot fix: config (2), data (3), and a command
#: that cannot be executed / found (126 / 127).
NOT_RETRIED_EXIT_CODES = frozenset(PERMANENT_EXIT_CODES | {126, 127})
#: Name of the (Completed) state of a run that found no new data.
SKIPPED_STATE = "Skipped"

#: Delays (seconds) before the 1st and 2nd retry of a step that may hit a transient failure.
RETRY_DELAYS = [10, 30]
TRANSIENT_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": RETRY_DELAYS}
#: Each stage's retries: prepare once (a flaky filesystem); validate never (the data gate's
#: verdict is deterministic); the others twice (register's retry reuses its version).
STAGE_RETRIES: dict[str, dict[str, Any]] = {
    "prepare": {"retries": 1, "retry_delay_seconds": 5},
    "validate": {"retries": 0},
    "train": TRANSIENT_RETRIES,
    "evaluate": TRANSIENT_RETRIES,
    "test": TRANSIENT_RETRIES,
    "register": TRANSIENT_RETRIES,
}


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


_NEVER_CACHED = {
    "retry_condition_fn": retry_unless_permanent,
    # DVC decides what is up to date; Prefect must never skip a stage from its own cache.
    "cache_policy": NO_CACHE,
}


@task(name="import-data", task_run_name="import-data", **TRANSIENT_RETRIES, **_NEVER_CACHED)
def import_data_task(project_dir: str) -> dict[str, Any]:
    """``pspnet import-data`` (the library function): the raw data's new DVC version, if any."""
    root = Path(project_dir).resolve()
    result = data_import.import_data(load_params(root / DEFAULT_PARAMS_FILE), root)
    for item in result["inputs"]:
        get_run_logger().info("%s: %s -> %s (%s)", item["field"], item["action"], item["path"], "new version" if item["changed"] else "unchanged")
    return result


@task(name="data-changes", task_run_name="data-changes", **TRANSIENT_RETRIES, **_NEVER_CACHED)
def data_changes_task(project_dir: str) -> DataChange:
    """Whether the data changed since ``dvc.lock`` (:func:`pspnet.ops.data_changes.data_changes`)."""
    root = Path(project_dir).resolve()
    return data_changes(load_params(root / DEFAULT_PARAMS_FILE), root)


def stage_task(stage: str) -> Task[[str], dict[str, Any]]:
    """The task ``<stage>`` (run name ``dvc-repro-<stage>``): ``dvc repro <stage>`` with the
    stage's retries (:data:`STAGE_RETRIES`), its output in the task's log."""

    def repro(project_dir: str) -> dict[str, Any]:
        return repro_stage(stage, project_dir, get_run_logger())

    repro.__name__ = repro.__qualname__ = f"{stage}_stage"  # distinct Prefect task keys
    repro.__doc__ = f"``dvc repro {stage}``: {STAGE_RETRIES[stage]['retries']} retries on transient failures, none for config / data errors."
    return task(repro, name=stage, task_run_name=f"dvc-repro-{stage}", **STAGE_RETRIES[stage], **_NEVER_CACHED)


#: The pipeline's stages in order, each as its Prefect task.
STAGE_TASKS = {stage: stage_task(stage) for stage in STAGE_NAMES}


def _run_stages(root: Path, logger: Any) -> dict[str, Any]:
    """import-data, then every stage in order through DVC: the summary of a full run."""
    imported = import_data_task(str(root))
    results: dict[str, Any] = {}
    for stage, run_stage in STAGE_TASKS.items():
        result = run_stage(str(root))
        results[stage] = {k: v for k, v in result.items() if k != "stage"}
        logger.info("%s: %s in %.1f s", stage, "ran" if result["ran"] else "up to date", result["seconds"])
    report = Layout(root, load_params(root / DEFAULT_PARAMS_FILE).paths).registry_report
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
        description="Run prepare -> validate -> train -> evaluate -> test -> register as a Prefect flow (each stage via dvc repro).",
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
