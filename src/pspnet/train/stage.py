"""The ``train`` stage: train PSPNet on the prepared train split, track it in MLflow.

Writes (relative to the project root):
- ``models/checkpoint.pt``: weights + model config + class table (see :mod:`pspnet.model.checkpoint`);
- ``models/mlflow_run.json``: the :class:`~pspnet.registry.tracking.RunRef` that ``evaluate`` and
  ``register`` reopen;
- ``metrics/train.json``: final_loss, epochs, steps, seconds (the training loop's),
  seconds_per_step, images_per_second, device, amp (whether bfloat16 autocast ran);
- ``metrics/train_history.csv``: one row per epoch (epoch, step, loss, lr, seconds,
  images_per_second), rewritten after every epoch so a crashed run keeps its curve.

Recipe (see :mod:`pspnet.data.transforms`, :mod:`pspnet.train.optim`, :mod:`pspnet.train.loss`):
augmentation, SGD with two LR groups, poly schedule after an optional warm-up, the
deep-supervised loss with optional class weights (computed once from the train masks) and
OHEM, an optionally frozen encoder. One log line at the start summarises it.

MLflow: the store is checked first (a bad store fails before any training); the run gets
``run_tags`` (git commit, DVC experiment), every parameter (``params.to_flat_dict()``), the
class weights actually used (``train.class_weights_used``), the step loss / LR every
``train.log_every_n_steps`` steps (``step_loss`` is the mean over those
steps), per-epoch ``train_loss`` / ``lr`` / ``epoch_seconds`` / ``images_per_second``, and the
checkpoint and metric files as artifacts. The run ends FINISHED; ``evaluate`` reopens it.
"""

from __future__ import annotations

import csv
import io as _stdio
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pspnet import io
from pspnet.config import Params
from pspnet.data.classes import load_classes
from pspnet.data.dataset import SegmentationDataset
from pspnet.data.transforms import reseed, train_transform
from pspnet.device import resolve_device
from pspnet.errors import DataError
from pspnet.model.checkpoint import save_checkpoint
from pspnet.model.pspnet import build_model, count_parameters
from pspnet.registry.tracking import RUN_REF_FILE, RunRef, dataset_tags, run_tags, setup_mlflow
from pspnet.train.loop import EpochStats, train_one_epoch
from pspnet.train.loss import Ohem, SegmentationCriterion, format_weights, resolve_class_weights
from pspnet.train.optim import build_optimizer, build_scheduler, describe_groups, freeze_encoder

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
TRAIN_METRICS_FILE = "train.json"
HISTORY_FILE = "train_history.csv"
HISTORY_COLUMNS = ("epoch", "step", "loss", "lr", "seconds", "images_per_second")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) and make cuDNN pick deterministic kernels.

    Albumentations keeps its own generators: :func:`pspnet.data.transforms.train_transform`
    seeds them from ``train.seed``, and the loader's generator (:func:`make_train_loader`)
    fixes the shuffling and the per-worker seeds.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (CUDA with bf16, or oneDNN on a
    CPU with AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(setting: bool | str, device: torch.device) -> bool:
    """``train.amp`` -> whether to autocast to bfloat16 (``auto``: where it is fast)."""
    if setting == "auto":
        return bf16_is_fast(device)
    return bool(setting)


def _worker_init(worker_id: int) -> None:
    """Per-worker seeds derived from the loader's generator (so runs repeat, workers differ)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        reseed(getattr(info.dataset, "transform", None), seed)


def make_train_loader(dataset: SegmentationDataset, params: Params, device: torch.device) -> DataLoader:
    """Shuffled, seeded loader; the last incomplete batch is dropped (BatchNorm in the PPM's
    1x1 bin needs at least two images per batch)."""
    if len(dataset) < 2:
        raise DataError(f"the train split has {len(dataset)} sample(s); training needs at least 2.")
    t = params.train
    return DataLoader(
        dataset,
        batch_size=min(t.batch_size, len(dataset)),
        shuffle=True,
        drop_last=True,
        num_workers=t.num_workers,
        worker_init_fn=_worker_init if t.num_workers > 0 else None,
        generator=torch.Generator().manual_seed(t.seed),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _history_csv(rows: list[EpochStats]) -> str:
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for r in rows:
        writer.writerow([r.epoch, r.global_step, f"{r.loss:.6f}", f"{r.lr:.6g}", f"{r.seconds:.3f}", f"{r.images_per_second:.3f}"])
    return buf.getvalue()


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
    return (
        f"recipe: SGD momentum {t.momentum:g} wd {t.weight_decay:g} [{describe_groups(optimizer)}]; "
        f"poly power {t.poly_power:g} over {max_iter} iters, {warmup}; "
        f"loss {criterion.describe()}; encoder {'frozen (BN stats fixed)' if t.freeze_encoder else 'trained'}; "
        f"augmentation scale {list(t.scale_range)}, {rotate}, {blur}, hflip {'on' if t.hflip else 'off'}, "
        f"crop {t.crop_size[0]}x{t.crop_size[1]}"
    )


def train(params: Params, root: Path) -> dict[str, Any]:
    """Train PSPNet per ``params`` on ``root/params.paths.prepared`` (train split); see the module doc."""
    import mlflow

    root = Path(root)
    t = params.train
    experiment_id = setup_mlflow(params.mlflow, root)  # fail before training if the store is unusable

    prepared = root / params.paths.prepared
    classes = load_classes(prepared, params.data.ignore_index)
    seed_everything(t.seed)
    device = resolve_device(t.device)
    amp = resolve_amp(t.amp, device)
    dataset = SegmentationDataset(prepared, "train", train_transform(params))
    loader = make_train_loader(dataset, params, device)
    criterion = build_criterion(params, dataset, classes.num_classes, list(classes.names)).to(device)
    model = build_model(params.model, classes.num_classes).to(device)
    frozen: list[torch.nn.Module] = []
    if t.freeze_encoder:
        freeze_encoder(model)
        frozen = [model.encoder]
        if params.model.encoder_weights == "none":
            log.warning("train.freeze_encoder with model.encoder_weights none: the encoder stays at its random initialisation")
    optimizer = build_optimizer(model, t)
    steps_per_epoch = len(loader)
    max_iter = t.epochs * steps_per_epoch
    if t.warmup_iters >= max_iter:
        log.warning("train.warmup_iters (%d) >= the %d training iterations: the warm-up never ends", t.warmup_iters, max_iter)
    scheduler = build_scheduler(optimizer, max_iter, t.poly_power, t.warmup_iters, t.warmup_ratio)
    weights = criterion.class_weights

    models_dir = root / params.paths.models
    metrics_dir = root / params.paths.metrics
    checkpoint_path = models_dir / CHECKPOINT_FILE
    history: list[EpochStats] = []
    window: list[float] = []

    with mlflow.start_run(experiment_id=experiment_id, tags=run_tags(root) | dataset_tags(prepared)) as run:
        mlflow.log_params(params.to_flat_dict())
        mlflow.log_params(
            {
                "data.num_classes": classes.num_classes,
                "data.train_samples": len(dataset),
                "train.steps_per_epoch": steps_per_epoch,
                "train.device_used": str(device),
                "train.amp_used": amp,
                "model.num_parameters": count_parameters(model),
                "model.trainable_parameters": count_parameters(model, trainable_only=True),
                "train.class_weights_used": "none" if weights is None else format_weights(weights.tolist()),
            }
        )

        def on_step(step: int, loss: float, lr: float) -> None:
            window.append(loss)
            if step % t.log_every_n_steps == 0:
                mlflow.log_metrics({"step_loss": sum(window) / len(window), "step_lr": lr}, step=step)
                window.clear()

        step = 0
        log.info(
            "training %s on %s (bfloat16 autocast %s): %d images, %d steps/epoch, %d epochs",
            params.model.encoder, device, "on" if amp else "off", len(dataset), steps_per_epoch, t.epochs,
        )
        log.info("%s", describe_recipe(params, optimizer, criterion, max_iter))
        for epoch in range(1, t.epochs + 1):
            stats = train_one_epoch(
                model,
                loader,
                optimizer,
                scheduler,
                device=device,
                criterion=criterion,
                frozen=frozen,
                epoch=epoch,
                epochs=t.epochs,
                global_step=step,
                on_step=on_step,
                amp=amp,
            )
            step = stats.global_step
            history.append(stats)
            log.info(
                "epoch %d/%d: loss %.4f, lr %.3g, %.1f s (%.1f images/s)",
                epoch, t.epochs, stats.loss, stats.lr, stats.seconds, stats.images_per_second,
            )
            mlflow.log_metrics(
                {
                    "train_loss": stats.loss,
                    "lr": stats.lr,
                    "epoch_seconds": stats.seconds,
                    "images_per_second": stats.images_per_second,
                },
                step=epoch,
            )
            io.write_text(metrics_dir / HISTORY_FILE, _history_csv(history))

        seconds = sum(h.seconds for h in history)
        images = sum(h.images for h in history)
        summary = {
            "final_loss": history[-1].loss,
            "epochs": t.epochs,
            "steps": step,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / max(step, 1), 4),
            "images_per_second": round(images / seconds, 3) if seconds > 0 else 0.0,
            "device": str(device),
            "amp": amp,
        }
        meta = {
            "class_names": list(classes.names),
            "class_colors": [list(c) for c in classes.colors],
            "ignore_index": classes.ignore_index,
            "epoch": t.epochs,
            "step": step,
            "final_loss": summary["final_loss"],
            "mlflow_run_id": run.info.run_id,
        }
        save_checkpoint(checkpoint_path, model, params.model, classes.num_classes, meta)
        io.write_json(metrics_dir / TRAIN_METRICS_FILE, summary)
        mlflow.log_metrics({"final_loss": summary["final_loss"], "train_seconds": seconds})
        mlflow.log_artifact(str(checkpoint_path), artifact_path="checkpoint")
        mlflow.log_artifact(str(metrics_dir / TRAIN_METRICS_FILE), artifact_path="metrics")
        mlflow.log_artifact(str(metrics_dir / HISTORY_FILE), artifact_path="metrics")
        ref = RunRef(run_id=run.info.run_id, experiment_id=experiment_id, tracking_uri=mlflow.get_tracking_uri())
        ref.save(models_dir / RUN_REF_FILE)

    return {
        **summary,
        "run_id": ref.run_id,
        "checkpoint": str(checkpoint_path.relative_to(root)) if checkpoint_path.is_relative_to(root) else str(checkpoint_path),
    }
