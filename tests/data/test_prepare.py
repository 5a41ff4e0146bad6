"""The prepare stage: canonical form on disk, class table, atomic replacement."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pspnet.config import Params, parse_params
from pspnet.data import convert
from pspnet.errors import DataError
from pspnet.stages import prepare
from pspnet.data import context_scenes as syn
from pspnet.data.classes import ClassTable
from pspnet.data.manifest import read_manifest
from pspnet.data.sources.base import SampleRef, SourceData, SourceFolders
from pspnet.data.sources.synthetic import synthetic_source


def _use_source(monkeypatch: pytest.MonkeyPatch, adapter: object) -> None:
    """Make ``prepare`` use ``adapter`` whatever data.source.name says."""
    monkeypatch.setattr(prepare, "get_adapter", lambda name: adapter)

TINY_SYNTHETIC = {"seed": 1, "train_size": 8, "val_size": 4, "height": 48, "width": 64}


def _params(ignore_index: int = 255, **synthetic: object) -> Params:
    """Tiny parameters: 12 samples at 48x64."""
    return parse_params({"data": {"ignore_index": ignore_index, "synthetic": {**TINY_SYNTHETIC, **synthetic}}})


def test_prepare_writes_the_canonical_form(tmp_path: Path) -> None:
    params = _params()
    result = prepare.run(params, tmp_path)
    folder = tmp_path / params.paths.prepared
    assert result["num_samples"] == 12 and result["splits"] == {"train": 8, "val": 4} and result["num_classes"] == 9

    manifest = read_manifest(folder / "manifest.csv")
    assert list(manifest.columns) == ["id", "split", "image", "mask"]
    assert manifest["id"].is_unique and manifest["id"].iloc[0] == "train_0000"
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(f"{i}.png" for i in manifest["id"])

    classes = ClassTable.load(folder / "classes.json")
    assert classes.names == syn.CLASS_NAMES and classes.colors == syn.CLASS_COLORS and classes.ignore_index == 255
    assert classes.lookalikes == (('car', 'boat'),)  # evaluation reports their confusion by default

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
    prepare.run(params, tmp_path)
    folder = tmp_path / params.paths.prepared
    assert ClassTable.load(folder / "classes.json").ignore_index == 200
    values = set(np.unique(np.asarray(Image.open(folder / "masks/train_0000.png"))).tolist())
    assert 200 in values and 255 not in values


def test_prepare_replaces_the_old_dataset(tmp_path: Path) -> None:
    params = _params()
    folder = tmp_path / params.paths.prepared
    folder.mkdir(parents=True)
    (folder / "stale.txt").write_text("old")
    prepare.run(params, tmp_path)
    assert not (folder / "stale.txt").exists() and (folder / "manifest.csv").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["prepared"]  # no temp folders left


def test_failure_midway_leaves_the_previous_dataset_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params()
    prepare.run(params, tmp_path)
    folder = tmp_path / params.paths.prepared
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def failing_source(params: Params, folders: SourceFolders) -> SourceData:
        good = synthetic_source(params, folders)

        def samples() -> Iterator[SampleRef]:
            for number, sample in enumerate(good.samples):
                if number == 3:
                    raise OSError("disk full (simulated)")
                yield sample

        return SourceData(good.classes, samples(), good.total)

    _use_source(monkeypatch, failing_source)
    with pytest.raises(OSError, match="simulated"):
        prepare.run(_params(seed=9), tmp_path)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in folder.parent.iterdir()] == ["prepared"]


def test_repeated_and_invalid_ids_are_rejected_and_the_rest_prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        Image.fromarray(image).save(tmp_path / folder / "a.png")

    def duplicated(params: Params, folders: SourceFolders) -> SourceData:
        samples = [
            SampleRef("a", "train", lambda: (image, mask), (str(tmp_path / "x/a.png"),)),
            SampleRef("bad id!", "train", lambda: (image, mask)),
            SampleRef("a", "val", lambda: (image, mask), (str(tmp_path / "y/a.png"),)),
            SampleRef("b", "val", lambda: (image, mask)),
        ]
        return SourceData(ClassTable(("x",), ((1, 2, 3),)), samples, 4)

    _use_source(monkeypatch, duplicated)
    result = prepare.run(_params(), tmp_path)
    assert result["num_samples"] == 2 and result["rejected"] == 2
    assert list(read_manifest(tmp_path / "data/prepared/manifest.csv")["id"]) == ["a", "b"]
    rejected = pd.read_csv(tmp_path / "data/prepared/rejected.csv", dtype=str, keep_default_na=False)
    assert list(rejected.columns) == ["id", "split", "files", "check", "problem", "fix"]
    assert list(zip(rejected["id"], rejected["split"], rejected["check"])) == [
        ("bad id!", "train", "invalid_id"), ("a", "val", "duplicate_id")
    ]  # fmt: skip
    assert rejected["problem"].iloc[1] == "y/a.png: same sample id 'a' as x/a.png"  # relative to the project root
    assert "rename" in rejected["fix"].iloc[0] and "cannot be a file name" in rejected["problem"].iloc[0]


def test_a_source_whose_every_sample_is_rejected_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hopeless(params: Params, folders: SourceFolders) -> SourceData:
        mask = np.zeros((8, 8), np.uint8)
        samples = [SampleRef(f"s{i}", "train", lambda: (np.zeros((8, 8), np.float32), mask)) for i in range(2)]
        return SourceData(ClassTable(("x",), ((1, 2, 3),)), samples, 2)

    _use_source(monkeypatch, hopeless)
    with pytest.raises(DataError, match=r"every sample of source 'synthetic' was rejected \(2\)"):
        prepare.run(_params(), tmp_path)
    assert not (tmp_path / "data/prepared").exists()


def test_samples_are_loaded_a_bounded_window_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large source is never read whole: the writer pulls a sample from the source only when
    fewer than workers x IN_FLIGHT_PER_WORKER are pending, and the manifest keeps the order."""
    import threading

    lock = threading.Lock()
    written: list[str] = []
    real_write = convert.write_sample

    def recording_write(folder: Path, ref: SampleRef, source: str, options: convert.WriteOptions) -> tuple:
        try:
            return real_write(folder, ref, source, options)
        finally:
            with lock:
                written.append(ref.id)

    image, mask = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)
    window = 2 * convert.IN_FLIGHT_PER_WORKER
    pulled: list[int] = []

    def many(params: Params, folders: SourceFolders) -> SourceData:
        def refs() -> Iterator[SampleRef]:
            for i in range(100):
                pulled.append(i)
                with lock:  # the writer never pulls far ahead of what it has written
                    assert len(pulled) - len(written) <= window + 1
                yield SampleRef(f"s{i:03d}", "train" if i % 4 else "val", lambda: (image, mask))

        return SourceData(ClassTable(("x",), ((1, 2, 3),)), refs(), 100)

    monkeypatch.setattr(convert, "write_sample", recording_write)
    _use_source(monkeypatch, many)
    result = prepare.run(parse_params({"data": {"num_workers": 2}}), tmp_path)
    assert result["num_samples"] == 100 and len(written) == 100
    manifest = read_manifest(tmp_path / "data/prepared/manifest.csv")
    assert list(manifest["id"]) == [f"s{i:03d}" for i in range(100)]


def test_an_ignore_index_that_is_a_class_id_is_a_config_error(tmp_path: Path) -> None:
    from pspnet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.ignore_index 3 collides with class id 3 of 9 classes.*at least 9"):
        prepare.run(_params(ignore_index=3), tmp_path)


def test_the_dataset_record_names_the_source_and_a_content_version(tmp_path: Path) -> None:
    import json

    params = _params()
    first = prepare.run(params, tmp_path)["version"]
    record = json.loads((tmp_path / "data/prepared/dataset.json").read_text())
    assert record["source"] == "synthetic" and record["version"] == first and record["inputs"] == {}
    assert record["expect"]["image_sizes"] == [[48, 64]] and record["splits"] == {"train": 8, "val": 4}
    assert prepare.run(params, tmp_path)["version"] == first  # same data, same version
    assert prepare.run(_params(seed=2), tmp_path)["version"] != first


def test_every_configurable_source_has_an_adapter() -> None:
    from typing import get_args

    from pspnet.config import SOURCE_NAMES, SourceConfig
    from pspnet.data.sources import SOURCES, get_adapter

    assert tuple(SOURCES) == SOURCE_NAMES == get_args(SourceConfig.model_fields["name"].annotation)
    assert all(callable(get_adapter(name)) for name in SOURCES)
