"""Shared test set-up: quiet, offline, deterministic tools; helpers for tiny projects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Offline and quiet: no telemetry from DVC / Prefect, no GUI backend for matplotlib.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist (`make test` runs one worker per core) each worker and the stage processes it
# starts get their share of the cores: torch's default of one thread per core in every worker
# would oversubscribe them. Set before torch is imported; an explicit OMP_NUM_THREADS wins.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

#: Packages whose tests share a fixture above module scope (tests/pipelines: one Prefect server),
#: so their tests go to one xdist worker together.
SHARED_PACKAGES = ("tests/pipelines",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `--dist loadscope` (the Makefile's): one work unit per test module, and one per
    package for SHARED_PACKAGES, so module- and package-scoped set-up (servers, tiny pipeline
    runs) is paid once, on one worker. (xdist's own `xdist_group` marks are inert under pytest 9:
    they rename ``item._nodeid``, which pytest no longer reads.)"""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:  # xdist's extension point (loadfile overrides it too)
            path = nodeid.split("::", 1)[0]
            return next((pkg for pkg in SHARED_PACKAGES if path.startswith(pkg + "/")), path)

    return ModuleScheduling(config, log)


#: Folders whose modules are the longest (whole pipeline runs, servers): scheduled first.
LONGEST_FIRST = ("tests/pipelines", "tests/integration")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest work first, for xdist (the Makefile passes ``--no-loadscope-reorder``, so work units
    start in this order): the pipeline / server modules, then any module with an `integration`
    test, then the unit tests. Otherwise xdist starts the modules with the most tests first and a
    one-test, two-minute pipeline module runs alone at the end. Stable: order within a tier kept."""
    heavy = {item.path for item in items if item.get_closest_marker("integration")}

    def tier(item: pytest.Item) -> int:
        path = item.path.relative_to(REPO_ROOT).as_posix() if item.path.is_relative_to(REPO_ROOT) else ""
        return 0 if path.startswith(LONGEST_FIRST) else 1 if item.path in heavy else 2

    items.sort(key=tier)


@pytest.fixture
def repo_root() -> Path:
    """The checkout under test (holds dvc.yaml, params.yaml, src/)."""
    return REPO_ROOT


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no MLflow store chosen: no inherited URI, no earlier test's.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` (called by every stage through
    ``setup_mlflow``) set process-wide globals AND export ``MLFLOW_TRACKING_URI`` /
    ``MLFLOW_REGISTRY_URI``; left over from an earlier test, either would point a later test's
    ``MlflowClient()`` at the wrong store (seen: a registry test reading another test's
    champion). MLflow has no public "unset", so both globals and both variables are reset here
    (monkeypatch restores them afterwards).
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
