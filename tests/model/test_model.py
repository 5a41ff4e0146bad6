"""PSPNet architecture: shapes, dilation, PPM, heads, forward contract, parameter count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pspnet.config import ModelConfig
from pspnet.model.encoder import ResNetEncoder
from pspnet.model.ppm import PyramidPoolingModule
from pspnet.model.pspnet import PSPNet, build_model

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def model() -> PSPNet:
    torch.manual_seed(0)
    return build_model(ModelConfig(encoder="resnet18"), NUM_CLASSES)


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (97, 131), (33, 45)])
def test_output_is_at_input_size_even_and_odd(model: PSPNet, size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, NUM_CLASSES, *size)
    assert out.dtype == torch.float32


def test_train_mode_returns_logits_and_aux(model: PSPNet) -> None:
    model.train()
    out = model(torch.randn(2, 3, 97, 131))
    assert isinstance(out, tuple) and len(out) == 2
    logits, aux = out
    assert logits.shape == (2, NUM_CLASSES, 97, 131)
    assert aux is not None and aux.shape == (2, NUM_CLASSES, 97, 131)
    model.eval()


def test_no_aux_head_when_aux_weight_is_zero() -> None:
    m = build_model(ModelConfig(encoder="resnet18", aux_weight=0.0), 3)
    assert m.aux_head is None
    m.train()
    logits, aux = m(torch.randn(2, 3, 40, 48))
    assert aux is None and logits.shape == (2, 3, 40, 48)


def test_aux_head_present_with_aux_weight(model: PSPNet) -> None:
    assert isinstance(model.aux_head, nn.Module)


def _conv3x3(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


@pytest.mark.parametrize("name,stem", [("resnet18", "standard"), ("resnet34", "deep"), ("resnet50", "deep"), ("resnet50", "standard"), ("resnet101", "deep")])
def test_output_stride_8_dilates_every_block_like_the_official_code(name: str, stem: str) -> None:
    enc = ResNetEncoder(name, output_stride=8, stem=stem)
    body = enc.body
    for layer, dilation in ((body.layer3, 2), (body.layer4, 4)):
        convs = _conv3x3(layer)
        assert convs, "no 3x3 conv found"
        for conv in convs:  # first block included
            assert conv.dilation == (dilation, dilation)
            assert conv.stride == (1, 1)
            assert conv.padding == (dilation, dilation)
        for conv in (m for m in layer.modules() if isinstance(m, nn.Conv2d)):
            assert conv.stride == (1, 1)  # 1x1 downsample projections too
    # Earlier stages untouched: layer2's first 3x3 still strides.
    assert _conv3x3(body.layer2)[0].stride == (2, 2)
    assert all(c.dilation == (1, 1) for c in _conv3x3(body.layer2))


@pytest.mark.parametrize("name,channels", [("resnet18", (256, 512)), ("resnet34", (256, 512)), ("resnet50", (1024, 2048))])
def test_encoder_feature_channels_and_stride(name: str, channels: tuple[int, int]) -> None:
    enc = ResNetEncoder(name, output_stride=8).eval()
    assert (enc.aux_channels, enc.out_channels) == channels
    if name == "resnet18":
        with torch.no_grad():
            c3, c4 = enc(torch.randn(1, 3, 97, 131))
        assert c3.shape == (1, 256, 13, 17)  # ceil(97/8), ceil(131/8)
        assert c4.shape == (1, 512, 13, 17)


def test_ppm_output_channels_and_shape() -> None:
    ppm = PyramidPoolingModule(512, bins=(1, 2, 3, 6)).eval()
    assert ppm.reduction_channels == 128 and ppm.out_channels == 1024
    with torch.no_grad():
        y = ppm(torch.randn(2, 512, 13, 17))
    assert y.shape == (2, 1024, 13, 17)
    for branch, b in zip(ppm.branches, (1, 2, 3, 6)):
        pool, conv, bn, relu = branch
        assert isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size == b
        assert conv.kernel_size == (1, 1) and conv.bias is None and conv.out_channels == 128
        assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)


def test_ppm_keeps_its_input_as_the_first_channels() -> None:
    ppm = PyramidPoolingModule(8, bins=(1, 2)).eval()
    x = torch.randn(1, 8, 5, 7)
    with torch.no_grad():
        y = ppm(x)
    assert y.shape == (1, 16, 5, 7)
    assert torch.equal(y[:, :8], x)


def test_head_structure_follows_the_paper(model: PSPNet) -> None:
    conv3, bn, relu, drop, cls = model.head
    assert conv3.kernel_size == (3, 3) and conv3.bias is None
    assert conv3.in_channels == 1024 and conv3.out_channels == 128  # ResNet-18: layer4 / 4
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert isinstance(drop, nn.Dropout2d) and drop.p == pytest.approx(0.1)
    assert cls.kernel_size == (1, 1) and cls.out_channels == NUM_CLASSES
    aux_conv = model.aux_head[0]
    assert aux_conv.in_channels == 256 and aux_conv.out_channels == 64


def test_resnet50_standard_stem_matches_the_official_parameter_count() -> None:
    # pspnet-spec.md: a torchvision-stem ResNet-50 PSPNet with 150 classes has 49,057,132
    # parameters (aux head included); the aux head adds 1024*256*9 + 2*256 + 256*150 + 150.
    m = build_model(ModelConfig(encoder="resnet50", stem="standard"), 150)
    assert m.head[0].out_channels == 512 and m.aux_head[0].out_channels == 256
    assert sum(p.numel() for p in m.parameters()) == 49_057_132
    no_aux = build_model(ModelConfig(encoder="resnet50", stem="standard", aux_weight=0.0), 150)
    assert sum(p.numel() for p in no_aux.parameters()) == 49_057_132 - 2_398_358


def test_explicit_head_widths() -> None:
    m = build_model(ModelConfig(encoder="resnet18", head_channels=32, aux_channels=16), 3)
    assert m.head[0].out_channels == 32 and m.aux_head[0].out_channels == 16


def test_output_stride_16() -> None:
    enc = ResNetEncoder("resnet18", output_stride=16).eval()
    assert all(c.dilation == (1, 1) for c in _conv3x3(enc.body.layer3))
    assert all(c.dilation == (2, 2) for c in _conv3x3(enc.body.layer4))
    with torch.no_grad():
        c3, c4 = enc(torch.randn(1, 3, 64, 64))
    assert c3.shape[-2:] == c4.shape[-2:] == (4, 4)
