"""The Cityscapes (gtFine) adapter on a tiny generated copy of the dataset's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pspnet.config import parse_params
from tests.data.sources.convert import write_prepared
from pspnet.data.sources import cityscapes
from pspnet.data.convert import convert_source
from pspnet.data.sources.base import MISSING_PAIR, Expectations, SourceData, SourceFolders
from pspnet.data.sources.cityscapes import cityscapes_source
from pspnet.errors import DataError

HEIGHT, WIDTH = 12, 16
IGNORE = 255
#: (split, city, sample id): two cities in train, one in val, one in test (skipped).
SAMPLES = (
    ("train", "aachen", "aachen_000000_000019"),
    ("train", "aachen", "aachen_000001_000019"),
    ("train", "bochum", "bochum_000000_000313"),
    ("val", "frankfurt", "frankfurt_000000_000294"),
    ("test", "berlin", "berlin_000000_000019"),
)
#: labelId -> trainId from cityscapesScripts labels.py (every other id of 0..33 is ignored).
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def _raw_mask() -> np.ndarray:
    """Every labelId 0..33, repeated over the frame."""
    return np.resize(np.arange(34, dtype=np.uint8), (HEIGHT, WIDTH))


def _paths(root: Path, split: str, city: str, name: str) -> tuple[Path, Path]:
    image = root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
    mask = root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png"
    return image, mask


def _make_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, city, name in SAMPLES:
        image, mask = _paths(root, split, city, name)
        image.parent.mkdir(parents=True, exist_ok=True)
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)).save(image)
        # The public test labels are dummies; an id no split accepts shows they are never read.
        raw = np.full((HEIGHT, WIDTH), 200, np.uint8) if split == "test" else _raw_mask()
        Image.fromarray(raw).save(mask)
        # The other gtFine files are ignored (the colour file is RGB: reading it would fail).
        stem = mask.parent / f"{name}_gtFine"
        Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(f"{stem}_color.png")
        Image.fromarray(np.full((HEIGHT, WIDTH), 26001, np.uint16)).save(f"{stem}_instanceIds.png")
        Path(f"{stem}_polygons.json").write_text(json.dumps({"objects": []}), encoding="utf-8")
    return root


def _source(root: Path) -> SourceData:
    params = parse_params({"data": {"ignore_index": IGNORE, "source": {"name": "cityscapes", "location": str(root)}}})
    return cityscapes_source(params, SourceFolders(root))


def _prepare(root: Path, out: Path) -> pd.DataFrame:
    return write_prepared(out, _source(root), "cityscapes", num_workers=2, max_failures=20)


def test_prepares_train_and_val_with_train_ids(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "raw")
    manifest = _prepare(root, tmp_path / "out")

    kept = [(name, split) for split, _, name in SAMPLES if split != "test"]
    assert list(zip(manifest["id"], manifest["split"])) == kept
    expected = np.vectorize(lambda i: TRAIN_IDS.get(int(i), IGNORE), otypes=[np.uint8])(_raw_mask())
    assert sorted(np.unique(expected).tolist()) == [*range(19), IGNORE]
    for row, (split, city, name) in zip(manifest.itertuples(), SAMPLES):
        image, _ = _paths(root, split, city, name)
        assert (tmp_path / "out" / row.image).read_bytes() == image.read_bytes()  # RGB PNG copied as is
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / row.mask)), expected)


def test_class_table_and_expected_size(tmp_path: Path) -> None:
    data = _source(_make_dataset(tmp_path))
    assert data.classes.names == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    )  # fmt: skip
    assert data.classes.colors[0] == (128, 64, 128) and data.classes.colors[-1] == (119, 11, 32)
    assert len(data.classes.colors) == 19
    # Every frame is 1024 x 2048; the adapter declares it (validate checks it) but does not enforce it.
    assert data.expect == cityscapes.EXPECT == Expectations(image_sizes=((1024, 2048),))
    assert data.inputs == (tmp_path,) and data.total == 4


def test_missing_gtfine_folder_is_named(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path)
    (root / "gtFine").rename(root / "gtFine_trainvaltest")
    with pytest.raises(DataError, match="folder not found") as err:
        _source(root)
    assert str(err.value).startswith(str(root / "gtFine" / "train"))


def test_broken_pairs_are_rejected_samples_naming_the_missing_file(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path)
    lone_image, lost_mask = _paths(root, *SAMPLES[2])
    lost_mask.unlink()  # its _color.png etc. are still there: they do not count
    lost_image, lone_mask = _paths(root, *SAMPLES[3])
    lost_image.unlink()
    converted = convert_source(tmp_path / "out", _source(root), "cityscapes", num_workers=2)
    assert set(converted.rejected["check"]) == {MISSING_PAIR} and len(converted.rejected) == 2
    messages = converted.messages()
    assert f"{lone_image}: no label image {lost_mask}. Fix: add the label image or remove the image." in messages
    assert f"{lone_mask}: no image {lost_image}. Fix: add the image or remove the label image." in messages
    assert len(converted.manifest) == len([s for s in SAMPLES if s[0] != "test"]) - 2  # test is not read


def test_unknown_label_id_names_the_mask(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path)
    _, mask = _paths(root, *SAMPLES[1])
    raw = _raw_mask()
    raw[0, 0] = 40
    Image.fromarray(raw).save(mask)
    with pytest.raises(DataError) as err:
        _prepare(root, tmp_path / "out")
    assert f"{mask}: unknown label id(s) 40" in str(err.value)


def test_wrong_size_mask_names_it(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path)
    _, mask = _paths(root, *SAMPLES[3])
    Image.fromarray(np.resize(_raw_mask(), (HEIGHT - 1, WIDTH))).save(mask)
    with pytest.raises(DataError) as err:
        _prepare(root, tmp_path / "out")
    assert f"{mask}: mask is {WIDTH}x{HEIGHT - 1} (WxH)" in str(err.value)
