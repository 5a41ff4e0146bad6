"""Scheduled retraining: the deployment's schedules and limit, the pipeline lock, and for real on a
local `prefect server start`: the cron schedule fires and the run completes; a trigger with no new
data is skipped; two triggers at once never overlap."""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import schedule
from pspnet.config import parse_params
from pspnet.errors import ConfigError, PspnetError
from pspnet.layout import PIPELINE_LOCK_FILE
from pspnet.ops import project_lock
from tests.integration.conftest import REPO_ROOT, make_tiny_project, run, tool_env
from tests.pipelines.servers import (
    background,
    cron_at,
    deployment_runs,
    final_run,
    free_port,
    set_schedule,
    tail,
    task_names,
    wait_for,
)

STAGES = ("prepare", "validate", "train", "evaluate", "test", "register")
FLOW_NAME = "pspnet-training"
DEPLOYMENT = "pspnet-retrain"

#: Bounded waits (seconds): the cron run to appear / to finish, a short run.
FIRE_DELAY = 40  # the serving process must be up before: about 20 s when the suite runs in parallel
FIRST_RUN_APPEARS_TIMEOUT = FIRE_DELAY + 60
FIRST_RUN_TIMEOUT = 420
SHORT_RUN_TIMEOUT = 120


# --- the deployment, without a server ---------------------------------------------------------


def test_deployment_has_the_cron_and_the_data_check_schedules_and_limit_one(tmp_path: Path) -> None:
    params = parse_params({"schedule": {"cron": "0 4 * * 1", "timezone": "Europe/Berlin", "data_check_interval": 600, "collision": "enqueue"}})
    deployment = schedule.build_deployment(params, tmp_path)

    assert deployment.name == DEPLOYMENT and deployment.entrypoint == "pipelines/training.py:training_pipeline"
    full, check = deployment.schedules
    assert (full.schedule.cron, full.schedule.timezone, full.slug) == ("0 4 * * 1", "Europe/Berlin", "full-retrain")
    assert full.parameters == {"project_dir": str(tmp_path), "only_if_new_data": False}
    assert check.schedule.interval == datetime.timedelta(seconds=600) and check.slug == "new-data-check"
    assert check.parameters == {"project_dir": str(tmp_path), "only_if_new_data": True}
    assert deployment.concurrency_limit == 1
    assert deployment.concurrency_options.collision_strategy == schedule.ConcurrencyLimitStrategy.ENQUEUE


def test_no_data_check_schedule_when_its_interval_is_zero(tmp_path: Path) -> None:
    params = parse_params({"schedule": {"data_check_interval": 0}})
    deployment = schedule.build_deployment(params, tmp_path)
    assert [s.slug for s in deployment.schedules] == ["full-retrain"]
    assert deployment.concurrency_options.collision_strategy == schedule.ConcurrencyLimitStrategy.CANCEL_NEW


@pytest.mark.parametrize("cron", ["61 * * * *", "0 3 * *", "H 3 * * *"])
def test_a_cron_prefect_refuses_names_schedule_cron(tmp_path: Path, cron: str) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.cron in params\.yaml: .*Use five fields"):
        schedule.build_deployment(parse_params({"schedule": {"cron": cron}}), tmp_path)


def test_serving_needs_a_prefect_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(ConfigError, match=r"PREFECT_API_URL is not set.*`make schedule`"):
            schedule.require_server()
    closed = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: closed}):
        with pytest.raises(PspnetError, match=rf"PREFECT_API_URL={closed} does not answer.*`make schedule`"):
            schedule.require_server()


def test_a_second_run_waits_for_the_pipeline_lock_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hold_seconds = 3
    lock_file = tmp_path / PIPELINE_LOCK_FILE
    lock_file.parent.mkdir(parents=True)
    holder = subprocess.Popen(  # another run, in another process, holding the lock
        [
            sys.executable,
            "-c",
            f"import time, filelock; lock = filelock.FileLock({str(lock_file)!r}); lock.acquire(); "
            f"print('held', flush=True); time.sleep({hold_seconds})",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(project_lock, "LOCK_WAIT_LOG_SECONDS", 1)
        logger = logging.getLogger("test-pipeline-lock")
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger=logger.name), project_lock.pipeline_lock(tmp_path, logger) as held:
            waited = time.monotonic() - started
            assert held == lock_file
    finally:
        holder.kill()
        holder.wait()
    assert waited >= hold_seconds - 1, waited
    assert "waiting for it to finish" in caplog.messages[0]
    assert any(m.startswith("still waiting") for m in caplog.messages), caplog.messages


# --- for real on the package's Prefect server (tests/pipelines/conftest.py) ---------------------


@contextmanager
def serving(project: Path, api: str, log: Path) -> Iterator[subprocess.Popen]:
    """`python -m pipelines.schedule --project-dir project` against ``api``; stopped (Ctrl-C) afterwards
    (it pauses the schedules while the server still answers)."""
    env = tool_env(project)
    env.update(PREFECT_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY="1")
    with background([sys.executable, "-m", "pipelines.schedule", "--project-dir", str(project)], REPO_ROOT, env, log) as proc:
        yield proc


@pytest.mark.integration
def test_the_cron_schedule_fires_and_completes_and_a_trigger_without_new_data_is_skipped(
    prefect_api: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = make_tiny_project(tmp_path / "project")
    serve_log = tmp_path / "serve.log"
    fire_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=FIRE_DELAY)
    set_schedule(project, cron=cron_at(fire_at), timezone="UTC", data_check_interval=0, collision="cancel_new")

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client, \
            serving(project, prefect_api, serve_log) as server:

        def deployment() -> Any:
            assert server.poll() is None, f"pipelines.schedule exited {server.returncode}:\n{tail(serve_log)}"
            return next((d for d in client.read_deployments() if d.name == DEPLOYMENT), None)  # the server is shared

        deployment_id = wait_for(deployment, FIRE_DELAY, "deployment served", serve_log).id
        scheduled = wait_for(lambda: deployment_runs(client, deployment_id), FIRST_RUN_APPEARS_TIMEOUT, "cron run created", serve_log)[0]
        assert scheduled.auto_scheduled and scheduled.parameters["only_if_new_data"] is False
        assert abs((scheduled.expected_start_time - fire_at).total_seconds()) < 1

        done = wait_for(lambda: final_run(client, scheduled.id), FIRST_RUN_TIMEOUT, "scheduled run finished", serve_log)
        assert done.state.is_completed(), f"{done.state!r}\n{tail(serve_log)}"
        assert set(yaml.safe_load((project / "dvc.lock").read_text())["stages"]) == set(STAGES)
        assert json.loads((project / "reports" / "registry.json").read_text())["decision"] == "promoted"
        # DVC recorded every stage: a plain `dvc repro` afterwards has nothing to do.
        again = run([sys.executable, "-m", "dvc", "repro"], project)
        assert "Running stage" not in again.stdout, again.stdout
        lock_before = (project / "dvc.lock").read_text()

        # Two new-data triggers at once, nothing new: one runs and is skipped, the other is
        # cancelled by the concurrency limit (collision: cancel_new); they never overlap.
        name = f"{FLOW_NAME}/{DEPLOYMENT}"
        pair = [run_deployment(name, parameters={"only_if_new_data": True}, timeout=0) for _ in range(2)]

        def both_final() -> list[Any] | None:
            runs = [client.read_flow_run(run.id) for run in pair]
            return runs if all(run.state and run.state.is_final() for run in runs) else None

        finals = wait_for(both_final, SHORT_RUN_TIMEOUT, "both new-data triggers finished", serve_log)
        by_state = {run.state.name: run for run in finals}
        assert set(by_state) == {"Skipped", "Cancelled"}, [run.state for run in finals]
        skipped, cancelled = by_state["Skipped"], by_state["Cancelled"]
        assert skipped.state.is_completed() and skipped.state.message.startswith("no new data since dvc.lock: data/raw ")
        assert task_names(client, skipped.id) == ["data-changes"]  # no stage ran
        assert "concurrency limit" in cancelled.state.message and task_names(client, cancelled.id) == []
        assert (project / "dvc.lock").read_text() == lock_before
