"""The ``voc`` source: Pascal VOC 2012 segmentation, alone and with SBD (train_aug)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from pspnet.config import Params, parse_params
from tests.data.sources.convert import write_prepared
from pspnet.data.sources.base import SourceFolders, palette_colors
from pspnet.data.sources.voc import CLASS_NAMES, voc_source
from pspnet.errors import DataError

HEIGHT, WIDTH = 12, 16
VOC_TRAIN = ("2007_000001", "2007_000002", "2007_000003")
VOC_VAL = ("2007_000004", "2007_000005")
#: SBD train names one VOC train id (its masks differ) and one VOC val id (dropped from train_aug).
SBD_TRAIN = ("2007_000002", "2007_000004", "2008_000006")
SBD_VAL = ("2008_000007",)
#: Has a 255 border ring in its VOC mask.
BORDERED = "2007_000001"
#: SBD-only ids: 2008_000006's image is in SBD only, 2008_000007's in both (VOC's is used).
SBD_ONLY_IMAGE, BOTH_IMAGES = "2008_000006", "2008_000007"
VOC_PALETTE = [v for color in palette_colors(256) for v in color]


def _rng(sample_id: str, salt: int) -> np.random.Generator:
    return np.random.default_rng([int(sample_id.replace("_", "")), salt])


def _mask(sample_id: str, salt: int = 0) -> np.ndarray:
    """A (HEIGHT, WIDTH) mask of ids 0..20 (salt 1 = SBD's version)."""
    return _rng(sample_id, salt).integers(0, len(CLASS_NAMES), (HEIGHT, WIDTH), dtype=np.uint8)


def _write_jpg(path: Path, sample_id: str, salt: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rng(sample_id, salt + 10).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path, quality=95)


def _write_voc_mask(path: Path, ids: np.ndarray) -> None:
    image = Image.fromarray(ids)
    image.putpalette(VOC_PALETTE)
    assert image.mode == "P"
    image.save(path)


def _write_sbd_mask(path: Path, ids: np.ndarray, struct: str = "GTcls") -> None:
    boundaries = np.empty((len(CLASS_NAMES) - 1, 1), dtype=object)
    for i in range(boundaries.shape[0]):
        boundaries[i, 0] = scipy.sparse.csc_matrix(ids.shape, dtype=bool)
    present = np.unique(ids[ids > 0]).astype(np.uint8)
    scipy.io.savemat(path, {struct: {"Segmentation": ids, "Boundaries": boundaries, "CategoriesPresent": present}})


def _voc_mask_expected(sample_id: str) -> np.ndarray:
    """The VOC mask as written in the fixture (255 ring on BORDERED)."""
    mask = _mask(sample_id)
    if sample_id == BORDERED:
        mask[[0, -1], :] = mask[:, [0, -1]] = 255
    return mask


def make_voc(top: Path) -> Path:
    """VOC 2012 under ``top/VOCdevkit/VOC2012``; returns ``top``."""
    voc = top / "VOCdevkit" / "VOC2012"
    (voc / "SegmentationClass").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for sample_id in (*VOC_TRAIN, *VOC_VAL):
        _write_jpg(voc / "JPEGImages" / f"{sample_id}.jpg", sample_id)
        _write_voc_mask(voc / "SegmentationClass" / f"{sample_id}.png", _voc_mask_expected(sample_id))
    _write_jpg(voc / "JPEGImages" / f"{BOTH_IMAGES}.jpg", BOTH_IMAGES)  # in VOC's images, in no VOC list
    for split, ids in (("train", VOC_TRAIN), ("val", VOC_VAL), ("trainval", VOC_TRAIN + VOC_VAL)):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (voc / "ImageSets" / "Segmentation" / "test.txt").write_text("2009_000001\n")
    return top


def make_sbd(top: Path) -> Path:
    """The SBD release under ``top/benchmark_RELEASE/dataset``; returns ``top/benchmark_RELEASE``."""
    dataset = top / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    for sample_id in (*SBD_TRAIN, *SBD_VAL):
        _write_jpg(dataset / "img" / f"{sample_id}.jpg", sample_id, salt=1)
        _write_sbd_mask(dataset / "cls" / f"{sample_id}.mat", _mask(sample_id, salt=1))
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (dataset / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    return dataset.parent


def _params(root: Path, ignore_index: int = 255) -> Params:
    return parse_params({"data": {"ignore_index": ignore_index, "source": {"name": "voc", "location": str(root)}}})


def _write(tmp_path: Path, params: Params, folders: SourceFolders) -> pd.DataFrame:
    data = voc_source(params, folders)
    return write_prepared(tmp_path / "out", data, "voc", num_workers=2, max_failures=20)


def _written_mask(tmp_path: Path, sample_id: str) -> np.ndarray:
    return np.asarray(Image.open(tmp_path / "out" / "masks" / f"{sample_id}.png"))


def _ids(manifest: pd.DataFrame, split: str) -> list[str]:
    return manifest.loc[manifest["split"] == split, "id"].tolist()


def test_voc_train_and_val_map_the_border_to_ignore(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "raw")
    params = _params(root, ignore_index=200)
    data = voc_source(params, SourceFolders(root))
    assert data.classes.names == CLASS_NAMES and data.classes.num_classes == 21
    assert data.classes.names[0] == "background" and data.classes.names[20] == "tvmonitor"
    assert data.classes.colors[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0)) and data.classes.ignore_index == 200
    assert data.expect.max_side == 500 and data.expect.image_sizes is None and data.total == 5
    assert data.inputs == (root / "VOCdevkit" / "VOC2012",)

    manifest = write_prepared(tmp_path / "out", data, "voc", num_workers=2, max_failures=20)
    assert _ids(manifest, "train") == list(VOC_TRAIN) and _ids(manifest, "val") == list(VOC_VAL)
    voc = root / "VOCdevkit" / "VOC2012"
    for sample_id in (*VOC_TRAIN, *VOC_VAL):
        expected = _voc_mask_expected(sample_id)
        expected[expected == 255] = 200
        np.testing.assert_array_equal(_written_mask(tmp_path, sample_id), expected)
        source = (voc / "JPEGImages" / f"{sample_id}.jpg").read_bytes()
        assert (tmp_path / "out" / "images" / f"{sample_id}.jpg").read_bytes() == source
    bordered = _written_mask(tmp_path, BORDERED)
    assert set(bordered[0]) == {200} and 0 < (bordered == 200).sum() < bordered.size


@pytest.mark.parametrize("level", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_location_may_be_voc2012_vocdevkit_or_its_parent(tmp_path: Path, level: str) -> None:
    root = make_voc(tmp_path / "raw")
    data = voc_source(_params(root / level), SourceFolders(root / level))
    assert [(r.id, r.split) for r in data.samples] == [(i, "train") for i in VOC_TRAIN] + [(i, "val") for i in VOC_VAL]
    assert data.inputs == (root / "VOCdevkit" / "VOC2012",)


@pytest.mark.parametrize("sbd_level", ["benchmark_RELEASE", "benchmark_RELEASE/dataset"])
def test_sbd_makes_train_aug_preferring_voc_files(tmp_path: Path, sbd_level: str) -> None:
    root = make_voc(tmp_path / "raw")
    make_sbd(tmp_path / "raw")
    sbd = tmp_path / "raw" / sbd_level
    dataset = tmp_path / "raw" / "benchmark_RELEASE" / "dataset"
    # The fixture's .mat reads like the release's: a MATLAB struct with field access.
    mat = scipy.io.loadmat(dataset / "cls" / f"{SBD_ONLY_IMAGE}.mat", struct_as_record=False, squeeze_me=True)
    assert mat["GTcls"].Segmentation.dtype == np.uint8 and mat["GTcls"].Segmentation.shape == (HEIGHT, WIDTH)

    data = voc_source(_params(root), SourceFolders(root, sbd))
    assert data.inputs == (root / "VOCdevkit" / "VOC2012", dataset) and data.total == 7
    manifest = _write(tmp_path, _params(root), SourceFolders(root, sbd))
    # (SBD train + SBD val + VOC train) minus VOC val; "train" keeps its name, val is VOC's.
    assert _ids(manifest, "train") == sorted({*VOC_TRAIN, SBD_ONLY_IMAGE, BOTH_IMAGES})
    assert _ids(manifest, "val") == list(VOC_VAL)

    # 2007_000002 is in both: VOC's mask (with nothing of SBD's) and VOC's image.
    assert not np.array_equal(_mask("2007_000002"), _mask("2007_000002", salt=1))
    np.testing.assert_array_equal(_written_mask(tmp_path, "2007_000002"), _mask("2007_000002"))
    # The bordered VOC mask keeps its ignored ring inside train_aug.
    assert set(_written_mask(tmp_path, BORDERED)[0]) == {255}
    # SBD-only ids: SBD's mask; VOC's image when it has one, else SBD's.
    voc = root / "VOCdevkit" / "VOC2012"
    for sample_id, image in ((SBD_ONLY_IMAGE, dataset / "img"), (BOTH_IMAGES, voc / "JPEGImages")):
        np.testing.assert_array_equal(_written_mask(tmp_path, sample_id), _mask(sample_id, salt=1))
        written = (tmp_path / "out" / "images" / f"{sample_id}.jpg").read_bytes()
        assert written == (image / f"{sample_id}.jpg").read_bytes()
    assert (dataset / "img" / f"{BOTH_IMAGES}.jpg").read_bytes() != (voc / "JPEGImages" / f"{BOTH_IMAGES}.jpg").read_bytes()
    # Val samples are VOC's own.
    np.testing.assert_array_equal(_written_mask(tmp_path, "2007_000004"), _mask("2007_000004"))


def test_missing_segmentation_class_folder_is_named(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "raw")
    shutil.rmtree(root / "VOCdevkit" / "VOC2012" / "SegmentationClass")
    with pytest.raises(DataError) as err:
        voc_source(_params(root), SourceFolders(root))
    assert str(err.value).startswith(f"{root / 'VOCdevkit' / 'VOC2012' / 'SegmentationClass'}: folder not found")


def test_listed_id_without_image_is_named_with_its_list(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "raw")
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "2007_000003.jpg").unlink()
    with pytest.raises(DataError) as err:  # a rejected sample, reported with any others
        _write(tmp_path, _params(root), SourceFolders(root))
    message = str(err.value)
    assert f"  - {voc / 'JPEGImages' / '2007_000003.jpg'}: image not found" in message and "1 problem(s)" in message
    assert str(voc / "ImageSets" / "Segmentation" / "train.txt") in message


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (np.full((HEIGHT, WIDTH), 42, dtype=np.uint8), "unknown label id(s) 42"),
        (np.zeros((HEIGHT + 1, WIDTH), dtype=np.uint8), "mask is 16x13 (WxH)"),
    ],
    ids=["unknown-id", "wrong-size"],
)
def test_bad_voc_mask_is_named(tmp_path: Path, bad: np.ndarray, expected: str) -> None:
    root = make_voc(tmp_path / "raw")
    mask = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000005.png"
    _write_voc_mask(mask, bad)
    with pytest.raises(DataError) as err:
        _write(tmp_path, _params(root), SourceFolders(root))
    assert f"  - {mask}: {expected}" in str(err.value) and "1 problem(s)" in str(err.value)


def test_sbd_mat_without_gtcls_is_named(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "raw")
    sbd = make_sbd(tmp_path / "raw")
    mat = sbd / "dataset" / "cls" / f"{SBD_ONLY_IMAGE}.mat"
    _write_sbd_mask(mat, _mask(SBD_ONLY_IMAGE), struct="GTinst")
    with pytest.raises(DataError) as err:
        _write(tmp_path, _params(root), SourceFolders(root, sbd))
    assert f"  - {mat}: no GTcls.Segmentation" in str(err.value) and "GTinst" in str(err.value)


def test_sbd_listed_id_without_mat_is_named(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "raw")
    sbd = make_sbd(tmp_path / "raw")
    mat = sbd / "dataset" / "cls" / f"{BOTH_IMAGES}.mat"
    mat.unlink()
    with pytest.raises(DataError) as err:
        _write(tmp_path, _params(root), SourceFolders(root, sbd))
    message = str(err.value)
    assert str(mat) in message and str(sbd / "dataset" / "val.txt") in message
