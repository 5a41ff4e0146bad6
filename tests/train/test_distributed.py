"""Distributed data-parallel training on the CPU (gloo), launched by the real ``torchrun``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pspnet.train.distributed import Distributed, ShardedSampler
from pspnet.train.sampling import EpochSampler

STEP_SCRIPT = Path(__file__).with_name("ddp_step.py")
REPO = Path(__file__).resolve().parents[2]
#: Gradients of 2 ranks x 2 (SyncBN, DDP averaging) vs one process x 4: float reduction order only.
ATOL, RTOL = 1e-5, 1e-4


def _run(args: list[str]) -> None:
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.integration  # the real torchrun, 2 processes
def test_two_ranks_of_batch_2_compute_the_gradients_of_one_process_of_batch_4(tmp_path: Path) -> None:
    _run([sys.executable, str(STEP_SCRIPT), str(tmp_path / "single.pt"), "4"])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(STEP_SCRIPT), str(tmp_path / "ddp.pt"), "2"])

    single = torch.load(tmp_path / "single.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert single["grads"].keys() == ddp["grads"].keys() and len(single["grads"]) > 50  # BN included
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ddp["grads"][name], grad, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
    assert abs(ddp["loss"] - single["loss"]) < 1e-5


def test_sharded_sampler_splits_each_global_batch_across_ranks() -> None:
    """Rank r takes every N-th position from r; together, each step's per-rank batches are the
    batch one process with B * N takes, with the same augmentation seeds, resume offset included."""
    size, batch, world = 21, 2, 3
    single = EpochSampler(size, seed=5)
    single.set_epoch(2, start=batch * world)  # resuming after one global step
    expected = list(single)
    shards = []
    for rank in range(world):
        sampler = ShardedSampler(EpochSampler(size, seed=5), Distributed(rank=rank, world_size=world))
        sampler.set_epoch(2, start=batch * world)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1]) == (size - batch * world) // world
    for step in range(len(shards[0]) // batch):
        together = {pair for shard in shards for pair in shard[step * batch : (step + 1) * batch]}
        assert together == set(expected[step * batch * world : (step + 1) * batch * world])


@pytest.mark.integration  # the real torchrun, 2 processes
def test_the_train_stage_runs_distributed_end_to_end(project: Path, tmp_path: Path) -> None:
    """``train.nproc_per_node: 2``: ``pspnet train`` starts torchrun with 2 gloo processes. Rank 0
    alone logs one MLflow run and writes the outputs; the run trains the weights a single
    process with the same effective batch trains (SyncBN, sharded sampler, same augmentation)."""
    from mlflow.tracking import MlflowClient

    from pspnet.config import parse_params
    from pspnet.model.checkpoint import load_checkpoint
    from pspnet.stages import train as train_stage

    raw = {
        "model": {"encoder": "resnet18", "head_channels": 32, "aux_channels": 16, "dropout": 0.0},
        # Every image keeps the same number of labelled pixels (no rescaling or rotation, the crop
        # is the image): each rank's mean loss then weighs as the single process's mean does.
        "train": {"epochs": 2, "batch_size": 2, "crop_size": [32, 40], "scale_range": [1.0, 1.0], "rotate_degrees": 0, "lr": 0.01,
                  "log_every_n_steps": 1, "device": "cpu", "precision": "fp32", "nproc_per_node": 2},
        "mlflow": {"experiment_name": "ddp"},
    }
    summary = train_stage.run(parse_params(raw), project)

    assert summary["processes"] == 2 and summary["effective_batch_size"] == 4
    assert summary["steps"] == 4  # 8 images / (2 processes x 2) = 2 steps x 2 epochs
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]
    assert runs[0].data.params["train.processes"] == "2"
    assert len(client.get_metric_history(summary["run_id"], "step_loss")) == 4
    distributed = load_checkpoint(project / "models" / "checkpoint.pt").model.state_dict()
    assert not (project / "models" / "train_state").exists() or not any((project / "models" / "train_state").iterdir())

    raw["train"] |= {"nproc_per_node": 1, "batch_size": 4}
    raw["mlflow"]["experiment_name"] = "single"
    train_stage.run(parse_params(raw), project)
    single = load_checkpoint(project / "models" / "checkpoint.pt").model.state_dict()
    for name, value in single.items():
        if value.is_floating_point():
            torch.testing.assert_close(distributed[name], value, atol=1e-3, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
