"""Sections ``evaluate`` (val scoring and its test-time protocol) and ``test`` (the test split, apart)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from pspnet.config.base import (
    TEST_SPLIT,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    StrictModel,
)


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
