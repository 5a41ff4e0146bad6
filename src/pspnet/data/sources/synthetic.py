"""The embedded "context scenes" dataset (:mod:`pspnet.data.context_scenes`) as a source: no files."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pspnet.config import Params
from pspnet.data import context_scenes
from pspnet.data.classes import ClassTable
from pspnet.data.sources.base import Expectations, SampleRef, SourceData, SourceFolders


def _ready(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return image, mask


def synthetic_source(params: Params, folders: SourceFolders) -> SourceData:
    """Generate the dataset (lazily, in order: the generator's random stream is sequential)."""
    cfg = params.data.synthetic
    ignore = params.data.ignore_index
    classes = ClassTable(names=context_scenes.CLASS_NAMES, colors=context_scenes.CLASS_COLORS, ignore_index=ignore,
                         lookalikes=context_scenes.LOOKALIKES)

    def samples() -> Iterator[SampleRef]:
        for split in context_scenes.SPLITS:
            for sample_id, image, mask in context_scenes.iter_split(cfg, split, ignore):
                yield SampleRef(sample_id, split, lambda image=image, mask=mask: _ready(image, mask))

    expect = Expectations(image_sizes=((cfg.height, cfg.width),))
    return SourceData(classes, samples(), sum(context_scenes.split_sizes(cfg).values()), expect)
