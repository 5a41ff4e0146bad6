"""Section ``train``: the paper's recipe and the run's machinery (precision, resume, curve)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pspnet.config.base import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    StrictModel,
)
from pspnet.config.data import ColorJitterConfig

#: The old ``train.amp`` values and the ``train.precision`` each means.
LEGACY_AMP = {"true": "bf16", "false": "fp32", "auto": "auto"}


class TrainConfig(StrictModel):
    """SGD with the poly schedule, as in the paper (base LR for the encoder, x10 for new layers),
    the paper's augmentation, and optional warm-up, class weights, OHEM and a frozen encoder."""

    seed: NonNegativeInt = 0
    #: Splits trained on. ``[train, val]`` makes a final model once the recipe is fixed: its val
    #: score then measures training data, so judge it on a held-out split (``data.holdout``).
    splits: Annotated[tuple[str, ...], Field(min_length=1)] = ("train",)
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 8
    #: Random crop (height, width) taken after random scaling; padded with ignore where needed.
    crop_size: tuple[PositiveInt, PositiveInt] = (96, 128)
    #: Random scale factor range (paper: 0.5-2.0); image bilinear, mask nearest.
    scale_range: tuple[PositiveFloat, PositiveFloat] = (0.75, 1.5)
    #: Random rotation by an angle uniform in +-this many degrees (paper: 10); 0 disables it.
    #: Corners are filled with the mean colour (image) and the ignore index (mask).
    rotate_degrees: Annotated[float, Field(ge=0, le=180)] = 10.0
    #: Probability of rotating a sample (paper: 0.5).
    rotate_p: Probability = 0.5
    #: Probability of a Gaussian blur of the image (official code: 0.5, 5x5 kernel); 0 disables it.
    blur_p: Probability = 0.5
    #: Random horizontal flip with probability 0.5.
    hflip: bool = True
    #: Random brightness / contrast / saturation / hue changes (off by default, as in the paper).
    color_jitter: ColorJitterConfig = ColorJitterConfig()
    #: Base learning rate (the encoder's). The paper uses 0.01 for an ImageNet-pretrained
    #: encoder at batch 16; the default here trains from scratch on the embedded data.
    lr: PositiveFloat = 0.05
    #: Learning-rate multiplier of the new layers (PPM, head, aux head) over the encoder's.
    head_lr_multiplier: PositiveFloat = 10.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: NonNegativeFloat = 1e-4
    #: Exponent of the poly decay ``(1 - iter / max_iter) ** poly_power`` (paper: 0.9).
    poly_power: NonNegativeFloat = 0.9
    #: Linear warm-up length in iterations (0: none, as in the paper): the LR factor ramps from
    #: ``warmup_ratio`` to the poly value over these first iterations, then follows poly.
    warmup_iters: NonNegativeInt = 0
    #: LR factor (times the poly value) at the first warm-up iteration.
    warmup_ratio: Annotated[float, Field(gt=0, le=1)] = 0.1
    #: Per-class weights of the cross-entropy: ``none`` (paper), ``inverse_frequency``
    #: (``1 / (K * share)``), ``median_frequency`` (``median share / share``), shares counted
    #: over the train masks' labelled pixels, or an explicit list of one weight per class.
    class_weights: Literal["none", "inverse_frequency", "median_frequency"] | tuple[NonNegativeFloat, ...] = "none"
    #: Online hard example mining: average the loss over the hard pixels only (off in the paper).
    ohem: bool = False
    #: OHEM: a pixel is hard when the predicted probability of its true class is below this.
    ohem_thresh: Annotated[float, Field(gt=0, le=1)] = 0.7
    #: OHEM: at least this many pixels per batch (all images together) are kept, the lowest
    #: true-class probabilities first; the whole batch when it has fewer labelled pixels.
    ohem_min_kept: NonNegativeInt = 100000
    #: Freeze the encoder: no gradients, not in the optimizer, BatchNorm statistics frozen
    #: (eval mode); PPM, head and aux head still train. Meant for a pretrained encoder.
    freeze_encoder: bool = False
    #: ``auto`` uses CUDA when present, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Arithmetic of the forward pass: ``fp32``, or ``bf16`` / ``fp16`` autocast (weights,
    #: gradients, optimizer state and the loss stay float32; ``fp16`` adds a gradient scaler,
    #: saved in the resume checkpoints). ``auto``: bf16 where it is fast (CUDA GPUs with native
    #: bf16, CPUs with AVX512-BF16 / AMX), fp16 on older CUDA GPUs, fp32 on other CPUs. The old
    #: key ``amp`` is still read: true = bf16, false = fp32, auto = auto.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: Optimizer steps accumulate the gradients of this many micro-batches of ``batch_size``
    #: images: the effective batch is ``batch_size * accumulate_steps`` (the paper's 16 on one
    #: GPU: 8 x 2). BatchNorm statistics are still those of a micro-batch. The LR schedule,
    #: logging and resume checkpoints count optimizer steps.
    accumulate_steps: PositiveInt = 1
    #: Model and inputs in channels-last (NHWC) memory order, which tensor-core convolutions
    #: read natively. ``auto``: on CUDA, off on the CPU.
    channels_last: bool | Literal["auto"] = "auto"
    #: ``torch.compile`` the model, CUDA only (refused on the CPU). The first step pays the
    #: compilation, which the log reports (figures: docs/results/gpu-h100.md).
    compile: bool = False
    #: cuDNN times its kernels for the (fixed) crop size and keeps the fastest (CUDA only).
    cudnn_benchmark: bool = True
    #: Activation checkpointing of the encoder's residual blocks: their activations are
    #: recomputed in the backward pass instead of stored (less memory, about one more encoder
    #: forward pass of compute). Same gradients and BatchNorm statistics.
    grad_checkpoint: bool = False
    #: Processes ``pspnet train`` starts on this machine through ``torchrun`` (data-parallel
    #: DDP, one per GPU; gloo processes on the CPU): 1 trains in the calling process. Under an
    #: outside ``torchrun`` (several nodes) this is ignored. ``batch_size`` is per process.
    nproc_per_node: PositiveInt = 1
    num_workers: NonNegativeInt = 0
    #: Log the running loss to MLflow every this many optimisation steps.
    log_every_n_steps: PositiveInt = 10
    #: Save the whole training state (resume checkpoint) every this many optimisation steps,
    #: atomically, under ``<paths.models>/train_state/``; 0 turns it off. A SIGTERM / SIGINT
    #: also saves one before the run stops.
    checkpoint_every_n_steps: NonNegativeInt = 100
    #: Resume checkpoints kept (the newest ones); an unreadable newest one falls back to the next.
    keep_checkpoints: PositiveInt = 2
    #: ``auto``: continue from the newest resume checkpoint of the same configuration and data,
    #: if there is one; ``never``: always start from scratch.
    resume: Literal["auto", "never"] = "auto"
    #: Exponential moving average of the weights and BatchNorm statistics, updated after every
    #: optimizer step (decay per step); the saved model is the average. 0 turns it off.
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.0
    #: Learning curve: score ``curve_splits`` every this many epochs and after the last (whole
    #: image, single scale, no flip; not counted as training time). 0 turns it off.
    curve_every_n_epochs: NonNegativeInt = 0
    #: Images per split for a curve point, evenly spaced over the split (0: all of them).
    curve_images: NonNegativeInt = 32
    #: Splits the curve scores, those the prepared data holds (``holdout``: ``data.holdout``).
    #: Not ``test`` by default: the test split is scored only on request (the ``test`` stage).
    curve_splits: tuple[str, ...] = ("val", "holdout")

    @model_validator(mode="before")
    @classmethod
    def _amp_is_precision(cls, data: Any) -> Any:
        """The old ``train.amp`` (true | false | auto) becomes ``train.precision``."""
        if not isinstance(data, Mapping) or "amp" not in data:
            return data
        data = dict(data)
        amp = data.pop("amp")
        mapped = LEGACY_AMP.get(str(amp).lower()) if isinstance(amp, (bool, str)) else None
        if mapped is None:
            raise ValueError(f"train.amp (now train.precision) must be true, false or auto, got {amp!r}")
        if data.setdefault("precision", mapped) != mapped:
            raise ValueError(
                f"train.amp: {amp!r} (the old name) contradicts train.precision: {data['precision']!r}; "
                "remove train.amp"
            )
        return data

    @field_validator("scale_range")
    @classmethod
    def _ordered_scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"scale_range must be (low, high) with low <= high, got {list(v)}")
        return v

    @field_validator("class_weights")
    @classmethod
    def _some_positive_weight(cls, v: str | tuple[float, ...]) -> str | tuple[float, ...]:
        if isinstance(v, tuple) and not any(w > 0 for w in v):
            raise ValueError("an explicit class_weights list needs one weight per class, at least one of them > 0")
        return v
