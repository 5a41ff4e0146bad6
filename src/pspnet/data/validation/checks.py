"""The catalogue of the gate's checks: what each table must satisfy and how to explain a failing row.

Tables: ``samples`` (one row per sample, the profile), ``splits`` (one row per required split),
``classes`` (one row per class) and ``shift`` (one row per comparison of class histograms).
Each table's key column is ``id``, so every failing row is named.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pspnet.config import Params
from pspnet.data.manifest import REJECTED_FILE
from pspnet.data.profile import SINGLE_CHANNEL_MASK_MODES
from pspnet.data.sources.base import Expectations

#: The tables the gate validates, in order.
SAMPLES_TABLE, SPLITS_TABLE, CLASSES_TABLE, SHIFT_TABLE = "samples", "splits", "classes", "shift"
#: Names of the Great Expectations expectation classes the gate uses.
IN_SET, BETWEEN, UNIQUE = "ExpectColumnValuesToBeInSet", "ExpectColumnValuesToBeBetween", "ExpectColumnValuesToBeUnique"

#: The check of masks with no labelled pixel: a warning or a failure (``validate.empty_masks``).
EMPTY_MASKS = "mask_labelled"

#: Renders, for a failing row (a dict of its columns), what is wrong and how to fix it.
Explain = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Check:
    """One expectation of the gate and how to explain a row that fails it.

    ``expectation`` names a GE expectation class, built with ``column`` and ``kwargs``
    (:func:`pspnet.data.validation.expectations.build_expectation`). ``explain`` is ``None`` for
    the sample checks whose explanation the profile's ``problems`` column already gives.
    """

    name: str
    table: str
    column: str
    description: str
    expectation: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    explain: Explain | None = None


@dataclass
class Outcome:
    """The result of one check: did it pass, which rows (ids) failed, or what error GE hit."""

    check: Check
    success: bool
    #: Rows that failed (GE's count: a duplicated id counts once per row).
    unexpected_count: int
    #: Their ids, each once, in table order.
    unexpected_ids: list[str]
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check.name,
            "table": self.check.table,
            "column": self.check.column,
            "description": self.check.description,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "unexpected_ids": self.unexpected_ids,
            "error": self.error,
        }


def sample_checks(params: Params) -> list[Check]:
    """The per-sample expectations (table ``samples``, the profile)."""
    known = sorted(set(params.validate_.known_splits) | set(params.validate_.required_splits))

    def unknown_split(row: dict[str, Any]) -> str:
        return (
            f"split {row['split']!r} is not one of {known}. "
            "Fix: correct it in manifest.csv, or add it to validate.known_splits in params.yaml"
        )

    true = {"value_set": [True]}

    def shared_image(row: dict[str, Any]) -> str:
        return (
            f"image {row['image']} is byte-identical to the image of {row['same_image_as']} in another split: the model "
            "would be scored on a picture it trained on. Fix: remove one of the copies (or keep both in one split)"
        )

    def empty_mask(row: dict[str, Any]) -> str:
        return (
            f"mask {row['mask']} has no labelled pixel (every pixel is the ignore index {params.data.ignore_index}): the "
            "sample trains and scores nothing. Fix: annotate it or remove the sample"
        )

    return [
        Check(
            "source_converts",
            SAMPLES_TABLE,
            "source_ok",
            f"prepare converted the source sample (else it is listed in {REJECTED_FILE})",
            IN_SET,
            true,
        ),
        Check("unique_ids", SAMPLES_TABLE, "id", "sample ids are unique", UNIQUE),
        Check(
            "known_split", SAMPLES_TABLE, "split", f"split is one of {known}", IN_SET, {"value_set": known}, unknown_split
        ),
        Check("paths_inside", SAMPLES_TABLE, "paths_inside", "manifest paths stay inside the prepared folder", IN_SET, true),
        Check(
            "image_pixel_limit",
            SAMPLES_TABLE,
            "image_within_limit",
            f"image declares at most data.max_image_pixels ({params.data.max_image_pixels:,}) pixels",
            IN_SET,
            true,
        ),
        Check(
            "mask_pixel_limit",
            SAMPLES_TABLE,
            "mask_within_limit",
            f"mask declares at most data.max_image_pixels ({params.data.max_image_pixels:,}) pixels",
            IN_SET,
            true,
        ),
        Check("image_decodes", SAMPLES_TABLE, "image_readable", "image file exists and decodes", IN_SET, true),
        Check("mask_decodes", SAMPLES_TABLE, "mask_readable", "mask file exists and decodes", IN_SET, true),
        Check("image_rgb", SAMPLES_TABLE, "image_mode", "image is RGB", IN_SET, {"value_set": ["RGB"]}),
        Check(
            "mask_single_channel",
            SAMPLES_TABLE,
            "mask_mode",
            "mask is 8-bit single-channel (class ids)",
            IN_SET,
            {"value_set": list(SINGLE_CHANNEL_MASK_MODES)},
        ),
        Check("sizes_match", SAMPLES_TABLE, "sizes_match", "image and mask have the same size", IN_SET, true),
        Check("labels_valid", SAMPLES_TABLE, "labels_valid", "mask values are class ids or the ignore index", IN_SET, true),
        Check(
            "image_unique_across_splits", SAMPLES_TABLE, "image_unique_across_splits",
            "no image is byte-identical to an image of another split", IN_SET, true, shared_image,
        ),  # fmt: skip
        Check(EMPTY_MASKS, SAMPLES_TABLE, "has_labels", "mask has at least one labelled pixel", IN_SET, true, empty_mask),
    ]


def source_checks(expect: Expectations, source: str) -> list[Check]:
    """Expectations from the source's definition: the image sizes it ships."""

    def fix(row: dict[str, Any]) -> str:
        return (
            f"image {row['image']} is {row['image_size']} (HxW), but {source} images are {what}. "
            "Fix: the file is truncated or not from this dataset; replace or remove it, or pick the right data.source.name"
        )

    checks = []
    if expect.image_sizes is not None:
        sizes = [f"{h}x{w}" for h, w in expect.image_sizes]
        what = " or ".join(sizes)
        checks.append(
            Check("image_size", SAMPLES_TABLE, "image_size", f"image size (HxW) is {what}", IN_SET, {"value_set": sizes}, fix)
        )
    if expect.min_side is not None or expect.max_side is not None:
        what = f"between {expect.min_side or 1} and {expect.max_side or 'any'} px on each side"
        for column, bound in (("image_min_side", {"min_value": expect.min_side}), ("image_max_side", {"max_value": expect.max_side})):
            if next(iter(bound.values())) is not None:
                checks.append(Check(column, SAMPLES_TABLE, column, f"image sides are {what}", BETWEEN, bound, fix))
    return checks


def shift_checks(params: Params) -> list[Check]:
    """Class histograms do not drift apart (table ``shift``)."""
    threshold = params.validate_.shift_threshold

    def shifted(row: dict[str, Any]) -> str:
        changes = json.loads(row["top_changes"])
        moved = ", ".join(f"{c['class']} {c['reference_share']:.3f}->{c['share']:.3f}" for c in changes)
        return (
            f"class distribution shift {row['id']}: Jensen-Shannon distance {row['js_distance']:.3f} > "
            f"{threshold} (largest changes: {moved}). Check that the data is what you meant; raise "
            "validate.shift_threshold if this shift is expected"
        )

    return [
        Check(
            "class_shift",
            SHIFT_TABLE,
            "js_distance",
            f"class histograms within Jensen-Shannon distance {threshold}",
            BETWEEN,
            {"max_value": threshold},
            shifted,
        )
    ]


def dataset_checks(params: Params) -> list[Check]:
    """The dataset-level expectations (tables ``splits`` and ``classes``)."""
    minimum = params.validate_.min_samples_per_split

    def split_too_small(row: dict[str, Any]) -> str:
        return (
            f"split {row['id']!r} has {row['num_samples']} sample(s), at least {minimum} required "
            "(validate.required_splits, validate.min_samples_per_split). "
            "Fix: add samples to it in the source, or change those parameters"
        )

    def class_unseen(row: dict[str, Any]) -> str:
        return (
            f"class {row['id']!r} (id {row['class_id']}) appears in no train mask, so it cannot be learnt. "
            "Fix: add train samples that contain it, or set validate.require_all_classes_in_train: false"
        )

    checks = [
        Check(
            "split_sizes",
            SPLITS_TABLE,
            "num_samples",
            f"every required split has at least {minimum} sample(s)",
            BETWEEN,
            {"min_value": minimum},
            split_too_small,
        )
    ]
    if params.validate_.require_all_classes_in_train:
        checks.append(
            Check(
                "classes_in_train",
                CLASSES_TABLE,
                "train_masks",
                "every class appears in at least one train mask",
                BETWEEN,
                {"min_value": 1},
                class_unseen,
            )
        )
    return checks
