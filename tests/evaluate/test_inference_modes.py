"""The paper's test-time protocol: sliding window, horizontal flip, multi-scale, on known models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from pspnet.config import EvaluateConfig, ModelConfig, parse_params
from pspnet.errors import ConfigError
from pspnet.evaluate.inference import make_loader, predict_loader, predict_logits
from pspnet.evaluate.multiscale import (
    INFERENCE_MODES,
    returns_logits,
    scaled_size,
    sliding_windows,
    window_starts,
    window_stride,
)
from pspnet.model.pspnet import build_model

#: Slope of the column-position logit of :class:`ColumnNet`.
COLUMN_SLOPE = 0.5


class PointwiseNet(nn.Module):
    """Logits at a pixel depend on that pixel only (a 1x1 conv): cropping cannot change them."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ColumnNet(nn.Module):
    """Two classes, NOT flip-symmetric: logit 0 = COLUMN_SLOPE * (column index within the input),
    logit 1 = the pixel's first channel. So P(class 0) = sigmoid(COLUMN_SLOPE * col - x[0])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        column = COLUMN_SLOPE * torch.arange(w, dtype=x.dtype).expand(n, h, w)
        return torch.stack([column, x[:, 0]], dim=1)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=1)


# --- window geometry -------------------------------------------------------------------------


def test_stride_is_ceil_of_rate_times_crop() -> None:
    assert window_stride((473, 473), 2 / 3) == (316, 316)  # the paper's ADE20K / VOC setting
    assert window_stride((96, 128), 2 / 3) == (64, 86)
    assert window_stride((10, 10), 0.7) == (7, 7)  # 0.7 * 10 is 7.000000000000001 in floats
    assert window_stride((10, 10), 1.0) == (10, 10)
    assert window_stride((1, 3), 0.1) == (1, 1)


def test_window_starts_cover_the_length_with_last_window_at_the_border() -> None:
    assert window_starts(10, 6, 4) == [0, 4]
    assert window_starts(200, 96, 64) == [0, 64, 104]
    assert window_starts(300, 128, 86) == [0, 86, 172]
    assert window_starts(96, 96, 64) == [0]
    assert window_starts(5, 8, 6) == [0]  # smaller than the window: one (padded) window
    assert window_starts(12, 4, 4) == [0, 4, 8]  # stride = crop: tiles without overlap


def test_every_pixel_covered_with_expected_counts() -> None:
    height, width, crop = 200, 300, (96, 128)
    stride = window_stride(crop, 2 / 3)
    windows = sliding_windows(height, width, crop, stride)
    assert len(windows) == 3 * 3
    count = torch.zeros(height, width, dtype=torch.int64)
    for top, left in windows:
        assert 0 <= top <= height - crop[0] and 0 <= left <= width - crop[1]
        count[top : top + crop[0], left : left + crop[1]] += 1
    assert int(count.min()) >= 1
    # Rows: windows [0,96), [64,160), [104,200); columns: [0,128), [86,214), [172,300).
    rows = torch.tensor([1] * 64 + [2] * 32 + [1] * 8 + [2] * 56 + [1] * 40)
    cols = torch.tensor([1] * 86 + [2] * 42 + [1] * 44 + [2] * 42 + [1] * 86)
    torch.testing.assert_close(count, rows[:, None] * cols[None, :])


def test_scaled_size_sets_the_long_side() -> None:
    assert scaled_size(20, 30, 1.0, None) == (20, 30)
    assert scaled_size(20, 30, 0.5, None) == (10, 15)
    assert scaled_size(30, 20, 1.0, 512) == (512, 341)
    assert scaled_size(473, 473, 0.75, 512) == (384, 384)
    assert scaled_size(2, 100, 0.1, None) == (1, 10)  # never a zero-sized side


# --- sliding window ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(20, 30), (9, 13), (5, 7), (5, 30), (8, 12)])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_slide_equals_whole_for_a_pointwise_model(size: tuple[int, int], batch_size: int) -> None:
    """Overlapping windows, odd sizes, images smaller than the window in one or both sides."""
    model = PointwiseNet().eval()
    images = torch.randn(2, 3, *size)
    expected = softmax(predict_logits(model, images))
    cfg = EvaluateConfig(mode="slide", crop_size=(8, 12), batch_size=batch_size)
    probs = predict_logits(model, images, cfg)
    assert probs.shape == (2, 4, *size)
    torch.testing.assert_close(probs, expected)


def test_slide_averages_probabilities_over_overlapping_windows() -> None:
    """Width 10, window 6, stride ceil(2/3 * 6) = 4: windows [0, 6) and [4, 10) overlap on 4, 5."""
    model = ColumnNet().eval()
    images = torch.randn(1, 3, 3, 10)
    value = images[0, 0]  # (3, 10)
    cfg = EvaluateConfig(mode="slide", crop_size=(3, 6))
    probs = predict_logits(model, images, cfg)[0, 0]

    def p(local_col: int, x: int) -> torch.Tensor:
        return torch.sigmoid(COLUMN_SLOPE * local_col - value[:, x])

    expected = torch.stack(
        [p(x, x) for x in range(4)]  # first window only
        + [(p(x, x) + p(x - 4, x)) / 2 for x in (4, 5)]  # both windows
        + [p(x - 4, x) for x in range(6, 10)],  # second window only
        dim=1,
    )
    torch.testing.assert_close(probs, expected)


# --- flip ----------------------------------------------------------------------------------------


def test_flip_averages_the_flipped_back_pass() -> None:
    model = ColumnNet().eval()
    images = torch.randn(2, 3, 5, 7)
    plain = softmax(model(images))
    mirrored = softmax(model(images.flip(-1))).flip(-1)
    probs = predict_logits(model, images, EvaluateConfig(flip=True))
    torch.testing.assert_close(probs, (plain + mirrored) / 2)
    assert not torch.allclose(probs, plain)  # the model is not flip-symmetric, so flip matters
    # By hand: column c sees column c in one pass and 6 - c in the mirrored one.
    col = torch.arange(7, dtype=images.dtype)
    by_hand = (torch.sigmoid(COLUMN_SLOPE * col - images[:, 0]) + torch.sigmoid(COLUMN_SLOPE * (6 - col) - images[:, 0])) / 2
    torch.testing.assert_close(probs[:, 0], by_hand)


def test_slide_with_flip_flips_each_window() -> None:
    """Every window is run mirrored too: a window-local column c also scores as crop_w - 1 - c."""
    model = ColumnNet().eval()
    images = torch.zeros(1, 3, 2, 10)
    probs = predict_logits(model, images, EvaluateConfig(mode="slide", crop_size=(2, 6), flip=True))[0, 0, 0]
    window = (torch.sigmoid(COLUMN_SLOPE * torch.arange(6.0)) + torch.sigmoid(COLUMN_SLOPE * (5 - torch.arange(6.0)))) / 2
    expected = torch.cat([window[:4], (window[4:] + window[:2]) / 2, window[2:]])
    torch.testing.assert_close(probs, expected)


# --- multi-scale ---------------------------------------------------------------------------------


def test_multi_scale_averages_resized_probabilities() -> None:
    model = PointwiseNet().eval()
    images = torch.randn(2, 3, 20, 30)
    full = softmax(model(images))
    half_input = F.interpolate(images, size=(10, 15), mode="bilinear", align_corners=False)
    half = F.interpolate(softmax(model(half_input)), size=(20, 30), mode="bilinear", align_corners=False)
    probs = predict_logits(model, images, EvaluateConfig(scales=(0.5, 1.0)))
    torch.testing.assert_close(probs, (half + full) / 2)
    # base_size sets what scale 1.0 means: long side 60 -> 2x, so scale 0.5 is the original size.
    probs = predict_logits(model, images, EvaluateConfig(scales=(0.5, 1.0), base_size=60))
    double_input = F.interpolate(images, size=(40, 60), mode="bilinear", align_corners=False)
    double = F.interpolate(softmax(model(double_input)), size=(20, 30), mode="bilinear", align_corners=False)
    torch.testing.assert_close(probs, (full + double) / 2)


def test_slide_flip_multi_scale_together() -> None:
    """For a pointwise model that is flip-equivariant, windows and flips change nothing: the
    full protocol equals the multi-scale average of whole-image passes."""
    model = PointwiseNet().eval()
    images = torch.randn(1, 3, 17, 23)
    scales = (0.5, 1.0, 1.5)
    expected = predict_logits(model, images, EvaluateConfig(scales=scales))
    cfg = EvaluateConfig(mode="slide", crop_size=(8, 8), flip=True, scales=scales, batch_size=3)
    torch.testing.assert_close(predict_logits(model, images, cfg), expected)


# --- what comes back -----------------------------------------------------------------------------


def test_logits_only_when_nothing_is_averaged() -> None:
    model = PointwiseNet().eval()
    images = torch.randn(2, 3, 6, 9)
    assert returns_logits(EvaluateConfig())
    torch.testing.assert_close(predict_logits(model, images, EvaluateConfig()), model(images))
    for cfg in (
        EvaluateConfig(flip=True),
        EvaluateConfig(scales=(0.5, 1.0)),
        EvaluateConfig(mode="slide", crop_size=(4, 4)),
    ):
        assert not returns_logits(cfg)
        probs = predict_logits(model, images, cfg)
        assert probs.shape == (2, 4, 6, 9) and probs.is_inference()
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 6, 9))
        assert probs.min() >= 0
    assert set(INFERENCE_MODES) == {"whole", "slide"}


def test_predict_loader_runs_the_configured_protocol() -> None:
    class Sized(torch.utils.data.Dataset):
        sizes = ((8, 8), (8, 12), (8, 8), (16, 8))

        def __len__(self) -> int:
            return len(self.sizes)

        def __getitem__(self, i: int):
            torch.manual_seed(i)
            return torch.randn(3, *self.sizes[i]), torch.zeros(self.sizes[i], dtype=torch.int64)

    model = PointwiseNet().eval()
    cfg = EvaluateConfig(mode="slide", crop_size=(6, 6), flip=True, scales=(1.0, 1.5), batch_size=2)
    seen = 0
    for indices, preds, masks in predict_loader(model, make_loader(Sized(), batch_size=2), "cpu", cfg):
        assert preds.dtype == torch.int64 and preds.shape == masks.shape
        for row, i in enumerate(indices):
            image = Sized()[i][0][None]
            whole = predict_logits(model, image, EvaluateConfig(scales=(1.0, 1.5)))
            assert torch.equal(preds[row], whole.argmax(dim=1)[0])
        seen += len(indices)
    assert seen == len(Sized.sizes)


# --- a real PSPNet --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pspnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(encoder="resnet18"), 5).eval()


@pytest.mark.parametrize(
    "cfg",
    [
        EvaluateConfig(),
        EvaluateConfig(mode="slide", crop_size=(32, 32)),
        EvaluateConfig(mode="slide", crop_size=(64, 64)),  # larger than the image: padded
        EvaluateConfig(flip=True),
        EvaluateConfig(scales=(0.75, 1.25)),
        EvaluateConfig(mode="slide", crop_size=(32, 40), flip=True, scales=(0.5, 1.0), batch_size=2),
    ],
    ids=["whole", "slide", "slide-padded", "flip", "multi-scale", "slide-flip-multi-scale"],
)
def test_real_pspnet_every_mode_returns_the_input_size(pspnet: nn.Module, cfg: EvaluateConfig) -> None:
    images = torch.randn(2, 3, 40, 56)
    scores = predict_logits(pspnet, images, cfg)
    assert scores.shape == (2, 5, 40, 56)
    assert torch.isfinite(scores).all()
    if not returns_logits(cfg):
        torch.testing.assert_close(scores.sum(dim=1), torch.ones(2, 40, 56))


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scales", ()),
        ("scales", (1.0, 0.0)),
        ("scales", (-0.5,)),
        ("stride_rate", 0.0),
        ("stride_rate", 1.5),
        ("crop_size", (0, 10)),
        ("crop_size", (10,)),
        ("base_size", 0),
        ("mode", "tiles"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        EvaluateConfig(**{field: value})
    with pytest.raises(ConfigError, match=f"evaluate.{field}"):
        parse_params({"evaluate": {field: list(value) if isinstance(value, tuple) else value}}, "params.yaml")


def test_defaults_and_accepted_edges() -> None:
    cfg = EvaluateConfig()
    assert (cfg.mode, cfg.crop_size, cfg.stride_rate, cfg.flip, cfg.scales, cfg.base_size) == (
        "whole", (473, 473), 2 / 3, False, (1.0,), None
    )
    assert EvaluateConfig(stride_rate=1.0).stride_rate == 1.0
    paper = parse_params({"evaluate": {"scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "base_size": 512}}).evaluate
    assert paper.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and paper.base_size == 512
