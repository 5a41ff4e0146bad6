"""The ablation's statistics: per-seed means, the gate's paired bootstrap over images, "shown"."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pspnet.ablation import ROWS_BY_NAME, check_same_setup, render_markdown, row_settings, run_ablation
from pspnet.ablation_report import compare, scores_file
from pspnet.config import RegisterConfig
from pspnet.errors import ConfigError
from pspnet.evaluate.scores import ImageScores

CLASSES = ("road", "car", "boat")
IMAGES = 40


def _scores(rng: np.random.Generator, skill: float) -> ImageScores:
    """Per-image counts of a model whose IoU on every class is about ``skill``."""
    union = rng.integers(200, 400, (IMAGES, len(CLASSES)))
    inter = np.clip(np.rint(union * (skill + rng.normal(0, 0.05, union.shape))), 0, union).astype(np.int64)
    return ImageScores(tuple(f"v{i}" for i in range(IMAGES)), inter, union.astype(np.int64), CLASSES, "d1", "whole")


def _row(tmp: Path, row: str, seed: int, scores: ImageScores, confusion: float) -> dict:
    name = f"abl-{row}-s{seed}"
    scores.save(scores_file(tmp, name))
    return {"dataset": "scenes", "row": row, "seed": seed, "experiment": name, "miou": scores.metric("miou"),
            "confusion": {"car/boat": confusion}}


def test_a_real_gain_is_shown_and_noise_is_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    results = []
    for seed in (0, 1, 2):
        results += [_row(tmp_path, "fcn", seed, _scores(rng, 0.60), 0.30),
                    _row(tmp_path, "pspnet", seed, _scores(rng, 0.70), 0.05),
                    _row(tmp_path, "aux0", seed, _scores(rng, 0.70), 0.06)]
    gate = RegisterConfig(bootstrap_samples=1000)
    by_name = {c["name"]: c for c in compare(results, tmp_path, gate)}
    assert set(by_name) == {"ppm", "aux"}  # the other comparisons have no rows

    ppm = by_name["ppm"]
    assert ppm["seeds"] == [0, 1, 2] and ppm["dataset"] == "scenes" and ppm["val_images"] == IMAGES
    assert ppm["variant_miou"] == [r["miou"] for r in results if r["row"] == "pspnet"]
    assert ppm["gain"] == pytest.approx(np.mean(ppm["variant_miou"]) - np.mean(ppm["baseline_miou"]))
    assert 0 < ppm["lower_bound"] < ppm["gain"] and ppm["shown"] is True
    assert ppm["context"] == {"car/boat": {"baseline": [0.30] * 3, "variant": [0.05] * 3}}

    aux = by_name["aux"]  # same skill with and without: the bound straddles zero
    assert aux["lower_bound"] < 0 and aux["shown"] is False

    text = render_markdown({"comparisons": list(by_name.values()), "results": [
        {**r, "description": r["row"], "macc": 0.5, "allacc": 0.5, "train_seconds": 1.0, "command": "dvc exp run"} for r in results]})
    assert "| scenes | pyramid pooling module: dilated FCN -> PSPNet | 0, 1, 2 |" in text
    assert "| shown | car/boat: 0.300 -> 0.050 |" in text and "| not shown |" in text


def test_the_test_time_comparison_pairs_two_protocols_of_one_model(tmp_path: Path) -> None:
    from dataclasses import replace

    rng = np.random.default_rng(2)
    single = _scores(rng, 0.6)
    msflip = replace(_scores(rng, 0.7), protocol="whole flip scales=[0.75, 1.0]")
    results = [_row(tmp_path, "pspnet", 0, single, 0.1), _row(tmp_path, "pspnet-msflip", 0, msflip, 0.1),
               _row(tmp_path, "fcn", 0, replace(_scores(rng, 0.5), protocol="whole flip"), 0.2)]
    by_name = {c["name"]: c for c in compare(results[:2], tmp_path, RegisterConfig())}
    assert by_name["test-time"]["gain"] == pytest.approx(msflip.metric("miou") - single.metric("miou"))
    with pytest.raises(Exception, match="test-time protocols differ"):  # elsewhere a protocol change is refused
        compare([r for r in results if r["row"] != "pspnet-msflip"], tmp_path, RegisterConfig())


def test_one_seed_has_no_spread_and_missing_scores_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    results = [_row(tmp_path, "fcn", 0, _scores(rng, 0.5), 0.2), _row(tmp_path, "pspnet", 0, _scores(rng, 0.6), 0.1)]
    (ppm,) = compare(results, tmp_path, RegisterConfig())
    assert math.isnan(ppm["baseline_std"]) and ppm["seeds"] == [0]
    scores_file(tmp_path, "abl-fcn-s0").unlink()
    with pytest.raises(Exception, match="abl-fcn-s0.npz"):
        compare(results, tmp_path, RegisterConfig())


def test_the_erf_figure_pairs_fcn_and_pspnet_of_the_first_common_seed(tmp_path: Path) -> None:
    from pspnet.ablation import _erf_figures

    results = []
    for row, seed in (("fcn", 1), ("pspnet", 1), ("pspnet", 0)):
        weights = np.full((9, 12), 1 / 108)
        np.save(tmp_path / f"abl-{row}-s{seed}-erf.npy", weights)
        results.append({"dataset": "scenes", "row": row, "seed": seed, "experiment": f"abl-{row}-s{seed}",
                        "erf": {"r50": 3.0, "r95": 6.0, "height": 9, "width": 12, "centre": [4, 6]}})
    assert _erf_figures(tmp_path / "abl", results, tmp_path) == ["abl-erf-scenes.png"]
    assert (tmp_path / "abl-erf-scenes.png").stat().st_size > 0


def test_rows_of_one_dataset_must_share_data_and_budget(tmp_path: Path) -> None:
    preset = {"data.source.name": "camvid", "train.epochs": 32}
    earlier = [{"dataset": "camvid-cpu", "row": "fcn", "seed": 0,
                "settings": row_settings(ROWS_BY_NAME["fcn"], 0, preset)}]
    report = tmp_path / "abl.json"
    check_same_setup(earlier, "camvid-cpu", preset, report)  # same budget: more rows may join
    check_same_setup(earlier, "context-hard", {"train.epochs": 18}, report)  # another dataset: its own rows
    with pytest.raises(ConfigError, match=r"abl.json: its camvid-cpu rows ran with other settings \(train.epochs: 32 there, 64 now\)"):
        check_same_setup(earlier, "camvid-cpu", {**preset, "train.epochs": 64}, report)


def test_set_without_a_preset_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--set changes a preset's settings: name one with --preset"):
        run_ablation(tmp_path, overrides={"train.epochs": 2})
