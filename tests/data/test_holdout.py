"""``data.holdout``: whole groups (CamVid sequences, a folder dataset's cameras) of train become a
split of their own in the real ``prepare`` stage, recorded in dataset.json; never a frame of a
held-out group stays in train; settings that cannot be what the user meant are refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pspnet.config import parse_params
from pspnet.errors import ConfigError
from pspnet.stages import prepare
from tests.data.sources.test_camvid import _labels, _write

TRAIN = ("0001TP_006690", "0001TP_006720", "0006R0_f00930", "0006R0_f00960", "0006R0_f00990", "0016E5_00390")
VAL = ("0016E5_07959", "0016E5_07961")


@pytest.fixture
def camvid_project(tmp_path: Path) -> Path:
    """A project whose raw data is a tiny CamVid (SegNet layout) of three training sequences."""
    raw = tmp_path / "data" / "raw" / "camvid"
    for i, name in enumerate(TRAIN + VAL):
        _write(raw, "train" if name in TRAIN else "val", name, _labels(i))
    return tmp_path


def _prepare(root: Path, holdout: dict[str, Any], source: str = "camvid", location: str = "data/raw/camvid") -> pd.DataFrame:
    params = parse_params({"data": {"source": {"name": source, "location": location}, "holdout": holdout, "num_workers": 1}})
    prepare.run(params, root)
    return pd.read_csv(root / "data" / "prepared" / "manifest.csv")


def test_a_camvid_sequence_is_held_out_whole_and_recorded(camvid_project: Path) -> None:
    manifest = _prepare(camvid_project, {"groups": ["0006R0"]})
    by_split = manifest.groupby("split")["id"].apply(sorted).to_dict()
    assert by_split["holdout"] == ["0006R0_f00930", "0006R0_f00960", "0006R0_f00990"]
    assert by_split["train"] == ["0001TP_006690", "0001TP_006720", "0016E5_00390"]
    assert by_split["val"] == list(VAL)

    record = json.loads((camvid_project / "data" / "prepared" / "dataset.json").read_text())
    assert record["splits"] == {"train": 3, "val": 2, "holdout": 3}
    assert record["holdout"]["groups"] == ["0006R0"] and record["holdout"]["samples"] == 3
    # Which splits share a group is on record: CamVid's own val shares 0016E5 with train.
    assert record["holdout"]["groups_by_split"] == {
        "holdout": {"0006R0": 3}, "train": {"0001TP": 2, "0016E5": 1}, "val": {"0016E5": 2},
    }


def test_without_groups_nothing_moves_and_dataset_json_has_no_holdout(camvid_project: Path) -> None:
    manifest = _prepare(camvid_project, {"groups": []})
    assert set(manifest["split"]) == {"train", "val"}
    assert "holdout" not in json.loads((camvid_project / "data" / "prepared" / "dataset.json").read_text())


def test_a_folder_dataset_is_split_by_the_group_pattern(tmp_path: Path) -> None:
    """The `folder` source's equivalent: the group key comes from the ids (here a camera name)."""
    from PIL import Image

    source = tmp_path / "data" / "raw" / "mine"
    (source / "classes.txt").parent.mkdir(parents=True)
    (source / "classes.txt").write_text("ground\nsky\n")
    ids = {"train": ["camA-001", "camA-002", "camB-001", "camC-007"], "val": ["camD-001"]}
    for split, names in ids.items():
        for name in names:
            for sub, array in (("images", np.full((8, 8, 3), 90, np.uint8)), ("masks", np.eye(8, dtype=np.uint8))):
                (source / sub / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(source / sub / split / f"{name}.png")
    manifest = _prepare(tmp_path, {"groups": ["camB", "camC"], "group_pattern": r"^(cam\w)-", "split": "new_cameras"},
                        source="folder", location="data/raw/mine")
    assert sorted(manifest.loc[manifest["split"] == "new_cameras", "id"]) == ["camB-001", "camC-007"]
    assert sorted(manifest.loc[manifest["split"] == "train", "id"]) == ["camA-001", "camA-002"]


@pytest.mark.parametrize(
    ("holdout", "message"),
    [
        ({"groups": ["0009XX"]}, r"groups \['0009XX'\] have no 'train' sample; its groups are \{'0001TP': 2, '0006R0': 3, '0016E5': 1\}"),
        ({"groups": ["0001TP", "0006R0", "0016E5"]}, r"holding out .* leaves no 'train' sample"),
        ({"groups": ["0006R0"], "group_pattern": r"^(Seq\w+)_"}, r"6 'train' sample id\(s\) do not match group_pattern"),
    ],
)
def test_a_holdout_that_cannot_be_meant_is_refused_and_nothing_is_written(
    camvid_project: Path, holdout: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"data\.holdout in params\.yaml: " + message):
        _prepare(camvid_project, holdout)
    assert not (camvid_project / "data" / "prepared").exists()


@pytest.mark.parametrize(
    ("holdout", "message"),
    [
        ({"group_pattern": "^[^_]+_"}, "has no capture group"),
        ({"group_pattern": "^([^_]+_"}, "not a regular expression"),
        ({"split": "train"}, "name the held-out split differently"),
    ],
)
def test_bad_holdout_settings_name_the_field(holdout: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params({"data": {"holdout": holdout}})
