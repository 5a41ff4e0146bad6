"""The training recipe's parts built from ``params``: seeding, the train loader, the loss, and
the one-line summary logged at the start (augmentation: :mod:`pspnet.data.transforms`; SGD and
schedule: :mod:`pspnet.train.optim`; loss: :mod:`pspnet.train.loss`)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from pspnet.config import Params
from pspnet.data.dataset import SegmentationDataset
from pspnet.errors import DataError
from pspnet.train.accel import loader_options
from pspnet.train.distributed import Distributed, ShardedSampler
from pspnet.train.loss import Ohem, SegmentationCriterion, resolve_class_weights
from pspnet.train.optim import describe_groups
from pspnet.train.sampling import EpochSampler, SeededSamples
from pspnet.train.signals import ignore_stop_signals

#: NumPy and the per-worker seeds take 32-bit seeds.
SEED_MODULUS = 2**32
#: BatchNorm in the pyramid's 1x1 bin needs at least this many images per batch (and process).
MIN_BATCH = 2


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) and make cuDNN pick deterministic kernels.

    Albumentations keeps its own generators and the loader its own order: both are functions
    of ``train.seed`` and the position in training (:mod:`pspnet.train.sampling`).
    """
    random.seed(seed)
    np.random.seed(seed % SEED_MODULUS)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _worker_init(worker_id: int) -> None:
    """Per-worker global seeds (the augmentation is reseeded per sample: :mod:`pspnet.train.sampling`);
    workers leave SIGTERM / SIGINT to the main process, which saves a resume checkpoint first."""
    ignore_stop_signals()
    seed = torch.initial_seed() % SEED_MODULUS
    random.seed(seed)
    np.random.seed(seed)


def make_train_loader(
    dataset: SegmentationDataset, params: Params, device: torch.device, ctx: Distributed = Distributed()
) -> DataLoader:
    """The train loader: shuffled per epoch from ``(train.seed, epoch)`` and each sample
    augmented from ``(train.seed, epoch, position)`` (call ``loader.sampler.set_epoch(epoch,
    start)`` before each epoch). One batch is one optimizer step: ``batch_size *
    accumulate_steps`` images per process; the last incomplete batch is dropped."""
    if len(dataset) < MIN_BATCH * ctx.world_size:
        raise DataError(
            f"the train split has {len(dataset)} sample(s); training needs at least {MIN_BATCH}"
            f"{f' per process ({ctx.world_size} processes)' if ctx.enabled else ''}."
        )
    t = params.train
    order = EpochSampler(len(dataset), t.seed)
    return DataLoader(
        SeededSamples(dataset),
        batch_size=min(t.batch_size * t.accumulate_steps, len(dataset) // ctx.world_size),
        sampler=ShardedSampler(order, ctx) if ctx.enabled else order,
        drop_last=True,
        num_workers=t.num_workers,
        worker_init_fn=_worker_init if t.num_workers > 0 else None,
        # The loader's own generator (worker base seeds): the global torch RNG is left to dropout.
        generator=torch.Generator().manual_seed(t.seed),
        **loader_options(t.num_workers, device),
    )


def build_criterion(params: Params, dataset: SegmentationDataset, num_classes: int, class_names: list[str]) -> SegmentationCriterion:
    """The loss ``train.*`` asks for; class weights from ``dataset``'s masks when computed."""
    t = params.train
    weights = resolve_class_weights(t.class_weights, num_classes, dataset.mask_paths, class_names)
    return SegmentationCriterion(
        aux_weight=params.model.aux_weight,
        ignore_index=params.data.ignore_index,
        class_weights=weights,
        ohem=Ohem(t.ohem_thresh, t.ohem_min_kept) if t.ohem else None,
    )


def describe_recipe(params: Params, optimizer: torch.optim.Optimizer, criterion: SegmentationCriterion, max_iter: int) -> str:
    """The one-line summary of the training recipe logged at the start."""
    t = params.train
    warmup = f"{t.warmup_iters} warm-up iters from x{t.warmup_ratio:g}" if t.warmup_iters > 0 else "no warm-up"
    rotate = f"rotate +-{t.rotate_degrees:g} deg p={t.rotate_p:g}" if t.rotate_degrees > 0 and t.rotate_p > 0 else "no rotation"
    blur = f"blur p={t.blur_p:g}" if t.blur_p > 0 else "no blur"
    batch = f"batch {t.batch_size}" + (
        f" x {t.accumulate_steps} accumulated = {t.batch_size * t.accumulate_steps}" if t.accumulate_steps > 1 else ""
    )
    return (
        f"recipe: {batch}; SGD momentum {t.momentum:g} wd {t.weight_decay:g} [{describe_groups(optimizer)}]; "
        f"poly power {t.poly_power:g} over {max_iter} iters, {warmup}; "
        f"loss {criterion.describe()}; encoder {'frozen (BN stats fixed)' if t.freeze_encoder else 'trained'}; "
        f"augmentation scale {list(t.scale_range)}, {rotate}, {blur}, hflip {'on' if t.hflip else 'off'}, "
        f"crop {t.crop_size[0]}x{t.crop_size[1]}"
    )
