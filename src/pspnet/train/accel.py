"""How training runs on the hardware, not what it computes: precision, memory layout,
compilation, cuDNN, micro-batches (gradient accumulation) and activation checkpointing.

``train.*`` settings (see :class:`pspnet.config.TrainConfig`):

- ``precision``: ``fp32``; ``bf16`` or ``fp16`` autocast of the forward pass (weights,
  gradients, optimizer state and the loss stay float32); ``fp16`` adds a gradient scaler
  (``torch.amp.GradScaler``) whose state goes into the resume checkpoints. ``auto``: bf16 where
  it is fast (CUDA GPUs with native bf16, CPUs with AVX512-BF16 / AMX), fp16 on CUDA GPUs
  without bf16, else fp32.
- ``channels_last``: model and inputs in NHWC memory order (what tensor-core convolutions read
  natively); ``auto``: on CUDA only.
- ``compile``: ``torch.compile`` of the model's forward (and so its backward), CUDA only; the
  first step pays the compilation, which the train stage logs.
- ``cudnn_benchmark``: let cuDNN time its kernels once per input shape and keep the fastest
  (CUDA only; the training crop is fixed, so the shapes are too).
- ``accumulate_steps``: one optimizer step per ``accumulate_steps`` micro-batches of
  ``batch_size`` (the loader yields the whole effective batch; :func:`micro_batches` splits it).
- ``grad_checkpoint``: the encoder's residual blocks keep only their inputs for the backward
  pass and run their forward again there (:func:`checkpoint_blocks`).

Everything here also runs on the CPU (CI); none of it changes the training recipe.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pspnet.errors import ConfigError

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
#: The autocast dtype of each precision (``None``: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Names of a ResNet's residual stages (torchvision, smp and timm ResNets all use them): the
#: blocks of these ``nn.Sequential`` are what :func:`checkpoint_blocks` wraps.
STAGE_NAME = re.compile(r"(?:.*\.)?layer[1-4]")


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (a CUDA GPU with bf16 units, or
    oneDNN on a CPU with AVX512-BF16 / AMX); emulated bfloat16 is slower than float32."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation argument
            return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """``train.precision`` -> the precision used on ``device`` (``auto`` decided here)."""
    if setting in AUTOCAST_DTYPES:
        return setting  # type: ignore[return-value]
    if setting != "auto":
        raise ConfigError(f"train.precision: unknown value {setting!r}; accepted: auto, {', '.join(AUTOCAST_DTYPES)}.")
    if bf16_is_fast(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` on ``device`` (nothing for fp32)."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its small range underflows gradients without one), else ``None``."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


# --------------------------------------------------------------------------------------------
# Memory layout, cuDNN, compilation
# --------------------------------------------------------------------------------------------


def resolve_channels_last(setting: bool | str, device: torch.device) -> bool:
    """``train.channels_last`` -> whether to use NHWC (``auto``: on CUDA)."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def configure_cudnn(device: torch.device, benchmark: bool) -> None:
    """cuDNN autotuning on CUDA when ``benchmark``: the fastest kernels, which need not be the
    deterministic ones (CUDA training is not bitwise repeatable anyway: the bilinear
    upsampling's backward accumulates with atomics). The CPU path keeps its deterministic setup."""
    if device.type == "cuda" and benchmark:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False


def compile_model(model: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """``torch.compile(model)`` when ``enabled`` (compiled lazily, at the first forward), else
    ``model``. Keep using ``model`` itself for state dicts: the compiled wrapper prefixes keys.

    Refused on the CPU: there, with torch 2.13, the compiled PSPNet of narrow widths (16-channel
    head, 8-channel pyramid) got all-zero gradients, so it would have trained nothing (check a
    build with ``bench/compile_check.py``)."""
    if not enabled:
        return model
    if device.type != "cuda":
        raise ConfigError(
            f"train.compile: true on {device}: torch.compile is only used on CUDA here (on the CPU, torch "
            f"{torch.__version__.split('+')[0]}'s compiled PSPNet gave wrong, all-zero gradients for some model "
            "widths; see bench/compile_check.py). Set train.compile: false, or train on a GPU."
        )
    return torch.compile(model)


# --------------------------------------------------------------------------------------------
# Gradient accumulation
# --------------------------------------------------------------------------------------------


def micro_batches(
    image: torch.Tensor, mask: torch.Tensor, size: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Split a loader batch into micro-batches of about ``size`` images (``None``: the whole
    batch), with each one's share of the batch (its images / all images), which weights its
    loss so that the accumulated gradient is that of the batch's mean loss (exactly so when the
    micro-batches hold equally many labelled pixels). A batch of ``n`` images gives
    ``max(1, n // size)`` near-equal parts, so no part is smaller than ``size`` (BatchNorm in
    the pyramid's 1x1 bin needs two images)."""
    n = int(image.shape[0])
    parts = 1 if size is None else max(1, n // size)
    if parts == 1:
        yield image, mask, 1.0
        return
    for img, msk in zip(torch.tensor_split(image, parts), torch.tensor_split(mask, parts), strict=True):
        yield img, msk, img.shape[0] / n


# --------------------------------------------------------------------------------------------
# Activation (gradient) checkpointing
# --------------------------------------------------------------------------------------------


def _batchnorm_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [
        b
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]


class _CheckpointedForward:
    """A block's forward run under :func:`torch.utils.checkpoint.checkpoint` in training.

    The backward pass runs the block's forward a second time; its BatchNorm layers would then
    update their running statistics twice. The recomputation puts them back as they were, so
    a checkpointed model ends with the same statistics (and gradients) as a plain one.
    """

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self.forward = block.forward  # the bound original

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.block.training and torch.is_grad_enabled() and x.requires_grad):
            return self.forward(x)
        calls = [0]

        def run(inp: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            if calls[0] == 1:
                return self.forward(inp)
            buffers = _batchnorm_buffers(self.block)
            saved = [b.clone() for b in buffers]
            try:
                return self.forward(inp)
            finally:  # also when checkpoint stops the recomputation early (an exception)
                with torch.no_grad():
                    for b, s in zip(buffers, saved, strict=True):
                        b.copy_(s)

        return checkpoint(run, x, use_reentrant=False)


def checkpoint_blocks(module: nn.Module) -> int:
    """Checkpoint every residual block of ``module``'s ResNet stages (``layer1`` .. ``layer4``):
    in training only each block's input is kept for the backward pass, which recomputes the
    rest (about one more forward pass of the encoder for a large cut in activation memory).
    Parameters and state-dict keys are unchanged. Returns the number of blocks wrapped."""
    count = 0
    for name, stage in module.named_modules():
        if STAGE_NAME.fullmatch(name) and isinstance(stage, nn.Sequential):
            for block in stage:
                if not isinstance(block.__dict__.get("forward"), _CheckpointedForward):
                    block.forward = _CheckpointedForward(block)
                count += 1
    if count == 0:
        raise ConfigError(
            f"train.grad_checkpoint: found no ResNet stages (layer1 .. layer4) in {type(module).__name__}; "
            "set train.grad_checkpoint: false for this encoder."
        )
    return count


# --------------------------------------------------------------------------------------------
# Data loading
# --------------------------------------------------------------------------------------------


def loader_options(num_workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader settings for ``device``: pinned host memory for CUDA (so the non-blocking
    copies overlap the compute), workers kept alive between epochs when there are any."""
    return {"pin_memory": device.type == "cuda", "persistent_workers": num_workers > 0}
