"""One training epoch: forward, the loss (:mod:`pspnet.train.loss`), SGD step, LR schedule
step, progress bar.

Frozen modules (a frozen encoder): their BatchNorm layers are put back into eval mode right
after ``model.train()``, so their running statistics stay fixed (their parameters are frozen
by :func:`pspnet.train.optim.freeze_encoder`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from pspnet.errors import PspnetError
from pspnet.train.loss import Outputs

#: ``on_step(global_step, loss, lr)`` is called after every optimisation step (``lr``: the
#: encoder group's rate that step used; the new layers' is ``head_lr_multiplier`` times it).
StepCallback = Callable[[int, float, float], None]
#: ``criterion(outputs, target) -> scalar loss`` (e.g. :class:`pspnet.train.loss.SegmentationCriterion`).
Criterion = Callable[[Outputs, torch.Tensor], torch.Tensor]


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


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    device: torch.device,
    criterion: Criterion,
    frozen: Sequence[nn.Module] = (),
    epoch: int = 1,
    epochs: int = 1,
    global_step: int = 0,
    on_step: StepCallback | None = None,
    progress: bool = True,
    amp: bool = False,
) -> EpochStats:
    """Train ``model`` for one pass over ``loader`` (batches of ``(image, mask)``).

    ``criterion(outputs, mask)`` gives the loss. The BatchNorm layers of the ``frozen`` modules
    stay in eval mode. The progress bar shows the running mean loss, the current encoder LR,
    the rate and the ETA. ``amp`` runs the forward pass under bfloat16 autocast (weights,
    gradients and the loss stay float32). Raises :class:`PspnetError` when the loss stops
    being finite.
    """
    set_train_mode(model, frozen)
    start = time.perf_counter()
    total_loss = 0.0
    steps = 0
    images = 0
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(
        loader,
        total=total,
        desc=f"epoch {epoch}/{epochs}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    lr = optimizer.param_groups[0]["lr"]
    for image, mask in bar:
        image = image.to(device, non_blocking=True)
        mask = mask.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(image)
        if amp:
            outputs = _to_float(outputs)
        loss = criterion(outputs, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        global_step += 1
        if not math.isfinite(value):
            raise PspnetError(
                f"training diverged: loss is {value} at epoch {epoch}, step {global_step}. "
                "Lower train.lr or check the labels (ids must be < number of classes or the ignore index)."
            )
        steps += 1
        images += int(image.shape[0])
        total_loss += value
        bar.set_postfix(loss=f"{total_loss / steps:.4f}", lr=f"{lr:.2e}", refresh=False)
        if on_step is not None:
            on_step(global_step, value, lr)
    bar.close()
    if steps == 0:
        raise PspnetError("the training loader yielded no batch; is train.batch_size larger than the train split?")
    return EpochStats(
        epoch=epoch,
        loss=total_loss / steps,
        steps=steps,
        images=images,
        seconds=time.perf_counter() - start,
        lr=lr,
        global_step=global_step,
    )
