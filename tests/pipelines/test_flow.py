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


def _file_digests(root: Path) -> dict[str, str]:
    """Every file of the project but the tracking store's and DVC's / Prefect's scratch, by content."""
    import hashlib

    skip = ("mlflow.db", "mlartifacts", ".dvc/tmp", ".prefect", ".git/")
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(str(p.relative_to(root)).startswith(s) for s in skip)
    }


def test_an_unreachable_dvc_remote_fails_the_run_after_its_retries_and_changes_nothing(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduled run on a machine whose raw data must come from the DVC remote, the remote's
    share gone: import-data is tried three times (the retries), the run fails naming the remote,
    no stage runs, the files and the champion stay as they were."""
    import mlflow
    from mlflow import MlflowClient

    import pspnet.ops.import_data
    from pspnet.errors import DataError, PspnetError

    project = make_tiny_project(tmp_path / "project", {"data": {"source": {"name": "folder", "location": "data/raw/mine"}}})
    (project / "data/raw/mine/images/train").mkdir(parents=True)
    (project / "data/raw/mine/images/train/a.png").write_bytes(b"not really a png")
    remote = tmp_path / "share" / "dvc-remote"
    run(["dvc", "remote", "add", "-d", "store", str(remote)], project)
    run(["dvc", "add", "-q", "data/raw/mine"], project)
    run(["dvc", "push", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "raw data on the remote"], project)
    # The machine the schedule runs on: a checkout with no data and an empty cache; the share is gone.
    import shutil

    shutil.rmtree(project / "data/raw/mine")
    shutil.rmtree(project / ".dvc/cache")
    (tmp_path / "share").rename(tmp_path / "share-unmounted")
    # A champion in the project's store (what the run must not move).
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model("pspnet")
    champion = client.create_model_version("pspnet", source=str(tmp_path), run_id=None)
    client.set_registered_model_alias("pspnet", "champion", champion.version)
    before = _file_digests(project)

    attempts: list[str] = []
    real_import = pspnet.ops.import_data.import_data
    monkeypatch.setattr(pspnet.ops.import_data, "import_data", lambda *a, **k: attempts.append("import") or real_import(*a, **k))
    monkeypatch.setattr(training, "import_data_task", training.import_data_task.with_options(retry_delay_seconds=0))

    with pytest.raises(PspnetError, match=r"remote 'store' \(.*dvc-remote\) is unreachable: its folder .* does not exist") as err:
        training.training_pipeline(project_dir=str(project))
    assert not isinstance(err.value, DataError) and "Nothing was changed" in str(err.value)
    assert len(attempts) == 1 + training.TRANSIENT_RETRIES["retries"]
    assert _file_digests(project) == before  # no stage ran: no dvc.lock, no prepared data, nothing else
    assert client.get_model_version_by_alias("pspnet", "champion").version == champion.version
    assert len(client.search_model_versions("name = 'pspnet'")) == 1
