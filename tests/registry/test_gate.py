"""The promotion gate on per-image scores: margin, paired bootstrap, per-class drop."""

from __future__ import annotations

import numpy as np
import pytest

from pspnet.config import RegisterConfig
from pspnet.errors import PspnetError
from pspnet.evaluate.scores import ImageScores
from pspnet.registry.gate import PROMOTED, REJECTED, decide, paired_bootstrap

CLASSES = ("road", "car", "pole")
N_IMAGES = 40
#: Union pixels per image and class: IoU k/1000 is k pixels of intersection.
UNION = 1000


def scores(iou: np.ndarray, **context: str) -> ImageScores:
    """Per-image scores whose per-image IoU is ``iou`` (N, C) in steps of 1/UNION."""
    inter = np.rint(np.asarray(iou) * UNION).astype(np.int64)
    union = np.full_like(inter, UNION)
    ids = tuple(f"img{i:03d}" for i in range(len(inter)))
    ctx = {"data_version": "v1", "protocol": "whole scales=[1.0]", **context}
    return ImageScores(ids, inter, union, CLASSES, ctx["data_version"], ctx["protocol"])


@pytest.fixture
def champion() -> ImageScores:
    rng = np.random.default_rng(0)
    return scores(rng.uniform(0.3, 0.7, size=(N_IMAGES, len(CLASSES))))


CFG = RegisterConfig(min_improvement=0.005, confidence=0.95, bootstrap_samples=2000, max_class_drop=0.05)


def test_first_version_is_promoted(champion: ImageScores) -> None:
    result = decide(champion, None, CFG)
    assert result.decision == PROMOTED and "first version" in result.reason


def test_a_clearly_better_challenger_is_promoted(champion: ImageScores) -> None:
    better = scores(np.clip(champion.inter / UNION + 0.05, 0, 1))
    result = decide(better, champion, CFG, champion_version="3")
    assert result.decision == PROMOTED, result.reason
    assert result.bootstrap is not None
    assert result.bootstrap.gain == pytest.approx(0.05, abs=1e-9)
    assert result.bootstrap.lower_bound > 0.04 and result.bootstrap.win_rate == 1.0
    assert "champion v3" in result.reason


def test_a_worse_challenger_is_rejected(champion: ImageScores) -> None:
    worse = scores(np.clip(champion.inter / UNION - 0.02, 0, 1))
    result = decide(worse, champion, CFG)
    assert result.decision == REJECTED
    assert result.bootstrap is not None and result.bootstrap.gain < 0
    assert "below the margin" in result.reason


def test_a_gain_under_the_margin_is_rejected_even_if_consistent(champion: ImageScores) -> None:
    slightly = scores(np.clip(champion.inter / UNION + 0.003, 0, 1))
    result = decide(slightly, champion, CFG)
    assert result.decision == REJECTED and "below the margin 0.005" in result.reason
    assert result.bootstrap is not None and result.bootstrap.lower_bound > 0  # consistent, but too small


def test_a_noise_level_gain_is_rejected(champion: ImageScores) -> None:
    """Big gains on three images, losses on the rest: the mean beats the margin, the bootstrap says noise."""
    iou = champion.inter / UNION
    noisy = iou - 0.02
    noisy[:3] = np.clip(iou[:3] + 0.45, 0, 1)
    challenger = scores(np.clip(noisy, 0, 1))
    result = decide(challenger, champion, CFG)
    assert result.bootstrap is not None
    assert result.bootstrap.gain > CFG.min_improvement  # the point estimate alone would promote
    assert result.bootstrap.lower_bound <= 0
    assert result.decision == REJECTED and "within noise" in result.reason


def test_better_miou_but_one_class_dropping_beyond_the_limit_is_rejected(champion: ImageScores) -> None:
    iou = champion.inter / UNION
    mixed = iou.copy()
    mixed[:, :2] += 0.15  # road and car much better
    mixed[:, 2] -= 0.08  # pole loses 0.08 > 0.05
    challenger = scores(np.clip(mixed, 0, 1))
    result = decide(challenger, champion, CFG)
    assert result.bootstrap is not None and result.bootstrap.lower_bound > 0.05  # mIoU clearly better
    assert result.decision == REJECTED
    assert result.worst_class == "pole" and result.worst_drop == pytest.approx(0.08, abs=0.011)
    assert "class 'pole' loses" in result.reason and "max_class_drop" in result.reason
    # Within the limit it passes.
    assert decide(challenger, champion, CFG.model_copy(update={"max_class_drop": 0.1})).decision == PROMOTED


def test_the_bootstrap_is_paired_and_reproducible(champion: ImageScores) -> None:
    """A constant per-image gain has no spread when images are paired (an unpaired bootstrap would)."""
    shifted = scores(np.clip(champion.inter / UNION + 0.01, 0, 1))
    a = paired_bootstrap(shifted, champion, "miou", 500, 0.95, seed=1)
    b = paired_bootstrap(shifted, champion, "miou", 500, 0.95, seed=1)
    assert a == b
    assert a.lower_bound == pytest.approx(0.01, abs=1e-9)


def test_scores_of_other_data_or_protocol_are_not_compared(champion: ImageScores) -> None:
    other_data = scores(champion.inter / UNION, data_version="v2")
    with pytest.raises(PspnetError, match="data versions differ"):
        decide(other_data, champion, CFG)
    other_protocol = scores(champion.inter / UNION, protocol="slide 96x128 flip scales=[1.0]")
    with pytest.raises(PspnetError, match="protocols differ"):
        decide(other_protocol, champion, CFG)


def test_absent_classes_are_skipped_by_miou_and_zero_in_the_other_metric() -> None:
    inter = np.array([[50, 0, 0], [50, 0, 0]])
    union = np.array([[100, 0, 0], [100, 20, 0]])  # car predicted once but never right; pole absent
    s = ImageScores(("a", "b"), inter, union, CLASSES, "v", "p")
    assert s.metric("miou") == pytest.approx((0.5 + 0.0) / 2)
    assert s.metric("miou_absent_as_zero") == pytest.approx(0.5 / 3)
