"""Cityscapes with its fine annotations (Cordts et al. 2016; the 19 evaluation classes).

Layout under ``data.source.location`` (``leftImg8bit_trainvaltest`` + ``gtFine_trainvaltest``
unpacked into one folder)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png      RGB images
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       mode L ids 0..33
    gtFine/.../*_gtFine_color.png, *_gtFine_instanceIds.png, *_gtFine_polygons.json  not read

Splits ``train`` and ``val`` are required. ``test`` is skipped: its public gtFine labels are
dummies (the test labels are held by the benchmark server); other folders (``train_extra``)
are not read. The sample id is ``<city>_<seq>_<frame>``. Every image needs its labelIds file
and every labelIds file its image.

Label mapping (cityscapesScripts ``labels.py``): the 34 labelIds -> the 19 trainIds, road 7 -> 0,
sidewalk 8 -> 1, building 11 -> 2, wall 12 -> 3, fence 13 -> 4, pole 17 -> 5, traffic light
19 -> 6, traffic sign 20 -> 7, vegetation 21 -> 8, terrain 22 -> 9, sky 23 -> 10, person 24 -> 11,
rider 25 -> 12, car 26 -> 13, truck 27 -> 14, bus 28 -> 15, train 31 -> 16, motorcycle 32 -> 17,
bicycle 33 -> 18. The other ids (void 0..6, parking 9, rail track 10, guard rail 14, bridge 15,
tunnel 16, polegroup 18, caravan 29, trailer 30) are ignored, as in the benchmark; ids >= 34 are
an error naming the file. Every frame is 1024 x 2048 (height x width): the expectation the
validate stage checks.
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
    files_by_stem,
    load_pair,
    paired_refs,
    require_dir,
)

NAME = "cityscapes"
#: The 19 classes (trainIds 0..18): name, labelId, standard colour.
CLASSES = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)
CLASS_NAMES = tuple(name for name, _, _ in CLASSES)
CLASS_COLORS = tuple(color for _, _, color in CLASSES)
#: labelIds run 0..33; those not in CLASSES are ignored.
NUM_LABEL_IDS = 34
SPLITS = ("train", "val")
IMAGE_DIR = "leftImg8bit"
MASK_DIR = "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"
#: Every Cityscapes frame is 1024 x 2048 (height x width).
IMAGE_SIZE = (1024, 2048)
EXPECT = Expectations(image_sizes=(IMAGE_SIZE,))
LAYOUT = (
    f"  {IMAGE_DIR}/{{train,val}}/<city>/<city>_<seq>_<frame>{IMAGE_SUFFIX}\n"
    f"  {MASK_DIR}/{{train,val}}/<city>/<city>_<seq>_<frame>{MASK_SUFFIX}  (mode L labelIds 0..33)"
)


def label_map(ignore: int) -> LabelMap:
    """labelIds -> trainIds (0..18), the other ids of 0..33 -> ``ignore``."""
    mapping = {label_id: train_id for train_id, (_, label_id, _) in enumerate(CLASSES)}
    ignored = tuple(i for i in range(NUM_LABEL_IDS) if i not in mapping)
    return LabelMap(mapping, ignore, ignored, accepted=f"the labelIds 0..{NUM_LABEL_IDS - 1}")


def _files(folder: Path, suffix: str) -> dict[str, Path]:
    """``{<city>_<seq>_<frame>: path}`` of the files of ``folder`` (all cities) ending in ``suffix``."""
    stem_suffix = suffix.removesuffix(".png")
    return {
        name: path
        for name, path in files_by_stem(folder, [".png"], strip=stem_suffix).items()
        if path.name.endswith(suffix)
    }


def cityscapes_source(params: Params, folders: SourceFolders) -> SourceData:
    """List Cityscapes' fine-annotated train and val samples; see the module doc."""
    root = folders.dataset(NAME)
    labels = label_map(params.data.ignore_index)
    refs: list[SampleRef] = []
    for split in SPLITS:
        image_dir = require_dir(root, f"{IMAGE_DIR}/{split}", NAME, LAYOUT)
        mask_dir = require_dir(root, f"{MASK_DIR}/{split}", NAME, LAYOUT)
        images = _files(image_dir, IMAGE_SUFFIX)
        masks = _files(mask_dir, MASK_SUFFIX)
        refs += paired_refs(
            split, images, masks, partial(load_pair, labels=labels),
            lambda name, image, mask_dir=mask_dir: mask_dir / image.parent.name / (name + MASK_SUFFIX),
            lambda name, mask, image_dir=image_dir: image_dir / mask.parent.name / (name + IMAGE_SUFFIX),
        )  # fmt: skip
    classes = ClassTable(CLASS_NAMES, CLASS_COLORS, params.data.ignore_index)
    return SourceData(classes, refs, len(refs), EXPECT, (root,))
