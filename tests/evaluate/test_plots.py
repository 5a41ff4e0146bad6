"""Evaluation figures are valid PNGs, written atomically, robust to odd inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pspnet.evaluate.plots import blend, colorize, plot_confusion_matrix, plot_overlay, plot_training_curve

NAMES = ("sky", "road", "car")
COLORS = ((0, 0, 255), (128, 128, 128), (255, 0, 0))


def _assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file()
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        return img.size
    # no temp files left behind


def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_confusion_matrix_png(tmp_path: Path) -> None:
    m = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 0]])  # a class without ground truth: empty row
    out = plot_confusion_matrix(m, NAMES, tmp_path / "plots" / "cm.png")
    w, h = _assert_png(out)
    assert w > 200 and h > 200
    _no_temp_files(out.parent)
    with pytest.raises(ValueError):
        plot_confusion_matrix(m, NAMES[:2], tmp_path / "bad.png")


def test_training_curve_png(tmp_path: Path) -> None:
    history = tmp_path / "train_history.csv"
    pd.DataFrame({
        "epoch": [0, 0, 1, 1],
        "step": [1, 2, 3, 4],
        "loss": [2.0, 1.5, 1.2, None],
        "aux_loss": [0.9, 0.8, 0.7, 0.6],
        "lr": [0.01, 0.008, 0.005, 0.001],
        "note": ["a", "b", "c", "d"],  # an extra, non-numeric column is ignored
        "val_miou": [None, 0.2, None, 0.3],
    }).to_csv(history, index=False)
    _assert_png(plot_training_curve(history, tmp_path / "curve.png"))


@pytest.mark.parametrize("content", [None, "", "epoch,step\n0,1\n"])
def test_training_curve_without_history_still_writes_png(tmp_path: Path, content: str | None) -> None:
    history = tmp_path / "train_history.csv"
    if content is not None:
        history.write_text(content)
    _assert_png(plot_training_curve(history, tmp_path / "curve.png"))


def test_colorize_and_blend() -> None:
    mask = np.array([[0, 1], [2, 255]])
    rgb = colorize(mask, COLORS)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 255] and rgb[1, 1].tolist() == [0, 0, 0]
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    out = blend(image, mask, COLORS, alpha=0.5)
    assert out[0, 0].tolist() == [50, 50, 178]  # rint(0.5*100 + 0.5*255) = 178 (banker's: 177.5 -> 178)
    assert out[1, 1].tolist() == [0, 0, 0]  # ignore is black
    assert blend(image, mask, COLORS, alpha=0.0)[0, 1].tolist() == [100, 100, 100]


def test_overlay_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    target = rng.integers(0, 3, (24, 32))
    target[:3] = 255
    pred = rng.integers(0, 3, (24, 32))
    out = plot_overlay(image, target, pred, NAMES, COLORS, tmp_path / "overlays" / "s1.png", alpha=0.4, title="s1")
    w, h = _assert_png(out)
    assert w > 2 * h  # three panels side by side
    with pytest.raises(ValueError):
        plot_overlay(image, target[:10], pred, NAMES, COLORS, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_confusion_rows_follow_the_matrix_and_sum_to_the_requested_count() -> None:
    from collections import Counter

    from pspnet.evaluate.reports import confusion_rows

    matrix = np.array([[700, 0, 33], [0, 150, 0], [100, 0, 17]])  # [target, pred]
    rows = confusion_rows(matrix, NAMES, 100)
    counts = Counter((r["actual"], r["predicted"]) for r in rows)
    assert len(rows) == 100
    # Largest remainder: 70, 15, 10 exact; 3.3 and 1.7 become 3 and 2.
    assert counts == {("sky", "sky"): 70, ("road", "road"): 15, ("car", "sky"): 10, ("sky", "car"): 3, ("car", "car"): 2}
    assert confusion_rows(np.zeros((3, 3), dtype=np.int64), NAMES, 100) == []
