"""What both release formats share: the official architecture's constants and the key-source type."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch

#: Encoder depth by the number of blocks in layer3 (conv4_x): ResNet-50 / 101 / 152.
ENCODER_BY_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101", 36: "resnet152"}
#: The paper's pyramid (the official releases all use it).
OFFICIAL_BINS = (1, 2, 3, 6)
#: Our state-dict key -> (the source's name for it, a thunk giving the converted tensor).
TensorSources = dict[str, tuple[str, Callable[[], torch.Tensor]]]


def count_blocks(keys: Iterable[str], pattern: str) -> int:
    """How many distinct values the first group of ``pattern`` takes over ``keys``."""
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})
