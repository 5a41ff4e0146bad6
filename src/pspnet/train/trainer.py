"""The training run of one process: set-up from ``params``, resume, the epoch loop, resume
checkpoints, and the run's summary.

Paths come in as arguments and the epoch loop reports through :class:`TrainingEvents`: the stage
(:mod:`pspnet.stages.train`) logs them to MLflow. Under data-parallel training only rank 0
reports and saves; a stop signal to any rank stops every rank after the same step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from pspnet.config import Params
from pspnet.data.classes import ClassTable
from pspnet.data.dataset import SegmentationDataset
from pspnet.data.manifest import load_dataset_record
from pspnet.data.transforms import train_transform
from pspnet.errors import DataError
from pspnet.model.pspnet import build_model, count_parameters
from pspnet.train.accel import (
    checkpoint_blocks,
    compile_model,
    configure_cudnn,
    make_scaler,
    memory_format,
    resolve_channels_last,
    resolve_precision,
)
from pspnet.train.curve import CurvePoint, CurveScorer, curve_due
from pspnet.train.distributed import Distributed, wrap_model
from pspnet.train.loop import (
    EpochPlan,
    EpochProgress,
    EpochStats,
    TrainingDiverged,
    TrainStep,
    train_one_epoch,
)
from pspnet.train.loss import format_weights
from pspnet.train.optim import build_optimizer, build_scheduler, freeze_encoder, make_ema
from pspnet.train.recipe import (
    build_criterion,
    describe_recipe,
    make_train_loader,
    seed_everything,
)
from pspnet.train.resume import (
    SavedState,
    StateStore,
    capture_rng,
    fingerprint,
    fingerprint_fields,
    restore_rng,
)
from pspnet.train.signals import StopRequest, TrainingInterrupted

log = logging.getLogger(__name__)


class TrainingEvents(Protocol):
    """What the epoch loop reports on the main rank (the stage logs it to MLflow)."""

    def first_step(self, seconds: float, global_step: int) -> None:
        """The first step of this session is done, ``seconds`` after the loop began."""

    def steps_logged(self, mean_loss: float, lr: float, global_step: int) -> None:
        """Every ``train.log_every_n_steps`` steps: the mean loss since the last report, the LR."""

    def epoch_end(self, stats: EpochStats) -> None:
        """An epoch finished."""

    def curve_point(self, point: CurvePoint) -> None:
        """The learning curve was scored after an epoch (``train.curve_every_n_epochs``)."""


@dataclass(frozen=True)
class TrainingInputs:
    """What a run reads and where it keeps its resume checkpoints."""

    prepared: Path
    classes: ClassTable
    #: Sample ids left out of training (the quarantine list).
    excluded: frozenset[str]
    state_dir: Path


def data_version(prepared: Path) -> str | None:
    """The prepared data's version (``dataset.json``), ``None`` when it has none."""
    try:
        return load_dataset_record(prepared).get("version")
    except DataError:
        return None


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _on(flag: bool) -> str:
    return "on" if flag else "off"


class Trainer:
    """One process's training run (rank ``ctx.rank``): built and resumed on construction,
    trained by :meth:`fit`."""

    def __init__(self, params: Params, inputs: TrainingInputs, ctx: Distributed, device: torch.device) -> None:
        self.params, self.inputs, self.ctx, self.device = params, inputs, ctx, device
        self._build()
        self.store = StateStore(inputs.state_dir, params.train.keep_checkpoints)
        self.data_version = data_version(inputs.prepared)
        self.fields = fingerprint_fields(params, self.dataset.ids, self.data_version, ctx.world_size)
        self.history: list[EpochStats] = []
        self.curve: list[CurvePoint] = []
        self.window: list[float] = []  # step losses since the last report
        self.resumes: list[int] = []  # global steps this run resumed from
        self.progress: EpochProgress | None = None
        self.step = 0
        self.first_step_seconds: float | None = None
        self.run_id = ""
        self.saved = self._find_state()
        if self.saved is not None:
            self._restore(self.saved)

    def _build(self) -> None:
        """Seeds, data, loss, model, optimizer and schedule, in this order (the seeded RNG's draws)."""
        t, device, ctx = self.params.train, self.device, self.ctx
        seed_everything(t.seed)
        configure_cudnn(device, t.cudnn_benchmark)
        self.precision = resolve_precision(t.precision, device)
        self.channels_last = resolve_channels_last(t.channels_last, device)
        self.dataset = SegmentationDataset(
            self.inputs.prepared, t.splits, train_transform(self.params), exclude=self.inputs.excluded,
            max_image_pixels=self.params.data.max_image_pixels,
        )  # fmt: skip
        self.loader = make_train_loader(self.dataset, self.params, device, ctx)
        self.global_batch = self.loader.batch_size * ctx.world_size  # images per optimizer step, all ranks
        classes = self.inputs.classes
        self.criterion = build_criterion(self.params, self.dataset, classes.num_classes, list(classes.names)).to(device)
        self.model = build_model(self.params.model, classes.num_classes).to(device, memory_format=memory_format(self.channels_last))
        if t.grad_checkpoint:
            log.info("gradient checkpointing: %d encoder blocks recompute their activations in backward", checkpoint_blocks(self.model.encoder))
        self.frozen: list[torch.nn.Module] = []
        if t.freeze_encoder:
            freeze_encoder(self.model)
            self.frozen = [self.model.encoder]
            if self.params.model.encoder_weights == "none":
                log.warning("train.freeze_encoder with model.encoder_weights none: the encoder stays at its random initialisation")
        # SyncBatchNorm + DDP (one process: the model itself). The converted BatchNorms keep their
        # parameters, so `model` still holds the state and the optimizer its parameters.
        parallel = wrap_model(self.model, ctx, device)
        self.optimizer = build_optimizer(self.model, t)
        self.steps_per_epoch = len(self.loader)
        self.max_iter = t.epochs * self.steps_per_epoch
        if t.warmup_iters >= self.max_iter:
            log.warning("train.warmup_iters (%d) >= the %d training iterations: the warm-up never ends", t.warmup_iters, self.max_iter)
        self.scheduler = build_scheduler(self.optimizer, self.max_iter, t.poly_power, t.warmup_iters, t.warmup_ratio)
        self.scaler = make_scaler(self.precision, device)
        self.network = compile_model(parallel, t.compile, device)  # what the loop calls; `model` holds the state
        self.ema = make_ema(self.model, t.ema_decay) if ctx.is_main else None
        self.scorer = (
            CurveScorer(self.params, self.inputs.prepared, classes, self.inputs.excluded, device)
            if t.curve_every_n_epochs and ctx.is_main else None
        )  # fmt: skip

    def _find_state(self) -> SavedState | None:
        """The resume checkpoint to continue from (``train.resume: auto``); clears those of another run."""
        if self.ctx.is_main:
            self.store.remove_partial_writes()
        self.ctx.barrier()  # every rank reads the states rank 0 left
        saved = self.store.latest(self.fields) if self.params.train.resume == "auto" else None
        self.ctx.barrier()
        if saved is None and self.ctx.is_main:
            self.store.clear()  # states of another configuration (or resume: never) would only mislead
        return saved

    def _restore(self, saved: SavedState) -> None:
        state = saved.payload
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        restore_rng(state["rng"])
        self.history = [EpochStats.from_json(h) for h in state["history"]]
        self.curve = [CurvePoint.from_json(c) for c in state.get("curve", [])]
        self.window = list(state["window"])
        self.resumes = [*state["resumes"], saved.global_step]
        progress = self.progress = EpochProgress.from_json(state["epoch_progress"])
        log.info(
            "resuming from %s: epoch %d/%d, %d of %d batches done, step %d",
            saved.path, progress.epoch, self.params.train.epochs, progress.batches, self.steps_per_epoch, progress.global_step,
        )  # fmt: skip

    @property
    def resumed_run_id(self) -> str | None:
        """The tracking run of the training this one resumes (``None``: a fresh start)."""
        return self.saved.payload.get("mlflow_run_id") if self.saved is not None else None

    def resolved_settings(self) -> dict[str, Any]:
        """What this run resolved from its params and data (device, precision, sizes, class weights)."""
        weights = self.criterion.class_weights
        return {
            "data.num_classes": self.inputs.classes.num_classes,
            "data.train_samples": len(self.dataset),
            "train.steps_per_epoch": self.steps_per_epoch,
            "train.device_used": str(self.device),
            "train.precision_used": self.precision,
            "train.channels_last_used": self.channels_last,
            "train.effective_batch_size": self.global_batch,
            "train.processes": self.ctx.world_size,
            "model.num_parameters": count_parameters(self.model),
            "model.trainable_parameters": count_parameters(self.model, trainable_only=True),
            "train.class_weights_used": "none" if weights is None else format_weights(weights.tolist()),
        }

    def save_state(self, at: EpochProgress) -> Path:
        """A resume checkpoint of the whole training state after the step ``at`` ended."""
        if not _all_finite(self.model):
            raise TrainingDiverged(f"training diverged: non-finite weights after step {at.global_step}")
        return self.store.save(
            {
                "fingerprint": fingerprint(self.fields),
                "fingerprint_fields": self.fields,
                "position": {"epoch": at.epoch, "batch": at.batches, "global_step": at.global_step},
                "epoch_progress": at.to_json(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,  # fp16 only
                "rng": capture_rng(),
                "history": [h.to_json() for h in self.history],
                "curve": [c.to_json() for c in self.curve],
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "window": list(self.window),
                "resumes": list(self.resumes),
                "mlflow_run_id": self.run_id,
            },
            at.global_step,
        )

    def _last_good(self) -> str:
        files = self.store.files()
        if not files:
            return "No resume checkpoint was saved yet."
        return f"The last good resume checkpoint is kept: {files[0]} (train.resume: auto continues from it when the settings match)."

    def fit(self, events: TrainingEvents, stop: StopRequest, run_id: str = "") -> list[EpochStats]:
        """Train the remaining epochs; every epoch's stats (earlier sessions' included).

        ``run_id`` (the tracking run) goes into the resume checkpoints. Raises
        :class:`TrainingDiverged` (naming the last good resume checkpoint) on a non-finite loss
        and :class:`TrainingInterrupted` after saving one when ``stop`` is set.
        """
        t, progress = self.params.train, self.progress
        self.run_id = run_id
        self._log_start()
        first_epoch = progress.epoch if progress is not None else len(self.history) + 1
        self.step = progress.global_step if progress is not None else (self.history[-1].global_step if self.history else 0)
        session_start = time.perf_counter()
        step = TrainStep(
            self.network, self.optimizer, self.scheduler, self.criterion, self.device, frozen=self.frozen,
            precision=self.precision, scaler=self.scaler, channels_last=self.channels_last,
            micro_batch=t.batch_size if t.accumulate_steps > 1 else None,
        )  # fmt: skip
        average = (lambda value: self.ctx.mean(value, self.device)) if self.ctx.enabled else None
        on_step = self._step_hook(events, stop, session_start)
        try:
            for epoch in range(first_epoch, t.epochs + 1):
                resume_from = progress if progress is not None and progress.epoch == epoch else None
                self.loader.sampler.set_epoch(epoch, (resume_from.batches if resume_from else 0) * self.global_batch)
                plan = EpochPlan(
                    epoch=epoch, epochs=t.epochs, global_step=self.step, resume_from=resume_from, on_step=on_step, average_loss=average
                )
                stats = train_one_epoch(step, self.loader, plan)
                self.step = stats.global_step
                self.history.append(stats)
                if self.ctx.is_main:
                    log.info(
                        "epoch %d/%d: loss %.4f, lr %.3g, %.1f s (%.1f images/s)",
                        epoch, t.epochs, stats.loss, stats.lr, stats.seconds, stats.images_per_second,
                    )  # fmt: skip
                    events.epoch_end(stats)
                    if self.scorer is not None and curve_due(epoch, t.epochs, t.curve_every_n_epochs):
                        events.curve_point(self._score_curve(epoch))
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} {self._last_good()}") from None
        return self.history

    @property
    def final_model(self) -> torch.nn.Module:
        """The model to save: the weight average when ``train.ema_decay`` is on, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    def _score_curve(self, epoch: int) -> CurvePoint:
        """A learning-curve point after ``epoch`` (the average, and the raw weights beside it)."""
        raw = self.model if self.ema is not None else None
        self.curve.append(self.scorer.point(epoch, self.training_seconds, self.final_model, raw))
        return self.curve[-1]

    def _log_start(self) -> None:
        t = self.params.train
        log.info(
            "training %s on %s (precision %s, channels_last %s, compile %s, gradient checkpointing %s): "
            "%d images, %d steps/epoch of %d images, %d epochs",
            self.params.model.encoder, self.device, self.precision, _on(self.channels_last), _on(t.compile),
            _on(t.grad_checkpoint), len(self.dataset), self.steps_per_epoch, self.loader.batch_size, t.epochs,
        )  # fmt: skip
        log.info("%s", describe_recipe(self.params, self.optimizer, self.criterion, self.max_iter))

    def _step_hook(self, events: TrainingEvents, stop: StopRequest, session_start: float) -> Callable[[EpochProgress, float], None]:
        """What runs after every step: the stop agreement, reports, resume checkpoints, the stop."""
        t = self.params.train

        def on_step(at: EpochProgress, loss: float) -> None:
            self._agree_on_stop(stop)
            if not self.ctx.is_main:
                self._stop_if_requested(stop, lambda: None, at)
                return
            if self.first_step_seconds is None:
                self.first_step_seconds = time.perf_counter() - session_start
                log.info(
                    "first step: %.1f s%s", self.first_step_seconds,
                    " (includes torch.compile's compilation)" if t.compile else "",
                )  # fmt: skip
                events.first_step(self.first_step_seconds, at.global_step)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.window.append(loss)
            if at.global_step % t.log_every_n_steps == 0:
                events.steps_logged(sum(self.window) / len(self.window), at.lr, at.global_step)
                self.window.clear()
            if t.checkpoint_every_n_steps and at.global_step % t.checkpoint_every_n_steps == 0:
                self.save_state(at)
            self._stop_if_requested(stop, lambda: self.save_state(at), at)

        return on_step

    def _agree_on_stop(self, stop: StopRequest) -> None:
        """A signal to any rank stops every rank after this same step."""
        if self.ctx.enabled:
            agreed = self.ctx.largest(stop.signum or 0, self.device)
            if agreed and not stop:
                stop.signum = agreed

    @staticmethod
    def _stop_if_requested(stop: StopRequest, save: Callable[[], Path | None], at: EpochProgress) -> None:
        """On a pending SIGTERM / SIGINT, save a resume checkpoint and stop cleanly (``save``
        returns ``None`` on the ranks that leave the saving to rank 0)."""
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

    def summary(self) -> dict[str, Any]:
        """``train.json``: the loss, counts, timing and how the run ran (rank 0's view)."""
        t, step, seconds = self.params.train, self.step, self.training_seconds
        images = sum(h.images for h in self.history) * self.ctx.world_size  # every rank's share of each step
        return {
            "final_loss": self.history[-1].loss,
            "epochs": t.epochs,
            "steps": step,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / max(step, 1), 4),
            "images_per_second": round(images / seconds, 3) if seconds > 0 else 0.0,
            "device": str(self.device),
            "precision": self.precision,
            "amp": self.precision != "fp32",
            "effective_batch_size": self.global_batch,
            "processes": self.ctx.world_size,
            "channels_last": self.channels_last,
            "compiled": t.compile,
            "first_step_seconds": round(self.first_step_seconds or 0.0, 3),
            "resumed_from_steps": self.resumes,
        }

    @property
    def training_seconds(self) -> float:
        """The training loop's time over every session of the run."""
        return sum(h.seconds for h in self.history)

    def clear_states(self) -> None:
        """Remove the resume checkpoints (training finished: the final checkpoint supersedes them)."""
        self.store.clear()
