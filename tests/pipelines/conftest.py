"""One real Prefect server for the whole package (the flow's retry tests, the schedule's, the
work pool's; one of them restarts it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipelines.servers import PrefectServer, prefect_server


@pytest.fixture(scope="package")
def prefect_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """The `prefect server start` shared by this package's tests, stopped after them."""
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server


@pytest.fixture(scope="package")
def prefect_api(prefect_server_process: PrefectServer) -> str:
    """Its API URL (the same after a restart: same port, same database)."""
    return prefect_server_process.api
