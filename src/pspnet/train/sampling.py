"""The order of the training samples and their augmentation seeds, as a pure function of
``(train.seed, epoch, position)``.

Every epoch visits the train split in a random order drawn from ``(seed, epoch)``; the sample
at position ``p`` of epoch ``e`` is augmented with a generator seeded from ``(seed, e, p)``.
Nothing depends on what ran before, which gives three properties a stateful stream lacks:

- a run resumed mid-epoch (:mod:`pspnet.train.resume`) starts at batch ``k`` of epoch ``e`` and
  sees exactly the batches and augmentations the uninterrupted run saw;
- the number of loader workers does not change the result (each worker reseeds per sample);
- the main process's torch RNG (dropout) is never drawn from by the loader: it has its own
  generator.

Seeds are derived with NumPy's ``SeedSequence`` (well-mixed, independent streams).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pspnet.data.transforms import reseed

#: Domain tags that keep the order stream and the augmentation stream apart.
_ORDER_STREAM, _AUGMENT_STREAM = 0, 1


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from the integers ``keys`` (same keys, same seed)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(size)`` that epoch ``epoch`` visits."""
    generator = torch.Generator().manual_seed(derive_seed(seed, _ORDER_STREAM, epoch))
    return torch.randperm(size, generator=generator)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation_seed)`` for one epoch, from position ``start`` on.

    Call :meth:`set_epoch` before iterating (as with ``DistributedSampler``); ``start`` skips
    the first positions (a resume: ``batches_done * batch_size``).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 1
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.size:
            raise ValueError(f"start must be in [0, {self.size}], got {start}")
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.size, self.seed, self.epoch).tolist()
        for position in range(self.start, self.size):
            yield order[position], derive_seed(self.seed, _AUGMENT_STREAM, self.epoch, position)

    def __len__(self) -> int:
        return self.size - self.start


class SeededSamples(Dataset[Any]):
    """``dataset`` indexed by ``(index, seed)``: reseeds its transform, then returns ``dataset[index]``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        reseed(getattr(self.dataset, "transform", None), seed)
        return self.dataset[index]
