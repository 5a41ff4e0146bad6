"""Inference for evaluation: logits at the input size, one function per test-time mode.

Only ``whole`` (one forward pass over the full image) exists today. The paper's test-time
protocol (sliding window of the crop size with stride ceil(2/3 crop), horizontal flip,
multi-scale 0.5..1.75, softmax averaged) slots in as further entries of :data:`INFERENCE_MODES`:
each mode is a function ``(model, images, cfg) -> logits (N, C, H, W)`` at the input's height and
width, selected by ``EvaluateConfig.mode``, so callers never change.

Validation images of one dataset may differ in size, and the default collate can only stack
equal shapes: :func:`collate_same_size` turns one loader batch into same-size sub-batches, so
``evaluate.batch_size`` is honoured whenever sizes match and nothing fails when they don't.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pspnet.config import EvaluateConfig

#: ``(model, images (N,3,H,W), cfg) -> logits (N,C,H,W)`` at the images' size.
ModeFn = Callable[[nn.Module, torch.Tensor, EvaluateConfig], torch.Tensor]


def _forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """One forward pass; tolerates models that return ``(logits, aux)`` and resizes to the input."""
    out = model(images)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim != 4 or out.shape[0] != images.shape[0]:
        raise ValueError(f"model returned shape {tuple(out.shape)} for input {tuple(images.shape)}; expected (N, C, H, W)")
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out


def whole_image(model: nn.Module, images: torch.Tensor, cfg: EvaluateConfig) -> torch.Tensor:
    """``whole`` mode: the full image in one pass (the model sees every pixel's context at once)."""
    return _forward(model, images)


#: Test-time modes by ``EvaluateConfig.mode`` name.
INFERENCE_MODES: dict[str, ModeFn] = {"whole": whole_image}


def predict_logits(model: nn.Module, images: torch.Tensor, cfg: EvaluateConfig | None = None) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` for normalised ``images`` ``(N, 3, H, W)``, at the images' size.

    Runs under :func:`torch.inference_mode` with the mode named by ``cfg.mode`` (default
    ``whole``). ``model`` must be in eval mode: scoring with train-mode BatchNorm and dropout
    would silently give different numbers, so that is an error.
    """
    cfg = cfg or EvaluateConfig()
    if model.training:
        raise ValueError("predict_logits needs the model in eval mode; call model.eval() first")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    try:
        mode_fn = INFERENCE_MODES[cfg.mode]
    except KeyError:
        raise ValueError(f"unknown inference mode {cfg.mode!r}; known: {sorted(INFERENCE_MODES)}") from None
    with torch.inference_mode():
        return mode_fn(model, images, cfg)


class IndexedDataset(Dataset):
    """Wraps a dataset of ``(image, mask)`` so items carry their index: ``(index, image, mask)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any, Any]:
        image, mask = self.dataset[index]
        return index, image, mask


class Batch(NamedTuple):
    """Same-size samples stacked: dataset ``indices``, ``images`` (N,3,H,W), ``masks`` (N,H,W)."""

    indices: list[int]
    images: torch.Tensor
    masks: torch.Tensor


def collate_same_size(samples: Sequence[tuple[int, torch.Tensor, torch.Tensor]]) -> list[Batch]:
    """Group ``(index, image, mask)`` samples into stacked batches of equal image size (order kept
    within each size)."""
    groups: dict[tuple[int, ...], list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for sample in samples:
        index, image, mask = sample
        image, mask = torch.as_tensor(image), torch.as_tensor(mask)
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"sample {index}: image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        groups.setdefault(tuple(image.shape), []).append((index, image, mask))
    return [
        Batch([s[0] for s in group], torch.stack([s[1] for s in group]), torch.stack([s[2] for s in group]))
        for group in groups.values()
    ]


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A sequential loader over ``dataset`` whose batches are lists of same-size :class:`Batch` es."""
    return DataLoader(
        IndexedDataset(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_same_size,
        pin_memory=pin_memory,
    )


def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    cfg: EvaluateConfig | None = None,
    desc: str = "evaluate",
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield ``(indices, preds, masks)`` per same-size batch of a :func:`make_loader` loader.

    ``preds`` (argmax class ids, int64) and ``masks`` are ``(N, H, W)`` on ``device``. A tqdm bar
    counts images.
    """
    device = torch.device(device)
    with tqdm(total=len(loader.dataset), desc=desc, unit="img") as bar:  # type: ignore[arg-type]
        for groups in loader:
            for batch in groups:
                images = batch.images.to(device, non_blocking=True)
                masks = batch.masks.to(device, non_blocking=True)
                preds = predict_logits(model, images, cfg).argmax(dim=1)
                yield batch.indices, preds, masks
                bar.update(len(batch.indices))
