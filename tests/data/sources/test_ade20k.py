"""The ADE20K (ADEChallengeData2016) adapter on a tiny generated copy of the release's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pspnet.config import parse_params
from tests.data.sources.convert import write_prepared
from pspnet.data.sources import ade20k
from pspnet.data.sources.ade20k import ade20k_source
from pspnet.data.sources.base import Expectations, SourceData, SourceFolders
from pspnet.errors import DataError

HEIGHT, WIDTH = 12, 16
IGNORE = 255
#: (folder, sample name, image mode): one greyscale JPEG as the release has a few.
SAMPLES = (
    ("training", "ADE_train_00000001", "RGB"),
    ("training", "ADE_train_00000002", "L"),
    ("validation", "ADE_val_00000001", "RGB"),
)


def _raw_mask(seed: int) -> np.ndarray:
    """Ids 0..150 with 0 ("other"), 1 and 150 always present."""
    raw = np.random.default_rng(seed).integers(0, 151, size=(HEIGHT, WIDTH), dtype=np.uint8)
    raw.flat[:3] = (0, 1, 150)
    return raw


def _make_release(parent: Path) -> Path:
    """``parent/ADEChallengeData2016`` with SAMPLES; returns the release folder."""
    root = parent / ade20k.DATASET_DIR
    rng = np.random.default_rng(0)
    for seed, (folder, name, mode) in enumerate(SAMPLES):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        shape = (HEIGHT, WIDTH, 3) if mode == "RGB" else (HEIGHT, WIDTH)
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(root / "images" / folder / f"{name}.jpg")
        Image.fromarray(_raw_mask(seed), "L").save(root / "annotations" / folder / f"{name}.png")
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n", encoding="utf-8")
    return root


def _source(location: Path) -> SourceData:
    params = parse_params({"data": {"ignore_index": IGNORE, "source": {"name": "ade20k", "location": str(location)}}})
    return ade20k_source(params, SourceFolders(location))


def _prepare(location: Path, out: Path) -> pd.DataFrame:
    return write_prepared(out, _source(location), "ade20k", num_workers=2, max_failures=20)


def _expected_mask(raw: np.ndarray) -> np.ndarray:
    return np.where(raw == 0, IGNORE, raw.astype(np.int64) - 1).astype(np.uint8)


def test_prepares_the_release_with_its_labels_shifted(tmp_path: Path) -> None:
    root = _make_release(tmp_path / "raw")
    manifest = _prepare(tmp_path / "raw", tmp_path / "out")  # the release's parent folder

    assert list(zip(manifest["id"], manifest["split"])) == [
        ("ADE_train_00000001", "train"), ("ADE_train_00000002", "train"), ("ADE_val_00000001", "val"),
    ]  # fmt: skip
    for seed, (folder, name, mode) in enumerate(SAMPLES):
        row = manifest.set_index("id").loc[name]
        mask = np.asarray(Image.open(tmp_path / "out" / row["mask"]))
        np.testing.assert_array_equal(mask, _expected_mask(_raw_mask(seed)))
        source_image = root / "images" / folder / f"{name}.jpg"
        with Image.open(tmp_path / "out" / row["image"]) as prepared:
            assert prepared.mode == "RGB"
            if mode == "RGB":  # RGB JPEGs are copied as they are
                assert (tmp_path / "out" / row["image"]).read_bytes() == source_image.read_bytes()
            else:  # the greyscale JPEG becomes an RGB PNG with its grey in every channel
                assert row["image"].endswith(".png")
                grey = np.asarray(Image.open(source_image))
                np.testing.assert_array_equal(np.asarray(prepared), np.repeat(grey[..., None], 3, axis=2))


def test_location_may_be_the_release_folder_itself(tmp_path: Path) -> None:
    root = _make_release(tmp_path)
    data = _source(root)
    assert [(r.id, r.split) for r in data.samples] == [(n, ade20k.SPLITS[f]) for f, n, _ in SAMPLES]
    assert data.inputs == (root,) and data.total == len(SAMPLES)


def test_class_table_and_expectations(tmp_path: Path) -> None:
    data = _source(_make_release(tmp_path))
    names, colors = data.classes.names, data.classes.colors
    assert len(names) == len(set(names)) == 150
    assert names[:5] == ("wall", "building", "sky", "floor", "tree") and names[-1] == "flag"
    assert len(colors) == 150 and all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)
    assert colors[0] == (120, 120, 120)
    assert data.classes.ignore_index == IGNORE
    assert data.expect == Expectations()  # sizes vary; the release promises none


def test_missing_folder_names_it(tmp_path: Path) -> None:
    root = _make_release(tmp_path)
    for path in (root / "annotations" / "validation").iterdir():
        path.unlink()
    (root / "annotations" / "validation").rmdir()
    with pytest.raises(DataError, match="folder not found") as err:
        _source(root)
    assert str(err.value).startswith(str(root / "annotations" / "validation"))


@pytest.mark.parametrize("missing", ["annotation", "image"])
def test_unpaired_file_is_a_rejected_sample_naming_it(tmp_path: Path, missing: str) -> None:
    root = _make_release(tmp_path)
    image = root / "images" / "training" / "ADE_train_00000002.jpg"
    mask = root / "annotations" / "training" / "ADE_train_00000002.png"
    (mask if missing == "annotation" else image).unlink()
    with pytest.raises(DataError) as err:  # the other samples convert; this one is reported
        write_prepared(tmp_path / "out", _source(root), "ade20k", num_workers=2, max_failures=20)
    kept, gone = (image, mask) if missing == "annotation" else (mask, image)
    word = "label image" if missing == "annotation" else "image"
    assert f"  - {kept}: no {word} {gone}. Fix: add the " in str(err.value) and "1 problem(s)" in str(err.value)


def test_unknown_label_id_names_the_mask(tmp_path: Path) -> None:
    root = _make_release(tmp_path)
    mask = root / "annotations" / "validation" / "ADE_val_00000001.png"
    raw = _raw_mask(2)
    raw[0, 0] = 151
    Image.fromarray(raw, "L").save(mask)
    with pytest.raises(DataError) as err:
        _prepare(root, tmp_path / "out")
    assert f"{mask}: unknown label id(s) 151" in str(err.value)


def test_wrong_size_mask_names_it(tmp_path: Path) -> None:
    root = _make_release(tmp_path)
    mask = root / "annotations" / "training" / "ADE_train_00000001.png"
    Image.fromarray(np.ones((HEIGHT, WIDTH + 1), np.uint8), "L").save(mask)
    with pytest.raises(DataError) as err:
        _prepare(root, tmp_path / "out")
    assert f"{mask}: mask is {WIDTH + 1}x{HEIGHT} (WxH)" in str(err.value)
