"""Sections ``paths``, ``data`` (sources, synthetic scenes, colour jitter, held-out groups) and ``validate``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pspnet.config.base import (
    HeightShare,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Probability,
    StrictModel,
)


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

