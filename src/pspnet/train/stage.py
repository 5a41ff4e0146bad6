"""The ``train`` stage: train PSPNet on the prepared train split, track it in MLflow.

Writes (relative to the project root):
- ``models/checkpoint.pt``: weights + model config + class table (see :mod:`pspnet.model.checkpoint`);
- ``models/mlflow_run.json``: the :class:`~pspnet.tracking.runs.RunRef` that ``evaluate`` and
  ``register`` reopen;
- ``metrics/train.json``: final_loss, epochs, steps (optimizer steps), seconds (the training
  loop's), seconds_per_step, images_per_second, device, precision (fp32 / bf16 / fp16 as
  used), amp (whether mixed precision ran), effective_batch_size, channels_last, compiled,
  first_step_seconds (includes the compilation when ``train.compile``);
- ``metrics/train_history.csv``: one row per epoch (epoch, step, loss, lr, seconds,
  images_per_second);
- ``models/train_state/step-<N>.pt``: resume checkpoints (the whole training state) every
  ``train.checkpoint_every_n_steps`` steps and on SIGTERM / SIGINT; removed once training
  finishes (see :mod:`pspnet.train.resume`).

Crash safety: the outputs above are written only when training finishes, each atomically, so
a failed or interrupted run leaves the previous outputs untouched (its curve is in MLflow,
logged live). ``train.resume: auto`` continues an interrupted run from its newest resume
checkpoint, bit for bit on the CPU: same batches, augmentations, dropout masks and schedule.
A non-finite loss stops training before that step touches the weights, keeping the last good
resume checkpoint; a stop signal saves one and exits with code 128 + signal number.

Recipe (see :mod:`pspnet.data.transforms`, :mod:`pspnet.train.optim`, :mod:`pspnet.train.loss`):
augmentation, SGD with two LR groups, poly schedule after an optional warm-up, the
deep-supervised loss with optional class weights (computed once from the train masks) and
OHEM, an optionally frozen encoder. One log line at the start summarises it.

How it runs (:mod:`pspnet.train.accel`): ``train.precision``, ``train.channels_last``,
``train.compile``, ``train.cudnn_benchmark``, ``train.grad_checkpoint`` and
``train.accumulate_steps`` (the loader yields ``batch_size * accumulate_steps`` images per
optimizer step, split into micro-batches by the loop); pinned memory and non-blocking copies on
CUDA, persistent loader workers.

MLflow: the store is checked first (a bad store fails before any training); the run gets
``run_tags`` (git commit, DVC experiment), every parameter (``params.to_flat_dict()``), the
class weights actually used (``train.class_weights_used``), the step loss / LR every
``train.log_every_n_steps`` steps (``step_loss`` is the mean over those
steps), per-epoch ``train_loss`` / ``lr`` / ``epoch_seconds`` / ``images_per_second``, and the
checkpoint and metric files as artifacts. The run ends FINISHED; ``evaluate`` reopens it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import random
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pspnet import atomic_files
from pspnet.config import Params
from pspnet.data.classes import load_classes
from pspnet.data.dataset import SegmentationDataset
from pspnet.data.manifest import load_dataset_record
from pspnet.data.quarantine import effective_version, excluded_ids
from pspnet.layout import Layout
from pspnet.data.transforms import train_transform
from pspnet.device import resolve_device
from pspnet.errors import DataError, PspnetError
from pspnet.model.checkpoint import save_checkpoint
from pspnet.model.pspnet import build_model, count_parameters
from pspnet.tracking.runs import RUN_REF_FILE, RunRef, dataset_tags, run_tags
from pspnet.tracking.store import setup_mlflow
from pspnet.train.accel import (
    checkpoint_blocks,
    compile_model,
    configure_cudnn,
    loader_options,
    make_scaler,
    memory_format,
    resolve_channels_last,
    resolve_precision,
)
from pspnet.train.distributed import Distributed, ShardedSampler, torchrun_command, wrap_model
from pspnet.train.loop import EpochProgress, EpochStats, TrainingDiverged, train_one_epoch
from pspnet.train.resume import STATE_DIR, SavedState, StateStore, capture_rng, fingerprint, fingerprint_fields, restore_rng
from pspnet.train.sampling import EpochSampler, SeededSamples
from pspnet.train.signals import SIGNAL_EXIT_BASE, StopRequest, TrainingInterrupted, ignore_stop_signals, stop_requests
from pspnet.train.loss import Ohem, SegmentationCriterion, format_weights, resolve_class_weights
from pspnet.train.optim import build_optimizer, build_scheduler, describe_groups, freeze_encoder

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
TRAIN_METRICS_FILE = "train.json"
HISTORY_FILE = "train_history.csv"
HISTORY_COLUMNS = ("epoch", "step", "loss", "lr", "seconds", "images_per_second")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) and make cuDNN pick deterministic kernels.

    Albumentations keeps its own generators and the loader its own order: both are functions
    of ``train.seed`` and the position in training (:mod:`pspnet.train.sampling`).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _worker_init(worker_id: int) -> None:
    """Per-worker global seeds (the augmentation is reseeded per sample: :mod:`pspnet.train.sampling`);
    workers leave SIGTERM / SIGINT to the main process, which saves a resume checkpoint first."""
    ignore_stop_signals()
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_train_loader(
    dataset: SegmentationDataset, params: Params, device: torch.device, ctx: Distributed = Distributed()
) -> DataLoader:
    """The train loader: shuffled per epoch from ``(train.seed, epoch)`` and each sample
    augmented from ``(train.seed, epoch, position)`` (:class:`~pspnet.train.sampling.EpochSampler`;
    call ``loader.sampler.set_epoch(epoch, start)`` before each epoch). One loader batch is one
    optimizer step: ``batch_size * accumulate_steps`` images, which the loop splits into
    micro-batches. The last incomplete batch is dropped (BatchNorm in the PPM's 1x1 bin needs
    at least two images per batch). Under data-parallel training each process takes its share
    of every step (:class:`~pspnet.train.distributed.ShardedSampler`): ``batch_size`` is per
    process."""
    if len(dataset) < 2 * ctx.world_size:
        raise DataError(
            f"the train split has {len(dataset)} sample(s); training needs at least 2"
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


def _history_csv(rows: list[EpochStats]) -> str:
    buf = io.StringIO()
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


def _data_version(prepared: Path) -> str | None:
    try:
        return load_dataset_record(prepared).get("version")
    except DataError:
        return None


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _open_run(saved: SavedState | None, experiment_id: str, tags: dict[str, str]) -> Any:
    """The MLflow run to log into: the interrupted run when resuming (if the store has it), else a new one."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = saved.payload.get("mlflow_run_id") if saved is not None else None
    if run_id:
        try:
            mlflow.MlflowClient().get_run(run_id)
            return mlflow.start_run(run_id=run_id)
        except MlflowException:
            log.warning("resume: MLflow run %s is not in this store; logging into a new run", run_id)
    return mlflow.start_run(experiment_id=experiment_id, tags=tags)


def _log_run_params(params: Params, run_id: str, extra: dict[str, Any]) -> None:
    """Every parameter, then what this run resolved (device, precision, sizes...)."""
    _log_params_once(run_id, params.to_flat_dict())
    _log_params_once(run_id, extra)


def _log_params_once(run_id: str, values: dict[str, Any]) -> None:
    """Log ``values`` as run params; a resumed run keeps its params and tags the changed ones."""
    import mlflow

    logged = mlflow.MlflowClient().get_run(run_id).data.params
    mlflow.log_params({k: v for k, v in values.items() if k not in logged})
    changed = {k: v for k, v in values.items() if k in logged and logged[k] != str(v)}
    if changed:
        mlflow.set_tags({f"resume.changed.{k}": str(v) for k, v in changed.items()})


def train(params: Params, root: Path) -> dict[str, Any]:
    """Train PSPNet per ``params`` on ``root/params.paths.prepared`` (train split); see the module doc.

    Under ``torchrun`` this process is one rank of a data-parallel run
    (:mod:`pspnet.train.distributed`); with ``train.nproc_per_node`` > 1 outside it, ``torchrun``
    is started with that many processes and rank 0's summary returned.
    """
    root = Path(root)
    ctx = Distributed.from_env()
    if params.train.nproc_per_node > 1 and not ctx.enabled:
        return _run_under_torchrun(params, root)
    # Rank 0 alone talks to MLflow: it fails before training if the store is unusable (torchrun
    # then stops the other ranks).
    experiment_id = setup_mlflow(params.mlflow, root) if ctx.is_main else ""
    device = ctx.device(resolve_device(params.train.device))
    ctx.start(device)
    try:
        return _train(params, root, ctx, device, experiment_id)
    finally:
        ctx.stop()


def _run_under_torchrun(params: Params, root: Path) -> dict[str, Any]:
    """``pspnet train`` as ``train.nproc_per_node`` processes under torchrun on this machine,
    with these very params (a temporary copy); returns the summary rank 0 wrote."""
    import json
    import subprocess
    import tempfile

    import yaml

    nproc = params.train.nproc_per_node
    with tempfile.TemporaryDirectory(prefix="pspnet-ddp-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        atomic_files.write_text(params_file, yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False))
        command = torchrun_command(nproc, params_file, root)
        log.info("train.nproc_per_node=%d: starting %s", nproc, " ".join(command))
        done = subprocess.run(command, cwd=root, check=False)
    if done.returncode > SIGNAL_EXIT_BASE:
        raise TrainingInterrupted(
            f"distributed training stopped by a signal (torchrun exit code {done.returncode}); rank 0 saved the "
            "training state. Run the train stage again to continue (train.resume: auto).",
            done.returncode - SIGNAL_EXIT_BASE,
        )
    if done.returncode != 0:
        raise PspnetError(
            f"distributed training ({nproc} processes under torchrun) failed with exit code {done.returncode}; "
            "the error is in the log above (torchrun names the failed rank)."
        )
    metrics = root / params.paths.metrics / TRAIN_METRICS_FILE
    ref = RunRef.load(root / params.paths.models / RUN_REF_FILE)
    return {**json.loads(metrics.read_text(encoding="utf-8")), "run_id": ref.run_id,
            "checkpoint": str(Path(params.paths.models) / CHECKPOINT_FILE)}


def _train(params: Params, root: Path, ctx: Distributed, device: torch.device, experiment_id: str) -> dict[str, Any]:
    """The training run of one process (rank ``ctx.rank``); only rank 0 logs and writes."""
    import mlflow

    t = params.train
    prepared = root / params.paths.prepared
    classes = load_classes(prepared, params.data.ignore_index)
    seed_everything(t.seed)
    configure_cudnn(device, t.cudnn_benchmark)
    precision = resolve_precision(t.precision, device)
    channels_last = resolve_channels_last(t.channels_last, device)
    quarantined = excluded_ids(Layout(root, params.paths).quarantine, params.validate_.quarantine)  # samples `validate` set aside
    dataset = SegmentationDataset(
        prepared, "train", train_transform(params), exclude=quarantined, max_image_pixels=params.data.max_image_pixels
    )
    loader = make_train_loader(dataset, params, device, ctx)
    global_batch = loader.batch_size * ctx.world_size  # images per optimizer step, all ranks
    criterion = build_criterion(params, dataset, classes.num_classes, list(classes.names)).to(device)
    model = build_model(params.model, classes.num_classes).to(device, memory_format=memory_format(channels_last))
    if t.grad_checkpoint:
        log.info("gradient checkpointing: %d encoder blocks recompute their activations in backward", checkpoint_blocks(model.encoder))
    frozen: list[torch.nn.Module] = []
    if t.freeze_encoder:
        freeze_encoder(model)
        frozen = [model.encoder]
        if params.model.encoder_weights == "none":
            log.warning("train.freeze_encoder with model.encoder_weights none: the encoder stays at its random initialisation")
    # SyncBatchNorm + DDP (one process: the model itself). The converted BatchNorms keep their
    # parameters, so `model` still holds the state and the optimizer its parameters.
    parallel = wrap_model(model, ctx, device)
    optimizer = build_optimizer(model, t)
    steps_per_epoch = len(loader)
    max_iter = t.epochs * steps_per_epoch
    if t.warmup_iters >= max_iter:
        log.warning("train.warmup_iters (%d) >= the %d training iterations: the warm-up never ends", t.warmup_iters, max_iter)
    scheduler = build_scheduler(optimizer, max_iter, t.poly_power, t.warmup_iters, t.warmup_ratio)
    scaler = make_scaler(precision, device)
    network = compile_model(parallel, t.compile, device)  # what the loop calls; `model` holds the state
    weights = criterion.class_weights

    models_dir = root / params.paths.models
    metrics_dir = root / params.paths.metrics
    checkpoint_path = models_dir / CHECKPOINT_FILE
    store = StateStore(models_dir / STATE_DIR, t.keep_checkpoints)
    if ctx.is_main:
        store.remove_partial_writes()
    ctx.barrier()  # every rank reads the states rank 0 left
    data_version = _data_version(prepared)
    fields = fingerprint_fields(params, dataset.ids, data_version, ctx.world_size)
    saved = store.latest(fields) if t.resume == "auto" else None
    ctx.barrier()
    if saved is None and ctx.is_main:
        store.clear()  # states of another configuration (or resume: never) would only mislead

    history: list[EpochStats] = []
    window: list[float] = []
    resumes: list[int] = []
    progress: EpochProgress | None = None
    if saved is not None:
        state = saved.payload
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        history = [EpochStats.from_json(h) for h in state["history"]]
        window = list(state["window"])
        resumes = [*state["resumes"], saved.global_step]
        progress = EpochProgress.from_json(state["epoch_progress"])
        log.info(
            "resuming from %s: epoch %d/%d, %d of %d batches done, step %d",
            saved.path, progress.epoch, t.epochs, progress.batches, steps_per_epoch, progress.global_step,
        )  # fmt: skip

    def save_state(run_id: str, at: EpochProgress) -> Path:
        if not _all_finite(model):
            raise TrainingDiverged(f"training diverged: non-finite weights after step {at.global_step}")
        return store.save(
            {
                "fingerprint": fingerprint(fields),
                "fingerprint_fields": fields,
                "position": {"epoch": at.epoch, "batch": at.batches, "global_step": at.global_step},
                "epoch_progress": at.to_json(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,  # fp16 only
                "rng": capture_rng(),
                "history": [h.to_json() for h in history],
                "window": list(window),
                "resumes": list(resumes),
                "mlflow_run_id": run_id,
            },
            at.global_step,
        )

    def last_good() -> str:
        files = store.files()
        if not files:
            return "No resume checkpoint was saved yet."
        return f"The last good resume checkpoint is kept: {files[0]} (train.resume: auto continues from it when the settings match)."

    tags = run_tags(root) | dataset_tags(prepared)
    if quarantined:
        tags |= {
            "data.quarantined": str(len(quarantined)),
            "data.training_version": str(effective_version(data_version, quarantined)),
        }
    run_context = _open_run(saved, experiment_id, tags) if ctx.is_main else contextlib.nullcontext(None)
    with stop_requests() as stop, run_context as run:
        run_id = run.info.run_id if run is not None else ""
        if ctx.is_main:
            _log_run_params(params, run_id, {
                "data.num_classes": classes.num_classes,
                "data.train_samples": len(dataset),
                "train.steps_per_epoch": steps_per_epoch,
                "train.device_used": str(device),
                "train.precision_used": precision,
                "train.channels_last_used": channels_last,
                "train.effective_batch_size": global_batch,
                "train.processes": ctx.world_size,
                "model.num_parameters": count_parameters(model),
                "model.trainable_parameters": count_parameters(model, trainable_only=True),
                "train.class_weights_used": "none" if weights is None else format_weights(weights.tolist()),
            })  # fmt: skip
            if resumes:
                mlflow.set_tag("resumed_from_steps", ",".join(map(str, resumes)))

        first_step: dict[str, float] = {}

        def on_step(at: EpochProgress, loss: float) -> None:
            if ctx.enabled:  # a signal to any rank stops every rank after this same step
                agreed = ctx.largest(stop.signum or 0, device)
                if agreed and not stop:
                    stop.signum = agreed
            if not ctx.is_main:
                _stop_if_requested(stop, lambda: None, at)
                return
            if not first_step:
                first_step["seconds"] = time.perf_counter() - session_start
                log.info(
                    "first step: %.1f s%s", first_step["seconds"],
                    " (includes torch.compile's compilation)" if t.compile else "",
                )  # fmt: skip
                mlflow.log_metric("first_step_seconds", first_step["seconds"], step=at.global_step)
            window.append(loss)
            if at.global_step % t.log_every_n_steps == 0:
                mlflow.log_metrics({"step_loss": sum(window) / len(window), "step_lr": at.lr}, step=at.global_step)
                window.clear()
            if t.checkpoint_every_n_steps and at.global_step % t.checkpoint_every_n_steps == 0:
                save_state(run_id, at)
            _stop_if_requested(stop, lambda: save_state(run_id, at), at)

        log.info(
            "training %s on %s (precision %s, channels_last %s, compile %s, gradient checkpointing %s): "
            "%d images, %d steps/epoch of %d images, %d epochs",
            params.model.encoder, device, precision, _on(channels_last), _on(t.compile), _on(t.grad_checkpoint),
            len(dataset), steps_per_epoch, loader.batch_size, t.epochs,
        )
        log.info("%s", describe_recipe(params, optimizer, criterion, max_iter))
        first_epoch = progress.epoch if progress is not None else len(history) + 1
        step = progress.global_step if progress is not None else (history[-1].global_step if history else 0)
        session_start = time.perf_counter()
        try:
            for epoch in range(first_epoch, t.epochs + 1):
                resume_from = progress if progress is not None and progress.epoch == epoch else None
                loader.sampler.set_epoch(epoch, (resume_from.batches if resume_from else 0) * global_batch)
                stats = train_one_epoch(
                    network,
                    loader,
                    optimizer,
                    scheduler,
                    device=device,
                    criterion=criterion,
                    frozen=frozen,
                    epoch=epoch,
                    epochs=t.epochs,
                    global_step=step,
                    resume_from=resume_from,
                    on_step=on_step,
                    precision=precision,
                    scaler=scaler,
                    channels_last=channels_last,
                    micro_batch=t.batch_size if t.accumulate_steps > 1 else None,
                    average_loss=(lambda value: ctx.mean(value, device)) if ctx.enabled else None,
                )
                step = stats.global_step
                history.append(stats)
                if not ctx.is_main:
                    continue
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
        except TrainingInterrupted:
            if ctx.is_main:
                mlflow.end_run(status="KILLED")
            raise
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} {last_good()}") from None

        if not ctx.is_main:  # rank 0 writes the outputs and closes the run
            return {"rank": ctx.rank, "final_loss": history[-1].loss, "steps": step}
        seconds = sum(h.seconds for h in history)
        images = sum(h.images for h in history) * ctx.world_size  # every rank's share of each step
        summary = {
            "final_loss": history[-1].loss,
            "epochs": t.epochs,
            "steps": step,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / max(step, 1), 4),
            "images_per_second": round(images / seconds, 3) if seconds > 0 else 0.0,
            "device": str(device),
            "precision": precision,
            "amp": precision != "fp32",
            "effective_batch_size": global_batch,
            "processes": ctx.world_size,
            "channels_last": channels_last,
            "compiled": t.compile,
            "first_step_seconds": round(first_step.get("seconds", 0.0), 3),
            "resumed_from_steps": resumes,
        }
        meta = {
            "class_names": list(classes.names),
            "class_colors": [list(c) for c in classes.colors],
            "ignore_index": classes.ignore_index,
            "epoch": t.epochs,
            "step": step,
            "final_loss": summary["final_loss"],
            "mlflow_run_id": run_id,
            "resumed_from_steps": resumes,
        }
        # The outputs are written only now, each atomically: a run that fails or stops earlier
        # leaves the previous run's outputs as they were.
        save_checkpoint(checkpoint_path, model, params.model, classes.num_classes, meta)
        atomic_files.write_text(metrics_dir / HISTORY_FILE, _history_csv(history))
        atomic_files.write_json(metrics_dir / TRAIN_METRICS_FILE, summary)
        mlflow.log_metrics({"final_loss": summary["final_loss"], "train_seconds": seconds})
        mlflow.log_artifact(str(checkpoint_path), artifact_path="checkpoint")
        mlflow.log_artifact(str(metrics_dir / TRAIN_METRICS_FILE), artifact_path="metrics")
        mlflow.log_artifact(str(metrics_dir / HISTORY_FILE), artifact_path="metrics")
        ref = RunRef(run_id=run_id, experiment_id=experiment_id, tracking_uri=mlflow.get_tracking_uri())
        ref.save(models_dir / RUN_REF_FILE)
    store.clear()  # finished: the final checkpoint supersedes the resume states

    return {
        **summary,
        "run_id": ref.run_id,
        "checkpoint": str(checkpoint_path.relative_to(root)) if checkpoint_path.is_relative_to(root) else str(checkpoint_path),
    }


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _stop_if_requested(stop: StopRequest, save: Callable[[], Path | None], at: EpochProgress) -> None:
    """After a step: on a pending SIGTERM / SIGINT, save a resume checkpoint and stop cleanly
    (``save`` returns ``None`` on the ranks that leave the saving to rank 0)."""
    if not stop:
        return
    path = save()
    where = f"in {path}" if path is not None else "by rank 0"
    raise TrainingInterrupted(
        f"training stopped by {stop.name} at epoch {at.epoch}, step {at.global_step}; the whole training "
        f"state is saved {where}. Run the train stage again (dvc repro) to continue from there "
        "(train.resume: auto).",
        int(stop.signum or 0),
    )
