"""The training loss: weighted cross-entropy, class weights from pixel counts, OHEM."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pspnet.data.dataset import SegmentationDataset, load_mask
from pspnet.errors import ConfigError, DataError
from pspnet.train.loss import (
    Ohem,
    SegmentationCriterion,
    class_pixel_counts,
    class_weights_from_counts,
    cross_entropy,
    ohem_cross_entropy,
    ohem_select,
    resolve_class_weights,
)
from tests.train.tinydata import write_prepared

IGNORE = 255


def _two_class_logits(probs: list[float]) -> torch.Tensor:
    """``(1,2,1,W)`` logits whose class-0 probability at pixel ``i`` is ``probs[i]``."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()]).view(1, 2, 1, -1).float()


#: Pixel i: true-class (class 0) probability PROBS[i]; the last pixel is ignored.
PROBS = [0.9, 0.6, 0.2, 0.8, 0.05]
TARGET = torch.tensor([[[0, 0, 0, 0, IGNORE]]])


def _nll(*probs: float) -> float:
    return sum(-math.log(p) for p in probs) / len(probs)


def test_weighted_cross_entropy_is_pytorchs_weighted_mean_and_skips_ignored() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = IGNORE
    w = torch.tensor([0.5, 2.0, 1.0])
    expected = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE)
    assert float(cross_entropy(logits, target, IGNORE, w)) == pytest.approx(float(expected), rel=1e-6)
    assert float(cross_entropy(logits, torch.full_like(target, IGNORE), IGNORE, w)) == 0.0


def test_criterion_weights_both_heads() -> None:
    torch.manual_seed(1)
    main, aux = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    w = torch.tensor([1.0, 3.0, 0.5])
    crit = SegmentationCriterion(aux_weight=0.4, ignore_index=IGNORE, class_weights=w)
    expected = F.cross_entropy(main, target, weight=w) + 0.4 * F.cross_entropy(aux, target, weight=w)
    assert float(crit((main, aux), target)) == pytest.approx(float(expected), rel=1e-6)
    assert float(crit((main, None), target)) == pytest.approx(float(F.cross_entropy(main, target, weight=w)), rel=1e-6)


def test_class_weights_from_a_known_count_vector() -> None:
    counts = [10, 30, 60]  # shares 0.1, 0.3, 0.6
    np.testing.assert_allclose(class_weights_from_counts(counts, "median_frequency"), [3.0, 1.0, 0.5])
    inverse = class_weights_from_counts(counts, "inverse_frequency")
    np.testing.assert_allclose(inverse, [10 / 3, 10 / 9, 5 / 9])
    assert float(np.dot(inverse, [0.1, 0.3, 0.6])) == pytest.approx(1.0)  # pixel-weighted mean is 1


def test_a_class_absent_from_train_gets_the_largest_weight_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pspnet.train.loss"):
        weights = class_weights_from_counts([10, 0, 30, 60], "median_frequency")
    np.testing.assert_allclose(weights, [3.0, 3.0, 1.0, 0.5])
    assert "[1]" in caplog.text and "no pixel" in caplog.text
    with pytest.raises(DataError, match="no labelled pixel"):
        class_weights_from_counts([0, 0], "inverse_frequency")


def test_explicit_class_weights_must_match_the_class_count() -> None:
    np.testing.assert_allclose(resolve_class_weights([1.0, 2.0, 0.5], 3), [1.0, 2.0, 0.5])
    assert resolve_class_weights("none", 3) is None
    with pytest.raises(ConfigError, match=r"lists 2 weight\(s\) but the dataset has 3 classes \(red, green, blue\)"):
        resolve_class_weights([1.0, 2.0], 3, class_names=["red", "green", "blue"])


def test_class_weights_are_counted_from_the_train_masks(tmp_path: Path) -> None:
    write_prepared(tmp_path, n_train=5, n_val=2, height=16, width=20)
    train = SegmentationDataset(tmp_path, "train")
    counts = class_pixel_counts(train.mask_paths, 3)
    stacked = np.concatenate([load_mask(p).ravel() for p in train.mask_paths])
    np.testing.assert_array_equal(counts, np.bincount(stacked[stacked != IGNORE], minlength=3))
    from_masks = resolve_class_weights("median_frequency", 3, train.mask_paths)
    np.testing.assert_allclose(from_masks, class_weights_from_counts(counts, "median_frequency"))


def test_ohem_keeps_the_pixels_below_the_threshold() -> None:
    logits = _two_class_logits(PROBS)
    keep = ohem_select(logits, TARGET, IGNORE, Ohem(thresh=0.7, min_kept=0))
    assert keep.flatten().tolist() == [False, True, True, False, False]  # 0.6 and 0.2; never the ignored 0.05
    loss = ohem_cross_entropy(logits, TARGET, IGNORE, Ohem(thresh=0.7, min_kept=0))
    assert float(loss) == pytest.approx(_nll(0.6, 0.2), rel=1e-5)


def test_ohem_min_kept_adds_the_next_hardest_pixels_but_never_ignored_ones() -> None:
    logits = _two_class_logits(PROBS)
    keep = ohem_select(logits, TARGET, IGNORE, Ohem(thresh=0.7, min_kept=3))
    assert keep.flatten().tolist() == [False, True, True, True, False]  # + 0.8, the next lowest
    # More than the labelled pixels: all of them, still not the ignored one.
    keep = ohem_select(logits, TARGET, IGNORE, Ohem(thresh=0.7, min_kept=100))
    assert keep.flatten().tolist() == [True, True, True, True, False]
    # min_kept below the number of hard pixels does not drop hard ones.
    keep = ohem_select(logits, TARGET, IGNORE, Ohem(thresh=0.7, min_kept=1))
    assert int(keep.sum()) == 2
    loss = ohem_cross_entropy(logits, TARGET, IGNORE, Ohem(thresh=0.7, min_kept=3))
    assert float(loss) == pytest.approx(_nll(0.6, 0.2, 0.8), rel=1e-5)


def test_ohem_of_an_all_ignored_batch_is_zero() -> None:
    logits = _two_class_logits(PROBS)
    target = torch.full_like(TARGET, IGNORE)
    assert not ohem_select(logits, target, IGNORE, Ohem(0.7, 10)).any()
    assert float(ohem_cross_entropy(logits, target, IGNORE, Ohem(0.7, 10))) == 0.0


def test_ohem_combines_with_class_weights() -> None:
    # Pixels 0-1 class 0, pixels 2-3 class 1; true-class probabilities 0.9, 0.3, 0.4, 0.95.
    p0 = torch.tensor([0.9, 0.3, 0.6, 0.05], dtype=torch.float64)
    logits = torch.stack([p0.log(), (1 - p0).log()]).view(1, 2, 1, 4).float()
    target = torch.tensor([[[0, 0, 1, 1]]])
    w = torch.tensor([1.0, 3.0])
    loss = ohem_cross_entropy(logits, target, IGNORE, Ohem(thresh=0.7, min_kept=0), weight=w)
    # Hard: pixel 1 (p 0.3, w 1) and pixel 2 (p 0.4, w 3): weighted mean.
    expected = (1.0 * -math.log(0.3) + 3.0 * -math.log(0.4)) / 4.0
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    crit = SegmentationCriterion(aux_weight=0.0, class_weights=w, ohem=Ohem(0.7, 0))
    assert float(crit((logits, None), target)) == pytest.approx(expected, rel=1e-5)


def test_ohem_loss_trains_only_through_the_kept_pixels() -> None:
    logits = _two_class_logits(PROBS).requires_grad_(True)
    ohem_cross_entropy(logits, TARGET, IGNORE, Ohem(thresh=0.7, min_kept=0)).backward()
    touched = logits.grad.abs().sum(dim=1).flatten() > 0  # type: ignore[union-attr]
    assert touched.tolist() == [False, True, True, False, False]
