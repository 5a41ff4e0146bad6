"""Where MLflow tracks: the store's URI, its reachability check and the run set-up.

Default store: ``sqlite:////<root>/mlflow.db`` with artifacts in ``<root>/mlartifacts``, both
addressed by absolute path so that ``dvc exp run --temp`` / ``--queue`` (which run stages in a
copy under ``<root>/.dvc/tmp/exps/``) log into the project's store, not into a throwaway copy.
``MLFLOW_TRACKING_URI`` in the environment wins over ``mlflow.tracking_uri`` in params, which
wins over the default.

:func:`check_tracking_store` is the start-of-run check (``train`` / ``evaluate`` / ``register``
through :func:`setup_mlflow`, and the Prefect flow and ``pspnet experiment`` before any stage):
a tracking server must answer within ``mlflow.connect_timeout`` seconds (MLflow's own client
would retry for minutes), a database server's port must accept a connection, and a SQLite
file must open as a database. Each failure names the URI, where it came from and the fix.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from pspnet.config import MlflowConfig
from pspnet.errors import PspnetError

#: MLflow 3's experiment kind (model training). MLflow's tools read it; the 3.17 UI does not (it
#: opens on GenAI unless ``?workflowType=machine_learning``, which ``make ui`` prints).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
#: Path components under which DVC runs temporary / queued experiments.
_DVC_EXP_TMP = (".dvc", "tmp", "exps")
#: The environment variable that overrides the tracking URI (MLflow's own).
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: Where a tracking URI came from, as error messages name it.
ORIGIN_ENV = f"the environment variable {TRACKING_URI_ENV}"
ORIGIN_PARAMS = "mlflow.tracking_uri in params.yaml"
ORIGIN_DEFAULT = "the default (the project's SQLite store)"
#: What a tracking server answers the reachability check on (any HTTP reply counts).
HEALTH_PATH = "/health"
#: Default ports of a tracking server's URL scheme.
_HTTP_PORTS = {"http": 80, "https": 443}
#: Default ports of the database servers MLflow can use as a store (for the reachability check).
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
#: Host names of this machine: a server there can be started with the command in the message.
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
#: Suffix of the lock file that serialises the creation of a new SQLite store.
_CREATION_LOCK_SUFFIX = ".create.lock"


def project_root(start: str | Path | None = None) -> Path:
    """The project that owns the MLflow store, seen from ``start`` (default: the working directory).

    Inside a DVC temporary experiment (``<root>/.dvc/tmp/exps/<name>/...``) this is ``<root>``;
    otherwise ``start`` itself.
    """
    path = Path(start or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(_DVC_EXP_TMP) + 1):
        if parts[i : i + len(_DVC_EXP_TMP)] == _DVC_EXP_TMP:
            return Path(*parts[:i])
    return path


def tracking_uri_origin(cfg: MlflowConfig, root: str | Path | None = None) -> tuple[str, str]:
    """``(uri, where it came from)``: ``MLFLOW_TRACKING_URI`` > ``cfg.tracking_uri`` > the
    SQLite file at the project root."""
    env = os.environ.get(TRACKING_URI_ENV)
    if env:
        return env, ORIGIN_ENV
    if cfg.tracking_uri:
        return cfg.tracking_uri, ORIGIN_PARAMS
    return f"sqlite:///{project_root(root) / DB_FILE}", ORIGIN_DEFAULT


def resolve_tracking_uri(cfg: MlflowConfig, root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` > ``cfg.tracking_uri`` > the SQLite file at the project root."""
    return tracking_uri_origin(cfg, root)[0]


def redact(uri: str) -> str:
    """``uri`` without a password (``user:***@host``), for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _other_store_hint(cfg: MlflowConfig, root: str | Path | None, origin: str) -> str:
    """How to stop using the URI from ``origin``: which setting to drop and what is used then."""
    default = f"sqlite:///{project_root(root) / DB_FILE}"
    if origin == ORIGIN_ENV:
        fallback = cfg.tracking_uri or default
        return f"unset {TRACKING_URI_ENV} (then {redact(fallback)} is used)"
    if origin == ORIGIN_PARAMS:
        return f"set mlflow.tracking_uri: null in params.yaml (then {default} is used)"
    return f"set {TRACKING_URI_ENV} to a tracking server"


def _network_problem(err: BaseException, host: str, port: int | None, timeout: float) -> str:
    """A connection failure in words."""
    reason = getattr(err, "reason", err)  # urllib wraps the socket error
    if isinstance(reason, ConnectionRefusedError):
        return f"connection refused: nothing listens on {host}:{port}"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s (mlflow.connect_timeout)"
    if isinstance(reason, socket.gaierror):
        return f"the host name {host!r} cannot be resolved ({reason})"
    return f"{type(reason).__name__}: {reason}"


def _check_server(uri: str, origin: str, hint: str, timeout: float) -> None:
    """A tracking server must answer an HTTP request within ``timeout`` (any status counts: it is
    there). Proxies from the environment apply, as they do for MLflow's client."""
    parts = urlsplit(uri)
    host, port = parts.hostname or "", parts.port or _HTTP_PORTS[parts.scheme.lower()]
    # urllib takes no user:password@ in a URL; credentials are not needed to see that it answers.
    bare_host = f"[{host}]" if ":" in host else host
    netloc = f"{bare_host}:{parts.port}" if parts.port else bare_host
    url = parts._replace(netloc=netloc, query="", fragment="").geturl().rstrip("/") + HEALTH_PATH
    context = None
    if parts.scheme.lower() == "https":  # only "does it answer" is asked here; MLflow verifies TLS itself
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context):  # noqa: S310 - http(s) only
            return
    except urllib.error.HTTPError:
        return  # an HTTP status (401, 404, ...) is an answer: the server is there
    except (urllib.error.URLError, OSError) as err:
        problem = _network_problem(err, host, port, timeout)
    start = (
        f"start it, e.g. `mlflow server --backend-store-uri sqlite:///$PWD/server.db --artifacts-destination "
        f"$PWD/server-artifacts --host {host} --port {port}`"
        if host in _LOCAL_HOSTS
        else f"check that the server at {host}:{port} runs and is reachable from this machine"
    )
    raise PspnetError(
        f"MLflow tracking server {redact(uri)} (from {origin}) is unreachable: {problem}. "
        f"Fix: {start}; or {hint}."
    )


def _check_database_server(uri: str, origin: str, hint: str, timeout: float) -> None:
    """A database server store (PostgreSQL, MySQL, SQL Server) must accept a TCP connection."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    backend = url.get_backend_name()
    port = url.port or _DB_PORTS.get(backend)
    if not url.host or port is None:
        return
    try:
        socket.create_connection((url.host, port), timeout=timeout).close()
    except OSError as err:
        raise PspnetError(
            f"MLflow tracking store {redact(uri)} (from {origin}) is unreachable: "
            f"{_network_problem(err, url.host, port, timeout)}. Fix: start the {backend} server "
            f"or check the address; or {hint}."
        ) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI (relative paths: from the working directory);
    ``None`` for an in-memory database."""
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    return Path(database).absolute()


def _check_sqlite(uri: str, origin: str, hint: str) -> None:
    """A SQLite store must open as a database (or be creatable: its folder writable)."""
    path = sqlite_path(uri)
    if path is None:
        return
    fail = f"MLflow tracking store {uri} (from {origin}) cannot be opened: "
    if path.is_dir():
        raise PspnetError(f"{fail}{path} is a folder, not a database file. Fix: point the URI at a file; or {hint}.")
    if not path.exists():
        folder = next((p for p in path.parents if p.exists()), None)
        if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise PspnetError(
                f"{fail}{path} does not exist and {folder} is not a writable folder to create it in. "
                f"Fix: use a folder you can write to; or {hint}."
            )
        return
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
        raise PspnetError(
            f"{fail}no permission to write {path} (SQLite also needs its folder writable for its journal). "
            f"Fix: change the permissions; or {hint}."
        )
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        raise PspnetError(
            f"{fail}{path} is not a usable SQLite database ({err}). Fix: move the file away (MLflow then "
            f"creates a new store) or restore it from a backup; or {hint}."
        ) from None


def check_tracking_store(cfg: MlflowConfig, root: str | Path | None = None) -> str:
    """Fail fast, naming the URI, its origin and the fix, when the tracking store is not usable:
    a tracking server that does not answer within ``cfg.connect_timeout`` s, a database server
    whose port refuses connections, a SQLite file that is not a database or cannot be written.
    Returns the URI. Creates nothing."""
    uri, origin = tracking_uri_origin(cfg, root)
    hint = _other_store_hint(cfg, root, origin)
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri, origin, hint, cfg.connect_timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri, origin, hint)
    elif scheme.split("+")[0] in _DB_PORTS:
        _check_database_server(uri, origin, hint, cfg.connect_timeout)
    return uri


def default_artifact_location(tracking_uri: str, root: str | Path | None = None) -> str | None:
    """The artifact folder for new experiments: ``<root>/mlartifacts`` for a local SQLite store.

    For a tracking server (``http(s)://``) the server decides, so ``None``.
    """
    if tracking_uri.startswith("sqlite:"):
        return (project_root(root) / ARTIFACTS_DIR).as_uri()
    return None


@contextmanager
def _store_creation_lock(uri: str) -> Iterator[None]:
    """Serialise the creation of a new SQLite store between processes.

    Two processes creating a new store's tables at once (two ``dvc exp`` workers on a fresh
    project) collide in MLflow's schema migration, so while the file is missing or empty its
    first use runs under a file lock next to it, removed once the store exists
    (docs/reliability.md).
    """
    from filelock import FileLock

    path = sqlite_path(uri) if urlsplit(uri).scheme.lower() == "sqlite" else None
    if path is None or (path.is_file() and path.stat().st_size > 0):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}{_CREATION_LOCK_SUFFIX}"
    with FileLock(str(lock_path)):
        yield
        lock_path.unlink(missing_ok=True)  # the store exists now: no later use takes this lock


def setup_mlflow(cfg: MlflowConfig, root: str | Path | None = None) -> str:
    """Point MLflow (tracking + registry) at the store and ensure the experiment exists.

    Returns the experiment id. Runs :func:`check_tracking_store` first and raises
    :class:`PspnetError` at once when the store cannot be reached, so a run fails before
    training rather than after it.
    """
    import mlflow

    uri, origin = tracking_uri_origin(cfg, root)
    check_tracking_store(cfg, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with _store_creation_lock(uri):
            experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
        if experiment is not None:
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # an older experiment: a kind set by hand stays
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return experiment.experiment_id
        location = default_artifact_location(uri, root)
        try:
            return mlflow.create_experiment(cfg.experiment_name, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and our create.
            experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
            if experiment is None:
                raise
            return experiment.experiment_id
    except mlflow.exceptions.MlflowException as err:
        raise PspnetError(
            f"MLflow tracking store {redact(uri)} (from {origin}) is not usable: {err}. Fix: check "
            f"{TRACKING_URI_ENV} / mlflow.tracking_uri in params.yaml, or start the tracking server."
        ) from None
