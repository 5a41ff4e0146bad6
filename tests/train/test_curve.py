"""The learning curve and weight averaging (:mod:`pspnet.train.curve`, ``train.ema_decay``).

- Points every ``curve_every_n_epochs`` epochs and after the last, on every curve split the
  data holds, against training minutes; scoring them leaves the trained weights unchanged.
- With EMA the saved model is the average, each point scores it and the raw weights, and a
  stopped run resumes to the same average as one that was never stopped.
"""

from __future__ import annotations

import csv
import io
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from pspnet.data.manifest import MANIFEST_FILE, read_manifest, write_manifest
from pspnet.train.curve import CurvePoint, curve_csv, curve_due, evenly_spaced
from pspnet.train.signals import StopRequest, TrainingInterrupted
from tests.train.test_trainer import Recorder, _params, _trainer
from tests.train.tinydata import write_prepared


class CurveRecorder(Recorder):
    def curve_point(self, point: CurvePoint) -> None:
        self.calls.append(("curve_point", point.epoch, dict(point.miou)))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """8 train, 2 val and 3 holdout samples (and no test split: a curve split the data lacks)."""
    root = tmp_path / "project"
    prepared = root / "data" / "prepared"
    write_prepared(prepared, n_train=8, n_val=5, height=32, width=40)
    rows = read_manifest(prepared / MANIFEST_FILE)
    rows.loc[rows["id"].isin(["val_002", "val_003", "val_004"]), "split"] = "holdout"
    write_manifest(prepared / MANIFEST_FILE, pd.DataFrame(rows))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return root


def test_points_are_spread_evenly_and_fall_on_the_schedule() -> None:
    assert evenly_spaced(101, 4) == [0, 33, 67, 100]
    assert evenly_spaced(3, 0) == [0, 1, 2] and evenly_spaced(3, 10) == [0, 1, 2]
    assert [e for e in range(1, 11) if curve_due(e, 10, 4)] == [4, 8, 10]
    assert not any(curve_due(e, 10, 0) for e in range(1, 11))


def test_the_curve_scores_each_split_and_leaves_training_unchanged(project: Path) -> None:
    plain = _trainer(project, _params(epochs=3))
    plain.fit(Recorder(), StopRequest())
    params = _params(epochs=3, curve_every_n_epochs=2, curve_images=2, curve_splits=["val", "holdout", "test"])
    traced = _trainer(project, params)
    assert {s: len(d) for s, d in traced.scorer.datasets.items()} == {"val": 2, "holdout": 2}
    events = CurveRecorder()
    traced.fit(events, StopRequest())

    points = [c for c in events.calls if c[0] == "curve_point"]
    assert [p[1] for p in points] == [2, 3]  # every 2 epochs, and the last
    assert all(set(p[2]) == {"val", "holdout"} and all(0 <= v <= 1 for v in p[2].values()) for p in points)
    assert [p.train_seconds for p in traced.curve] == pytest.approx(
        [sum(h.seconds for h in traced.history[:2]), traced.training_seconds]
    )
    rows = list(csv.DictReader(io.StringIO(curve_csv(traced.curve))))
    assert list(rows[0]) == ["epoch", "train_minutes", "val", "holdout"] and rows[1]["epoch"] == "3"
    for key, value in plain.model.state_dict().items():  # scoring drew no random numbers, changed no weights
        assert torch.equal(value, traced.model.state_dict()[key]), key


def test_ema_is_the_saved_model_scored_beside_the_raw_weights_and_resumes_exactly(project: Path) -> None:
    params = _params(epochs=2, ema_decay=0.5, curve_every_n_epochs=1, curve_images=1)
    whole = _trainer(project, params)
    whole.fit(CurveRecorder(), StopRequest())
    assert whole.final_model is whole.ema.module
    assert int(whole.ema.n_averaged) == whole.step == 4
    assert set(whole.curve[-1].miou) == {"val", "holdout", "val_raw", "holdout_raw"}
    raw, averaged = whole.model.state_dict(), whole.final_model.state_dict()
    assert any(not torch.equal(v, averaged[k]) for k, v in raw.items() if v.is_floating_point())

    stopped = _trainer(project, params)
    stop = StopRequest()
    stop.signum = int(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        _stop_after_step(stopped, stop, 3)
    resumed = _trainer(project, params)
    assert resumed.resumes == [3]
    resumed.fit(CurveRecorder(), StopRequest())
    for key, value in averaged.items():
        assert torch.equal(value, resumed.final_model.state_dict()[key]), key
    assert [p.epoch for p in resumed.curve] == [1, 2]


def _stop_after_step(trainer, stop: StopRequest, step: int) -> None:
    """Fit until ``step`` ends, then let the stop request act (as a SIGTERM there would)."""
    pending = StopRequest()
    original = trainer._stop_if_requested

    def stop_at(request: StopRequest, save, at) -> None:
        original(stop if at.global_step == step else pending, save, at)

    trainer._stop_if_requested = stop_at
    trainer.fit(CurveRecorder(), pending)
