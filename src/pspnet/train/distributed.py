"""Data-parallel training with ``torchrun``: DDP, SyncBatchNorm, a sharded sampler.

``pspnet train`` runs distributed when ``torchrun`` (``torch.distributed.run``) starts it: each
process reads its rank from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``) and joins the process group, NCCL on CUDA
(one GPU per process, ``cuda:<LOCAL_RANK>``) and gloo on the CPU. Nothing here starts
processes: ``torchrun`` does (``train.nproc_per_node`` makes ``pspnet train`` call it), on one
node or many.

What changes with N processes:

- ``train.batch_size`` is per process: one optimizer step sees ``batch_size * N *
  accumulate_steps`` images. The samples of a step, their augmentation and their order are the
  ones a single process with ``batch_size * N`` would use: the epoch's order
  (:mod:`pspnet.train.sampling`) is split by :class:`torch.utils.data.DistributedSampler`, which
  hands rank ``r`` every ``N``-th position from ``r``, so each step's ``N`` per-rank batches
  together are the single process's batch;
- BatchNorm becomes :class:`torch.nn.SyncBatchNorm` (statistics over the whole step's batch,
  as the paper's multi-GPU training), and DDP averages the gradients: with SyncBN, two ranks x
  batch 2 compute the gradients of one process with batch 4;
- the loss each rank sees is averaged over the ranks before it is logged or checked, so every
  rank stops together on a non-finite loss;
- only rank 0 talks to MLflow and writes files (resume states, checkpoint, metrics); the
  others wait at a barrier where rank 0 writes what they may read.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

from pspnet.errors import ConfigError

log = logging.getLogger(__name__)

# CpuSyncBatchNorm uses torch.distributed.nn's differentiable all-reduce, which torch 2.13 marks
# deprecated in favour of a private module (torch.distributed._functional_collectives).
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated", category=FutureWarning)

#: Environment variables torchrun sets for every process.
RANK_ENV, WORLD_SIZE_ENV, LOCAL_RANK_ENV = "RANK", "WORLD_SIZE", "LOCAL_RANK"
#: The rank that logs and writes.
MAIN_RANK = 0
#: How long a collective may wait for the slowest rank before the run fails.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the run: ``world_size`` 1 is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == MAIN_RANK

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Distributed:
        """The process's place from torchrun's variables (absent: a single process)."""
        env = dict(os.environ if env is None else env)
        try:
            world = int(env.get(WORLD_SIZE_ENV, "1"))
            rank = int(env.get(RANK_ENV, "0"))
            local = int(env.get(LOCAL_RANK_ENV, "0"))
        except ValueError as err:
            raise ConfigError(f"torchrun's {RANK_ENV} / {WORLD_SIZE_ENV} / {LOCAL_RANK_ENV} are not integers: {err}") from None
        if not (world >= 1 and 0 <= rank < world and local >= 0):
            raise ConfigError(f"inconsistent torchrun environment: {RANK_ENV}={rank}, {WORLD_SIZE_ENV}={world}, {LOCAL_RANK_ENV}={local}.")
        return cls(rank=rank, world_size=world, local_rank=local)

    def device(self, device: torch.device) -> torch.device:
        """This process's device: ``cuda:<local rank>`` on CUDA, the CPU otherwise."""
        if device.type == "cuda" and self.enabled:
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"local rank {self.local_rank} has no GPU: this node has {torch.cuda.device_count()}. Start at most "
                    "one process per GPU (train.nproc_per_node, or torchrun --nproc_per_node)."
                )
            return torch.device("cuda", self.local_rank)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, gloo on the CPU); nothing for one process."""
        if not self.enabled or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        log.info("distributed: rank %d of %d (local rank %d), backend %s", self.rank, self.world_size, self.local_rank, backend)

    def stop(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        """``value`` averaged over the ranks (itself for one process)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item()) / self.world_size

    def largest(self, value: int, device: torch.device) -> int:
        """The largest of the ranks' ``value`` (itself for one process): e.g. a stop signal
        received by any rank, so that every rank stops after the same step."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=MAIN_RANK)
        return box[0]


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics span every rank's batch, for CPU (gloo) runs.

    PyTorch's :class:`torch.nn.SyncBatchNorm` runs on GPUs only (it refuses CPU tensors, and DDP
    refuses it on a CPU module), so a CPU process group would otherwise normalise each rank's
    batch alone. This module sums the per-channel count, sum and sum of squares over the ranks
    with the differentiable all-reduce of :mod:`torch.distributed.nn`, whose backward sums the
    gradients over the ranks as SyncBatchNorm's does: with DDP's gradient averaging the result
    is the gradient of the whole batch. Eval mode (and a frozen encoder's BN) uses the running
    statistics, like BatchNorm. Its state dict is BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N,C,H,W) -> (N,C,H,W), normalised with the statistics of every rank's batch."""
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        local = torch.cat([
            x.sum(dim=(0, 2, 3)),
            (x * x).sum(dim=(0, 2, 3)),
            x.new_full((1,), x.numel() / channels),
        ])
        total = all_reduce(local, op=dist.ReduceOp.SUM)
        count = total[-1]
        mean = total[:channels] / count
        var = total[channels : 2 * channels] / count - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum None: a cumulative average, as BatchNorm2d does.
                weight = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), weight)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), weight)
        shape = (1, channels, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` under ``module`` replaced by a :class:`CpuSyncBatchNorm` holding the
    same parameters and buffers (in place; returns the module, or the new one at the top)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        sync = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        # The very same parameters and buffers: an optimizer built before still holds them.
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, convert_cpu_sync_batchnorm(child))
    return module


def wrap_model(model: nn.Module, ctx: Distributed, device: torch.device) -> nn.Module:
    """Synchronised BatchNorm + DistributedDataParallel around ``model`` (``model`` itself for
    one process): PyTorch's SyncBatchNorm on CUDA, :class:`CpuSyncBatchNorm` on the CPU.

    Convert before wrapping, as PyTorch requires; the returned module's ``.module`` is the
    PSPNet whose weights are saved.
    """
    if not ctx.enabled:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        model = convert_cpu_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    # The aux head is unused in no step (training mode always returns it); frozen encoder
    # parameters have requires_grad False, which DDP skips by itself.
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The PSPNet inside a DDP wrapper (or ``model``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ShardedSampler(Sampler[Any]):
    """This rank's share of another sampler's items, split by :class:`DistributedSampler`.

    The items of one epoch (from ``inner``, e.g. :class:`~pspnet.train.sampling.EpochSampler`)
    are listed, then :class:`DistributedSampler` (no shuffle: the order is ``inner``'s, with
    ``drop_last``) picks this rank's positions: every ``world_size``-th from ``rank``. Batch
    ``k`` of every rank together hold positions ``k * B * N ...`` of the list, the batch a
    single process with ``B * N`` would take. ``set_epoch`` is passed on to ``inner``.
    """

    def __init__(self, inner: Any, ctx: Distributed) -> None:
        self.inner = inner
        self.ctx = ctx

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.inner.set_epoch(epoch, start)

    def _shard(self) -> tuple[list[Any], DistributedSampler]:
        items = list(self.inner)
        split = DistributedSampler(items, num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=False, drop_last=True)
        return items, split

    def __iter__(self) -> Iterator[Any]:
        items, split = self._shard()
        for position in split:
            yield items[position]

    def __len__(self) -> int:
        return len(self.inner) // self.ctx.world_size


#: ``torchrun`` is this module (``python -m torch.distributed.run``).
TORCHRUN_MODULE = "torch.distributed.run"


def torchrun_command(nproc: int, params_file: Path, root: Path) -> list[str]:
    """The command that runs ``pspnet train`` as ``nproc`` processes on this machine
    (torchrun's standalone rendezvous: a free local port, no other node)."""
    return [
        sys.executable, "-m", TORCHRUN_MODULE, "--standalone", f"--nproc_per_node={nproc}",
        "-m", "pspnet", "train", "--params", str(params_file), "--root", str(root),
    ]  # fmt: skip
