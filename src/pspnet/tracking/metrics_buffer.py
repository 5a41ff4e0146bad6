"""A training run's metrics, kept until the tracking store has them: training never waits on
MLflow, and an outage of the tracking server (a restart, a network cut) loses nothing.

``log`` stamps each metric with its time and step and queues it; a background thread sends the
queue with ``MlflowClient.log_batch``, and when a send fails it keeps the metrics and tries
again every ``retry_seconds``. A resend is idempotent: MLflow stores a metric once per (key,
value, timestamp, step), so a batch that reached the store before its reply was lost does not
come back as a duplicate point. (MLflow's own asynchronous logging drops a batch whose send
failed, hence this.) ``close`` waits, at most ``outage_wait`` seconds, for the queue to empty.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pspnet.errors import PspnetError

log = logging.getLogger(__name__)

#: Most metrics in one ``log_batch`` call (MLflow's limit is 1000).
MAX_BATCH = 1000
MS_PER_S = 1000


class MetricsBuffer:
    """Queue of metrics for run ``run_id``, sent by a background thread (see the module docstring)."""

    def __init__(self, run_id: str, retry_seconds: float, outage_wait: float, client: Any = None) -> None:
        from mlflow import MlflowClient

        self.run_id = run_id
        self.retry_seconds = retry_seconds
        self.outage_wait = outage_wait
        self.client = client or MlflowClient()
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name="metrics-buffer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step``, stamped now; returns at once."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * MS_PER_S)
        with self._lock:
            self._pending.extend(Metric(key, float(value), timestamp, int(step)) for key, value in metrics.items())
        self._wake.set()

    def _send_some(self) -> bool:
        """Send up to :data:`MAX_BATCH` queued metrics; False when the store did not take them."""
        with self._lock:
            batch = self._pending[:MAX_BATCH]
        if not batch:
            return True
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as err:  # noqa: BLE001 - any failure to reach the store: keep the metrics, retry
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("the tracking store does not take metrics (%s: %s); training goes on, %d metrics are kept "
                            "and resent every %g s", type(err).__name__, str(err)[:200], self.pending, self.retry_seconds)  # fmt: skip
            return False
        with self._lock:
            del self._pending[: len(batch)]
        if self._failing_since is not None:
            log.warning("the tracking store answers again after %.0f s; the kept metrics are being sent",
                        time.monotonic() - self._failing_since)  # fmt: skip
            self._failing_since = None
        return True

    def _loop(self) -> None:
        while True:
            self._wake.wait(timeout=self.retry_seconds)
            self._wake.clear()
            while self.pending and self._send_some():
                pass
            if self._closing.is_set() and not self.pending:
                return

    def close(self) -> None:
        """Wait until every queued metric is stored; after ``outage_wait`` seconds of a store that
        still refuses them, fail with what was lost and how to go on."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=self.outage_wait)
        if self._thread.is_alive() or self.pending:
            raise PspnetError(
                f"the tracking store did not take {self.pending} metrics of run {self.run_id} within "
                f"mlflow.outage_wait ({self.outage_wait:g} s); the training outputs are on disk. Bring the tracking "
                "server back and run the stage again (train.resume: auto continues from the saved state), or raise mlflow.outage_wait."
            )
