"""The Great Expectations gate: passes a clean dataset, rejects every kind of planted defect.

GE runs for real; to stay fast, the per-sample defects are planted together in one dataset
and the dataset-level ones in another, and each defect is checked on its own in the report.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pspnet.config import Params, parse_params
from pspnet.data import context_scenes as syn
from pspnet.stages.prepare import run as prepare
from pspnet.data.validation.checks import dataset_checks
from pspnet.data.validation.report import error_message
from pspnet.stages.validate import run as validate
from pspnet.errors import DataError
from tests.data.validation_run import run_validate

PREPARED = "data/prepared"
SUMMARY = "reports/validation/summary.json"
DOCS_INDEX = "reports/validation/data_docs/index.html"


def _params(**validate_cfg: object) -> Params:
    """12 samples (8 train, 4 val) at 48x64."""
    synthetic = {"seed": 1, "train_size": 8, "val_size": 4, "height": 48, "width": 64}
    return parse_params({"data": {"synthetic": synthetic}, "validate": validate_cfg})


@dataclass
class Run:
    """What one validate call left: its error (if any), the summary and the project root."""

    root: Path
    error: DataError | None
    summary: dict


def _run_validate(root: Path, params: Params) -> Run:
    return Run(root, *run_validate(params, root))


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    prepare(_params(), root)
    return root


def _copy(clean_root: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(clean_root / PREPARED, root / PREPARED)
    return root


def _edit_mask(path: Path, edit) -> None:  # noqa: ANN001 - a small callable on the array
    mask = np.asarray(Image.open(path)).copy()
    Image.fromarray(edit(mask)).save(path)


def _edit_manifest(root: Path, edit) -> None:  # noqa: ANN001
    path = root / PREPARED / "manifest.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame).to_csv(path, index=False)


# --------------------------------------------------------------------------------------------
# A clean dataset passes
# --------------------------------------------------------------------------------------------


def test_clean_dataset_passes_and_writes_the_report(clean_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = _copy(clean_root, tmp_path_factory, "pass")
    result = validate(_params(), root)
    assert result["success"] is True and result["counts_per_split"] == {"train": 8, "val": 4}
    summary = json.loads((root / SUMMARY).read_text())
    assert summary["success"] is True and summary["failing_samples"] == [] and summary["failed_dataset_checks"] == []
    checks = {e["check"] for e in summary["expectations"]}
    assert checks >= {"unique_ids", "image_decodes", "labels_valid", "split_sizes", "classes_in_train"}
    assert all(e["success"] for e in summary["expectations"])
    coverage = {c["name"]: c for c in summary["class_coverage"]}
    assert set(coverage) == set(syn.CLASS_NAMES) and all(c["train_masks"] > 0 for c in coverage.values())
    index = root / DOCS_INDEX
    assert index.is_file() and "pspnet_samples" in index.read_text()
    profile = pd.read_csv(root / "reports/validation/data_docs/profile.csv")
    assert len(profile) == 12 and (profile["problems"].isna() | (profile["problems"] == "")).all()
    assert [p.name for p in (root / "reports/validation").iterdir() if p.name.startswith(".")] == []  # no temp leftovers


# --------------------------------------------------------------------------------------------
# Per-sample defects: planted together, checked one by one
# --------------------------------------------------------------------------------------------

#: (sample id, the GE check that must list it, words the error message must give for it)
SAMPLE_DEFECTS = [
    ("train_0001", "image_decodes", "images/train_0001.png cannot be decoded"),
    ("train_0002", "labels_valid", "holds label value(s) 17"),
    ("train_0003", "sizes_match", "image is 64x48 (WxH) but mask is 60x48"),
    ("train_0005", "mask_single_channel", "mask masks/train_0005.png is mode 'RGB'"),
    ("val_0000", "mask_decodes", "mask file masks/val_0000.png not found"),
    ("val_0002", "unique_ids", "id 'val_0002' is used by 2 manifest rows"),
    ("train_0006", "known_split", "split 'tset' is not one of"),
]


def _plant_sample_defects(root: Path) -> None:
    images, masks = root / PREPARED / "images", root / PREPARED / "masks"
    data = (images / "train_0001.png").read_bytes()
    (images / "train_0001.png").write_bytes(data[: len(data) // 2])  # truncated
    _edit_mask(masks / "train_0002.png", lambda m: np.where(np.arange(m.shape[1]) < 5, np.uint8(17), m).astype(np.uint8))
    _edit_mask(masks / "train_0003.png", lambda m: m[:, :60])  # 60 wide, image is 64
    _edit_mask(masks / "train_0005.png", lambda m: np.stack([m] * 3, axis=-1))  # RGB mask
    (masks / "val_0000.png").unlink()

    def manifest(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame["id"] == "val_0001", "id"] = "val_0002"  # duplicate id
        frame.loc[frame["id"] == "train_0006", "split"] = "tset"  # unknown split
        return frame

    _edit_manifest(root, manifest)


@pytest.fixture(scope="module")
def broken_run(clean_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = _copy(clean_root, tmp_path_factory, "broken")
    _plant_sample_defects(root)
    return _run_validate(root, _params())


def test_broken_dataset_is_rejected_with_the_report_written(broken_run: Run) -> None:
    assert broken_run.error is not None and broken_run.error.exit_code == 3
    assert broken_run.summary["success"] is False
    assert (broken_run.root / DOCS_INDEX).is_file()
    assert {f["id"] for f in broken_run.summary["failing_samples"]} == {d[0] for d in SAMPLE_DEFECTS}
    assert broken_run.summary["failed_dataset_checks"] == []


@pytest.mark.parametrize(("sample_id", "check", "words"), SAMPLE_DEFECTS, ids=[d[1] for d in SAMPLE_DEFECTS])
def test_each_planted_defect_is_named(broken_run: Run, sample_id: str, check: str, words: str) -> None:
    message = str(broken_run.error)
    line = next(line for line in message.splitlines() if line.strip().startswith(f"- {sample_id} "))
    assert words in line and "Fix" in line
    expectation = next(e for e in broken_run.summary["expectations"] if e["check"] == check)
    assert expectation["success"] is False and sample_id in expectation["unexpected_ids"]
    assert expectation["unexpected_count"] == (2 if check == "unique_ids" else 1)
    failure = next(f for f in broken_run.summary["failing_samples"] if f["id"] == sample_id)
    assert check in failure["failed_checks"] and any(words in p for p in failure["problems"])


# --------------------------------------------------------------------------------------------
# Dataset-level defects: an empty required split, a class never seen in train
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_run(clean_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = _copy(clean_root, tmp_path_factory, "dataset")
    _edit_manifest(root, lambda frame: frame[frame["split"] != "val"])
    for path in (root / PREPARED / "masks").glob("train_*.png"):
        _edit_mask(path, lambda m: np.where(m == syn.PERSON, np.uint8(syn.SAND), m).astype(np.uint8))
    return _run_validate(root, _params())


def test_empty_split_is_rejected(dataset_run: Run) -> None:
    assert dataset_run.error is not None
    assert "split 'val' has 0 sample(s), at least 1 required" in str(dataset_run.error)
    split_check = next(e for e in dataset_run.summary["expectations"] if e["check"] == "split_sizes")
    assert split_check["success"] is False and split_check["unexpected_ids"] == ["val"]
    assert dataset_run.summary["counts_per_split"] == {"train": 8}


def test_class_missing_from_train_is_rejected(dataset_run: Run) -> None:
    assert "class 'person' (id 8) appears in no train mask" in str(dataset_run.error)
    coverage_check = next(e for e in dataset_run.summary["expectations"] if e["check"] == "classes_in_train")
    assert coverage_check["unexpected_ids"] == ["person"]
    assert any("person" in line for line in dataset_run.summary["failed_dataset_checks"])
    assert dataset_run.summary["failing_samples"] == []


# --------------------------------------------------------------------------------------------
# Without GE: early failures, the message cap, switches
# --------------------------------------------------------------------------------------------


def test_missing_manifest_fails_early_with_a_summary(clean_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = _copy(clean_root, tmp_path_factory, "nomanifest")
    (root / PREPARED / "manifest.csv").unlink()
    with pytest.raises(DataError, match="manifest not found"):
        validate(_params(), root)
    assert json.loads((root / SUMMARY).read_text())["success"] is False


def test_error_message_caps_the_listed_samples() -> None:
    failures = [{"id": f"s{i}", "split": "train", "problems": ["broken. Fix: mend it"]} for i in range(5)]
    message = error_message(failures, ["split 'val' is empty"], 2, "summary.json", "index.html")
    assert "- s0 (train): broken. Fix: mend it" in message and "- s1 " in message and "- s2 " not in message
    assert "... and 3 more" in message and "split 'val' is empty" in message
    capped = error_message([], [f"class {i} unseen" for i in range(4)], 3, "summary.json", "index.html")
    assert "class 2 unseen" in capped and "class 3 unseen" not in capped and "... and 1 more" in capped


def test_class_coverage_check_can_be_switched_off() -> None:
    assert [c.name for c in dataset_checks(_params())] == ["split_sizes", "classes_in_train"]
    assert [c.name for c in dataset_checks(_params(require_all_classes_in_train=False))] == ["split_sizes"]


# --------------------------------------------------------------------------------------------
# What the source's definition promises, and distribution shift
# --------------------------------------------------------------------------------------------


def _set_expectations(root: Path, **expect: object) -> None:
    path = root / PREPARED / "dataset.json"
    record = json.loads(path.read_text())
    record["expect"] = {"image_sizes": None, "min_side": None, "max_side": None, **expect}
    path.write_text(json.dumps(record))


def test_images_of_another_size_than_the_source_ships_are_named(clean_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = _copy(clean_root, tmp_path_factory, "sizes")
    assert json.loads((root / PREPARED / "dataset.json").read_text())["expect"]["image_sizes"] == [[48, 64]]
    _set_expectations(root, image_sizes=[[48, 64], [360, 480]])
    assert _run_validate(root, _params()).error is None

    _set_expectations(root, image_sizes=[[360, 480]])
    run = _run_validate(root, _params())
    assert run.error is not None and len(run.summary["failing_samples"]) == 12
    assert "images/train_0000.png is 48x64 (HxW), but synthetic images are 360x480" in str(run.error)

    _set_expectations(root, max_side=60)
    run = _run_validate(root, _params())
    assert run.error is not None and "between 1 and 60 px on each side" in str(run.error)
    assert {e["check"] for e in run.summary["expectations"] if not e["success"]} == {"image_max_side"}


def test_a_class_shift_between_splits_warns_or_fails_as_configured(
    clean_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = _copy(clean_root, tmp_path_factory, "shift")
    run = _run_validate(root, _params())  # the generator draws val like train
    assert run.error is None and run.summary["warnings"] == []
    shift = run.summary["distribution_shift"][0]
    assert shift["id"] == "train->val" and shift["js_distance"] < 0.1
    assert set(run.summary["class_histograms"]) == {"train", "val"}

    run = _run_validate(root, _params(shift_threshold=0.0001))
    assert run.error is None and run.summary["success"] is True
    assert len(run.summary["warnings"]) == 1 and run.summary["warnings"][0].startswith("class distribution shift train->val")

    run = _run_validate(root, _params(shift_threshold=0.0001, fail_on_shift=True))
    assert run.error is not None and "class distribution shift train->val: Jensen-Shannon distance" in str(run.error)


def test_new_data_is_compared_with_the_previous_version(tmp_path: Path) -> None:
    prepare(_params(), tmp_path)
    validate(_params(), tmp_path)
    first = json.loads((tmp_path / SUMMARY).read_text())
    assert [s["id"] for s in first["distribution_shift"]] == ["train->val"]  # no earlier version

    params = parse_params({"data": {"synthetic": {"seed": 7, "train_size": 8, "val_size": 4, "height": 48, "width": 64}}})
    prepare(params, tmp_path)
    validate(params, tmp_path)
    second = json.loads((tmp_path / SUMMARY).read_text())
    assert second["data_version"] != first["data_version"]
    ids = [s["id"] for s in second["distribution_shift"]]
    assert f"{first['data_version']}->{second['data_version']}:train" in ids
    history = json.loads((tmp_path / "reports/validation/history.json").read_text())
    assert [h["version"] for h in history] == [first["data_version"], second["data_version"]]
