"""One training epoch: forward, loss, the optimizer and schedule steps, a progress bar.

A loader batch is one optimizer step (split into accumulated micro-batches when asked), so a
resume position is always at a step boundary. The BatchNorm layers of frozen modules stay in
eval mode, keeping their running statistics fixed.
"""

from __future__ import annotations

import csv
import io
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pspnet.errors import PspnetError
from pspnet.train.accel import autocast, memory_format, micro_batches
from pspnet.train.loss import Outputs

#: ``criterion(outputs, target) -> scalar loss`` (e.g. :class:`pspnet.train.loss.SegmentationCriterion`).
Criterion = Callable[[Outputs, torch.Tensor], torch.Tensor]
#: Columns of ``train_history.csv``: one row per epoch (:func:`history_csv`).
HISTORY_COLUMNS = ("epoch", "step", "loss", "lr", "seconds", "images_per_second")
#: How often the progress bar redraws, in seconds.
PROGRESS_INTERVAL_S = 1.0


class TrainingDiverged(PspnetError):
    """The loss stopped being finite; nothing of that step was applied to the weights."""


@dataclass
class EpochProgress:
    """Where an epoch stands; updated after every step (what a resume checkpoint stores).

    ``seconds`` counts the epoch's time in earlier sessions of a resumed run; ``lr`` is the
    encoder group's rate the last step used.
    """

    epoch: int
    global_step: int = 0
    batches: int = 0
    images: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    lr: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EpochProgress:
        return cls(**raw)


#: ``on_step(progress, loss)`` is called after every optimisation step with the epoch's
#: progress (``progress.global_step``, ``progress.lr``: the encoder group's rate that step used;
#: the new layers' is ``head_lr_multiplier`` times it) and that step's loss.
StepCallback = Callable[[EpochProgress, float], None]


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did: mean loss over its steps, counts and timing."""

    epoch: int
    loss: float
    steps: int
    images: int
    seconds: float
    #: The encoder group's learning rate used by the epoch's last step.
    lr: float
    #: Optimisation steps done since training began, this epoch included.
    global_step: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EpochStats:
        return cls(**raw)


@dataclass(frozen=True)
class TrainStep:
    """What one optimizer step computes, and how it runs on the hardware (:mod:`pspnet.train.accel`).

    ``model`` may be a ``torch.compile`` or DDP wrapper. The BatchNorm layers of the ``frozen``
    modules stay in eval mode. ``precision`` ``bf16`` / ``fp16`` autocasts the forward pass
    (weights, gradients and loss stay float32); ``scaler`` (fp16) scales the loss and skips a
    step whose gradients overflowed. ``channels_last`` moves the inputs to NHWC (the model is
    converted by the caller). ``micro_batch`` splits each loader batch into micro-batches of
    about that many images, accumulated into one step (``None``: one pass).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: Criterion
    device: torch.device
    frozen: Sequence[nn.Module] = ()
    precision: str = "fp32"
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    micro_batch: int | None = None


@dataclass(frozen=True)
class EpochPlan:
    """Which epoch to run and whom to tell.

    ``resume_from`` continues an epoch a resume checkpoint interrupted (the loader then yields
    only its remaining batches; ``epoch`` and ``global_step`` come from it). ``average_loss``
    maps a step's loss to what is reported and checked (data-parallel: the mean over the
    processes, so that all stop together). ``progress`` shows the progress bar.
    """

    epoch: int = 1
    epochs: int = 1
    global_step: int = 0
    resume_from: EpochProgress | None = None
    on_step: StepCallback | None = None
    average_loss: Callable[[float], float] | None = None
    progress: bool = True


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer (1d/2d/3d, SyncBatchNorm) inside ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_train_mode(model: nn.Module, frozen: Sequence[nn.Module] = ()) -> None:
    """``model.train()``, except the BatchNorm layers inside ``frozen``, which stay in eval mode."""
    model.train()
    for module in frozen:
        for bn in batchnorm_layers(module):
            bn.eval()


def _to_float(outputs: Outputs) -> Outputs:
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    main, aux = outputs
    return main.float(), (aux.float() if aux is not None else None)


def train_one_epoch(
    step: TrainStep, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], plan: EpochPlan = EpochPlan()
) -> EpochStats:
    """Train ``step.model`` for one pass over ``loader`` (batches of ``(image, mask)``).

    The progress bar shows the running mean loss, the encoder LR, the rate and the ETA. Raises
    :class:`TrainingDiverged` when the loss stops being finite, before that step changes the weights.
    """
    set_train_mode(step.model, step.frozen)
    start = time.perf_counter()
    state = plan.resume_from or EpochProgress(epoch=plan.epoch, global_step=plan.global_step, lr=step.optimizer.param_groups[0]["lr"])
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(
        loader,
        total=None if total is None else state.batches + total,
        initial=state.batches,
        desc=f"epoch {state.epoch}/{plan.epochs}",
        unit="step",
        disable=not plan.progress,
        dynamic_ncols=True,
        mininterval=PROGRESS_INTERVAL_S,
    )
    earlier_seconds = state.seconds
    layout = memory_format(step.channels_last)
    for image, mask in bar:
        image = image.to(step.device, non_blocking=True, memory_format=layout)
        mask = mask.to(step.device, non_blocking=True)
        value = _forward_backward(step, image, mask)
        if plan.average_loss is not None:
            value = plan.average_loss(value)
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training diverged: loss is {value} at epoch {state.epoch}, step {state.global_step + 1}. "
                "Lower train.lr or check the labels (ids must be < number of classes or the ignore index)."
            )
        state.lr = step.optimizer.param_groups[0]["lr"]  # the rate this step uses
        _optimizer_step(step.optimizer, step.scheduler, step.scaler)
        state.global_step += 1
        state.batches += 1
        state.images += int(image.shape[0])
        state.loss_sum += value
        state.seconds = earlier_seconds + time.perf_counter() - start
        bar.set_postfix(loss=f"{state.loss_sum / state.batches:.4f}", lr=f"{state.lr:.2e}", refresh=False)
        if plan.on_step is not None:
            plan.on_step(state, value)
    bar.close()
    if state.batches == 0:
        raise PspnetError("the training loader yielded no batch; is train.batch_size larger than the train split?")
    return EpochStats(
        epoch=state.epoch,
        loss=state.loss_sum / state.batches,
        steps=state.batches,
        images=state.images,
        seconds=earlier_seconds + time.perf_counter() - start,
        lr=state.lr,
        global_step=state.global_step,
    )


def _forward_backward(step: TrainStep, image: torch.Tensor, mask: torch.Tensor) -> float:
    """Zero the gradients, then forward + loss + backward over the batch's micro-batches; the
    step's loss (the one host sync of a step)."""
    step.optimizer.zero_grad(set_to_none=True)
    step_loss = torch.zeros((), device=step.device)
    for part_image, part_mask, share in micro_batches(image, mask, step.micro_batch):
        with autocast(step.precision, step.device):
            outputs = step.model(part_image)
        if step.precision != "fp32":
            outputs = _to_float(outputs)
        loss = step.criterion(outputs, part_mask)
        if share != 1.0:
            loss = loss * share
        step_loss += loss.detach()
        (step.scaler.scale(loss) if step.scaler is not None else loss).backward()
    return float(step_loss)


def _optimizer_step(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None
) -> None:
    """The optimizer step (through ``scaler``: skipped when the fp16 gradients overflowed, and
    the scale lowered), then the schedule's. The schedule counts every step, skipped or not,
    so its position stays a function of the step count (what a resume restores)."""
    if scaler is None:
        optimizer.step()
        scheduler.step()
        return
    scaler.step(optimizer)
    scaler.update()
    with warnings.catch_warnings():
        # A skipped first step makes torch warn that the schedule stepped before the optimizer.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()


def history_csv(rows: Sequence[EpochStats]) -> str:
    """``train_history.csv``'s text: :data:`HISTORY_COLUMNS`, one row per epoch."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for r in rows:
        writer.writerow([r.epoch, r.global_step, f"{r.loss:.6f}", f"{r.lr:.6g}", f"{r.seconds:.3f}", f"{r.images_per_second:.3f}"])
    return buf.getvalue()
