"""Inference for evaluation: class scores at the input size under the paper's test-time protocol.

The protocol itself (scales, flip, ``whole`` / ``slide``) lives in
:mod:`pspnet.evaluate.multiscale`, which the registered model also carries; this module gives it
``params.yaml``'s defaults (:func:`predict_logits`) and feeds it datasets. Images arrive
normalised (ImageNet mean/std), so 0 is the mean colour.

Validation images of one dataset may differ in size, and the default collate can only stack
equal shapes: :func:`collate_same_size` turns one loader batch into same-size sub-batches, so
``evaluate.batch_size`` is honoured whenever sizes match and nothing fails when they don't.
It knows nothing of files or tracking, so ``predict`` reuses it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pspnet.config import EvaluateConfig
from pspnet.evaluate.multiscale import predict_scores


def predict_logits(model: nn.Module, images: torch.Tensor, cfg: EvaluateConfig | None = None) -> torch.Tensor:
    """Scores ``(N, C, H, W)`` for normalised ``images`` ``(N, 3, H, W)``, at the images' size.

    Runs the test-time protocol of ``cfg`` (default: ``whole``, no flip, scale 1.0) under
    :func:`torch.inference_mode`. Returns raw logits when nothing is averaged (see
    :func:`~pspnet.evaluate.multiscale.returns_logits`), else softmax probabilities averaged over windows, flips and scales;
    argmax over ``C`` gives the prediction either way. ``model`` must be in eval mode: scoring
    with train-mode BatchNorm and dropout would silently give different numbers, so that is an
    error.
    """
    return predict_scores(model, images, cfg or EvaluateConfig())


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

    ``preds`` (argmax class ids, int64, of :func:`predict_logits` under ``cfg``'s test-time
    protocol) and ``masks`` are ``(N, H, W)`` on ``device``. A tqdm bar counts images.
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
