"""Sections ``schedule`` (the Prefect deployment) and ``mlflow`` (the tracking store)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from pspnet.config.base import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    StrictModel,
)

#: Schemes of the MLflow tracking stores ``mlflow.tracking_uri`` may name (a database URI may
#: add a driver: ``postgresql+psycopg2://``).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


#: Highest TCP port number (a rendezvous endpoint's port).
MAX_PORT = 65535


class MultinodeConfig(StrictModel):
    """Multi-node training from the work pool (``pipelines/distributed.py``): the README's
    ``torchrun`` command, one flow run per node; the defaults of the node deployment's parameters."""

    deployment_name: str = "pspnet-train-node"
    nnodes: PositiveInt = 2
    nproc_per_node: PositiveInt = 1
    #: ``HOST:PORT`` of torchrun's c10d rendezvous, on a node every other one reaches; ``null``:
    #: given per run (``--rdzv-endpoint``).
    rdzv_endpoint: str | None = None
    #: Node ``k``'s flow run goes to the work queue ``<queue_prefix><k>``; a worker started with
    #: ``--work-queue <queue_prefix><k>`` on that node runs it.
    queue_prefix: Annotated[str, Field(min_length=1)] = "node-"

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
            raise ValueError(f"{value!r} is not HOST:PORT (e.g. node0.example:29400); or null to give it per run")
        return value


class ScheduleConfig(StrictModel):
    """Retraining with Prefect: the deployment ``make schedule`` serves, or ``make deploy`` puts on a
    work pool (``prefect.yaml``, generated from this section), with its new-data event trigger."""

    deployment_name: str = "pspnet-retrain"
    #: Full retraining run (``dvc update`` + ``dvc repro`` + promotion gate). Five fields
    #: (minute resolution), or six with seconds LAST (Prefect's croniter: ``30 2 * * * 15``
    #: is 02:30:15).
    cron: str = "0 3 * * 0"
    timezone: str = "UTC"
    #: Seconds between new-data checks: a run that goes on only when the data source's hash
    #: differs from the one in ``dvc.lock`` (0: no data watch).
    data_check_interval: NonNegativeInt = 900
    #: A trigger while a run is going: ``cancel_new`` skips it, ``enqueue`` waits for the
    #: running one. Runs never interleave.
    collision: Literal["cancel_new", "enqueue"] = "cancel_new"
    #: The ``process`` work pool ``make deploy`` creates and ``make worker`` polls.
    work_pool: Annotated[str, Field(min_length=1)] = "pspnet-process"
    #: Seconds a burst of new-data events is gathered into one run (the trigger's ``within``);
    #: the run starts when the window closes. 0: no event trigger.
    event_window: NonNegativeInt = 60
    #: Seconds between the folder watcher's looks (``python -m pipelines.watch``).
    watch_interval: PositiveFloat = 5.0
    multinode: MultinodeConfig = MultinodeConfig()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin") from None
        return value


class MlflowConfig(StrictModel):
    experiment_name: Annotated[str, Field(min_length=1, max_length=500)] = "pspnet"
    #: ``null``: a SQLite store + artifact folder at the project root. ``MLFLOW_TRACKING_URI``
    #: in the environment overrides both.
    tracking_uri: str | None = None
    #: Seconds the start-of-run check waits for the tracking store to answer (a server's
    #: ``/health``, a database's port) before failing the run with the fix.
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    #: Seconds between samples of MLflow's system metrics (CPU, memory, disk, network, GPU)
    #: during training; 0 logs none.
    system_metrics_interval: Annotated[float, Field(ge=0, le=3600)] = 10.0
    #: Training metrics go through a queue (:mod:`pspnet.tracking.metrics_buffer`): seconds
    #: between resends while the tracking store does not take them ...
    metrics_retry_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    #: ... and seconds the end of training waits for the store to take the rest before failing.
    outage_wait: Annotated[float, Field(gt=0, le=86_400)] = 900.0

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition(":")
        base = scheme.split("+")[0].lower()
        if not sep or base not in TRACKING_SCHEMES or not rest.strip("/"):
            raise ValueError(
                f"{value!r} is not a tracking URI this project can use: expected <scheme>:..., scheme one of "
                f"{', '.join(TRACKING_SCHEMES)} (e.g. http://127.0.0.1:5000 or sqlite:////abs/path/mlflow.db), or null"
            )
        return value

