"""Against a real `mlflow server` on 127.0.0.1: the pipeline tracks, stores artifacts and
registers over HTTP; `mlflow models serve` answers the documented request with the class map."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from pspnet.model.checkpoint import load_checkpoint
from pspnet.model.export import SegmentationModel
from tests.integration.conftest import make_tiny_project, tool_env

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
#: Seconds a server may take to answer its health check (about 30 s seen for `mlflow server`).
STARTUP_TIMEOUT = 180
#: Seconds a stopped server gets to exit before it is killed.
STOP_TIMEOUT = 5
#: A size no image of the tiny dataset (48 x 64) has.
UNSEEN_SIZE = (53, 77)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not healthy after {STARTUP_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A tracking server, a tiny project run through `dvc exp run` against it, and the champion served."""
    base = tmp_path_factory.mktemp("tracking-server")
    port = free_port()
    server_env = tool_env(base)
    server_cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{base}/server.db",
                  "--artifacts-destination", str(base / "artifacts"), "--host", HOST, "--port", str(port), "--workers", "1"]  # fmt: skip
    processes = [start(server_cmd, server_env, base / "server.log")]

    def start_server() -> None:
        """The same server again (same port, store and artifacts), as after a restart."""
        processes[0] = start(server_cmd, server_env, base / "server.log")
        wait_http(f"http://{HOST}:{port}/health", processes[0], base / "server.log")

    try:
        wait_http(f"http://{HOST}:{port}/health", processes[0], base / "server.log")
        uri = f"http://{HOST}:{port}"
        project = make_tiny_project(base / "project")
        env = {**tool_env(project), "MLFLOW_TRACKING_URI": uri}
        exp = subprocess.run(["dvc", "exp", "run", "--name", "server-run"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=900)
        assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
        assert not (project / "mlflow.db").exists()  # everything went to the server

        serve_port = free_port()
        serve = start(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/pspnet@champion",
             "--env-manager", "local", "--host", HOST, "--port", str(serve_port)],
            env, base / "serve.log",
        )
        processes.append(serve)
        wait_http(f"http://{HOST}:{serve_port}/ping", serve, base / "serve.log")
        yield {"uri": uri, "project": project, "serve_url": f"http://{HOST}:{serve_port}", "base": base,
               "kill_server": lambda: os.killpg(processes[0].pid, signal.SIGKILL), "start_server": start_server}  # fmt: skip
    finally:
        for proc in reversed(processes):
            stop(proc)


def test_runs_artifacts_and_registry_live_on_the_tracking_server(served: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served["uri"])
    client = MlflowClient(tracking_uri=served["uri"], registry_uri=served["uri"])
    experiment = client.get_experiment_by_name("pspnet")
    (run,) = client.search_runs([experiment.experiment_id])
    tags = run.data.tags
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=served["project"], capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["dvc.exp_name"] == "server-run"
    record = json.loads((served["project"] / "data" / "prepared" / "dataset.json").read_text())
    assert tags["data.version"] == record["version"] and tags["data.source"] == "synthetic"
    assert "val_miou" in run.data.metrics

    # Artifacts are stored by the server (proxied over HTTP) and download back.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    card = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="registry/model_card.md",
                                               dst_path=str(served["base"] / "dl"))
    assert Path(card).read_text().startswith("# pspnet v1")
    assert any((served["base"] / "artifacts").rglob("model_card.md"))

    # The registry over HTTP: version 1 is challenger and champion, with the gate's tags.
    champion = client.get_model_version_by_alias("pspnet", "champion")
    assert str(champion.version) == "1" and champion.tags["decision"] == "promoted"
    assert str(client.get_model_version_by_alias("pspnet", "challenger").version) == "1"
    assert champion.tags["data.version"] == record["version"]


def test_mlflow_models_serve_returns_the_class_map_for_an_unseen_size(served: dict) -> None:
    h, w = UNSEEN_SIZE
    image = np.random.default_rng(3).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    request = urllib.request.Request(
        f"{served['serve_url']}/invocations",
        data=json.dumps({"inputs": image.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        answer = json.loads(reply.read())
    class_map = np.asarray(answer["predictions"])
    assert class_map.shape == (1, h, w)

    ckpt = load_checkpoint(served["project"] / "models" / "checkpoint.pt")
    reference = SegmentationModel(ckpt.model, ckpt.model_cfg.input_mean, ckpt.model_cfg.input_std)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(image).permute(0, 3, 1, 2).float()).argmax(1).numpy()
    assert (class_map == expected).mean() > 0.999


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _encoded(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_encoded_images_of_mixed_sizes_with_scales_and_flip_over_http(served: dict) -> None:
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(53, 77, 3), (40, 64, 3)]]
    body = {"inputs": [_encoded(Image.fromarray(images[0]), "PNG"), _encoded(Image.fromarray(images[1]), "JPEG")],
            "params": {"scales": [0.75, 1.0, 1.25], "flip": True}}  # fmt: skip
    status, answer = _post(served["serve_url"], body)
    assert status == 200, answer
    assert [np.asarray(m).shape for m in answer["predictions"]] == [(53, 77), (40, 64)]


#: One request of each bad kind over HTTP, and words its 400 must carry.
BAD_HTTP_REQUESTS = [
    ({"inputs": [[1, 2]]}, "expected RGB images shaped"),
    ({"inputs": ["not base64!"]}, "not valid base64"),
    ({"inputs": [base64.b64encode(b"GIF89a not really").decode()]}, "not a readable PNG / JPEG"),
    # A 48-megapixel PNG header (1-bit, a few KB): refused before its pixels are decoded.
    ({"inputs": [_encoded(Image.new("1", (8000, 6000)), "PNG")]}, "over the limit of"),
    ({"inputs": [[[[0, 0, 0]]]], "params": {"scales": [9.0]}}, "params.scales must hold"),
    ({"inputs": [[[[0, 0, 0]]]], "params": {"flip": "sideways"}}, "flip"),
]


@pytest.mark.parametrize(("body", "words"), BAD_HTTP_REQUESTS, ids=["shape", "base64", "not-an-image", "oversized", "scales", "flip"])
def test_bad_requests_get_a_400_that_says_why_and_no_stack_trace(served: dict, body: dict, words: str) -> None:
    status, answer = _post(served["serve_url"], body)
    assert status == 400 and words in answer["message"], (status, answer)
    assert "stack_trace" not in answer and "Traceback" not in answer["message"]


def test_the_store_check_and_the_promotion_lock_work_over_http(served: dict, caplog: pytest.LogCaptureFixture) -> None:
    """The lock's primitive (a registered model name is unique: RESOURCE_ALREADY_EXISTS) holds over
    the REST API too; a live server passes the start-of-run check."""
    from pspnet.config import MlflowConfig
    from pspnet.tracking.store import check_tracking_store
    from tests.registry.test_concurrency import check_lease_rules

    assert check_tracking_store(MlflowConfig(tracking_uri=served["uri"])) == served["uri"]
    client = MlflowClient(tracking_uri=served["uri"], registry_uri=served["uri"])
    check_lease_rules(client, caplog)
    assert [m.name for m in client.search_registered_models()] == ["pspnet"]


#: Epochs of the outage test's training: enough that some run while the server is away.
OUTAGE_EPOCHS = 24
#: Epochs that must finish while the server is away (training goes on).
EPOCHS_DURING_OUTAGE = 2
OUTAGE_TIMEOUT = 300


def _epochs_done(log: Path) -> int:
    return len(re.findall(r"epoch \d+/\d+: loss", log.read_text(errors="replace"))) if log.exists() else 0


def _poll(check: Callable[[], Any], timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s. Log:\n{log.read_text(errors='replace')[-3000:]}")


def test_training_goes_on_through_a_tracking_server_restart_and_logs_every_metric_once(served: dict, tmp_path: Path) -> None:
    """Last in this module: the server is killed mid-training and started again on the same store."""
    project, client = served["project"], MlflowClient(tracking_uri=served["uri"])
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = OUTAGE_EPOCHS
    params["mlflow"].update(metrics_retry_seconds=0.5, system_metrics_interval=0)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    # No MLflow client retries: a send to the dead server fails at once (the buffer retries).
    env = {**tool_env(project), "MLFLOW_TRACKING_URI": served["uri"], "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}  # fmt: skip
    before = {r.info.run_id for r in client.search_runs([client.get_experiment_by_name("pspnet").experiment_id])}
    log = tmp_path / "train.log"
    with log.open("w") as out:
        training = subprocess.Popen([sys.executable, "-m", "pspnet", "train", "--params", str(params_file), "--root", str(project)],
                                    cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        def new_run_with_a_loss() -> str | None:
            runs = client.search_runs([client.get_experiment_by_name("pspnet").experiment_id])
            fresh = [r for r in runs if r.info.run_id not in before and "train_loss" in r.data.metrics]
            return fresh[0].info.run_id if fresh else None

        run_id = _poll(new_run_with_a_loss, OUTAGE_TIMEOUT, "first epoch's metrics on the server", log)
        served["kill_server"]()
        at_kill = _epochs_done(log)
        assert at_kill < OUTAGE_EPOCHS - EPOCHS_DURING_OUTAGE, "training ended before the server went away"
        _poll(lambda: _epochs_done(log) >= at_kill + EPOCHS_DURING_OUTAGE, OUTAGE_TIMEOUT, "epochs while the server is away", log)
        served["start_server"]()
        assert training.wait(timeout=OUTAGE_TIMEOUT) == 0, log.read_text()[-3000:]
    finally:
        if training.poll() is None:
            training.kill()
    text = log.read_text()
    assert "does not take metrics" in text and "answers again" in text
    # Every epoch's and every step's metrics, once each: no gap, no duplicate point.
    epochs = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(epochs) == list(range(1, OUTAGE_EPOCHS + 1))
    steps = [m.step for m in client.get_metric_history(run_id, "step_loss")]
    assert len(steps) == len(set(steps)) and sorted(steps) == list(range(1, max(steps) + 1))
    assert client.get_run(run_id).info.status == "FINISHED" and "final_loss" in client.get_run(run_id).data.metrics
