"""The served endpoint under concurrent load: a model logged exactly as ``register`` logs it,
served by ``mlflow models serve`` on 127.0.0.1 (one worker), hit by 1, 4 and 16 clients at
once, per runtime of the served model (PyTorch, ONNX Runtime).

Each client sends one request after another: one image as a base64 PNG (the format a camera
or browser client sends), the reply a class map. A level ends when ``requests`` replies came
back or after ``max_seconds``, whichever is first. Reported per level: replies/s over the
level's wall time, latency p50 / p99 (from sending to the parsed reply), errors (any non-200
or failed connection; the aim is 0).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.timing import Progress, latency_figure
from pspnet.config import ModelConfig
from pspnet.model.checkpoint import load_checkpoint, save_checkpoint
from pspnet.model.pspnet import build_model
from pspnet.ops.environment import tool_env
from pspnet.registry.logged_model import png_base64
from pspnet.registry.packaging import ServingSpec, log_segmentation_model

HOST = "127.0.0.1"
#: Classes of the served network (ADE20K's 150, as the other sections).
NUM_CLASSES = 150
#: (height, width) the network is traced at, and the ONNX graph checked at.
TRACE_SIZE = (64, 96)
PROBE_SIZE = (120, 160)
#: Seconds the server may take to load the model and answer /ping.
START_TIMEOUT_S = 300
#: Seconds one request may take before it counts as an error.
REQUEST_TIMEOUT_S = 120
STOP_TIMEOUT_S = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _log_model(settings: dict[str, Any], work: Path) -> str:
    """A random PSPNet of the section's encoder, logged into a SQLite store in ``work``; its URI."""
    import mlflow

    cfg = ModelConfig(encoder=settings["encoder"], stem=settings["stem"], output_stride=8)
    torch.manual_seed(0)
    names = [f"class{i}" for i in range(NUM_CLASSES)]
    save_checkpoint(work / "serving.pt", build_model(cfg, NUM_CLASSES), cfg, NUM_CLASSES, {"class_names": names})
    mlflow.set_tracking_uri(f"sqlite:///{work / 'serving.db'}")
    experiment = mlflow.create_experiment("serving-bench", artifact_location=(work / "serving-artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    info = log_segmentation_model(load_checkpoint(work / "serving.pt"), run.info.run_id, "bench", TRACE_SIZE, PROBE_SIZE, ServingSpec())
    return mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(work / "served-model"))


def _serve(model_dir: str, runtime: str, work: Path) -> tuple[subprocess.Popen, str, Path]:
    """``mlflow models serve`` of ``model_dir`` on ``runtime``; returns the process, its URL and log."""
    port = _free_port()
    env = {**tool_env(), "SERVING_MODEL_CONFIG": json.dumps({"runtime": runtime}), "MLFLOW_MODELS_WORKERS": "1"}
    log = work / f"serve-{runtime}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_dir, "--env-manager", "local",
             "--host", HOST, "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return proc, url, log
        except OSError:
            time.sleep(1)
    _stop(proc)
    raise RuntimeError(f"mlflow models serve did not answer within {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _post(url: str, body: bytes) -> tuple[float, str | None]:
    """Milliseconds of one request (sent to reply parsed) and its error, if any."""
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as reply:
            json.loads(reply.read())
        error = None
    except urllib.error.HTTPError as err:
        error = f"HTTP {err.code}"
    except OSError as err:
        error = type(err).__name__
    return (time.perf_counter() - start) * 1000, error


def load_level(url: str, body: bytes, clients: int, requests: int, max_seconds: float) -> dict[str, Any]:
    """``clients`` threads sending requests back to back until ``requests`` were sent or
    ``max_seconds`` passed; replies/s, latency p50 / p99 and errors."""
    lock = threading.Lock()
    sent, latencies, errors = [0], [], []
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= requests:
                    return
                sent[0] += 1
            ms, error = _post(url, body)
            with lock:
                (errors.append(error) if error else latencies.append(ms))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": sent[0], "replies": len(latencies), "errors": len(errors),
            "error_kinds": sorted(set(errors)), "wall_s": wall, "replies_per_s": len(latencies) / wall,
            "latency_ms": latency_figure(latencies) if latencies else None}  # fmt: skip


def serving(settings: dict[str, Any], progress: Progress, work: Path) -> dict[str, Any]:
    """Every runtime's server under every client level (see the module docstring)."""
    h, w = settings["size"]
    progress.step("logging the model (torch.export + ONNX, as register does)", 0.0)
    model_dir = _log_model(settings, work)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    body = json.dumps({"inputs": [png_base64(image)]}).encode()
    out: dict[str, Any] = {"settings": {**settings, "request_bytes": len(body), "workers": 1,
                                        "threads": torch.get_num_threads()}, "runtimes": {}}  # fmt: skip
    steps = len(settings["runtimes"]) * len(settings["clients"])
    for r, runtime in enumerate(settings["runtimes"]):
        progress.step(f"starting mlflow models serve ({runtime})", 0.1 + 0.9 * r * len(settings["clients"]) / steps)
        proc, url, log = _serve(model_dir, runtime, work)
        try:
            warm = [_post(url, body) for _ in range(settings["warmup_requests"])]
            if any(error for _, error in warm):
                raise RuntimeError(f"warm-up requests failed ({[e for _, e in warm]}): {log.read_text()[-2000:]}")
            levels = []
            for c, clients in enumerate(settings["clients"]):
                progress.step(f"{runtime}: {clients} client(s)", 0.1 + 0.9 * (r * len(settings["clients"]) + c) / steps)
                levels.append(load_level(url, body, clients, max(settings["requests"], clients), settings["max_seconds"]))
            out["runtimes"][runtime] = levels
        finally:
            _stop(proc)
    return out
