"""One training step's gradients, run by ``tests/train/test_distributed.py``: under ``torchrun``
(N processes, gloo) through :mod:`pspnet.train.distributed`, or as one plain process.

``python tests/train/ddp_step.py OUT BATCH [cpu|cuda]``: every rank takes its share (``ShardedSampler``
over an ``EpochSampler``) of the epoch's first global batch of ``BATCH * world_size`` samples,
runs forward + the library's deep-supervised loss + backward, and rank 0 writes the gradients
(and the logged loss, averaged over the ranks) to ``OUT`` with ``torch.save``. With ``cuda``
every rank uses GPU 0 over gloo (NCCL refuses two ranks on one GPU), so one GPU checks the
CUDA path: PyTorch's SyncBatchNorm under DDP.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from pspnet.config import ModelConfig
from pspnet.model.pspnet import build_model
from pspnet.train.distributed import Distributed, ShardedSampler, unwrap, wrap_model
from pspnet.train.loss import SegmentationCriterion
from pspnet.train.sampling import EpochSampler

SAMPLES, CLASSES, SIDE, SEED = 8, 3, 33, 0
#: Dropout off: its masks are per-process random numbers, the only thing ranks cannot share.
MODEL = ModelConfig(encoder="resnet18", dropout=0.0)


def main(out: str, batch: int, device_name: str = "cpu") -> None:
    ctx = Distributed.from_env()
    device = torch.device(device_name, 0) if device_name == "cuda" else torch.device("cpu")
    if device.type == "cuda":  # an exact check: no TF32 rounding
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if device.type == "cuda" and ctx.enabled:
        torch.cuda.set_device(device)
        dist.init_process_group("gloo")
    ctx.start(device)
    data = torch.Generator().manual_seed(SEED)
    images = torch.randn(SAMPLES, 3, SIDE, SIDE, generator=data).to(device)
    masks = torch.randint(0, CLASSES, (SAMPLES, SIDE, SIDE), generator=data).to(device)  # no ignore pixels
    torch.manual_seed(SEED)
    model = wrap_model(build_model(MODEL, CLASSES).to(device), ctx, device).train()
    criterion = SegmentationCriterion(MODEL.aux_weight)

    sampler = ShardedSampler(EpochSampler(SAMPLES, SEED), ctx)
    sampler.set_epoch(1)
    mine = [index for index, _ in sampler][:batch]
    loss = criterion(model(images[mine]), masks[mine])
    loss.backward()
    logged = ctx.mean(float(loss.detach()), device)
    if ctx.is_main:
        grads = {name: p.grad.detach().cpu().clone() for name, p in unwrap(model).named_parameters() if p.grad is not None}
        torch.save({"grads": grads, "loss": logged, "indices": mine, "world_size": ctx.world_size}, out)
    ctx.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])
