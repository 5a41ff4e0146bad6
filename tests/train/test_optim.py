"""Two parameter groups (x10 for new layers), the poly schedule and its warm-up, a frozen
encoder, and the epoch loop."""

from __future__ import annotations

import pytest
import torch

from pspnet.config import ModelConfig, TrainConfig
from pspnet.model.pspnet import PSPNet, build_model
from pspnet.train.loop import EpochPlan, TrainStep, train_one_epoch
from pspnet.train.loss import SegmentationCriterion, cross_entropy
from pspnet.train.optim import build_optimizer, build_scheduler, freeze_encoder, poly_factor, warmup_poly_factor

TINY_MODEL = ModelConfig(encoder="resnet18", head_channels=16, aux_channels=8)


@pytest.fixture(scope="module")
def model() -> PSPNet:
    torch.manual_seed(0)
    return build_model(TINY_MODEL, 4)


def test_two_groups_with_ten_times_lr_for_new_layers(model: PSPNet) -> None:
    opt = build_optimizer(model, TrainConfig(lr=0.01, head_lr_multiplier=10.0, momentum=0.9, weight_decay=1e-4))
    enc, new = opt.param_groups
    assert enc["name"] == "encoder" and enc["lr"] == pytest.approx(0.01)
    assert new["name"] == "new" and new["lr"] == pytest.approx(0.1)
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in opt.param_groups)
    enc_ids = {id(p) for p in enc["params"]}
    new_ids = {id(p) for p in new["params"]}
    assert enc_ids == {id(p) for p in model.encoder.parameters()}
    expected_new = {id(p) for m in (model.ppm, model.head, model.aux_head) for p in m.parameters()}
    assert new_ids == expected_new
    # Every parameter in exactly one group.
    all_ids = [id(p) for p in model.parameters()]
    assert not enc_ids & new_ids
    assert enc_ids | new_ids == set(all_ids)
    assert len(enc["params"]) + len(new["params"]) == len(all_ids)


def test_poly_factor_values() -> None:
    f = poly_factor(100, 0.9)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.5**0.9)
    assert f(90) == pytest.approx(0.1**0.9)
    assert f(100) == 0.0
    assert f(150) == 0.0


def test_poly_factor_rejects_an_empty_schedule() -> None:
    with pytest.raises(ValueError, match="max_iter"):
        poly_factor(0, 0.9)


def test_warmup_ramps_linearly_from_the_ratio_to_the_poly_value() -> None:
    poly = poly_factor(100, 0.9)
    f = warmup_poly_factor(100, 0.9, warmup_iters=10, warmup_ratio=0.1)
    assert f(0) == pytest.approx(0.1)  # warmup_ratio x poly(0) = 0.1
    assert f(5) == pytest.approx(poly(5) * (0.1 + 0.9 * 0.5))
    assert f(9) == pytest.approx(poly(9) * (0.1 + 0.9 * 0.9))
    assert f(10) == pytest.approx(poly(10))  # warm-up over: plain poly
    assert f(50) == pytest.approx(0.5**0.9)
    assert f(100) == 0.0
    ramp = [f(i) for i in range(11)]
    assert ramp == sorted(ramp)  # rises through the warm-up
    # No warm-up: exactly poly.
    plain = warmup_poly_factor(100, 0.9, warmup_iters=0, warmup_ratio=0.1)
    assert [plain(i) for i in range(0, 101, 10)] == [poly(i) for i in range(0, 101, 10)]
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_poly_factor(100, 0.9, 10, 0.0)


def _lrs_per_step(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    """The rate of every group at each of the first ``steps`` optimisation steps."""
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return seen


def test_scheduler_warms_up_both_groups_keeping_the_ten_times_ratio(model: PSPNet) -> None:
    opt = build_optimizer(model, TrainConfig(lr=0.02, head_lr_multiplier=10.0))
    sched = build_scheduler(opt, max_iter=20, power=0.9, warmup_iters=4, warmup_ratio=0.25)
    for i, (enc, new) in enumerate(_lrs_per_step(opt, sched, 8)):
        poly = (1 - i / 20) ** 0.9
        ramp = 0.25 + 0.75 * i / 4 if i < 4 else 1.0
        assert enc == pytest.approx(0.02 * poly * ramp)
        assert new == pytest.approx(10 * enc)


def test_frozen_encoder_is_left_out_of_the_optimizer() -> None:
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, 4)
    frozen = freeze_encoder(model)
    assert frozen == len(list(model.encoder.parameters())) > 0
    assert not any(p.requires_grad for p in model.encoder.parameters())
    opt = build_optimizer(model, TrainConfig(lr=0.01, head_lr_multiplier=10.0))
    enc, new = opt.param_groups
    assert enc["name"] == "encoder" and enc["params"] == []  # kept (empty) so group 0 reports the base LR
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert not {id(p) for p in model.encoder.parameters()} & set(grouped)
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)  # every trainable parameter in exactly one group
    assert new["lr"] == pytest.approx(0.1)


def test_scheduler_applies_poly_to_both_groups(model: PSPNet) -> None:
    opt = build_optimizer(model, TrainConfig(lr=0.02, head_lr_multiplier=10.0))
    sched = build_scheduler(opt, max_iter=10, power=0.9)
    for i, (enc, new) in enumerate(_lrs_per_step(opt, sched, 10)):
        assert enc == pytest.approx(0.02 * (1 - i / 10) ** 0.9)
        assert new == pytest.approx(0.2 * (1 - i / 10) ** 0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]


def test_loss_combines_main_and_aux_and_skips_ignored_pixels() -> None:
    torch.manual_seed(0)
    main = torch.randn(2, 3, 4, 5)
    aux = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = 255
    expected = torch.nn.functional.cross_entropy(main, target, ignore_index=255) + 0.4 * torch.nn.functional.cross_entropy(
        aux, target, ignore_index=255
    )
    assert SegmentationCriterion(0.4, 255)((main, aux), target) == pytest.approx(float(expected))
    assert SegmentationCriterion(0.4, 255)((main, None), target) == pytest.approx(float(cross_entropy(main, target, 255)))
    all_ignored = torch.full((2, 4, 5), 255)
    assert float(cross_entropy(main, all_ignored, 255)) == 0.0


class _TinySeg(torch.nn.Module):
    """A 1x1-conv 'segmenter' returning the train-mode tuple; ``scale`` can poison its output."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.conv(x) * self.scale, None


def _loader(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        mask = torch.randint(0, 2, (2, 6, 7), generator=g)
        image = torch.stack([mask.float(), 1 - mask.float(), torch.zeros_like(mask, dtype=torch.float)], 1)
        batches.append((image, mask))
    return batches


def test_train_one_epoch_steps_the_schedule_and_reports() -> None:
    model = _TinySeg()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = build_scheduler(opt, max_iter=8, power=1.0)
    seen: list[tuple[int, float, float]] = []
    stats = train_one_epoch(
        TrainStep(model, opt, sched, SegmentationCriterion(0.4), torch.device("cpu")),
        _loader(),
        EpochPlan(on_step=lambda at, loss: seen.append((at.global_step, loss, at.lr)), progress=False),
    )
    assert stats.steps == 4 and stats.images == 8 and stats.global_step == 4
    assert [s[0] for s in seen] == [1, 2, 3, 4]
    assert [s[2] for s in seen] == pytest.approx([0.5, 0.4375, 0.375, 0.3125])  # lr used by each step
    assert stats.lr == pytest.approx(0.3125)
    assert seen[-1][1] < seen[0][1]


def test_divergence_is_reported() -> None:
    from pspnet.errors import PspnetError

    model = _TinySeg(scale=float("nan"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, max_iter=4, power=0.9)
    with pytest.raises(PspnetError, match="diverged.*step 1"):
        train_one_epoch(TrainStep(model, opt, sched, SegmentationCriterion(0.0), torch.device("cpu")), _loader(), EpochPlan(progress=False))
