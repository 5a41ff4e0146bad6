"""The prepare stage: canonical form on disk, class table, atomic replacement."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.config import Params, parse_params
from pspnet.data import prepare as prep
from pspnet.data import synthetic as syn
from pspnet.data.classes import ClassTable
from pspnet.data.manifest import read_manifest

TINY_SYNTHETIC = {"seed": 1, "train_size": 8, "val_size": 4, "height": 48, "width": 64}


def _params(ignore_index: int = 255, **synthetic: object) -> Params:
    """Tiny parameters: 12 samples at 48x64."""
    return parse_params({"data": {"ignore_index": ignore_index, "synthetic": {**TINY_SYNTHETIC, **synthetic}}})


def test_prepare_writes_the_canonical_form(tmp_path: Path) -> None:
    params = _params()
    result = prep.prepare(params, tmp_path)
    folder = tmp_path / params.paths.prepared
    assert result["num_samples"] == 12 and result["splits"] == {"train": 8, "val": 4} and result["num_classes"] == 9

    manifest = read_manifest(folder / "manifest.csv")
    assert list(manifest.columns) == ["id", "split", "image", "mask"]
    assert manifest["id"].is_unique and manifest["id"].iloc[0] == "train_0000"
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(f"{i}.png" for i in manifest["id"])

    classes = ClassTable.load(folder / "classes.json")
    assert classes.names == syn.CLASS_NAMES and classes.colors == syn.CLASS_COLORS and classes.ignore_index == 255

    cfg = params.data.synthetic
    for row in manifest.itertuples():
        with Image.open(folder / row.image) as image, Image.open(folder / row.mask) as mask:
            assert (image.mode, mask.mode) == ("RGB", "L")
            assert image.size == mask.size == (cfg.width, cfg.height)
            values = set(np.unique(np.asarray(mask)).tolist())
        assert values <= set(range(9)) | {255}
    # What is on disk is exactly what the generator draws for that (seed, split, index).
    image, mask = syn.generate_one(cfg, "val", 2)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "images/val_0002.png")), image)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "masks/val_0002.png")), mask)


def test_prepare_uses_the_configured_ignore_index(tmp_path: Path) -> None:
    params = _params(ignore_index=200)
    prep.prepare(params, tmp_path)
    folder = tmp_path / params.paths.prepared
    assert ClassTable.load(folder / "classes.json").ignore_index == 200
    values = set(np.unique(np.asarray(Image.open(folder / "masks/train_0000.png"))).tolist())
    assert 200 in values and 255 not in values


def test_prepare_replaces_the_old_dataset(tmp_path: Path) -> None:
    params = _params()
    folder = tmp_path / params.paths.prepared
    folder.mkdir(parents=True)
    (folder / "stale.txt").write_text("old")
    prep.prepare(params, tmp_path)
    assert not (folder / "stale.txt").exists() and (folder / "manifest.csv").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["prepared"]  # no temp folders left


def test_failure_midway_leaves_the_previous_dataset_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params()
    prep.prepare(params, tmp_path)
    folder = tmp_path / params.paths.prepared
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def failing_source(params: Params, root: Path) -> prep.SourceData:
        good = prep.synthetic_source(params, root)

        def samples() -> Iterator[prep.Sample]:
            for number, sample in enumerate(good.samples):
                if number == 3:
                    raise OSError("disk full (simulated)")
                yield sample

        return prep.SourceData(good.classes, samples(), good.total)

    monkeypatch.setitem(prep.SOURCES, "synthetic", failing_source)
    with pytest.raises(OSError, match="simulated"):
        prep.prepare(_params(seed=9), tmp_path)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in folder.parent.iterdir()] == ["prepared"]


def test_a_source_with_duplicate_ids_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def duplicated(params: Params, root: Path) -> prep.SourceData:
        image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
        samples = [prep.Sample("a", "train", image, mask), prep.Sample("a", "val", image, mask)]
        return prep.SourceData(ClassTable(("x",), ((1, 2, 3),)), samples, 2)

    monkeypatch.setitem(prep.SOURCES, "synthetic", duplicated)
    with pytest.raises(prep.DataError, match="'a': duplicate sample id"):
        prep.prepare(_params(), tmp_path)
    assert not (tmp_path / "data/prepared").exists()
