"""`data_changes`: has the data changed since dvc.lock? Real DVC in tiny git + DVC projects."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pspnet.config import load_params
from pspnet.ops.data_changes import data_changes
from pspnet.errors import DataError
from tests.integration.conftest import make_tiny_project, run

pytestmark = pytest.mark.integration  # real DVC in tiny git + DVC projects

HEIGHT, WIDTH = 16, 24


def _changes(project: Path):
    return data_changes(load_params(project / "params.yaml"), project)


def _set_param(project: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    node = params
    for part in section.split("."):
        node = node[part]
    node[key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _add_samples(root: Path, split: str, names: list[str]) -> None:
    """Images + id masks in the `folder` layout (3 classes, every class in every mask)."""
    for name in names:
        image = np.random.default_rng(sum(map(ord, name))).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        mask = np.repeat(np.arange(3, dtype=np.uint8), HEIGHT // 3 + 1)[:HEIGHT, None].repeat(WIDTH, axis=1)
        for sub, array in (("images", image), ("masks", mask)):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / sub / split / f"{name}.png")


def test_synthetic_source_never_run_unchanged_params_changed_and_code_is_not_data(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "project")

    first = _changes(project)
    assert first.changed and first.reasons == ["never run: no dvc.lock"]

    run(["dvc", "repro", "prepare"], project)
    after_prepare = _changes(project)
    assert not after_prepare.changed and after_prepare.reasons == [], after_prepare
    assert [h.name for h in after_prepare.hashes] == ["data/raw"] and not after_prepare.hashes[0].changed
    assert after_prepare.summary().startswith("data/raw ") and "as in dvc.lock" in after_prepare.summary()

    # A code-only edit: DVC would rerun prepare, but no new data arrived.
    with (project / "src/pspnet/stages/prepare.py").open("a") as code:
        code.write("\n# a code-only edit\n")
    assert "src/pspnet/stages/prepare.py" in run(["dvc", "status", "prepare"], project).stdout
    assert not _changes(project).changed

    _set_param(project, "data.synthetic", "seed", 1)
    seeded = _changes(project)
    assert seeded.changed and seeded.params_changed == ["data.synthetic.seed: 0 -> 1"]
    assert seeded.reasons == ["data params differ from dvc.lock: data.synthetic.seed: 0 -> 1"]


def test_imported_folder_source_changes_when_a_file_is_added_to_it(tmp_path: Path) -> None:
    source = tmp_path / "my-dataset"  # outside the project: imported with dvc import-url
    source.mkdir()
    (source / "classes.txt").write_text("ground\nwall\nsky\n")
    _add_samples(source, "train", ["a", "b"])
    _add_samples(source, "val", ["v"])
    project = make_tiny_project(tmp_path / "project", {"data": {"source": {"name": "folder", "location": str(source)}}})
    run(["pspnet", "import-data"], project)
    run(["dvc", "repro", "prepare"], project)

    unchanged = _changes(project)
    assert not unchanged.changed, unchanged
    assert [(h.name, h.recorded_in) for h in unchanged.hashes] == [
        ("data.source.location", "data/raw/folder.dvc"),
        ("data/raw", "dvc.lock"),
    ]

    _add_samples(source, "train", ["c"])
    added = _changes(project)
    assert added.changed and len(added.reasons) == 1, added
    assert added.reasons[0].startswith(f"source {source} changed: data.source.location ")
    assert "data/raw/folder.dvc" in added.reasons[0]
    assert added.hashes[0].recorded != added.hashes[0].current and not added.hashes[1].changed

    # `dvc update` brought the new version in: the source matches its .dvc file again, but
    # prepare has not seen it yet.
    run(["pspnet", "import-data"], project)
    updated = _changes(project)
    assert updated.changed and [r.split(":")[0] for r in updated.reasons] == ["raw data changed"], updated

    run(["dvc", "repro", "prepare"], project)
    assert not _changes(project).changed

    shutil.rmtree(source)
    with pytest.raises(DataError, match=r"data\.source\.location: the source .* recorded in data/raw/folder\.dvc does not exist"):
        _changes(project)
