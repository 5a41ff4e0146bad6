"""A checkpoint is data, never code: one holding a pickled Python object (not tensors and plain
values) is refused by load_checkpoint, with the file named, before the object is built."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from pspnet.config import ModelConfig
from pspnet.errors import PspnetError
from pspnet.model.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from pspnet.model.pspnet import build_model

CFG = ModelConfig(encoder="resnet18", head_channels=8, aux_channels=8)
NUM_CLASSES = 3


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def test_a_checkpoint_holding_a_pickled_object_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model(CFG, NUM_CLASSES), CFG, NUM_CLASSES, {"class_names": ["a", "b", "c"]})
    payload = torch.load(good, weights_only=True)
    assert (payload["format"], payload["version"]) == (CHECKPOINT_FORMAT, CHECKPOINT_VERSION)

    marker = tmp_path / "payload-ran"
    bad = tmp_path / "bad.pt"
    torch.save({**payload, "meta": {"class_names": ["a", "b", "c"], "note": Payload(marker)}}, bad)
    with pytest.raises(PspnetError, match=rf"^{re.escape(str(bad))}: "):  # names the file
        load_checkpoint(bad)
    assert not marker.exists()
    assert load_checkpoint(good).num_classes == NUM_CLASSES  # the same file without the object loads
