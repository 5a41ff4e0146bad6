"""Parity with the paper's network: official parameter counts, the deep stem, the ablation
switches (no PPM, max pooling, no aux head) and the `pspnet model-info` command."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from pspnet.cli import app
from pspnet.config import ModelConfig
from pspnet.model.encoder import ResNetEncoder
from pspnet.model.info import model_info
from pspnet.model.pspnet import build_model, count_parameters

# (encoder, classes) -> (total, without aux), from docs/pspnet-spec.md (the official code's counts).
OFFICIAL_COUNTS = {
    ("resnet50", 150): (49_180_908, 46_782_550),
    ("resnet50", 21): (49_081_578, None),
    ("resnet50", 19): (49_080_038, None),
    ("resnet101", 21): (68_073_706, 65_708_501),
}


@pytest.mark.parametrize("encoder,classes", sorted(OFFICIAL_COUNTS))
def test_deep_stem_models_have_the_official_parameter_counts(encoder: str, classes: int) -> None:
    total, without_aux = OFFICIAL_COUNTS[(encoder, classes)]
    info = model_info(ModelConfig(encoder=encoder), classes, (473, 473))
    assert info["stem"] == "deep"  # the default for ResNet-50/101
    assert info["params_total"] == total
    if without_aux is not None:
        assert info["params_without_aux"] == without_aux
    assert info["feature_shape"] == [1, 2048, 60, 60]
    assert info["aux_feature_shape"] == [1, 1024, 60, 60]
    assert info["output_shape"] == [1, classes, 473, 473]


def test_deep_stem_backbone_equals_the_official_resnet50() -> None:
    # pspnet-spec.md: the official deep-stem ResNet-50 backbone has 23,631,808 parameters.
    assert count_parameters(ResNetEncoder("resnet50", stem="deep")) == 23_631_808
    assert count_parameters(ResNetEncoder("resnet50", stem="standard")) == 23_508_032


def test_deep_stem_structure_matches_the_official_code() -> None:
    body = ResNetEncoder("resnet50", stem="deep").body
    convs = [body.conv1, body.conv2, body.conv3]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 64), (64, 128)]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert [bn.num_features for bn in (body.bn1, body.bn2, body.bn3)] == [64, 64, 128]
    first = body.layer1[0]
    assert first.conv1.in_channels == 128 and first.downsample[0].in_channels == 128
    # stride on the 3x3 conv of a block, as in the official PyTorch code
    assert body.layer2[0].conv2.stride == (2, 2) and body.layer2[0].conv1.stride == (1, 1)


@pytest.mark.parametrize("stem", ["deep", "standard"])
@pytest.mark.parametrize("size", [(65, 65), (64, 90), (33, 47)])
def test_both_stems_give_output_stride_8_at_odd_and_even_sizes(stem: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet18", stem=stem), 4).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        c3, c4 = model.encoder(x)
        out = model(x)
    expected = tuple(-(-s // 8) for s in size)
    assert c3.shape[-2:] == c4.shape[-2:] == expected
    assert out.shape == (1, 4, *size)


def test_auto_stem_is_standard_for_basic_block_resnets() -> None:
    assert ModelConfig(encoder="resnet18").resolved_stem == "standard"
    assert ModelConfig(encoder="resnet34").resolved_stem == "standard"
    assert ModelConfig(encoder="resnet152").resolved_stem == "deep"
    assert ModelConfig(encoder="resnet18", stem="deep").resolved_stem == "deep"


def test_without_ppm_the_head_reads_layer4_directly() -> None:
    torch.manual_seed(0)
    fcn = build_model(ModelConfig(encoder="resnet18", ppm=False), 3)
    psp = build_model(ModelConfig(encoder="resnet18"), 3)
    assert fcn.ppm is None
    assert fcn.head[0].in_channels == 512 and psp.head[0].in_channels == 1024
    assert fcn.head[0].out_channels == psp.head[0].out_channels == 128  # same head width
    assert count_parameters(psp) - count_parameters(fcn) == count_parameters(psp.ppm) + 128 * 512 * 9
    fcn.eval()
    with torch.no_grad():
        assert fcn(torch.randn(2, 3, 40, 56)).shape == (2, 3, 40, 56)


def test_resnet50_fcn_baseline_counts() -> None:
    info = model_info(ModelConfig(encoder="resnet50", ppm=False), 150, (473, 473))
    # PPM (4 x (2048*512 + 2*512)) and half of the head's 3x3 input (2048*512*9) are gone.
    assert info["params_total"] == 49_180_908 - 4 * (2048 * 512 + 1024) - 2048 * 512 * 9
    assert info["ppm_bins"] == [] and info["output_shape"] == [1, 150, 473, 473]


def test_max_pooling_switch() -> None:
    torch.manual_seed(0)
    avg = build_model(ModelConfig(encoder="resnet18"), 3).eval()
    mx = build_model(ModelConfig(encoder="resnet18", ppm_pooling="max"), 3).eval()
    assert all(isinstance(b[0], nn.AdaptiveAvgPool2d) for b in avg.ppm.branches)
    assert all(isinstance(b[0], nn.AdaptiveMaxPool2d) for b in mx.ppm.branches)
    assert [b[0].output_size for b in mx.ppm.branches] == [1, 2, 3, 6]
    mx.load_state_dict(avg.state_dict())  # same parameters, only the pooling differs
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert not torch.allclose(avg(x), mx(x))


def test_configurable_bins_and_reduction_channels() -> None:
    m = build_model(ModelConfig(encoder="resnet18", ppm_bins=(1, 3), ppm_channels=64), 3)
    assert m.ppm.bins == (1, 3) and m.ppm.out_channels == 512 + 2 * 64
    assert m.head[0].in_channels == 640


def test_aux_head_is_left_out_of_inference_and_the_count_without_aux() -> None:
    info = model_info(ModelConfig(encoder="resnet18", aux_weight=0.0), 5, (64, 64))
    assert info["aux_head"] is False and info["params_total"] == info["params_without_aux"]


def test_model_info_command_prints_the_official_numbers_as_json(tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        ["model-info", "--encoder", "resnet50", "--stem", "deep", "--classes", "150", "--size", "473", "--json", "--root", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["params_total"] == 49_180_908
    assert info["params_without_aux"] == 46_782_550
    assert info["feature_shape"] == [1, 2048, 60, 60]
    assert info["output_shape"] == [1, 150, 473, 473]


def test_model_info_reads_params_and_rejects_bad_options(tmp_path) -> None:
    (tmp_path / "params.yaml").write_text("model:\n  encoder: resnet34\n  ppm: false\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["model-info", "--classes", "7", "--size", "64x96", "--json", "--root", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    info = json.loads(ok.stdout)
    assert info["encoder"] == "resnet34" and info["ppm"] is False and info["output_shape"] == [1, 7, 64, 96]
    no_classes = runner.invoke(app, ["model-info", "--root", str(tmp_path)])
    assert no_classes.exit_code == 2 and "--classes" in no_classes.output
    bad = runner.invoke(app, ["model-info", "--encoder", "vgg16", "--classes", "3", "--root", str(tmp_path)])
    assert bad.exit_code == 2 and "model.encoder" in bad.output
    bad_size = runner.invoke(app, ["model-info", "--classes", "3", "--size", "big", "--root", str(tmp_path)])
    assert bad_size.exit_code != 0 and "HEIGHTxWIDTH" in bad_size.output
