"""New raw data -> `pspnet import-data` (dvc update) -> `dvc repro` reruns prepare and everything
downstream; the new data version is in dvc.lock and in the MLflow run's tags."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.integration.conftest import make_tiny_project, run

pytestmark = pytest.mark.integration

HEIGHT, WIDTH = 48, 64
CLASSES = ("ground", "wall", "sky")


def _add_samples(root: Path, split: str, names: list[str]) -> None:
    """Images + id masks in the `folder` layout; every mask holds every class."""
    for name in names:
        rng = np.random.default_rng(sum(map(ord, name)))
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        mask = np.repeat(np.arange(3, dtype=np.uint8), HEIGHT // 3 + 1)[:HEIGHT, None].repeat(WIDTH, axis=1)
        for sub, array in (("images", image), ("masks", mask)):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / sub / split / f"{name}.png")


def _prepare_dep_md5(project: Path) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(d["md5"] for d in lock["stages"]["prepare"]["deps"] if d["path"] == "data/raw")


def _run_tags(project: Path) -> dict[str, str]:
    run_id = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    return client.get_run(run_id).data.tags


def test_new_images_in_the_source_rerun_the_pipeline_with_a_new_data_version(tmp_path: Path) -> None:
    source = tmp_path / "my-dataset"  # outside the project: imported with dvc import-url
    (source).mkdir()
    (source / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    _add_samples(source, "train", ["a", "b", "c", "d"])
    _add_samples(source, "val", ["v1", "v2"])
    project = make_tiny_project(tmp_path / "project", {"data": {"source": {"name": "folder", "location": str(source)}}})

    imported = json.loads(run(["pspnet", "import-data"], project).stdout)["inputs"][0]
    assert imported["action"] == "dvc import-url" and imported["path"] == "data/raw/folder"
    run(["dvc", "repro"], project)
    first_md5, first_tags = _prepare_dep_md5(project), _run_tags(project)
    first = json.loads((project / "data/prepared/dataset.json").read_text())
    assert first["splits"] == {"train": 4, "val": 2}
    assert first_tags["data.source"] == "folder" and first_tags["data.version"] == first["version"]
    assert first_tags["data.location.dvc_md5"] == imported["version"]

    assert "Stage 'prepare' didn't change" in run(["dvc", "repro"], project).stdout  # nothing new: nothing reruns

    _add_samples(source, "train", ["e", "f"])
    updated = json.loads(run(["pspnet", "import-data"], project).stdout)["inputs"][0]
    assert updated["action"] == "dvc update" and updated["changed"] is True
    out = run(["dvc", "repro"], project).stdout
    for stage in ("prepare", "validate", "train", "evaluate", "test", "register"):
        assert f"Running stage '{stage}'" in out

    second = json.loads((project / "data/prepared/dataset.json").read_text())
    assert second["splits"] == {"train": 6, "val": 2} and second["version"] != first["version"]
    assert _prepare_dep_md5(project) != first_md5
    tags = _run_tags(project)
    assert tags["data.version"] == second["version"] and tags["data.location.dvc_md5"] == updated["version"]
    assert tags["data.location"] == str(source)
    summary = json.loads((project / "reports/validation/summary.json").read_text())
    assert any(s["id"] == f"{first['version']}->{second['version']}:train" for s in summary["distribution_shift"])
