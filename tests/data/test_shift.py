"""Class distribution shift: histograms, Jensen-Shannon distance, the version history."""

from __future__ import annotations

from pathlib import Path

import pytest

from pspnet.data.shift import compare, load_history, record_version, split_histograms, split_shift, version_shift

NAMES = ("road", "car", "sky")


def test_histograms_are_the_class_shares_of_each_split() -> None:
    coverage = [
        {"pixel_share_per_split": {"train": 0.6, "val": 0.5}},
        {"pixel_share_per_split": {"train": 0.3, "val": 0.5}},
        {"pixel_share_per_split": {"train": 0.1}},  # a class absent from val
    ]
    assert split_histograms(coverage) == {"train": [0.6, 0.3, 0.1], "val": [0.5, 0.5, 0.0]}


def test_identical_histograms_do_not_shift_and_disjoint_ones_shift_fully() -> None:
    assert compare([0.5, 0.5, 0], [0.5, 0.5, 0], NAMES) == {"js_distance": 0.0, "top_changes": []}
    far = compare([1, 0, 0], [0, 0, 1], NAMES)
    assert far["js_distance"] == pytest.approx(1.0)
    assert {c["class"] for c in far["top_changes"]} == {"road", "sky"}


def test_split_shift_names_the_classes_that_moved_most() -> None:
    shifts = split_shift({"train": [0.6, 0.3, 0.1], "val": [0.2, 0.25, 0.55]}, NAMES)
    assert [s["id"] for s in shifts] == ["train->val"]
    assert 0.2 < shifts[0]["js_distance"] < 0.5
    assert [c["class"] for c in shifts[0]["top_changes"]] == ["sky", "road", "car"]  # largest change first
    unmoved = split_shift({"train": [0.6, 0.3, 0.1], "val": [0.2, 0.3, 0.5]}, NAMES)
    assert "car" not in {c["class"] for c in unmoved[0]["top_changes"]}  # an unchanged share is not listed
    assert split_shift({"val": [1, 0, 0]}, NAMES) == []  # nothing to compare against


def test_a_new_data_version_is_compared_with_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    record_version(path, {"version": "v1", "histograms": {"train": [0.5, 0.5, 0.0]}}, limit=2)
    record_version(path, {"version": "v1", "histograms": {"train": [0.5, 0.5, 0.0]}}, limit=2)  # same version: replaced
    assert [e["version"] for e in load_history(path)] == ["v1"]
    assert version_shift(load_history(path), "v1", {"train": [0.5, 0.5, 0.0]}, NAMES) == []  # nothing older

    shifts = version_shift(load_history(path), "v2", {"train": [0.1, 0.1, 0.8]}, NAMES)
    assert [(s["id"], s["previous_version"]) for s in shifts] == [("v1->v2:train", "v1")]
    assert shifts[0]["js_distance"] > 0.5
    for version in ("v2", "v3"):
        record_version(path, {"version": version, "histograms": {}}, limit=2)
    assert [e["version"] for e in load_history(path)] == ["v2", "v3"]  # only the newest `limit` kept


def test_a_changed_class_count_is_reported_not_compared() -> None:
    result = compare([0.5, 0.5], [0.3, 0.3, 0.4], NAMES)
    assert result["js_distance"] is None and "class count changed" in result["note"]
