"""ONNX export with dynamic batch / height / width: exact pooling, then ONNX Runtime against
PyTorch at sizes never traced, sides not divisible by the bins included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pspnet.config import parse_params
from pspnet.model.export import SegmentationModel
from pspnet.model.onnx_export import agreement, export_onnx, onnx_session, run_onnx
from pspnet.model.ppm import ExactAdaptivePool2d, with_exact_pooling
from pspnet.model.pspnet import build_model

#: Sizes never traced (the export traces 64x96): odd, prime, tall, wide, and CamVid's frame.
ODD_SIZES = [(97, 131), (61, 89), (33, 17), (127, 53), (255, 199), (360, 480)]
#: Largest |logit| difference accepted between ONNX Runtime and PyTorch (float32).
LOGIT_TOLERANCE = 1e-4


@pytest.mark.parametrize("pooling,builtin", [("avg", nn.AdaptiveAvgPool2d), ("max", nn.AdaptiveMaxPool2d)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_exact_pooling_matches_the_builtin_at_any_size(pooling: str, bins: int, builtin: type[nn.Module]) -> None:
    generator = torch.Generator().manual_seed(bins)
    for h, w in [(1, 1), (5, 3), (6, 6), (7, 9), (13, 5), (60, 61)]:
        x = torch.randn(2, 4, h, w, generator=generator) * 10
        torch.testing.assert_close(ExactAdaptivePool2d(bins, pooling)(x), builtin(bins)(x), atol=1e-5, rtol=1e-6)


def _wrapped(**model: object) -> SegmentationModel:
    params = parse_params({"model": {"encoder": "resnet18", **model}})
    torch.manual_seed(0)
    net = build_model(params.model, 5)
    for m in net.modules():  # non-trivial BN statistics, so that folding mistakes would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return SegmentationModel(net, params.model.input_mean, params.model.input_std)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SegmentationModel, Path]:
    model = _wrapped()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", (64, 96))
    return model, path


def test_onnx_runtime_equals_pytorch_at_sizes_never_traced(exported: tuple[SegmentationModel, Path]) -> None:
    model, path = exported
    session = onnx_session(path)
    scores = agreement(session, model, ODD_SIZES, batch=2)
    assert scores["max_abs_logit_diff"] < LOGIT_TOLERANCE, scores
    assert scores["class_agreement"] >= 0.999, scores
    # The batch is symbolic too: one image and three images both run.
    for n in (1, 3):
        assert run_onnx(session, torch.zeros(n, 3, 41, 67).numpy()).shape == (n, 5, 41, 67)


def test_the_model_keeps_its_builtin_pooling_and_max_pooling_exports_too(tmp_path: Path) -> None:
    model = _wrapped(ppm_pooling="max", ppm_bins=[1, 3])
    path = export_onnx(model, tmp_path / "max.onnx", (64, 96))
    scores = agreement(onnx_session(path), model, [(97, 131), (45, 70)])
    assert scores["max_abs_logit_diff"] < LOGIT_TOLERANCE and scores["class_agreement"] >= 0.999, scores
    assert not any(isinstance(m, ExactAdaptivePool2d) for m in model.modules())  # the export swapped a copy
    assert any(isinstance(m, ExactAdaptivePool2d) for m in with_exact_pooling(model).modules())


def test_int8_quantisation_shrinks_the_graph_and_keeps_dynamic_shapes(exported: tuple[SegmentationModel, Path], tmp_path: Path) -> None:
    import onnx

    from pspnet.model.onnx_export import quantize_int8

    model, path = exported
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, 256, (1, 3, 64, 96)).astype(np.float32) for _ in range(3)]
    int8 = quantize_int8(path, tmp_path / "int8.onnx", calibration)
    assert int8.stat().st_size < path.stat().st_size / 2  # int8 weights: about a quarter of the bytes
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = onnx_session(int8)
    for h, w in [(97, 131), (33, 17)]:
        assert run_onnx(session, np.zeros((2, 3, h, w), np.float32)).shape == (2, 5, h, w)
    with pytest.raises(ValueError, match="at least one calibration image"):
        quantize_int8(path, tmp_path / "none.onnx", [])
    assert not (tmp_path / "none.onnx").exists()
