"""Inference: logits at the input size, eval-mode guard, same-size batching of a loader."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pspnet.config import EvaluateConfig
from pspnet.evaluate.inference import collate_same_size, make_loader, predict_loader, predict_logits
from pspnet.evaluate.multiscale import INFERENCE_MODES


class StrideNet(nn.Module):
    """A stand-in segmenter: logits at 1/stride resolution, optionally ``(logits, aux)`` like train mode."""

    def __init__(self, num_classes: int = 3, stride: int = 4, as_tuple: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, kernel_size=1)
        self.stride, self.as_tuple = stride, as_tuple

    def forward(self, x: torch.Tensor):
        out = self.conv(x[..., :: self.stride, :: self.stride])
        return (out, None) if self.as_tuple else out


def test_logits_resized_to_input() -> None:
    model = StrideNet(stride=4).eval()
    images = torch.randn(2, 3, 30, 45)  # not a multiple of the stride
    logits = predict_logits(model, images)
    assert logits.shape == (2, 3, 30, 45)
    assert not logits.requires_grad and logits.is_inference()
    same = StrideNet(stride=1).eval()
    torch.testing.assert_close(predict_logits(same, images, EvaluateConfig(mode="whole")), same(images))
    assert predict_logits(StrideNet(stride=1, as_tuple=True).eval(), images).shape == (2, 3, 30, 45)
    assert "whole" in INFERENCE_MODES


def test_rejects_train_mode_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        predict_logits(StrideNet(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        predict_logits(StrideNet().eval(), torch.randn(3, 8, 8))


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int):
        h, w = self.sizes[i]
        return torch.full((3, h, w), float(i)), torch.full((h, w), i % 3, dtype=torch.int64)


def test_collate_groups_by_size() -> None:
    ds = ToyDataset([(8, 8), (8, 12), (8, 8)])
    groups = collate_same_size([(i, *ds[i]) for i in range(3)])
    assert [g.indices for g in groups] == [[0, 2], [1]]
    assert groups[0].images.shape == (2, 3, 8, 8) and groups[1].masks.shape == (1, 8, 12)


def test_predict_loader_mixed_sizes() -> None:
    sizes = [(8, 8), (8, 12), (8, 8), (16, 8), (8, 8)]
    loader = make_loader(ToyDataset(sizes), batch_size=3)
    seen = []
    for indices, preds, masks in predict_loader(StrideNet(stride=2).eval(), loader, "cpu"):
        assert preds.dtype == torch.int64 and preds.shape == masks.shape
        for row, i in enumerate(indices):
            assert tuple(preds[row].shape) == sizes[i]
        seen.extend(indices)
    assert sorted(seen) == list(range(len(sizes)))
