"""The training metrics' queue (pspnet.tracking.metrics_buffer) on a real SQLite store: every
metric arrives once, a resent batch adds no point, and a store that never answers fails the
close with what to do. The server outage itself: tests/integration/test_tracking_server.py."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pspnet.errors import PspnetError
from pspnet.tracking.metrics_buffer import MAX_BATCH, MetricsBuffer


def _run(tmp_path: Path) -> tuple[MlflowClient, str]:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.create_experiment("buffer", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, client.create_run(experiment).info.run_id


def test_every_metric_arrives_once_in_order_even_past_one_batch(tmp_path: Path) -> None:
    client, run_id = _run(tmp_path)
    buffer = MetricsBuffer(run_id, retry_seconds=0.1, outage_wait=60)
    steps = MAX_BATCH + 7  # more than one log_batch call
    for step in range(1, steps + 1):
        buffer.log({"step_loss": 1.0 / step, "step_lr": 0.01}, step)
    buffer.close()
    history = client.get_metric_history(run_id, "step_loss")
    assert sorted(m.step for m in history) == list(range(1, steps + 1))
    assert buffer.pending == 0


def test_a_batch_sent_twice_adds_no_point(tmp_path: Path) -> None:
    """Why resending after a lost reply is safe: the store keeps one point per (key, value, time, step)."""
    client, run_id = _run(tmp_path)
    buffer = MetricsBuffer(run_id, retry_seconds=0.1, outage_wait=60)
    buffer.log({"train_loss": 0.5}, 1)
    batch = list(buffer._pending)
    buffer.close()
    client.log_batch(run_id, metrics=batch)  # the same points again, as a resend would
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")] == [(1, 0.5)]


def test_a_store_that_never_answers_fails_the_close_with_the_fix(tmp_path: Path) -> None:
    _run(tmp_path)
    # A real client against a port nothing listens on, with no client-side retries.
    unreachable = MlflowClient(tracking_uri="http://127.0.0.1:9")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        buffer = MetricsBuffer("0" * 32, retry_seconds=0.2, outage_wait=1.5, client=unreachable)
        buffer.log({"train_loss": 0.5}, 1)
        with pytest.raises(PspnetError, match="did not take 1 metrics .* mlflow.outage_wait") as err:
            buffer.close()
    assert "train.resume: auto" in str(err.value)
