"""Typed, validated parameters: ``params.yaml`` -> :class:`Params`.

Every knob of every stage lives here, with its default, its range and a one-line meaning.
Unknown keys are rejected by name (a typo never silently falls back to a default), and a bad
value names the file, the field and what would be accepted.
"""

from __future__ import annotations

# size: one typed model per params.yaml section, each field with its default and range; the
# schema reads best in one file, in the order of params.yaml.

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pspnet.errors import ConfigError

DEFAULT_PARAMS_FILE = "params.yaml"

#: Schemes of the MLflow tracking stores ``mlflow.tracking_uri`` may name (a database URI may
#: add a driver: ``postgresql+psycopg2://``).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")
#: Registered models named ``<register.model_name>`` + this are promotion locks
#: (:mod:`pspnet.registry.lock`), so no model name may end with it.
PROMOTION_LOCK_SUFFIX = ".promotion-lock"
#: MLflow's alias rules: letters, digits, ``_`` and ``-``, at most 255 characters; ``latest`` and
#: ``v<number>`` are reserved.
_ALIAS_PATTERN = re.compile(r"[\w-]+")
_VERSION_ALIAS_PATTERN = re.compile(r"[vV]\d+")
_MAX_ALIAS_CHARS = 255
#: The split every model is scored and gated on.
VAL_SPLIT = "val"
#: The labelled test split a source may ship (CamVid's test/ + testannot/): scored only apart
#: from val, by the ``test`` stage or ``pspnet evaluate --split test``, never by the gate.
TEST_SPLIT = "test"

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
#: A share of the image height, strictly between 0 and 1.
HeightShare = Annotated[float, Field(gt=0, lt=1)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(StrictModel):
    """Where stages read and write, relative to the project root (also used by dvc.yaml)."""

    #: Raw datasets inside the project: DVC-tracked copies (``pspnet import-data``), read by prepare.
    raw: str = "data/raw"
    prepared: str = "data/prepared"
    reports: str = "reports"
    models: str = "models"
    metrics: str = "metrics"
    plots: str = "plots"


class SyntheticConfig(StrictModel):
    """The embedded "context scenes" dataset (see :mod:`pspnet.data.context_scenes`)."""

    seed: NonNegativeInt = 0
    train_size: PositiveInt = 240
    val_size: PositiveInt = 60
    height: Annotated[int, Field(ge=32, le=4096)] = 96
    width: Annotated[int, Field(ge=32, le=4096)] = 128
    #: Width in pixels of the ignore (255) ring drawn around every object's outline.
    border_ignore: NonNegativeInt = 1
    #: Standard deviation of the per-pixel Gaussian noise, in 0..255 intensity units.
    noise_std: NonNegativeFloat = 6.0
    #: Least distance (px) between a vehicle and the cues that name it (cue band, skyline): with
    #: a gap beyond a network's effective receptive field, only global context tells car from boat.
    cue_gap: NonNegativeInt = 0
    #: Road scenes get buildings on the skyline: a second cue, near the horizon. False leaves
    #: the cue band as the only one, so vehicles can stand far from every cue.
    skyline_cue: bool = True
    #: Row of the horizon and height of the cue band, as ranges of fractions of the height.
    horizon_frac: tuple[HeightShare, HeightShare] = (0.26, 0.36)
    cue_band_frac: tuple[HeightShare, HeightShare] = (0.16, 0.24)

    @model_validator(mode="after")
    def _bands_fit(self) -> SyntheticConfig:
        for name in ("horizon_frac", "cue_band_frac"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"data.synthetic.{name}: [{low}, {high}] is not a range (low above high)")
        if self.horizon_frac[1] + self.cue_band_frac[1] >= 1:
            raise ValueError("data.synthetic: horizon_frac and cue_band_frac leave no room for the sand band (their highs sum to 1 or more)")
        return self


#: Source names (``data.source.name``); each has an adapter in :mod:`pspnet.data.sources`.
SOURCE_NAMES = ("synthetic", "camvid", "ade20k", "voc", "cityscapes", "folder")


class SourceConfig(StrictModel):
    """Which dataset ``prepare`` converts, and where its files are.

    ``location`` is the dataset's top folder as the dataset ships it: a path (relative to the
    project root, or absolute) or a URL DVC can read (``s3://``, ``gs://``, ``azure://``,
    ``https://``, ``ssh://`` ...). Anything outside ``paths.raw`` is brought into
    ``<paths.raw>/<name>`` by ``pspnet import-data`` (``dvc import-url``), so the raw data is
    versioned and ``dvc update`` picks up new files. ``synthetic`` needs no location.
    """

    name: Literal[SOURCE_NAMES] = "synthetic"  # type: ignore[valid-type]
    location: str | None = None
    #: ``voc`` only: the SBD release's ``dataset`` folder (``cls/*.mat``, ``train.txt``,
    #: ``val.txt``); when set, VOC's train split becomes ``train_aug`` (SBD train + val + VOC
    #: train, minus VOC val: 10,582 images). Path or URL, imported like ``location``.
    sbd_location: str | None = None

    @model_validator(mode="after")
    def _location_needed(self) -> SourceConfig:
        if self.name != "synthetic" and not self.location:
            raise ValueError(f"data.source.location is required for source {self.name!r}: the dataset's folder or URL")
        if self.sbd_location and self.name != "voc":
            raise ValueError(f"sbd_location applies to source 'voc' only, not {self.name!r}; remove it")
        return self


#: Default of ``data.max_image_pixels``: 40 megapixels, 19x a Cityscapes frame (2048 x 1024).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
#: PIL refuses to open any image above twice its own ``Image.MAX_IMAGE_PIXELS`` (89,478,485):
#: the highest ``data.max_image_pixels`` that can take effect.
PIL_PIXEL_CAP = 178_956_970


class ColorJitterConfig(StrictModel):
    """Photometric augmentation (albumentations' ``ColorJitter``): each factor drawn uniformly in
    ``[1 - x, 1 + x]`` (hue: a shift in ``[-hue, hue]`` of the colour circle), applied with
    probability ``p``. Not in the paper's recipe (default off); it teaches a model footage of
    other light (another day, another camera) than its training frames."""

    brightness: Annotated[float, Field(ge=0, le=1)] = 0.0
    contrast: Annotated[float, Field(ge=0, le=1)] = 0.0
    saturation: Annotated[float, Field(ge=0, le=1)] = 0.0
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    p: Probability = 0.0

    @property
    def active(self) -> bool:
        return self.p > 0 and any((self.brightness, self.contrast, self.saturation, self.hue))


class HoldoutConfig(StrictModel):
    """A validation split of whole groups (e.g. CamVid sequences, a folder dataset's scenes or
    cameras) taken out of ``from_split``: frames of one group look alike, so a model scored on
    frames of groups it trained on is scored on what it has seen (see :mod:`pspnet.data.holdout`).

    A sample's group is the first capture group of ``group_pattern`` matched on its id.
    """

    #: Group keys moved from ``from_split`` into ``split``; empty: no held-out split.
    groups: tuple[str, ...] = ()
    #: Regex whose first capture group is the sample's group (default: the id up to its first ``_``,
    #: e.g. ``0006R0`` of CamVid's ``0006R0_f00930``).
    group_pattern: str = r"^([^_]+)_"
    from_split: str = "train"
    split: str = "holdout"

    @field_validator("group_pattern")
    @classmethod
    def _one_capture_group(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"not a regular expression: {err}") from None
        if compiled.groups < 1:
            raise ValueError(f"{pattern!r} has no capture group; put the group key in ( )")
        return pattern

    @model_validator(mode="after")
    def _distinct_splits(self) -> HoldoutConfig:
        if self.split == self.from_split:
            raise ValueError(f"split and from_split are both {self.split!r}; name the held-out split differently")
        return self


class DataConfig(StrictModel):
    source: SourceConfig = SourceConfig()
    #: Optional validation split of whole groups (sequences, scenes) held out of training.
    holdout: HoldoutConfig = HoldoutConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    ignore_index: Annotated[int, Field(ge=0, le=255)] = 255
    #: Threads that read, convert and write samples in ``prepare`` (and hash them).
    num_workers: Annotated[int, Field(ge=1, le=64)] = 4
    #: Source images that are not RGB: ``convert`` makes exact conversions only (grey, 1-bit,
    #: palette, and grey+alpha / palette / RGBA images whose alpha is fully opaque; counted in
    #: ``dataset.json``) and rejects the rest (transparent pixels, 16-bit, CMYK ...);
    #: ``reject`` rejects every non-RGB image. Rejected samples are listed in ``rejected.csv``.
    non_rgb_images: Literal["convert", "reject"] = "convert"
    #: Decompression-bomb guard: an image (source or prepared) whose header declares more pixels
    #: than this is refused before it is decoded.
    max_image_pixels: Annotated[int, Field(ge=1, le=PIL_PIXEL_CAP)] = DEFAULT_MAX_IMAGE_PIXELS


class ValidateConfig(StrictModel):
    """The Great Expectations gate between ``prepare`` and ``train``."""

    #: Every split listed here must hold at least ``min_samples_per_split`` samples.
    required_splits: tuple[str, ...] = ("train", "val")
    min_samples_per_split: PositiveInt = 1
    #: Every class must appear in at least one train mask: a class never seen in training
    #: cannot be learnt, and its IoU would silently be 0.
    require_all_classes_in_train: bool = True
    #: How many failing samples the error message lists before summarising the rest.
    max_failures_listed: PositiveInt = 20
    #: Split names a manifest row may carry; any other value fails validation.
    known_splits: tuple[str, ...] = ("train", "val", "holdout", "test")
    #: Threads that open and decode the image and mask files while profiling the dataset.
    num_workers: Annotated[int, Field(ge=1, le=64)] = 4
    #: Class distribution shift is flagged when the Jensen-Shannon distance (base 2, 0..1) between
    #: two class histograms (train vs another split; this data version vs the previous one)
    #: exceeds this.
    shift_threshold: Annotated[float, Field(gt=0, le=1)] = 0.1
    #: ``true``: a flagged shift fails the gate; ``false``: it is reported as a warning only.
    fail_on_shift: bool = False
    #: Data versions kept in ``<reports>/validation/history.json`` (for the version comparison).
    history_limit: PositiveInt = 20
    #: ``false``: any failing sample fails the gate. ``true``: failing samples (and those
    #: ``prepare`` rejected) are listed in ``<reports>/validation/quarantine.csv`` and skipped by
    #: train / evaluate / register; the dataset-level checks run on the samples that remain
    #: and still fail the gate.
    quarantine: bool = False
    #: Samples whose mask has no labelled pixel (every pixel ignore: they train and score
    #: nothing): ``warn`` names them and lets them through; ``reject`` fails them like any
    #: failing sample (set aside with ``quarantine``).
    empty_masks: Literal["warn", "reject"] = "warn"
    #: Warn when a split lost more than this fraction of its samples since the previous data
    #: version validated (a partial copy looks like new data); 1 turns it off.
    max_split_shrink: Annotated[float, Field(ge=0, le=1)] = 0.2


#: ResNets built from basic blocks; ``stem: auto`` keeps torchvision's stem for them.
SHALLOW_RESNETS = ("resnet18", "resnet34")


def resolve_stem(encoder: str, stem: str) -> str:
    """``stem`` with ``auto`` resolved: ``standard`` for :data:`SHALLOW_RESNETS`, else ``deep``."""
    if stem != "auto":
        return stem
    return "standard" if encoder in SHALLOW_RESNETS else "deep"


class ModelConfig(StrictModel):
    """PSPNet: dilated ResNet encoder + pyramid pooling module + head (+ auxiliary head)."""

    encoder: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet18"
    #: ``none`` (random init), ``imagenet`` (smp's weights, downloaded at the start of training;
    #: needs internet; standard stem only) or the path of a local ResNet state dict.
    encoder_weights: str = "none"
    #: ``deep``: the official three 3x3 convs (3->64->64->128); ``standard``: torchvision's 7x7
    #: conv; ``auto``: deep for ResNet-50/101/152 (the paper's networks), standard for 18/34.
    stem: Literal["auto", "deep", "standard"] = "auto"
    #: 8: layer3 and layer4 dilated (the paper); 16: only layer4 dilated (cheaper).
    output_stride: Literal[8, 16] = 8
    #: Which conv of a downsampling bottleneck block carries its stride: ``3x3`` (the official
    #: PyTorch code, torchvision, the Caffe PSPNet101) or ``1x1`` (its first 1x1 conv, as in the
    #: Caffe PSPNet50 for ADE20K; ``import-weights`` sets it for those weights). Same weights,
    #: other outputs. ResNet-18/34 (basic blocks) have no 1x1 conv: ``3x3`` only.
    block_stride: Literal["3x3", "1x1"] = "3x3"
    #: The pyramid pooling module; ``false`` gives the paper's dilated-FCN baseline (the head
    #: sits directly on the layer4 features).
    ppm: bool = True
    ppm_bins: tuple[PositiveInt, ...] = (1, 2, 3, 6)
    #: Pooling of the pyramid levels: ``avg`` (the paper's choice) or ``max`` (its ablation).
    ppm_pooling: Literal["avg", "max"] = "avg"
    #: Channels of each pyramid branch after its 1x1 conv; ``null``: layer4 channels / number of
    #: bins (the paper's dimension reduction: 2048 / 4 = 512).
    ppm_channels: PositiveInt | None = None
    #: Dropout2d before the classifier of the head and the auxiliary head (paper: 0.1).
    dropout: Probability = 0.1
    #: Weight of the auxiliary (stage-3 / layer3) loss; 0 turns deep supervision off.
    aux_weight: NonNegativeFloat = 0.4
    #: Width of the head's 3x3 conv; ``null``: layer4 channels / 4 (512 for ResNet-50+, as in
    #: the paper; 128 for ResNet-18/34), with or without the PPM.
    head_channels: PositiveInt | None = None
    #: Width of the auxiliary head's 3x3 conv; ``null``: layer3 channels / 4 (256 for
    #: ResNet-50+, as in the paper; 64 for ResNet-18/34).
    aux_channels: PositiveInt | None = None
    #: Per-channel RGB mean and std, as fractions of 255, subtracted / divided at the model's
    #: input (ImageNet statistics, which the encoders were pretrained with).
    input_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    input_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)

    @property
    def resolved_stem(self) -> str:
        """The stem ``auto`` stands for: deep for ResNet-50 and deeper, standard for 18/34."""
        return resolve_stem(self.encoder, self.stem)


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


class EvaluateConfig(StrictModel):
    """Validation-set scoring, plots and overlays (``evaluate`` stage)."""

    #: Images per forward pass; a batch whose images differ in size runs as same-size sub-batches.
    #: In ``slide`` mode also the most windows per forward pass when a batch holds fewer images.
    batch_size: PositiveInt = 8
    #: Inference mode: ``whole`` runs the full image in one pass; ``slide`` runs a sliding window
    #: of ``crop_size`` (the paper's testing protocol) and averages softmax probabilities.
    mode: Literal["whole", "slide"] = "whole"
    #: ``slide`` mode: window (height, width); an image smaller than it is padded with the mean
    #: colour. The paper uses 473 x 473 on ADE20K and VOC (713 x 713 on Cityscapes).
    crop_size: tuple[PositiveInt, PositiveInt] = (473, 473)
    #: ``slide`` mode: window stride = ceil(stride_rate * crop_size), per side (paper: 2/3).
    stride_rate: Annotated[float, Field(gt=0, le=1)] = 2 / 3
    #: Also run every pass on the horizontally flipped input and average the probabilities.
    flip: bool = False
    #: Test scales: for each, the image's long side is resized to round(scale * base_size), run,
    #: and the probabilities resized back and averaged (paper: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
    scales: Annotated[tuple[PositiveFloat, ...], Field(min_length=1)] = (1.0,)
    #: Long side (pixels) that scale 1.0 maps to; ``null``: the image's own long side, so scale
    #: 1.0 keeps the original size (paper: 512 on ADE20K and VOC, 2048 on Cityscapes).
    base_size: PositiveInt | None = None
    #: Splits scored beside val when the prepared data has them (e.g. ``data.holdout.split``):
    #: their scores go to eval.json (``splits``), MLflow (``<split>_miou`` ...) and the reports.
    #: Never :data:`TEST_SPLIT`: the test split is scored apart (the ``test`` section).
    extra_splits: tuple[str, ...] = ("holdout",)
    #: Look-alike class pairs (names) whose confusion rate is reported (eval.json ``confusion``,
    #: MLflow ``<split>_confusion_<a>_<b>``): pixels of either class predicted as the other.
    #: ``dataset``: the pairs the prepared data declares (classes.json; context scenes: car/boat).
    confused_pairs: Literal["dataset"] | tuple[tuple[str, str], ...] = "dataset"
    #: Records in ``confusion.json``, the val confusion matrix as (actual, predicted) rows for
    #: ``dvc plots`` (DVC's confusion template counts records; each stands for total/rows pixels).
    confusion_plot_rows: PositiveInt = 2000
    #: Images of the prepared train split (evenly spaced) that ``--runtime onnxruntime-int8``
    #: measures activation ranges on before quantising the graph to int8.
    int8_calibration_images: PositiveInt = 32
    #: How many validation images get a prediction-overlay PNG.
    num_overlays: NonNegativeInt = 4
    #: Opacity of the class colours over the image in overlay PNGs.
    overlay_alpha: Probability = 0.5

    @field_validator("extra_splits")
    @classmethod
    def _test_split_apart(cls, splits: tuple[str, ...]) -> tuple[str, ...]:
        if TEST_SPLIT in splits:
            raise ValueError(
                f"{TEST_SPLIT!r} is scored apart from val, into its own metrics file, by the `test` stage "
                f"(test.enabled: true) or `pspnet evaluate --split {TEST_SPLIT}`; remove it from extra_splits"
            )
        return splits


class TestConfig(StrictModel):
    """The optional ``test`` stage (:mod:`pspnet.stages.test`): the labelled test split, scored
    apart from val (its own metrics file, ``test_*`` in the MLflow run, the model card), never
    by the promotion gate."""

    __test__ = False  # not a pytest test class, despite its name

    #: ``true``: ``dvc repro`` scores the test split of the prepared data (which must have one);
    #: ``false``: the stage only records that it skipped. A test split is for a rare, final look,
    #: not for choosing recipes; ``pspnet evaluate --split test`` scores it on request either way.
    enabled: bool = False


class RegisterConfig(StrictModel):
    """The promotion gate of the ``register`` stage (see :mod:`pspnet.registry.gate`)."""

    model_name: str = "pspnet"
    #: Alias of the best model so far; only the gate moves it.
    champion_alias: str = "champion"
    #: Alias of the newest registered version, whatever the gate decided.
    challenger_alias: str = "challenger"
    #: The headline score compared: ``miou`` (classes absent from prediction and ground truth
    #: skipped) or ``miou_absent_as_zero`` (the official code's mean over all classes).
    metric: Literal["miou", "miou_absent_as_zero"] = "miou"
    #: (a) The challenger's metric must beat the champion's by at least this much (absolute,
    #: e.g. 0.005 = half a point of mIoU) ...
    min_improvement: NonNegativeFloat = 0.005
    #: ... and the one-sided lower confidence bound of the improvement, from a paired bootstrap
    #: over validation images, must be above zero at this confidence.
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    #: Bootstrap resamples of the validation images.
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = 2000
    bootstrap_seed: NonNegativeInt = 0
    #: (b) No class may lose more than this IoU against the champion (absolute, 0..1).
    max_class_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    #: The model card lists classes with a validation IoU below this as weak.
    weak_class_iou: Annotated[float, Field(ge=0, le=1)] = 0.3
    #: (height, width) of the example batch (2 images) the exported graph is traced with; it is
    #: stored with the model, so keep it small. Batch, height and width stay dynamic.
    export_example_size: tuple[Annotated[int, Field(ge=16, le=1024)], Annotated[int, Field(ge=16, le=1024)]] = (64, 96)
    #: (height, width) of a probe image fed to the logged model after loading it back; the
    #: registration fails if the artefact rejects it (e.g. shapes frozen at export).
    probe_size: tuple[Annotated[int, Field(ge=16, le=4096)], Annotated[int, Field(ge=16, le=4096)]] = (120, 160)
    #: Also log the network as an ONNX graph with dynamic batch / height / width (artifact
    #: ``network_onnx``), checked against the checkpoint at ``probe_size`` before registering.
    export_onnx: bool = True
    #: Seconds a registration waits for the promotion lock (another registration against the
    #: same store is reading the champion, gating and moving the alias) before it fails.
    lock_timeout: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    #: Seconds a held promotion lock stays valid; a lock older than this (its holder crashed)
    #: may be broken by the next registration. Far longer than the critical section (seconds).
    lock_lease: Annotated[float, Field(ge=10, le=86_400)] = 300.0

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        """MLflow's rules for registered model names, plus the name reserved for the promotion lock."""
        if not value.strip() or value != value.strip() or any(c in value for c in "/:"):
            raise ValueError(f"{value!r} is not a valid MLflow model name: non-empty, no surrounding spaces, no '/' or ':'")
        if value.endswith(PROMOTION_LOCK_SUFFIX):
            raise ValueError(f"names ending in {PROMOTION_LOCK_SUFFIX!r} are reserved for the promotion lock")
        return value

    @field_validator("champion_alias", "challenger_alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        """MLflow's rules for aliases (checked here so a bad one fails before training, not after)."""
        if not _ALIAS_PATTERN.fullmatch(value) or len(value) > _MAX_ALIAS_CHARS:
            raise ValueError(f"{value!r}: an alias is 1-{_MAX_ALIAS_CHARS} letters, digits, '_' or '-'")
        if value.lower() == "latest" or _VERSION_ALIAS_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is reserved by MLflow ('latest' and v<number> name versions)")
        return value

    @model_validator(mode="after")
    def _aliases_differ(self) -> RegisterConfig:
        if self.champion_alias == self.challenger_alias:
            raise ValueError(f"champion_alias and challenger_alias must differ (both {self.champion_alias!r})")
        return self


class ScheduleConfig(StrictModel):
    """Scheduled retraining: the Prefect deployment served by ``make schedule``."""

    deployment_name: str = "pspnet-retrain"
    #: Full retraining run (``dvc update`` + ``dvc repro`` + promotion gate). Five fields
    #: (minute resolution), or six with seconds LAST (Prefect's croniter: ``30 2 * * * 15``
    #: is 02:30:15).
    cron: str = "0 3 * * 0"
    timezone: str = "UTC"
    #: Seconds between new-data checks: a run that goes on only when the data source's hash
    #: differs from the one in ``dvc.lock`` (0: no data watch).
    data_check_interval: NonNegativeInt = 900
    #: A trigger while a run is going: ``cancel_new`` skips it, ``enqueue`` waits for the
    #: running one. Runs never interleave.
    collision: Literal["cancel_new", "enqueue"] = "cancel_new"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin") from None
        return value


class MlflowConfig(StrictModel):
    experiment_name: Annotated[str, Field(min_length=1, max_length=500)] = "pspnet"
    #: ``null``: a SQLite store + artifact folder at the project root. ``MLFLOW_TRACKING_URI``
    #: in the environment overrides both.
    tracking_uri: str | None = None
    #: Seconds the start-of-run check waits for the tracking store to answer (a server's
    #: ``/health``, a database's port) before failing the run with the fix.
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    #: Seconds between samples of MLflow's system metrics (CPU, memory, disk, network, GPU)
    #: during training; 0 logs none.
    system_metrics_interval: Annotated[float, Field(ge=0, le=3600)] = 10.0

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition(":")
        base = scheme.split("+")[0].lower()
        if not sep or base not in TRACKING_SCHEMES or not rest.strip("/"):
            raise ValueError(
                f"{value!r} is not a tracking URI this project can use: expected <scheme>:..., scheme one of "
                f"{', '.join(TRACKING_SCHEMES)} (e.g. http://127.0.0.1:5000 or sqlite:////abs/path/mlflow.db), or null"
            )
        return value


class Params(StrictModel):
    """The whole of ``params.yaml``."""

    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    test: TestConfig = TestConfig()
    register_: RegisterConfig = Field(default=RegisterConfig(), alias="register")
    mlflow: MlflowConfig = MlflowConfig()
    schedule: ScheduleConfig = ScheduleConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"train.lr": 0.01, ...}``: the form MLflow params and DVC ``-S`` use."""
        return flatten(self.model_dump(mode="json", by_alias=True))


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": 0.01}`` (sequences stay values, as lists)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` on top, merged section by section; a new dict (copies), the inputs unchanged."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _accepted_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys accepted by the section that holds ``loc`` (by their params.yaml names)."""
    model: Any = Params
    for part in loc[:-1]:
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return [f.alias or n for n, f in model.model_fields.items()]


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid parameters ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            accepted = ", ".join(_accepted_keys(e["loc"]))
            lines.append(f"  - {loc}: unknown key. Remove it or fix its spelling; accepted here: {accepted}.")
        else:
            given = e.get("input")
            lines.append(f"  - {loc}: {e['msg']} (got {given!r}). Fix the value in {source}.")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "<params>") -> Params:
    """Validate a raw mapping into :class:`Params`, raising :class:`ConfigError` with every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}.")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file (``params.yaml`` by default)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found. Run from the project root or pass --params PATH.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))
