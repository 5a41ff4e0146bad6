"""The Prefect flow for real: Prefect honours the retry policy; the whole chain runs through DVC."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipelines import training
from pspnet.ops.dvc import StageFailed
from tests.integration.conftest import make_tiny_project, run

pytestmark = pytest.mark.integration

STAGES = ("prepare", "validate", "train", "evaluate", "test", "register")


@pytest.fixture(scope="module")
def prefect_server(prefect_api: str, tmp_path_factory: pytest.TempPathFactory):
    """Flows of this process run against the package's Prefect server (a temporary database),
    with Prefect's home in a temp folder."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings({PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False, PREFECT_API_URL: prefect_api}):
        yield


@pytest.mark.parametrize(("exit_code", "attempts"), [(3, 1), (2, 1), (1, 3)])
def test_prefect_retries_only_transient_failures(
    prefect_server: None, monkeypatch: pytest.MonkeyPatch, exit_code: int, attempts: int
) -> None:
    from prefect import flow

    calls: list[str] = []

    def failing_repro(stage: str, project_dir: str, logger: object = None) -> dict:
        calls.append(stage)
        raise StageFailed(stage, exit_code, 255, f"exited with {exit_code}")

    monkeypatch.setattr(training, "repro_stage", failing_repro)
    train = training.STAGE_TASKS["train"].with_options(retry_delay_seconds=0)

    @flow
    def one_stage() -> dict:
        return train(".")

    with pytest.raises(StageFailed) as info:
        one_stage()
    assert info.value.exit_code == exit_code
    assert len(calls) == attempts


def test_an_unreachable_tracking_server_fails_the_flow_before_any_stage(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real closed port as MLFLOW_TRACKING_URI: the flow stops before import-data and every
    stage (not after prepare / validate, or after training), naming the URI and the fix."""
    import shutil
    import socket

    import pspnet.ops.import_data
    from pspnet.errors import PspnetError

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(training_root() / name, tmp_path / name)
    (tmp_path / ".dvc").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    ran: list[str] = []
    monkeypatch.setattr(training, "repro_stage", lambda stage, *a, **k: ran.append(stage))
    monkeypatch.setattr(pspnet.ops.import_data, "import_data", lambda *a, **k: ran.append("import-data"))

    with pytest.raises(PspnetError, match=rf"MLFLOW_TRACKING_URI\) is unreachable: connection refused.*--port {port}"):
        training.training_pipeline(project_dir=str(tmp_path))
    assert ran == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dvc", "dvc.yaml", "params.yaml"]


def training_root() -> Path:
    return Path(training.__file__).resolve().parents[1]


def flow_cmd(project: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.training", "--project-dir", str(project)]


@pytest.mark.slow
def test_flow_stops_on_a_data_error_with_its_exit_code(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "project", {"validate": {"min_samples_per_split": 10_000}})
    result = run(flow_cmd(project), cwd=project, check=False)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stage 'validate' failed (stage exit code 3" in result.stderr
    assert not (project / "models" / "checkpoint.pt").exists()
