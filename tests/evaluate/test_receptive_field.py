"""The effective-receptive-field measurement: exact on networks whose support is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pspnet.config import ModelConfig
from pspnet.evaluate.plots import plot_receptive_fields
from pspnet.evaluate.receptive_field import ReceptiveField, effective_receptive_field
from pspnet.model.pspnet import build_model


class GlobalContext(nn.Module):
    """A local 3x3 convolution plus the image mean broadcast back: every pixel sees the frame."""

    def __init__(self) -> None:
        super().__init__()
        self.local = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local(x) + x.mean(dim=(2, 3), keepdim=True)[:, :2]


def _images(n: int = 3, height: int = 21, width: int = 25) -> torch.Tensor:
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(0))


def test_a_3x3_convolution_sees_exactly_its_window() -> None:
    torch.manual_seed(0)
    field = effective_receptive_field(nn.Conv2d(3, 2, 3, padding=1), _images())
    assert field.centre == (10, 12)
    assert field.weights.sum() == pytest.approx(1.0)
    rows, cols = np.nonzero(field.weights)
    assert set(rows) == {9, 10, 11} and set(cols) == {11, 12, 13}
    assert field.radius(0.95) <= np.sqrt(2) + 1e-9
    assert field.mass_beyond(np.sqrt(2)) == 0.0
    chunked = effective_receptive_field(nn.Conv2d(3, 2, 3, padding=1), _images(), batch_size=1)
    assert chunked.weights.shape == field.weights.shape and chunked.weights.sum() == pytest.approx(1.0)


def test_a_global_branch_reaches_the_corners_that_a_local_one_never_does() -> None:
    torch.manual_seed(0)
    local = effective_receptive_field(nn.Conv2d(3, 2, 3, padding=1), _images())
    glob = effective_receptive_field(GlobalContext(), _images())
    assert local.weights[0, 0] == 0.0
    assert glob.weights[0, 0] > 0.0
    assert glob.mass_beyond(5.0) > 0.0
    assert local.mass_beyond(5.0) == 0.0
    assert glob.radius(0.95) > local.radius(0.95)


def test_radius_of_known_maps() -> None:
    weights = np.zeros((9, 9))
    weights[4, 4] = 0.6
    weights[4, 8] = 0.4  # 4 px to the right
    field = ReceptiveField(weights, (4, 4))
    assert field.radius(0.5) == 0.0
    assert field.radius(0.95) == 4.0
    assert field.mass_beyond(3.9) == pytest.approx(0.4)
    assert field.summary() == {"r50": 0.0, "r95": 4.0, "height": 9, "width": 9, "centre": [4, 4]}
    with pytest.raises(ValueError, match="share"):
        field.radius(0.0)


def test_bad_inputs_are_named() -> None:
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with pytest.raises(ValueError, match="outside"):
        effective_receptive_field(conv, _images(), centre=(50, 0))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        effective_receptive_field(conv, torch.zeros(3, 8, 8))


def test_pspnet_and_its_fcn_baseline_measure_and_plot(tmp_path) -> None:
    """On the real model (random weights, eval mode): the PPM's global bin spreads the mass."""
    torch.manual_seed(0)
    images = _images(2, 64, 64)
    fields = {}
    for name, ppm in (("fcn", False), ("pspnet", True)):
        model = build_model(ModelConfig(encoder="resnet18", encoder_weights="none", ppm=ppm), 4)
        fields[name] = effective_receptive_field(model, images)
        assert np.isfinite(fields[name].weights).all()
        assert not any(p.grad is not None for p in model.parameters())
    out = plot_receptive_fields(fields, tmp_path / "erf.png")
    assert out.stat().st_size > 0
