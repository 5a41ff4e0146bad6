"""The domain trainer without MLflow: its reports go to the events it is given, a stop request
saves a resume checkpoint and stops after the step, and the summary describes the run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from pspnet.config import Params, parse_params
from pspnet.data.classes import load_classes
from pspnet.train.distributed import Distributed
from pspnet.train.loop import EpochStats
from pspnet.train.signals import SIGNAL_EXIT_BASE, StopRequest, TrainingInterrupted
from pspnet.train.trainer import Trainer, TrainingInputs

CPU = torch.device("cpu")


def _params(**train: object) -> Params:
    return parse_params({
        "model": {"encoder": "resnet18", "head_channels": 16, "aux_channels": 8, "ppm_channels": 8},
        "train": {"epochs": 2, "batch_size": 4, "crop_size": [32, 40], "lr": 0.01, "device": "cpu", "precision": "fp32",
                  "log_every_n_steps": 3, **train},
    })  # fmt: skip


def _trainer(project: Path, params: Params) -> Trainer:
    prepared = project / "data" / "prepared"
    inputs = TrainingInputs(prepared, load_classes(prepared, params.data.ignore_index), frozenset(), project / "states")
    return Trainer(params, inputs, Distributed(), CPU)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def first_step(self, seconds: float, global_step: int) -> None:
        self.calls.append(("first_step", global_step))

    def steps_logged(self, mean_loss: float, lr: float, global_step: int) -> None:
        self.calls.append(("steps_logged", global_step, mean_loss))

    def epoch_end(self, stats: EpochStats) -> None:
        self.calls.append(("epoch_end", stats.epoch))


def test_the_trainer_reports_through_its_events_and_summarises_the_run(project: Path) -> None:
    trainer = _trainer(project, _params())
    assert trainer.resumed_run_id is None and trainer.resolved_settings()["data.train_samples"] == 8
    events = Recorder()
    history = trainer.fit(events, StopRequest(), "run-1")

    assert [h.global_step for h in history] == [2, 4]  # 8 images, batch 4: 2 steps x 2 epochs
    names = [c[0] for c in events.calls]
    assert names == ["first_step", "epoch_end", "steps_logged", "epoch_end"]  # step 3 reports steps 1-3
    summary = trainer.summary()
    assert summary["steps"] == 4 and summary["epochs"] == 2 and summary["final_loss"] == history[-1].loss
    assert summary["resumed_from_steps"] == [] and summary["processes"] == 1


def test_a_stop_request_saves_the_state_and_stops_after_the_step(project: Path) -> None:
    trainer = _trainer(project, _params())
    stop = StopRequest()
    stop.signum = int(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at epoch 1, step 1") as caught:
        trainer.fit(Recorder(), stop, "run-2")
    assert caught.value.exit_code == SIGNAL_EXIT_BASE + signal.SIGTERM
    [state] = trainer.store.files()
    assert str(state) in str(caught.value)
    assert torch.load(state, weights_only=True)["mlflow_run_id"] == "run-2"

    resumed = _trainer(project, _params())  # the next session continues after step 1
    assert resumed.resumed_run_id == "run-2" and resumed.resumes == [1]


def test_a_final_model_trains_on_train_and_val_together(project: Path) -> None:
    trainer = _trainer(project, _params(splits=["train", "val"], epochs=1))
    assert len(trainer.dataset) == 10 and trainer.dataset.split == "train+val"  # 8 train + 2 val
    assert set(trainer.dataset.ids) == {f"train_{i:03d}" for i in range(8)} | {"val_000", "val_001"}
    assert trainer.resolved_settings()["data.train_samples"] == 10
