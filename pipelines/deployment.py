"""Retraining on a work pool: ``prefect.yaml`` generated from ``params.yaml``, the pool, the
deployments and the worker (``make deploy``, ``make worker``).

``prefect.yaml`` holds two deployments on the ``process`` work pool ``schedule.work_pool``:

- ``schedule.deployment_name`` (``pipelines/training.py:training_pipeline``): the schedules and
  the concurrency limit of :mod:`pipelines.schedule` (one definition, both ways), and an event
  trigger: the new-data events of :mod:`pspnet.data_events` within ``schedule.event_window``
  seconds start one run with ``only_if_new_data``, when the window closes;
- ``schedule.multinode.deployment_name`` (``pipelines/distributed.py:node_training``): one node of
  a multi-node ``torchrun`` (:mod:`pipelines.distributed`).

The worker runs each flow run in the folder ``PSPNET_PROJECT_DIR`` names (the pull step); the
``worker`` command sets it to the project it is started in. Commands::

    python -m pipelines.deployment write    # prefect.yaml from params.yaml
    python -m pipelines.deployment check    # exit 2 when prefect.yaml differs from what params.yaml gives
    python -m pipelines.deployment deploy   # check, create the pool (if missing), `prefect deploy --all`
    python -m pipelines.deployment worker [--work-queue Q]   # `prefect worker start --pool ...`
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pipelines import schedule
from pspnet import atomic_files
from pspnet.config import DEFAULT_PARAMS_FILE, Params, load_params
from pspnet.data_events import DATA_EVENT, trigger_match
from pspnet.errors import ConfigError, PspnetError

PREFECT_FILE = "prefect.yaml"
#: The work pool's type: workers run flow runs as processes on their machine.
POOL_TYPE = "process"
#: Environment variable naming the project folder the worker runs flow runs in (the pull step).
PROJECT_DIR_ENV = "PSPNET_PROJECT_DIR"
TRAINING_ENTRYPOINT = "pipelines/training.py:training_pipeline"
NODE_ENTRYPOINT = "pipelines/distributed.py:node_training"
#: Flow runs get the project as the working directory the pull step sets.
RUN_PROJECT_DIR = "."
SERVER_HINT = (
    "Start one with `make prefect-ui` (in another terminal: `prefect server start` on 127.0.0.1), or export "
    "PREFECT_API_URL=http://HOST:PORT/api for a running server."
)
HEADER = (
    "# Generated from params.yaml (`schedule:`) by `python -m pipelines.deployment write`; edit params.yaml,\n"
    "# not this file (`make deploy` refuses a stale copy, tests/pipelines/test_deployment.py checks it).\n"
    "# Three ways to run retraining, the pull steps for a git checkout, docker / kubernetes pools:\n"
    "# docs/retraining.md.\n"
)


def _schedule_entry(item: Any) -> dict[str, Any]:
    """One of :func:`pipelines.schedule.schedules` as a ``prefect.yaml`` schedule."""
    timing = {"cron": item.cron} if item.cron else {"interval": int(item.interval.total_seconds())}
    only_new = item.parameters["only_if_new_data"]
    return {**timing, "timezone": item.timezone, "slug": item.slug, "parameters": {"only_if_new_data": only_new}}


def event_trigger(params: Params) -> dict[str, Any]:
    """The retraining deployment's trigger: one run per burst of new-data events.

    Prefect fires a reactive trigger at the first event and ignores the rest of its ``within``
    window; ``schedule_after`` starts the run when the window closes, so it sees the whole burst.
    """
    config = params.schedule
    return {
        "type": "event",
        "name": f"{config.deployment_name}-on-new-data",
        "description": f"{DATA_EVENT} events within {config.event_window} s start one run (only_if_new_data)",
        "enabled": True,
        "posture": "Reactive",
        "expect": [DATA_EVENT],
        "match": trigger_match(config.deployment_name),
        "threshold": 1,
        "within": config.event_window,
        "schedule_after": config.event_window,
        "parameters": {"project_dir": RUN_PROJECT_DIR, "only_if_new_data": True},
    }


def _retrain_deployment(params: Params) -> dict[str, Any]:
    config = params.schedule
    limit = schedule.concurrency(config)
    deployment: dict[str, Any] = {
        "name": config.deployment_name,
        "entrypoint": TRAINING_ENTRYPOINT,
        "description": schedule.describe(config, "the project the worker runs in"),
        "tags": schedule.DEPLOYMENT_TAGS,
        "parameters": {"project_dir": RUN_PROJECT_DIR, "only_if_new_data": False},
        "work_pool": {"name": config.work_pool},
        "concurrency_limit": {"limit": limit.limit, "collision_strategy": limit.collision_strategy.value},
        "schedules": [_schedule_entry(s) for s in schedule.schedules(config, Path(RUN_PROJECT_DIR))],
    }
    if config.event_window > 0:
        deployment["triggers"] = [event_trigger(params)]
    return deployment


def _node_deployment(params: Params) -> dict[str, Any]:
    node = params.schedule.multinode
    return {
        "name": node.deployment_name,
        "entrypoint": NODE_ENTRYPOINT,
        "description": "One node of multi-node training: torchrun with the c10d rendezvous "
        "(launch every node with `python -m pipelines.distributed`).",
        "tags": [*schedule.DEPLOYMENT_TAGS, "multinode"],
        "parameters": {"project_dir": RUN_PROJECT_DIR, "nnodes": node.nnodes, "nproc_per_node": node.nproc_per_node,
                       "rdzv_endpoint": node.rdzv_endpoint},  # fmt: skip
        "work_pool": {"name": params.schedule.work_pool},
    }


def prefect_yaml(params: Params) -> str:
    """The text of ``prefect.yaml`` for ``params``."""
    document = {
        "name": "pspnet-pipeline",
        "build": None,
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": f"{{{{ ${PROJECT_DIR_ENV} }}}}"}}],
        "deployments": [_retrain_deployment(params), _node_deployment(params)],
    }
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=120)


def _project(project_dir: str | Path) -> tuple[Path, Params]:
    root = Path(project_dir).resolve()
    if not (root / "dvc.yaml").is_file():
        raise ConfigError(f"{root}: no dvc.yaml here; pass the project root as --project-dir.")
    return root, load_params(root / DEFAULT_PARAMS_FILE)


def check(root: Path, params: Params) -> None:
    """A :class:`ConfigError` when ``prefect.yaml`` is missing or differs from what ``params`` gives."""
    path = root / PREFECT_FILE
    if not path.is_file() or path.read_text(encoding="utf-8") != prefect_yaml(params):
        state = "is missing" if not path.is_file() else f"differs from what {DEFAULT_PARAMS_FILE} (schedule:) gives"
        raise ConfigError(
            f"{path} {state}. Fix: run `python -m pipelines.deployment write` (prefect.yaml is generated from "
            f"{DEFAULT_PARAMS_FILE}; change settings there) and commit both."
        )


def ensure_pool(name: str) -> bool:
    """Create the ``process`` work pool ``name`` unless it exists; ``True`` when created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template))
            return True
    if pool.type != POOL_TYPE:
        raise ConfigError(
            f"work pool {name!r} exists with type {pool.type!r}, not {POOL_TYPE!r}. Fix: set schedule.work_pool in "
            f"{DEFAULT_PARAMS_FILE} to another name, or delete that pool (`prefect work-pool delete {name}`)."
        )
    return False


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def deploy(project_dir: str | Path) -> None:
    """Check ``prefect.yaml``, create the pool if missing and ``prefect deploy --all`` from it."""
    root, params = _project(project_dir)
    check(root, params)
    url = schedule.require_server(SERVER_HINT)
    pool = params.schedule.work_pool
    print(f"work pool {pool!r} ({POOL_TYPE}): {'created' if ensure_pool(pool) else 'exists'} on {url}", flush=True)
    done = subprocess.run(_prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(root / PREFECT_FILE)), cwd=root, check=False)
    if done.returncode != 0:
        raise PspnetError(f"`prefect deploy --all` from {root / PREFECT_FILE} failed (exit {done.returncode}); its output is above.")


def worker_command(params: Params, work_queue: str | None) -> list[str]:
    """``prefect worker start`` on the pool (all its queues, or ``work_queue``)."""
    queue = ["--work-queue", work_queue] if work_queue else []
    return _prefect("worker", "start", "--pool", params.schedule.work_pool, "--type", POOL_TYPE, *queue)


def worker(project_dir: str | Path, work_queue: str | None) -> None:
    """Replace this process with a worker that runs flow runs in ``project_dir``."""
    root, params = _project(project_dir)
    schedule.require_server(SERVER_HINT)
    command = worker_command(params, work_queue)
    print(f"worker for {root}: {' '.join(command[1:])}", flush=True)
    os.execve(sys.executable, command, {**os.environ, PROJECT_DIR_ENV: str(root)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.deployment", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["write", "check", "deploy", "worker"])
    parser.add_argument("--project-dir", default=".", help="project root holding dvc.yaml and params.yaml (default: .)")
    parser.add_argument("--work-queue", help="worker: poll only this queue of the pool (a node of multi-node training)")
    args = parser.parse_args(argv)
    try:
        if args.command in ("write", "check"):
            root, params = _project(args.project_dir)
            if args.command == "write":
                atomic_files.write_text(root / PREFECT_FILE, prefect_yaml(params))
            check(root, params)
            print(f"{root / PREFECT_FILE}: as {DEFAULT_PARAMS_FILE} gives")
        elif args.command == "deploy":
            deploy(args.project_dir)
        else:
            worker(args.project_dir, args.work_queue)
    except PspnetError as err:
        print(f"deployment: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
