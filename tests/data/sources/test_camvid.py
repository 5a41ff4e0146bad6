"""The ``camvid`` source: the SegNet layout, its label mapping (11 = void -> ignore) and lists,
on a generated fixture; and on the real CamVid in ../shared/datasets/camvid where present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.config import parse_params
from tests.data.sources.convert import write_prepared
from pspnet.data.convert import convert_source
from pspnet.data.sources.base import MISSING_PAIR, SourceFolders
from pspnet.data.sources.camvid import CLASS_NAMES, IMAGE_SIZE, camvid_source
from pspnet.errors import DataError

HEIGHT, WIDTH = 12, 16
#: The real dataset, where the machine has it (CI does; users' machines need not).
REAL_CAMVID = Path(os.environ.get("PSPNET_CAMVID", Path(__file__).resolve().parents[4] / "shared/datasets/camvid"))


def _write(root: Path, split: str, name: str, labels: np.ndarray, size: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """One image + label PNG in the SegNet layout; returns the image pixels."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(len(name)).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / split / f"{name}.png")
    Image.fromarray(labels.astype(np.uint8), mode="L").save(root / f"{split}annot" / f"{name}.png")
    return image


def _labels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 12, (HEIGHT, WIDTH)).astype(np.uint8)


def write_segnet_camvid(root: Path, splits: dict[str, tuple[str, ...]]) -> Path:
    """A CamVid in the SegNet layout at ``root``: per split, ``<split>/`` + ``<split>annot/`` (random
    labels 0..11, 11 void) and ``<split>.txt`` in the tutorial's form, listing every image."""
    seed = 0
    for split, names in splits.items():
        lines = []
        for name in names:
            _write(root, split, name, _labels(seed))
            seed += 1
            lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return root


@pytest.fixture
def camvid(tmp_path: Path) -> Path:
    """3 train + 2 val samples; train.txt lists two of the three train images (tutorial paths)."""
    root = tmp_path / "CamVid"
    for i, name in enumerate(["0001TP_006690", "0001TP_006720", "Seq05VD_f00000"]):
        _write(root, "train", name, _labels(i))
    for i, name in enumerate(["0016E5_07959", "0016E5_07961"]):
        _write(root, "val", name, _labels(10 + i))
    (root / "train.txt").write_text(
        "/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/0001TP_006690.png\n"
        "/SegNet/CamVid/train/Seq05VD_f00000.png /SegNet/CamVid/trainannot/Seq05VD_f00000.png\n"
    )
    return root


def _source(root: Path, ignore: int = 255):
    params = parse_params({"data": {"ignore_index": ignore, "source": {"name": "camvid", "location": str(root)}}})
    return camvid_source(params, SourceFolders(root))


def test_converts_the_segnet_layout_with_void_ignored(camvid: Path, tmp_path: Path) -> None:
    data = _source(camvid, ignore=200)
    assert data.classes.names == CLASS_NAMES and data.classes.num_classes == 11
    assert data.expect.image_sizes == (IMAGE_SIZE,) == ((360, 480),)
    manifest = write_prepared(tmp_path / "out", data, "camvid", num_workers=2, max_failures=20)
    # train.txt decides the train split; val has no list, so every val image is taken.
    assert manifest.groupby("split")["id"].apply(list).to_dict() == {
        "train": ["0001TP_006690", "Seq05VD_f00000"],
        "val": ["0016E5_07959", "0016E5_07961"],
    }
    for row in manifest.itertuples():
        split = row.split
        raw = np.asarray(Image.open(camvid / f"{split}annot" / f"{row.id}.png"))
        written = np.asarray(Image.open(tmp_path / "out" / row.mask))
        expected = np.where(raw == 11, 200, raw)
        np.testing.assert_array_equal(written, expected)
        # The PNG image is copied byte for byte.
        assert (tmp_path / "out" / row.image).read_bytes() == (camvid / split / f"{row.id}.png").read_bytes()


def test_a_missing_label_folder_names_it(camvid: Path) -> None:
    for path in (camvid / "valannot").iterdir():
        path.unlink()
    (camvid / "valannot").rmdir()
    with pytest.raises(DataError, match=r"(?s)valannot: folder not found.*trainannot/ val/ valannot/"):
        _source(camvid)


def test_every_broken_pair_is_a_rejected_sample_naming_its_file(camvid: Path, tmp_path: Path) -> None:
    """A list line naming no image, an image without label image, a label image without image
    (listed split or not): all reported together, each with its file and fix."""
    (camvid / "train" / "Seq05VD_f00000.png").unlink()  # listed in train.txt, line 2
    _write(camvid, "train", "0001TP_009999", _labels(5))
    (camvid / "train" / "0001TP_009999.png").unlink()  # its label image stays
    (camvid / "valannot" / "0016E5_07961.png").unlink()  # val has no list: every image counts
    _write(camvid, "val", "0016E5_08000", _labels(6))
    (camvid / "val" / "0016E5_08000.png").unlink()
    data = _source(camvid)
    converted = convert_source(tmp_path / "out", data, "camvid", num_workers=2)
    rows = converted.rejected.set_index("id")
    assert set(rows.index) == {"Seq05VD_f00000", "0001TP_009999", "0016E5_07961", "0016E5_08000"}
    assert set(rows["check"]) == {MISSING_PAIR}
    messages = "\n".join(converted.messages())
    assert f"{camvid / 'train.txt'}:2: lists 'Seq05VD_f00000' but {camvid / 'train'} has no such image" in messages
    assert f"{camvid / 'trainannot' / '0001TP_009999.png'}: no image {camvid / 'train' / '0001TP_009999.png'}" in messages
    assert f"{camvid / 'val' / '0016E5_07961.png'}: no label image {camvid / 'valannot' / '0016E5_07961.png'}" in messages
    assert f"{camvid / 'valannot' / '0016E5_08000.png'}: no image" in messages
    assert sorted(converted.manifest["id"]) == ["0001TP_006690", "0016E5_07959"]  # the intact samples still convert


def test_unknown_label_ids_and_wrong_sizes_name_the_file(camvid: Path, tmp_path: Path) -> None:
    bad = _labels(0)
    bad[0, 0] = 12
    _write(camvid, "val", "0016E5_07959", bad)
    _write(camvid, "val", "0016E5_07961", np.zeros((HEIGHT + 2, WIDTH), np.uint8), size=(HEIGHT, WIDTH))
    with pytest.raises(DataError) as err:
        write_prepared(tmp_path / "out", _source(camvid), "camvid", num_workers=2, max_failures=20)
    message = str(err.value)
    assert "has 2 problem(s)" in message
    assert f"{camvid / 'valannot' / '0016E5_07959.png'}: unknown label id(s) 12" in message
    assert f"{camvid / 'valannot' / '0016E5_07961.png'}: mask is 16x14 (WxH) but its image" in message


@pytest.mark.skipif(not REAL_CAMVID.is_dir(), reason=f"real CamVid not found at {REAL_CAMVID} (set PSPNET_CAMVID)")
def test_the_real_camvid_converts_completely(tmp_path: Path) -> None:
    data = _source(REAL_CAMVID)
    manifest = write_prepared(tmp_path / "out", data, "camvid", num_workers=2, max_failures=20)
    assert manifest["split"].value_counts().to_dict() == {"train": 367, "val": 101}
    values: set[int] = set()
    for mask in manifest["mask"][::40]:
        with Image.open(tmp_path / "out" / mask) as img:
            assert img.size == (480, 360) and img.mode == "L"
            values |= set(np.unique(np.asarray(img)).tolist())
    assert values <= set(range(11)) | {255} and 255 in values
