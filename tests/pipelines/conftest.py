"""One real Prefect server for the whole package (the flow's retry tests and the schedule's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipelines.servers import prefect_server


@pytest.fixture(scope="package")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API URL of a `prefect server start` shared by this package's tests, stopped after them."""
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as api:
        yield api
