"""The tables the gate checks, built from the per-sample profile: samples, splits, classes, shift.

Also the class coverage (pixels and pixel share of each class per split) the summary reports
and the shift comparison starts from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pspnet.data.classes import ClassTable
from pspnet.data.profile import rejected_rows
from pspnet.data.shift import DIGITS

#: The split whose masks must show every class, and whose class counts the ``classes`` table holds.
TRAIN_SPLIT = "train"


def samples_table(profile: pd.DataFrame, rejected: pd.DataFrame) -> pd.DataFrame:
    """The ``samples`` table: the profile's rows, then one per sample ``prepare`` rejected, with
    the image size columns (:func:`with_size_columns`)."""
    rows = pd.concat([profile, rejected_rows(rejected)], ignore_index=True) if len(rejected) else profile
    return with_shared_images(with_size_columns(rows))


def with_shared_images(samples: pd.DataFrame) -> pd.DataFrame:
    """Add ``same_image_as`` (the ids of other splits' samples whose image is byte-identical) and
    ``image_unique_across_splits`` (missing where the manifest records no image md5)."""
    md5 = samples["image_md5"] if "image_md5" in samples else pd.Series([None] * len(samples), index=samples.index)
    by_md5: dict[str, list[tuple[str, str]]] = {}
    for sample_id, split, digest in zip(samples["id"], samples["split"], md5, strict=True):
        if isinstance(digest, str) and digest:
            by_md5.setdefault(digest, []).append((sample_id, split))
    shared = [
        " ".join(i for i, s in by_md5.get(d, []) if s != split) if isinstance(d, str) and d else None
        for split, d in zip(samples["split"], md5, strict=True)
    ]
    unique = pd.array([None if s is None else not s for s in shared], dtype="boolean")
    return samples.assign(same_image_as=shared, image_unique_across_splits=unique)


def with_size_columns(profile: pd.DataFrame) -> pd.DataFrame:
    """Add ``image_size`` ("HxW", "unreadable"; missing for samples prepare rejected: their
    check is ``source_converts``), ``image_min_side`` and ``image_max_side`` to the samples table."""
    heights, widths = profile["image_height"], profile["image_width"]
    return profile.assign(
        image_size=[
            (f"{h}x{w}" if pd.notna(h) else "unreadable") if ok else None
            for h, w, ok in zip(heights, widths, profile["source_ok"])
        ],
        image_min_side=pd.concat([heights, widths], axis=1).min(axis=1, skipna=False).astype("Int64"),
        image_max_side=pd.concat([heights, widths], axis=1).max(axis=1, skipna=False).astype("Int64"),
    )


def split_table(profile: pd.DataFrame, required: tuple[str, ...]) -> pd.DataFrame:
    """One row per required split: ``id`` (split name), ``num_samples``."""
    counts = profile["split"].value_counts()
    return pd.DataFrame({"id": list(required), "num_samples": [int(counts.get(s, 0)) for s in required]})


@dataclass(frozen=True)
class LabelSums:
    """Per split, per label value: pixels over every decodable mask, and masks holding the label.

    Summed in one pass over the profile's ``label_counts`` (time linear in the samples, memory
    in splits x label values; no per-(sample, label) table)."""

    pixels: dict[str, dict[int, int]]
    masks: dict[str, dict[int, int]]

    @classmethod
    def of(cls, profile: pd.DataFrame) -> LabelSums:
        pixels: dict[str, dict[int, int]] = {}
        masks: dict[str, dict[int, int]] = {}
        for split, cell in zip(profile["split"], profile["label_counts"]):
            counts = json.loads(cell)
            if not counts:
                continue
            split_pixels = pixels.setdefault(split, {})
            split_masks = masks.setdefault(split, {})
            for label, count in counts.items():
                value = int(label)
                split_pixels[value] = split_pixels.get(value, 0) + int(count)
                split_masks[value] = split_masks.get(value, 0) + 1
        return cls(pixels, masks)


def class_table(profile: pd.DataFrame, classes: ClassTable, sums: LabelSums | None = None) -> pd.DataFrame:
    """One row per class: ``id`` (name), ``class_id``, ``train_masks``, ``train_pixels``."""
    sums = sums or LabelSums.of(profile)
    masks, total = sums.masks.get(TRAIN_SPLIT, {}), sums.pixels.get(TRAIN_SPLIT, {})
    return pd.DataFrame(
        {
            "id": list(classes.names),
            "class_id": list(range(classes.num_classes)),
            "train_masks": [masks.get(c, 0) for c in range(classes.num_classes)],
            "train_pixels": [total.get(c, 0) for c in range(classes.num_classes)],
        }
    )


def class_coverage(profile: pd.DataFrame, classes: ClassTable, sums: LabelSums | None = None) -> list[dict[str, Any]]:
    """Per class: train masks containing it, and its pixels and pixel share in every split."""
    sums = sums or LabelSums.of(profile)
    # Splits with labelled (non-ignore) pixels, in name order, and their labelled pixel totals.
    split_totals = {
        split: sum(n for label, n in counts.items() if label != classes.ignore_index)
        for split, counts in sorted(sums.pixels.items())
        if any(label != classes.ignore_index for label in counts)
    }
    table = class_table(profile, classes, sums)
    coverage = []
    for row in table.to_dict("records"):
        cid = row["class_id"]
        counts = {s: sums.pixels[s].get(cid, 0) for s in split_totals}
        coverage.append(
            {
                "class_id": cid,
                "name": row["id"],
                "train_masks": row["train_masks"],
                "pixels_per_split": counts,
                "pixel_share_per_split": {s: round(counts[s] / max(split_totals[s], 1), DIGITS) for s in counts},
            }
        )
    return coverage


def shift_table(shifts: list[dict[str, Any]]) -> pd.DataFrame:
    """The ``shift`` table: ``id``, ``js_distance`` (NaN: not comparable), ``top_changes`` (JSON)."""
    return pd.DataFrame(
        {
            "id": [s["id"] for s in shifts],
            "js_distance": pd.array([s["js_distance"] for s in shifts], dtype="Float64"),
            "top_changes": [json.dumps(s["top_changes"]) for s in shifts],
        }
    )
