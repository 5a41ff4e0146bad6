"""The start-of-run check of the MLflow tracking store: an unreachable server (a real closed
port, a port that never answers), a file that is not a database, named with the URI, where it
came from and the fix; `train`, `pspnet experiment` and `pspnet ablation` stop before any work;
a fresh SQLite store created by two processes at once."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pspnet.config import MlflowConfig, parse_params
from pspnet.errors import PspnetError
from pspnet.tracking import store as tracking_store

REPO_ROOT = Path(__file__).resolve().parents[2]
#: A generous bound: the check answers in well under a second; MLflow's own client would retry
#: for minutes. Not a timing test, a "did not hang" test.
FAST = 30.0


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: bound, then closed (connecting is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_an_unreachable_server_from_the_environment_fails_setup_at_once(
    closed_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(PspnetError) as info:
        tracking_store.setup_mlflow(MlflowConfig(), tmp_path)
    assert time.monotonic() - started < FAST
    message = str(info.value)
    assert f"MLflow tracking server {uri} (from the environment variable MLFLOW_TRACKING_URI) is unreachable" in message
    assert f"connection refused: nothing listens on 127.0.0.1:{closed_port}" in message
    assert "mlflow server --backend-store-uri sqlite:///$PWD/server.db" in message and f"--port {closed_port}" in message
    assert f"unset MLFLOW_TRACKING_URI (then sqlite:///{tmp_path.resolve()}/mlflow.db is used)" in message
    assert not (tmp_path / "mlflow.db").exists()


def test_a_server_from_params_that_never_answers_times_out(silent_port: int, tmp_path: Path) -> None:
    cfg = MlflowConfig(tracking_uri=f"http://user:secret@localhost:{silent_port}", connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(PspnetError) as info:
        tracking_store.check_tracking_store(cfg, tmp_path)
    assert time.monotonic() - started < FAST
    message = str(info.value)
    assert "(from mlflow.tracking_uri in params.yaml)" in message and "no answer within 0.5 s (mlflow.connect_timeout)" in message
    assert "set mlflow.tracking_uri: null in params.yaml" in message
    assert "secret" not in message and "user:***@" in message  # no password in messages


def test_a_file_that_is_not_a_database_is_named_and_left_alone(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    store.write_text("not a database, " * 100)
    with pytest.raises(PspnetError, match=r"mlflow\.db is not a usable SQLite database \(file is not a database\)\. Fix: move the file away"):
        tracking_store.setup_mlflow(MlflowConfig(), tmp_path)
    assert store.read_text().startswith("not a database")
    folder = tmp_path / "folder.db"
    folder.mkdir()
    with pytest.raises(PspnetError, match="is a folder, not a database file"):
        tracking_store.check_tracking_store(MlflowConfig(tracking_uri=f"sqlite:///{folder}"), tmp_path)


def test_the_check_creates_nothing_and_a_good_store_passes(tmp_path: Path) -> None:
    assert tracking_store.check_tracking_store(MlflowConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert list(tmp_path.iterdir()) == []
    tracking_store.setup_mlflow(MlflowConfig(), tmp_path)
    tracking_store.check_tracking_store(MlflowConfig(), tmp_path)  # the store just created passes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no lock file left behind


def test_train_stops_at_the_store_check_before_reading_any_data(closed_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pspnet.stages.train import run as train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(PspnetError, match="is unreachable: connection refused"):  # not "no prepared data"
        train(parse_params({}), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def preset_project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text(yaml.safe_dump({"train": {"epochs": 1}}))
    return tmp_path


def test_an_experiment_stops_before_importing_data_or_running_a_stage(
    preset_project: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pspnet.ops.import_data
    from pspnet import presets

    ran: list[str] = []
    monkeypatch.setattr(pspnet.ops.import_data, "import_data", lambda *a, **k: ran.append("import-data"))
    monkeypatch.setattr(presets, "run_streamed", lambda *a, **k: ran.append("dvc"))
    params_before = (preset_project / "params.yaml").read_text()
    with pytest.raises(PspnetError, match=rf"mlflow.tracking_uri in params.yaml\) is unreachable: connection refused.*{closed_port}"):
        presets.run_preset(preset_project, "mine", overrides={"mlflow.tracking_uri": f"http://127.0.0.1:{closed_port}"})
    assert ran == []
    assert (preset_project / "params.yaml").read_text() == params_before
    assert not (preset_project / "docs").exists()


def test_an_ablation_stops_before_its_first_row(preset_project: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from pspnet import ablation

    ran: list[str] = []
    monkeypatch.setattr(ablation, "run_experiment", lambda *a, **k: ran.append("row"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(PspnetError, match="MLFLOW_TRACKING_URI\\) is unreachable"):
        ablation.run_ablation(preset_project)
    assert ran == []


SETUP_SCRIPT = """
import sys
from pspnet.config import MlflowConfig
from pspnet.tracking.store import setup_mlflow
print(setup_mlflow(MlflowConfig(), sys.argv[1]))
"""


@pytest.mark.integration  # two real processes racing
def test_two_processes_creating_a_fresh_sqlite_store_at_once_both_succeed(tmp_path: Path) -> None:
    """Without the creation lock one of them failed in MLflow's schema migration (measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    procs = [
        subprocess.Popen([sys.executable, "-c", SETUP_SCRIPT, str(tmp_path)], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    for code, out, err in results:
        assert code == 0, err[-3000:]
    assert results[0][1] == results[1][1]  # one experiment, the same id for both
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("mlflow", {"tracking_uri": "htp://127.0.0.1:5000"}, "mlflow.tracking_uri: .*scheme one of http, https, sqlite"),
        ("mlflow", {"connect_timeout": 0}, "mlflow.connect_timeout: Input should be greater than 0"),
        ("mlflow", {"experiment_name": ""}, "mlflow.experiment_name"),
        ("mlflow", {"timeout": 5}, "mlflow.timeout: unknown key.*accepted here: experiment_name, tracking_uri, connect_timeout"),
        ("register", {"model_name": "team/pspnet"}, "register.model_name: .*no '/' or ':'"),
        ("register", {"model_name": "pspnet.promotion-lock"}, "reserved for the promotion lock"),
        ("register", {"champion_alias": "best model"}, "register.champion_alias: .*letters, digits"),
        ("register", {"challenger_alias": "v2"}, "register.challenger_alias: .*reserved by MLflow"),
        ("register", {"lock_lease": 1}, "register.lock_lease: Input should be greater than or equal to 10"),
    ],
)
def test_store_and_registry_settings_are_validated_before_anything_runs(section: str, values: dict, message: str) -> None:
    from pspnet.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_params({section: values})
