"""Crash-safe training: resume checkpoints, SIGKILL / SIGTERM mid-epoch, divergence.

The kill tests run the real ``pspnet train`` command in subprocesses on a tiny prepared
dataset and compare the final weights with an uninterrupted run bit for bit (CPU).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pspnet.config import parse_params
from pspnet.errors import PspnetError
from pspnet.model.checkpoint import load_checkpoint
from pspnet.stages import train as train_stage
from pspnet.train.resume import STATE_DIR, StateStore
from tests.train.tinydata import write_prepared

PARAMS = {
    "model": {"encoder": "resnet18", "head_channels": 16, "aux_channels": 8, "ppm_channels": 8},
    "train": {
        "epochs": 8,
        "batch_size": 2,
        "crop_size": [32, 40],
        "scale_range": [0.8, 1.2],
        "lr": 0.01,
        "log_every_n_steps": 1,
        "device": "cpu",
        "precision": "fp32",
        "checkpoint_every_n_steps": 3,
        "keep_checkpoints": 2,
    },
    "mlflow": {"experiment_name": "resume"},
}
STEPS_PER_EPOCH = 4  # 8 train images, batch 2
TOTAL_STEPS = 8 * STEPS_PER_EPOCH
#: Seconds a subprocess may take before the test gives up on it (a hang, not a timing target).
PROCESS_LIMIT = 600


def _project(tmp_path: Path, name: str, train: dict | None = None) -> Path:
    root = tmp_path / name
    write_prepared(root / "data" / "prepared", n_train=8, n_val=2, height=32, width=40)
    raw = json.loads(json.dumps(PARAMS))
    raw["train"].update(train or {})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["PSPNET_LOG_LEVEL"] = "WARNING"
    return env


def _start(root: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pspnet", "train", "--root", str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=PROCESS_LIMIT)
    return process.returncode, out, err


def _saved_steps(root: Path) -> list[int]:
    return [int(p.name[5:-3]) for p in StateStore(root / "models" / STATE_DIR, 2).files()]


def _wait_for_state(process: subprocess.Popen[str], root: Path, ready: object) -> int:
    """Poll until a resume checkpoint satisfying ``ready(step)`` exists; return its step."""
    deadline = time.monotonic() + PROCESS_LIMIT
    while time.monotonic() < deadline:
        steps = [s for s in _saved_steps(root) if ready(s)]  # type: ignore[operator]
        if steps:
            return max(steps)
        if process.poll() is not None:
            pytest.fail(f"training ended (exit {process.returncode}) before the checkpoint: {process.stderr.read()}")
        time.sleep(0.01)
    pytest.fail("no resume checkpoint appeared")


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(root / "models" / "checkpoint.pt").model.state_dict()


def _losses(root: Path) -> list[str]:
    with (root / "metrics" / "train_history.csv").open() as f:
        return [row["loss"] for row in csv.DictReader(f)]


@pytest.mark.integration  # real `pspnet train` processes, killed and resumed
def test_sigkill_then_sigterm_mid_epoch_resume_to_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    env = _env(tmp_path)
    reference = _project(tmp_path, "reference")
    code, _, err = _finish(_start(reference, env))
    assert code == 0, err
    assert not (reference / "models" / STATE_DIR).exists()  # removed once training finished

    root = _project(tmp_path, "interrupted")
    # 1. SIGKILL right after a mid-epoch checkpoint (step 6 = epoch 2, batch 2 of 4).
    process = _start(root, env)
    killed_after = _wait_for_state(process, root, lambda s: s >= 6)
    process.send_signal(signal.SIGKILL)
    code, _, _ = _finish(process)
    assert code == -signal.SIGKILL
    assert not (root / "models" / "checkpoint.pt").exists()
    resumable = max(_saved_steps(root))
    assert resumable >= killed_after and resumable < TOTAL_STEPS

    # 2. Resume, then SIGTERM once it has saved a later checkpoint: it saves and exits cleanly.
    process = _start(root, env)
    _wait_for_state(process, root, lambda s: s > resumable)
    process.send_signal(signal.SIGTERM)
    code, _, err = _finish(process)
    if code == 0:
        pytest.fail("the run finished before SIGTERM arrived; make the run longer")
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "dvc repro" in err
    assert "Traceback" not in err
    stopped_at = max(_saved_steps(root))
    assert resumable < stopped_at < TOTAL_STEPS
    assert not list((root / "models" / STATE_DIR).glob(".*")), "a half-written checkpoint was left"

    # 3. Resume to the end: same weights and same loss curve as the uninterrupted run.
    code, out, err = _finish(_start(root, env))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["resumed_from_steps"] == [resumable, stopped_at]
    assert summary["steps"] == TOTAL_STEPS
    expected, actual = _weights(reference), _weights(root)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{key} differs from the uninterrupted run"
    assert _losses(root) == _losses(reference)
    assert not (root / "models" / STATE_DIR).exists()

    # One MLflow run for the whole interrupted training, finished, tagged with its resumes.
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_steps"] == f"{resumable},{stopped_at}"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 8


# --------------------------------------------------------------------------------------------
# In-process behaviour (fast)
# --------------------------------------------------------------------------------------------


def _params(**train: object):
    raw = json.loads(json.dumps(PARAMS))
    raw["train"].update({"epochs": 2, **train})
    return parse_params(raw)


def _leave_states(root: Path, params_kwargs: dict, tmp_path: Path) -> list[Path]:
    """Run a full training with the finished-run cleanup undone, leaving its resume states."""
    keep = tmp_path / "kept_states"
    original = StateStore.clear

    def clear_but_copy(self: StateStore) -> None:
        if self.directory.is_dir() and self.files():
            shutil.copytree(self.directory, keep, dirs_exist_ok=True)
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StateStore, "clear", clear_but_copy)
        train_stage.run(_params(**params_kwargs), root)
    shutil.copytree(keep, root / "models" / STATE_DIR, dirs_exist_ok=True)
    return StateStore(root / "models" / STATE_DIR, 2).files()


def test_a_state_of_other_settings_is_not_resumed(project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    states = _leave_states(project, {"lr": 0.02}, tmp_path)
    assert states, "the run saved resume checkpoints"
    summary = train_stage.run(_params(), project)  # lr 0.01: another configuration
    assert summary["resumed_from_steps"] == []
    assert summary["steps"] == 2 * STEPS_PER_EPOCH
    assert "train.lr" in caplog.text and "starts from scratch" in caplog.text
    assert not (project / "models" / STATE_DIR).exists()


def test_an_unreadable_newest_state_falls_back_to_the_one_before(project: Path, tmp_path: Path) -> None:
    newest, previous = _leave_states(project, {}, tmp_path)[:2]
    newest.write_bytes(b"not a checkpoint")
    summary = train_stage.run(_params(), project)
    step = int(previous.name[5:-3])
    assert summary["resumed_from_steps"] == [step]


def test_resume_never_starts_from_scratch(project: Path, tmp_path: Path) -> None:
    _leave_states(project, {}, tmp_path)
    summary = train_stage.run(_params(resume="never"), project)
    assert summary["resumed_from_steps"] == []


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(project: Path) -> None:
    (project / "models").mkdir(parents=True)
    (project / "models" / "checkpoint.pt").write_bytes(b"previous model")
    params = _params(lr=1e6, head_lr_multiplier=1e3, epochs=5, checkpoint_every_n_steps=1)
    with pytest.raises(PspnetError, match="diverged") as caught:
        train_stage.run(params, project)
    message = str(caught.value)
    assert "last good resume checkpoint is kept" in message
    states = StateStore(project / "models" / STATE_DIR, 2).files()
    assert states and str(states[0]) in message
    state = torch.load(states[0], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The previous model was not overwritten by a diverged one.
    assert (project / "models" / "checkpoint.pt").read_bytes() == b"previous model"
