"""Dataset-level segmentation metrics against independent implementations and hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from pspnet.errors import DataError
from pspnet.evaluate.metrics import ConfusionMatrix, SegmentationMetrics, confusion_matrix, json_float

IGNORE = 255


def _random_batches(num_classes: int, absent: int | None, seed: int = 0, batches: int = 3):
    """Random predictions and targets with ~15% ignore pixels; class ``absent`` never appears."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        target = torch.randint(0, num_classes, (2, 17, 23), generator=gen)
        # Predictions agree with the target ~60% of the time so IoUs are not all near 1/C.
        noise = torch.randint(0, num_classes, target.shape, generator=gen)
        agree = torch.rand(target.shape, generator=gen) < 0.6
        preds = torch.where(agree, target, noise)
        if absent is not None:
            target[target == absent] = (absent + 1) % num_classes
            preds[preds == absent] = (absent + 2) % num_classes
        target[torch.rand(target.shape, generator=gen) < 0.15] = IGNORE
        out.append((preds, target))
    return out


def _numpy_reference(batches, num_classes: int):
    """The official-code formula: intersection/union/target histograms over the whole dataset."""
    inter = np.zeros(num_classes)
    area_pred = np.zeros(num_classes)
    area_target = np.zeros(num_classes)
    for preds, target in batches:
        p, t = preds.numpy().ravel(), target.numpy().ravel()
        keep = t != IGNORE
        p, t = p[keep], t[keep]
        hit = p[p == t]
        inter += np.histogram(hit, bins=num_classes, range=(0, num_classes))[0]
        area_pred += np.histogram(p, bins=num_classes, range=(0, num_classes))[0]
        area_target += np.histogram(t, bins=num_classes, range=(0, num_classes))[0]
    union = area_pred + area_target - inter
    return inter, union, area_target


@pytest.mark.parametrize("absent", [None, 3])
def test_matches_torchmetrics_and_numpy(absent: int | None) -> None:
    num_classes = 6
    batches = _random_batches(num_classes, absent)
    acc = ConfusionMatrix(num_classes, IGNORE)
    tm_cm = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE)
    tm_iou = MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE)
    for preds, target in batches:
        acc.update(preds, target)
        tm_cm.update(preds, target)
        tm_iou.update(preds, target)
    result = acc.compute()

    np.testing.assert_array_equal(result.matrix, tm_cm.compute().numpy())
    inter, union, area_target = _numpy_reference(batches, num_classes)
    np.testing.assert_array_equal(result.intersection, inter)
    np.testing.assert_array_equal(result.union, union)
    np.testing.assert_array_equal(result.target, area_target)

    present = union > 0
    np.testing.assert_allclose(result.iou[present], tm_iou.compute().numpy()[present], rtol=1e-6)
    np.testing.assert_allclose(result.iou[present], inter[present] / union[present])
    assert result.miou == pytest.approx(np.mean(inter[present] / union[present]))
    assert result.miou_absent_as_zero == pytest.approx(np.mean(inter / (union + 1e-10)))
    has_target = area_target > 0
    assert result.macc == pytest.approx(np.mean(inter[has_target] / area_target[has_target]))
    assert result.allacc == pytest.approx(inter.sum() / area_target.sum())
    assert result.num_pixels == int(sum((t != IGNORE).sum() for _, t in batches))

    if absent is None:
        assert present.all()
        assert result.miou == pytest.approx(result.miou_absent_as_zero)
    else:
        assert math.isnan(result.iou[absent]) and math.isnan(result.acc[absent])
        assert result.miou > result.miou_absent_as_zero
        assert result.miou_absent_as_zero == pytest.approx(result.miou * (num_classes - 1) / num_classes)


def test_perfect_prediction_scores_one() -> None:
    target = torch.tensor([[0, 1, 2], [2, IGNORE, 1]])
    result = SegmentationMetrics.from_matrix(confusion_matrix(target.clone(), target, 3, IGNORE))
    assert result.miou == result.miou_absent_as_zero == result.macc == result.allacc == 1.0
    # Ignored pixels do not count even when the prediction there is "wrong".
    preds = target.clone()
    preds[target == IGNORE] = 0
    assert SegmentationMetrics.from_matrix(confusion_matrix(preds, target, 3, IGNORE)).miou == 1.0


def test_hand_computed_matrix() -> None:
    # rows: truth, cols: prediction
    m = np.array([[3, 1, 0],
                  [0, 2, 2],
                  [0, 0, 0]])  # class 2 never in truth but predicted twice
    r = SegmentationMetrics.from_matrix(m)
    # I = [3, 2, 0]; T = [4, 4, 0]; P = [3, 3, 2]; U = [4, 5, 2]
    np.testing.assert_allclose(r.iou, [3 / 4, 2 / 5, 0.0])
    np.testing.assert_allclose(r.acc[:2], [3 / 4, 2 / 4])
    assert math.isnan(r.acc[2])
    assert r.miou == pytest.approx((0.75 + 0.4 + 0.0) / 3)  # predicted-only class counts as 0
    assert r.macc == pytest.approx((0.75 + 0.5) / 2)
    assert r.allacc == pytest.approx(5 / 8)

    absent = SegmentationMetrics.from_matrix(np.array([[5, 0, 1], [0, 0, 0], [1, 0, 3]]))
    # class 1 absent everywhere: IoU undefined
    assert math.isnan(absent.iou[1])
    assert absent.miou == pytest.approx((5 / 7 + 3 / 5) / 2)
    assert absent.miou_absent_as_zero == pytest.approx((5 / 7 + 3 / 5) / 3)
    summary = absent.summary(("a", "b", "c"))
    assert summary["per_class_iou"] == {"a": pytest.approx(5 / 7), "b": None, "c": pytest.approx(0.6)}
    assert summary["num_pixels"] == 10


def test_confusion_rate_of_a_look_alike_pair() -> None:
    # rows: truth (car, boat, sand), cols: prediction
    m = np.array([[6, 3, 1],
                  [2, 8, 0],
                  [0, 5, 9]])
    r = SegmentationMetrics.from_matrix(m)
    assert r.confusion_rate(0, 1) == pytest.approx((3 + 2) / (10 + 10)) == r.confusion_rate(1, 0)
    assert r.confusion_rate(1, 2) == pytest.approx((0 + 5) / (10 + 14))  # sand called boat counts, boat called car does not
    summary = r.summary(("car", "boat", "sand"), [("car", "boat")])
    assert summary["confusion"] == {"car/boat": pytest.approx(0.25)}
    assert "confusion" not in r.summary(("car", "boat", "sand"))
    with pytest.raises(ValueError, match=r"\['ship'\]"):
        r.summary(("car", "boat", "sand"), [("car", "ship")])
    assert math.isnan(SegmentationMetrics.from_matrix(np.diag([0, 0, 4])).confusion_rate(0, 1))


def test_bad_mask_values_and_shapes() -> None:
    with pytest.raises(DataError, match=r"\[11\]"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 11], [1, 255]]), 11, IGNORE)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="argmax"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="collides"):
        ConfusionMatrix(12, ignore_index=11)


def test_empty_and_json_float() -> None:
    r = ConfusionMatrix(3).compute()
    assert math.isnan(r.miou) and math.isnan(r.allacc)
    assert r.summary(("a", "b", "c"))["miou"] is None
    assert json_float(float("nan")) is None and json_float(0.25) == 0.25
