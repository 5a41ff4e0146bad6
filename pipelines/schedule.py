"""Scheduled retraining: one Prefect deployment of the training flow, served on a Prefect server.

The deployment (``schedule.deployment_name`` in ``params.yaml``) has two schedules:

- ``schedule.cron``: a full run (``dvc update`` of the imported data, ``dvc repro`` of every
  stage whose inputs changed, the promotion gate in ``register``);
- every ``schedule.data_check_interval`` seconds (0: none): a run with
  ``only_if_new_data=True``, which goes on only when the data changed since ``dvc.lock`` and
  otherwise ends at once, Completed in state ``Skipped``.

Its concurrency limit is 1: a trigger while a run is going is cancelled (``schedule.collision:
cancel_new``) or waits for it (``enqueue``). The flow itself also holds the project's pipeline
lock, so runs started any other way never interleave with it either.

Schedules only fire on a real Prefect server (never on the temporary one Prefect starts on
its own), so ``PREFECT_API_URL`` must point at one; ``make schedule`` starts one on 127.0.0.1
and runs this. This process serves the deployment: it polls the server and runs each flow
run as a subprocess, so it must run where the project is (no work pool needed). Stopping it
(Ctrl-C) pauses the schedules.

Running it::

    python -m pipelines.schedule [--project-dir DIR]

Cron strings have five fields (minute resolution), or six where the sixth is seconds
(``"*/30 * * * * 0"``: second 0 of every 30th minute), as Prefect's croniter reads them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import (
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
)
from prefect.schedules import Cron, Interval, Schedule

from pipelines.training import training_pipeline
from pspnet.config import DEFAULT_PARAMS_FILE, Params, ScheduleConfig, load_params
from pspnet.errors import ConfigError, PspnetError

#: Runs of the deployment at the same time: one, so runs never interleave.
CONCURRENCY_LIMIT = 1
COLLISION_STRATEGIES = {
    "cancel_new": ConcurrencyLimitStrategy.CANCEL_NEW,
    "enqueue": ConcurrencyLimitStrategy.ENQUEUE,
}
#: Slugs identify the two schedules, so serving again updates them instead of adding copies.
FULL_RUN_SLUG = "full-retrain"
DATA_CHECK_SLUG = "new-data-check"
DEPLOYMENT_TAGS = ["pspnet", "retraining"]
START_HINT = (
    "Start one with `make schedule` (it runs `prefect server start` on 127.0.0.1 and sets PREFECT_API_URL), "
    "or export PREFECT_API_URL=http://HOST:PORT/api for a running server."
)


def cron_schedule(config: ScheduleConfig, parameters: dict[str, Any]) -> Schedule:
    """The full-run schedule; a cron string Prefect refuses is a :class:`ConfigError` naming it."""
    try:
        return Cron(config.cron, timezone=config.timezone, parameters=parameters, slug=FULL_RUN_SLUG)
    except ValueError as err:
        raise ConfigError(
            f"schedule.cron in {DEFAULT_PARAMS_FILE}: {err}. Use five fields (minute hour day month weekday, "
            "e.g. '0 3 * * 0') or six with seconds last (e.g. '*/30 * * * * 0')."
        ) from None


def schedules(config: ScheduleConfig, project_dir: Path) -> list[Schedule]:
    """The cron schedule (full run) and, when ``data_check_interval > 0``, the new-data check."""
    full = cron_schedule(config, {"project_dir": str(project_dir), "only_if_new_data": False})
    if config.data_check_interval == 0:
        return [full]
    check = Interval(
        config.data_check_interval,
        timezone=config.timezone,
        parameters={"project_dir": str(project_dir), "only_if_new_data": True},
        slug=DATA_CHECK_SLUG,
    )
    return [full, check]


def concurrency(config: ScheduleConfig) -> ConcurrencyLimitConfig:
    """One run at a time; a colliding trigger is cancelled or queued (``schedule.collision``)."""
    return ConcurrencyLimitConfig(limit=CONCURRENCY_LIMIT, collision_strategy=COLLISION_STRATEGIES[config.collision])


def build_deployment(params: Params, project_dir: Path) -> Any:
    """The retraining deployment of :func:`pipelines.training.training_pipeline` (a ``RunnerDeployment``).

    A manual run of it (``prefect deployment run``) is a full run of the same project.
    """
    config = params.schedule
    return training_pipeline.to_deployment(
        name=config.deployment_name,
        schedules=schedules(config, project_dir),
        concurrency_limit=concurrency(config),
        parameters={"project_dir": str(project_dir), "only_if_new_data": False},
        description=describe(config, str(project_dir)),
        tags=DEPLOYMENT_TAGS,
    )


def describe(config: ScheduleConfig, where: str) -> str:
    """The retraining deployment's description: where it runs and its schedules."""
    return (
        f"Retrain PSPNet in {where}: cron {config.cron!r} ({config.timezone}), new-data check every "
        f"{config.data_check_interval} s (0: off), collision {config.collision}."
    )


def require_server(hint: str = START_HINT) -> str:
    """``PREFECT_API_URL``, checked to answer; a clear error (with ``hint``) when it is unset or does not answer."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set: schedules fire only on a running Prefect server, never on the "
            f"temporary one Prefect starts on its own. {hint}"
        )
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise PspnetError(f"the Prefect server at PREFECT_API_URL={url} does not answer ({error}). {hint}")
    return url


def serve(project_dir: str | Path) -> None:
    """Check the project and the server, then serve the deployment until interrupted."""
    from prefect import serve as prefect_serve

    root = Path(project_dir).resolve()
    if not (root / "dvc.yaml").is_file():
        raise ConfigError(f"{root}: no dvc.yaml here; pass the project root as --project-dir.")
    deployment = build_deployment(load_params(root / DEFAULT_PARAMS_FILE), root)
    url = require_server()
    print(f"serving deployment {deployment.name!r} of {root} on {url}", flush=True)
    prefect_serve(deployment)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.schedule",
        description="Serve the scheduled-retraining deployment (params.yaml `schedule:`) on the Prefect server "
        "at PREFECT_API_URL (`make schedule` starts one).",
    )
    parser.add_argument("--project-dir", default=".", help="project root holding dvc.yaml and params.yaml (default: .)")
    args = parser.parse_args(argv)
    try:
        serve(args.project_dir)
    except PspnetError as err:
        print(f"schedule: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
