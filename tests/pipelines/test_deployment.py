"""Retraining on a work pool, by events, and multi-node training from the pool.

Without a server: prefect.yaml is what params.yaml gives and Prefect reads it as meant; bad
settings are named. For real, on the package's `prefect server start` with ONE `prefect worker`
(process pool) for the module: `pipelines.deployment deploy` (the `make deploy` path: the pool,
then the real `prefect deploy --all`); the cron run completes; the watcher's burst of new files
gives several events and exactly one run, which completes; two "nodes" on this machine train
over gloo through the same worker (`pipelines.distributed`, the `torchrun` c10d command). The
server restarts during the cron run: nothing of the run is lost, the worker goes on.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import deployment, distributed
from pspnet.config import load_params, parse_params
from pspnet.data_events import DATA_EVENT
from pspnet.errors import ConfigError
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
#: Names of this module's pool and deployment (the package's server is shared with test_schedule).
POOL = "pspnet-test-pool"
DEPLOYMENT = "pspnet-retrain-pool"
#: The trigger's window (s): a burst shorter than it gives one run, which starts when it closes.
WINDOW = 20
BURST_FILES = 5
BURST_SPACING = 0.8
#: Seconds from the cron being set to its firing: the deploy and the worker must be up before.
FIRE_DELAY = 40
RUN_APPEARS_TIMEOUT = FIRE_DELAY + 60
FULL_RUN_TIMEOUT = 420
SHORT_RUN_TIMEOUT = 240
#: Events read back at most (the server's page limit).
EVENTS_PAGE = 50


# --- without a server ---------------------------------------------------------------------------


def test_prefect_yaml_is_what_params_yaml_gives_and_prefect_reads_it_as_meant() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.events import DeploymentEventTrigger

    params = load_params(REPO_ROOT / "params.yaml")
    deployment.check(REPO_ROOT, params)  # the committed file is current
    model = PrefectYamlModel.model_validate(yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text()))
    retrain, node = model.deployments
    assert (retrain.name, retrain.work_pool.name, node.work_pool.name) == ("pspnet-retrain", "pspnet-process", "pspnet-process")
    assert [s.cron or s.interval.total_seconds() for s in retrain.schedules] == ["0 3 * * 0", 900]
    assert retrain.concurrency_limit.limit == 1 and retrain.concurrency_limit.collision_strategy == "CANCEL_NEW"
    trigger = DeploymentEventTrigger.model_validate(retrain.triggers[0])
    assert trigger.expect == {DATA_EVENT} and trigger.within == trigger.schedule_after == datetime.timedelta(seconds=60)
    assert trigger.parameters == {"project_dir": ".", "only_if_new_data": True}
    assert node.entrypoint == "pipelines/distributed.py:node_training" and node.parameters["rdzv_endpoint"] is None


def test_a_stale_prefect_yaml_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"schedule": {"event_window": 0}}))
    with pytest.raises(ConfigError, match=r"prefect\.yaml is missing\. Fix: run `python -m pipelines\.deployment write`"):
        deployment.check(tmp_path, load_params(tmp_path / "params.yaml"))
    assert deployment.main(["write", "--project-dir", str(tmp_path)]) == 0
    assert "triggers" not in (tmp_path / "prefect.yaml").read_text()  # event_window 0: no trigger
    set_schedule(tmp_path, event_window=30)
    assert deployment.main(["check", "--project-dir", str(tmp_path)]) == ConfigError.exit_code


def test_multinode_settings_are_checked_by_name() -> None:
    with pytest.raises(ConfigError, match=r"schedule\.multinode\.rdzv_endpoint.*not HOST:PORT"):
        parse_params({"schedule": {"multinode": {"rdzv_endpoint": "node0"}}})
    with pytest.raises(ConfigError, match=r"needs rdzv_endpoint.*--rdzv-endpoint.*schedule\.multinode\.rdzv_endpoint"):
        distributed.node_settings(2, 1, None)
    with pytest.raises(ConfigError, match=r"parameters: nnodes: .*greater than 0"):
        distributed.node_settings(0, 1, "h:1")


def test_the_node_command_is_the_documented_torchrun_command(tmp_path: Path) -> None:
    docs = (REPO_ROOT / "docs" / "distributed-training.md").read_text()
    command = distributed.node_command(distributed.node_settings(2, 8, "node0.example:29400"), "pspnet-42", tmp_path)
    documented = "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node0.example:29400 --rdzv_id pspnet-42 -m pspnet train"
    assert documented in " ".join(docs.split()).replace("\\ ", "")
    assert " ".join(["torchrun", *command[3:-4]]) == documented


# --- for real: one worker on the package's Prefect server ---------------------------------------


@pytest.fixture(scope="module")
def pool(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tiny project deployed from its prefect.yaml (cron due in FIRE_DELAY s), and one worker."""
    tmp = tmp_path_factory.mktemp("pool")
    project = make_tiny_project(tmp / "project")
    fire_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=FIRE_DELAY)
    set_schedule(project, deployment_name=DEPLOYMENT, work_pool=POOL, cron=cron_at(fire_at), timezone="UTC",
                 data_check_interval=0, event_window=WINDOW, watch_interval=1)  # fmt: skip
    assert deployment.main(["write", "--project-dir", str(project)]) == 0
    env = {**tool_env(project), "PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    cli = [sys.executable, "-m", "pipelines.deployment"]
    deployed = subprocess.run([*cli, "deploy", "--project-dir", str(project)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-4000:] + deployed.stderr[-4000:]
    worker_log = tmp / "worker.log"
    with background([*cli, "worker", "--project-dir", str(project)], REPO_ROOT, env, worker_log) as worker:
        yield {"project": project, "fire_at": fire_at, "api": prefect_api, "env": env, "log": worker_log, "worker": worker}


@pytest.fixture
def client(pool: dict[str, Any]) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: pool["api"]}), get_client(sync_client=True) as api_client:
        yield api_client


def _raw_hash(project: Path) -> str:
    deps = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["prepare"]["deps"]
    return next(dep["md5"] for dep in deps if dep["path"] == "data/raw")


def _data_events(client: Any) -> list[Any]:
    from prefect.events.filters import EventFilter, EventNameFilter

    return client.read_events(EventFilter(event=EventNameFilter(name=[DATA_EVENT])), limit=EVENTS_PAGE).events


@pytest.mark.integration
def test_the_worker_runs_the_cron_run_and_one_run_per_burst_of_new_data(
    pool: dict[str, Any], client: Any, prefect_server_process: Any, tmp_path: Path
) -> None:
    project, log = pool["project"], pool["log"]
    retrain = client.read_deployment_by_name(f"{FLOW_NAME}/{DEPLOYMENT}")
    assert retrain.work_pool_name == POOL and retrain.pull_steps[0]["prefect.deployments.steps.set_working_directory"]

    # (a) the cron schedule's run, picked up by the worker, runs the whole pipeline; the Prefect
    # server restarts (same port and database) while it trains: the run goes on and its outcome
    # is recorded, and the worker lives on to take the next run (b).
    scheduled = wait_for(lambda: deployment_runs(client, retrain.id), RUN_APPEARS_TIMEOUT, "cron run created", log)[0]
    assert scheduled.auto_scheduled and abs((scheduled.expected_start_time - pool["fire_at"]).total_seconds()) < 1
    wait_for(lambda: "dvc-repro-train" in task_names(client, scheduled.id), FULL_RUN_TIMEOUT, "the cron run training", log)
    prefect_server_process.restart()
    done = wait_for(lambda: final_run(client, scheduled.id), FULL_RUN_TIMEOUT, "cron run finished", log)
    assert done.state.is_completed() and done.state.name == "Completed", f"{done.state!r}\n{tail(log)}"
    assert set(task_names(client, scheduled.id)) >= {f"dvc-repro-{stage}" for stage in STAGES}
    assert pool["worker"].poll() is None, tail(log)
    assert set(yaml.safe_load((project / "dvc.lock").read_text())["stages"]) == set(STAGES)
    recorded = _raw_hash(project)

    # (b, c) the watcher sees a burst of files land: several events, exactly one run, which completes.
    watch_log = tmp_path / "watch.log"
    watch = [sys.executable, "-m", "pipelines.watch", "--project-dir", str(project), "--interval", "0.5"]
    with background(watch, REPO_ROOT, pool["env"], watch_log) as watcher:
        wait_for(lambda: watcher.poll() is not None or "watch: ready (0 event(s)" in watch_log.read_text(), 120, "watcher ready", watch_log)
        assert watcher.poll() is None, tail(watch_log)
        incoming = project / "data" / "raw" / "incoming"
        incoming.mkdir()
        started = time.monotonic()
        for k in range(BURST_FILES):
            (incoming / f"upload-{k}.bin").write_bytes(bytes([k]) * 1000)
            time.sleep(BURST_SPACING)
        # The burst ends well within the window (all its events fall into one window).
        assert time.monotonic() - started < WINDOW / 2

        def triggered() -> list[Any]:
            return [r for r in deployment_runs(client, retrain.id) if r.id != scheduled.id]

        event_run = wait_for(triggered, WINDOW + 90, "event-triggered run created", watch_log)[0]
        finished = wait_for(lambda: final_run(client, event_run.id), SHORT_RUN_TIMEOUT, "event-triggered run finished", log)
    events = _data_events(client)
    assert len(events) >= 2, f"the burst gave {len(events)} event(s); watcher log:\n{tail(watch_log)}"
    assert {e.resource.id for e in events} == {"pspnet.dataset.data/raw"}
    assert {e.payload["old_hash"] for e in events} == {recorded} and all(e.payload["new_hash"] != recorded for e in events)
    assert len(triggered()) == 1, [r.name for r in triggered()]  # one run for the whole burst
    assert not event_run.auto_scheduled and event_run.parameters["only_if_new_data"] is True
    assert finished.state.is_completed() and finished.state.name == "Completed", f"{finished.state!r}\n{tail(log)}"
    assert {"data-changes", "import-data", "dvc-repro-prepare"} <= set(task_names(client, finished.id))
    # dvc.lock now records the raw data with every new file, as the burst's last event saw it.
    assert _raw_hash(project) == max(events, key=lambda e: e.occurred).payload["new_hash"] != recorded


@pytest.mark.integration
def test_two_nodes_train_over_gloo_from_the_pool(pool: dict[str, Any], client: Any) -> None:
    """`python -m pipelines.distributed`: one run per node on queues node-0 / node-1, both taken
    by the module's worker; each runs the c10d torchrun command, one rank each (gloo)."""
    project = pool["project"]
    run([sys.executable, "-m", "dvc", "repro", "prepare"], project)  # the nodes' prepared data
    started = time.time()
    runs = distributed.launch(project, 2, 1, f"127.0.0.1:{free_port()}")
    assert [r.work_queue_name for r in runs] == ["node-0", "node-1"]
    finals = [wait_for(lambda r=r: final_run(client, r.id), SHORT_RUN_TIMEOUT, "node run finished", pool["log"]) for r in runs]
    assert all(f.state.is_completed() for f in finals), [f.state for f in finals]
    metrics = project / "metrics" / "train.json"
    assert metrics.stat().st_mtime >= started and json.loads(metrics.read_text())["processes"] == 2


@pytest.mark.integration
def test_import_data_emits_the_new_version_of_a_changed_source(prefect_api: str, tmp_path: Path) -> None:
    """`pspnet import-data` after files were added to an imported folder: `dvc update`, and one
    event naming the source, with its old and new DVC hashes (none without PREFECT_API_URL)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventResourceFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    source = tmp_path / "uploads"
    source.mkdir()
    (source / "a.png").write_bytes(b"a")
    project = make_tiny_project(tmp_path / "project", {"data": {"source": {"name": "folder", "location": str(source)}}})
    first = run(["pspnet", "import-data"], project)  # no PREFECT_API_URL: imported, no event
    before = json.loads(first.stdout)["inputs"][0]["version"]
    (source / "b.png").write_bytes(b"b")
    env = {**tool_env(project), "PREFECT_API_URL": prefect_api}
    second = subprocess.run(["pspnet", "import-data"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    after = json.loads(second.stdout)["inputs"][0]
    assert after["action"] == "dvc update" and after["changed"]

    dataset = EventFilter(resource=EventResourceFilter(id=["pspnet.dataset.data.source.location"]))
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
        events = wait_for(lambda: client.read_events(dataset, limit=EVENTS_PAGE).events, 30, "import-data event stored", tmp_path / "none")
    assert len(events) == 1 and events[0].event == DATA_EVENT
    assert events[0].payload == {"old_hash": before, "new_hash": after["version"], "path": after["path"],
                                 "action": "dvc update", "emitter": "pspnet import-data"}  # fmt: skip
    assert events[0].resource["pspnet.location"] == str(source) and events[0].resource["pspnet.deployment"] == "pspnet-retrain"
