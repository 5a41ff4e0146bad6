"""The export wrapper: raw RGB in, logits out, normalisation inside, no auxiliary head."""

from __future__ import annotations

import torch

from pspnet.config import ModelConfig
from pspnet.model.export import SegmentationModel
from pspnet.model.pspnet import build_model

CFG = ModelConfig(encoder="resnet18", head_channels=8, aux_channels=8, aux_weight=0.4)


def test_wrapper_normalises_drops_aux_head_and_keeps_input_size() -> None:
    torch.manual_seed(0)
    net = build_model(CFG, num_classes=3).eval()
    assert net.aux_head is not None
    wrapped = SegmentationModel(net, CFG.input_mean, CFG.input_std)

    assert net.aux_head is not None, "the caller's model must be left untouched"
    assert wrapped.net.aux_head is None
    assert not any("aux" in k for k in wrapped.state_dict())

    x = torch.rand(2, 3, 37, 53) * 255
    wrapped.train()  # must still run the network in eval mode (a tensor, not a tuple)
    with torch.no_grad():
        y = wrapped(x)
        mean = torch.tensor(CFG.input_mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(CFG.input_std).view(1, 3, 1, 1) * 255
        expected = net((x - mean) / std)
    assert y.shape == (2, 3, 37, 53)
    torch.testing.assert_close(y, expected)
