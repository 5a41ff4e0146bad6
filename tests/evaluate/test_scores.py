"""Per-image intersection / union counts: summed, they are the confusion matrix's IoU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pspnet.errors import PspnetError
from pspnet.evaluate.metrics import ConfusionMatrix
from pspnet.evaluate.scores import ImageScores, image_counts

NUM_CLASSES = 4
IGNORE = 255


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    preds = torch.randint(0, NUM_CLASSES, (3, 20, 30), generator=g)
    masks = torch.randint(0, NUM_CLASSES, (3, 20, 30), generator=g)
    masks[:, :2] = IGNORE
    masks[1] = torch.where(masks[1] == 3, torch.tensor(0), masks[1])  # class 3 absent from image 1's truth
    return preds, masks


def test_summed_counts_reproduce_the_confusion_matrix_iou() -> None:
    confusion = ConfusionMatrix(NUM_CLASSES, IGNORE)
    inters, unions = [], []
    for seed in range(3):
        preds, masks = _batch(seed)
        confusion.update(preds, masks)
        inter, union = image_counts(preds, masks, NUM_CLASSES, IGNORE)
        assert inter.shape == union.shape == (3, NUM_CLASSES)
        assert (inter <= union).all()
        inters.append(inter)
        unions.append(union)
    scores = ImageScores(tuple(f"i{k}" for k in range(9)), np.concatenate(inters), np.concatenate(unions),
                         ("a", "b", "c", "d"), "v", "p")
    expected = confusion.compute()
    np.testing.assert_allclose(scores.class_iou, expected.iou)
    assert scores.metric("miou") == pytest.approx(expected.miou)
    assert scores.metric("miou_absent_as_zero") == pytest.approx(expected.miou_absent_as_zero)


def test_ignored_pixels_count_for_nothing() -> None:
    preds = torch.zeros(1, 4, 4, dtype=torch.long)
    masks = torch.full((1, 4, 4), IGNORE)
    inter, union = image_counts(preds, masks, NUM_CLASSES, IGNORE)
    assert inter.sum() == 0 and union.sum() == 0


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    preds, masks = _batch(0)
    inter, union = image_counts(preds, masks, NUM_CLASSES, IGNORE)
    scores = ImageScores(("x/1", "y 2", "z"), inter, union, ("a", "b", "c", "d"), "abc123", "slide 96x128 flip scales=[1.0]")
    path = tmp_path / "metrics" / "per_image.npz"
    scores.save(path)
    loaded = ImageScores.load(path)
    assert loaded.ids == scores.ids and loaded.class_names == scores.class_names
    assert (loaded.data_version, loaded.protocol) == ("abc123", "slide 96x128 flip scales=[1.0]")
    np.testing.assert_array_equal(loaded.inter, inter)
    np.testing.assert_array_equal(loaded.union, union)
    assert [p.name for p in path.parent.iterdir()] == ["per_image.npz"]  # no temp file left behind


def test_missing_or_corrupt_scores_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(PspnetError, match="per_image.npz: per-image scores not found. Run the `evaluate` stage"):
        ImageScores.load(tmp_path / "per_image.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(PspnetError, match="bad.npz: unreadable per-image scores"):
        ImageScores.load(bad)


def test_inconsistent_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="inconsistent scores"):
        ImageScores(("a",), np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64), ("x", "y", "z"), "v", "p")
