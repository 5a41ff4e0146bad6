"""Presets (`pspnet experiment`): validated before anything runs, reported faithfully."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pspnet.errors import ConfigError
from pspnet.config import flatten
from pspnet.presets import load_preset, parse_overrides, render_report, unflatten

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy2(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "configs").mkdir()
    return tmp_path


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.yaml")))
def test_every_shipped_preset_is_valid(preset: str) -> None:
    path, settings, params = load_preset(REPO_ROOT, preset)
    assert path == REPO_ROOT / "configs" / f"{preset}.yaml" and settings
    # Every preset registers under its own model: champions compare on the same data only.
    assert params.register_.model_name != "pspnet"
    if params.data.source.name == "camvid":
        assert params.register_.model_name == "pspnet-camvid"


def test_the_cpu_preset_is_the_documented_one() -> None:
    _, settings, params = load_preset(REPO_ROOT, "camvid-cpu")
    assert params.model.encoder == "resnet18" and params.model.output_stride == 16 and params.train.epochs == 64
    assert params.train.color_jitter.p == 0.8  # the recipe that held up on the held-out sequence (docs/results.md)
    assert params.train.class_weights == "median_frequency" and params.train.device == "auto"
    assert settings["data.source.location"] == "../shared/datasets/camvid"


def test_a_preset_is_merged_over_params_and_set_overrides_it(project: Path) -> None:
    (project / "configs/mine.yaml").write_text(yaml.safe_dump({"train": {"epochs": 3, "lr": 0.02}}))
    _, settings, params = load_preset(project, "mine", parse_overrides(["train.epochs=5", "evaluate.scales=[0.5, 1.0]"]))
    assert settings == {"train.epochs": 5, "train.lr": 0.02, "evaluate.scales": [0.5, 1.0]}
    assert params.train.epochs == 5 and params.train.lr == 0.02 and params.evaluate.scales == (0.5, 1.0)
    assert params.train.batch_size == yaml.safe_load((project / "params.yaml").read_text())["train"]["batch_size"]


def test_an_unknown_key_in_a_preset_names_the_preset_and_the_key(project: Path) -> None:
    (project / "configs/typo.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"(?s)configs/typo\.yaml .*train\.epoch: unknown key"):
        load_preset(project, "typo")


def test_an_unknown_preset_lists_the_known_ones(project: Path) -> None:
    (project / "configs/camvid-cpu.yaml").write_text("train: {epochs: 1}\n")
    with pytest.raises(ConfigError, match=r"no such preset\. Known presets in configs/: \['camvid-cpu'\]"):
        load_preset(project, "camvid")


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "train.lr=[1,"])
def test_malformed_set_options_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        parse_overrides([bad])


def test_flatten_and_unflatten_round_trip() -> None:
    nested = {"data": {"source": {"name": "camvid", "location": "x"}}, "train": {"crop_size": [1, 2]}}
    assert unflatten(flatten(nested)) == nested


def test_the_report_gives_the_metrics_per_class_iou_and_the_command() -> None:
    report = {
        "preset": "camvid-cpu", "experiment": "camvid-cpu-1", "date": "2026-11-25", "machine": "2 CPU cores",
        "mlflow_run_id": "abc", "data_version": "d39", "miou": 0.5, "miou_absent_as_zero": 0.5, "macc": 0.6,
        "allacc": 0.8, "epochs": 28, "train_seconds": 1620.0, "wall_seconds": 1800.0,
        "per_class_iou": {"sky": 0.9, "pole": 0.1}, "settings": {"train.epochs": 28},
        "command": "pspnet experiment camvid-cpu", "dvc_command": "dvc repro",
    }  # fmt: skip
    text = render_report(report)
    assert text.startswith("# camvid-cpu: val mIoU 0.5000")
    assert "| sky | 0.9000 |\n| pole | 0.1000 |" in text
    assert "| 0.5000 | 0.5000 | 0.6000 | 0.8000 | 28 | 27.0 min | 30.0 min |" in text
    assert "pspnet experiment camvid-cpu\n" in text and "train.epochs: 28" in text
    assert "split (beside val)" not in text  # no held-out split, no table

    held = {"holdout": {"miou": 0.31, "miou_absent_as_zero": 0.31, "macc": 0.4, "allacc": 0.7, "num_images": 101,
                        "per_class_iou": {"sky": 0.8, "pole": None}}}
    text = render_report(report | {"splits": held})
    assert text.startswith("# camvid-cpu: val mIoU 0.5000, holdout mIoU 0.3100")
    assert "| holdout | 101 | 0.3100 | 0.4000 | 0.7000 |" in text
    assert "| class | val | holdout |\n| --- | ---: | ---: |\n| sky | 0.9000 | 0.8000 |\n| pole | 0.1000 | n/a |" in text

    curve = [{"epoch": 4, "train_minutes": 3.2, "val": 0.21, "holdout": 0.15},
             {"epoch": 8, "train_minutes": 6.4, "val": 0.33, "holdout": 0.2}]
    text = render_report(report | {"curve": curve, "curve_figure": "camvid-cpu-curve.png"})
    assert "![learning curve](camvid-cpu-curve.png)" in text
    assert "| epoch | training minutes | val | holdout |" in text and "| 8 | 6.4 | 0.3300 | 0.2000 |" in text
    assert "Time to accuracy" not in render_report(report)


def test_the_learning_curve_figure_is_drawn_from_the_csv_or_says_why_not(tmp_path: Path) -> None:
    from PIL import Image

    from pspnet.evaluate.plots import plot_learning_curve
    from pspnet.train.curve import CurvePoint, curve_csv

    path = tmp_path / "train_curve.csv"
    path.write_text(curve_csv([CurvePoint(4, 190.0, {"val": 0.2, "val_raw": 0.19}), CurvePoint(8, 380.0, {"val": 0.3, "val_raw": 0.28})]))
    drawn = plot_learning_curve(path, tmp_path / "curve.png")
    assert Image.open(drawn).size == (700, 400)
    path.write_text(curve_csv([]))
    empty = plot_learning_curve(path, tmp_path / "empty.png")
    assert Image.open(empty).size == (600, 250)  # a message figure, not an error


def test_the_readme_figures_are_those_of_the_reports(tmp_path: Path) -> None:
    from pspnet.presets import readme_line, sync_readme

    (tmp_path / "docs").mkdir()
    shutil.copytree(REPO_ROOT / "docs" / "results", tmp_path / "docs" / "results")
    shutil.copy2(REPO_ROOT / "README.md", tmp_path / "README.md")
    assert sync_readme(tmp_path) == ["camvid-cpu"]
    assert (tmp_path / "README.md").read_text() == (REPO_ROOT / "README.md").read_text(), "run `make readme`"

    report = json.loads((REPO_ROOT / "docs/results/camvid-cpu.json").read_text())
    stale = (REPO_ROOT / "README.md").read_text().replace(readme_line(report, "docs/results/camvid-cpu.md"), "val mIoU 0.999")
    (tmp_path / "README.md").write_text(stale)
    sync_readme(tmp_path)
    assert f"val mIoU **{report['miou']:.3f}**" in (tmp_path / "README.md").read_text()


def test_runs_are_grouped_into_recipes_over_seeds(tmp_path: Path) -> None:
    from pspnet.comparison import compare_reports

    def report(seed: int, miou: float, held: float, **extra: object) -> dict:
        settings = {"train.epochs": 28, "data.source.location": f"/data/{seed}", **extra}
        if seed:
            settings["train.seed"] = seed
        return {"settings": settings, "miou": miou, "splits": {"holdout": {"miou": held}}, "train_seconds": 1200.0,
                "curve": [{"epoch": 28, "train_minutes": 20.0, "holdout": 0.3, "holdout_raw": 0.29}]}

    runs = {"old-s0": report(0, 0.43, 0.26), "old-s1": report(1, 0.45, 0.28),
            "new-s0": report(0, 0.46, 0.30, **{"train.ema_decay": 0.99})}
    for name, body in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(body))
    out = compare_reports([tmp_path / f"{n}.json" for n in runs], tmp_path / "cmp" / "recipes.md", "CamVid")
    text = out.read_text()
    assert "| baseline | 0, 1 | 0.4400 ± 0.0141 [0.4300, 0.4500] | 0.2700 ± 0.0141 [0.2600, 0.2800] | 20.0 |" in text
    assert "| train.ema_decay=0.99 | 0 | 0.4600 (one seed) | 0.3000 (one seed) | 20.0 |" in text
    assert "| [new-s0](../new-s0.md) | 0 | 0.4600 | 0.3000 | 20.0 | holdout 0.300, holdout_raw 0.290 |" in text


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.yaml")))
def test_every_shipped_preset_trains_on_the_cpu_with_a_tiny_epoch(preset: str, tmp_path: Path) -> None:
    """The preset's model and recipe, unchanged but for where and how long: one epoch of two
    steps on tiny frames, with its learning curve and scoring (a GPU preset checked without a GPU)."""
    from pspnet.data.classes import load_classes
    from pspnet.train.distributed import Distributed
    from pspnet.train.signals import StopRequest
    from pspnet.train.trainer import Trainer, TrainingInputs
    from tests.train.test_curve import CurveRecorder
    from tests.train.tinydata import write_prepared

    tiny = {"train.device": "cpu", "train.precision": "fp32", "train.epochs": 1, "train.batch_size": 2,
            "train.crop_size": [32, 40], "train.num_workers": 0, "train.curve_every_n_epochs": 1, "train.curve_images": 1,
            "train.warmup_iters": 0, "train.checkpoint_every_n_steps": 0}  # fmt: skip
    _, _, params = load_preset(REPO_ROOT, preset, tiny)
    prepared = tmp_path / "prepared"
    write_prepared(prepared, n_train=4, n_val=1, height=32, width=40)
    inputs = TrainingInputs(prepared, load_classes(prepared, params.data.ignore_index), frozenset(), tmp_path / "states")
    trainer = Trainer(params, inputs, Distributed(), torch.device("cpu"))
    history = trainer.fit(CurveRecorder(), StopRequest())
    assert history[-1].global_step == 2 and torch.isfinite(torch.tensor(history[-1].loss))
    assert set(trainer.curve[-1].miou) >= {"val"}
