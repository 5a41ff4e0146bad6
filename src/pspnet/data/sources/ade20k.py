"""ADE20K SceneParsing: the MIT Scene Parsing Benchmark release ``ADEChallengeData2016``
(Zhou et al. 2017; 150 classes, 20,210 training and 2,000 validation images).

Layout under ``data.source.location`` (the ``ADEChallengeData2016`` folder, or the folder
holding it)::

    ADEChallengeData2016/
        images/training/ADE_train_00000001.jpg ...      RGB (a few greyscale or CMYK) JPEGs
        images/validation/ADE_val_00000001.jpg ...
        annotations/training/ADE_train_00000001.png ... mode L, one id per pixel
        annotations/validation/ADE_val_00000001.png ...
        [objectInfo150.txt sceneCategories.txt]          not read

``training`` becomes split ``train``, ``validation`` split ``val`` (both required); the sample
id is the file name without suffix (``ADE_train_00000001``), unique across splits. Label id 0
("other": pixels of none of the 150 classes) is ignored; ids 1..150 become classes 0..149 in
the order of the official ``objectInfo150.txt``; any other id is an error naming the mask.
Every image needs its annotation and every annotation its image. Image sizes vary, so no
size is promised. Greyscale and CMYK JPEGs are converted to RGB by the writer.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from pspnet.config import Params
from pspnet.data.classes import ClassTable
from pspnet.data.sources.base import (
    SampleRef,
    SourceData,
    SourceFolders,
    files_by_stem,
    load_pair,
    paired_refs,
    require_dir,
    shifted_map,
)

NAME = "ade20k"
#: The release's top folder; ``data.source.location`` may name it or the folder holding it.
DATASET_DIR = "ADEChallengeData2016"
#: The 150 classes of objectInfo150.txt, by their short names (as semseg / mmsegmentation use).
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
#: The standard ADE20K colour palette (class i drawn as CLASS_COLORS[i]).
CLASS_COLORS = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255),
    (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173),
    (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184),
    (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255),
    (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),
    (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)  # fmt: skip
#: Label id of "other" (no class): ignored. Class ids start right after it.
OTHER_ID = 0
FIRST_CLASS_ID = 1
#: The release's split folders -> our split names.
SPLITS = {"training": "train", "validation": "val"}
IMAGES_DIR = "images"
ANNOTATIONS_DIR = "annotations"
IMAGE_SUFFIX = ".jpg"
MASK_SUFFIX = ".png"
LAYOUT = (
    f"  [{DATASET_DIR}/]{IMAGES_DIR}/{{training,validation}}/*{IMAGE_SUFFIX}\n"
    f"  [{DATASET_DIR}/]{ANNOTATIONS_DIR}/{{training,validation}}/*{MASK_SUFFIX}  (same names, mode L ids 0..150)"
)


def _dataset_dir(location: Path) -> Path:
    """The ``ADEChallengeData2016`` folder: ``location`` itself or its child of that name."""
    inner = location / DATASET_DIR
    return inner if not (location / IMAGES_DIR).is_dir() and inner.is_dir() else location


def ade20k_source(params: Params, folders: SourceFolders) -> SourceData:
    """List ADE20K's samples under ``data.source.location``; see the module doc."""
    root = _dataset_dir(folders.dataset(NAME))
    labels = shifted_map(
        len(CLASS_NAMES), params.data.ignore_index, first=FIRST_CLASS_ID, ignore_ids=(OTHER_ID,),
        accepted=f"{OTHER_ID}..{len(CLASS_NAMES)} ({OTHER_ID} = other)",
    )  # fmt: skip
    refs: list[SampleRef] = []
    for folder, split in SPLITS.items():
        image_dir = require_dir(root, f"{IMAGES_DIR}/{folder}", NAME, LAYOUT)
        mask_dir = require_dir(root, f"{ANNOTATIONS_DIR}/{folder}", NAME, LAYOUT)
        images = files_by_stem(image_dir, [IMAGE_SUFFIX])
        masks = files_by_stem(mask_dir, [MASK_SUFFIX])
        refs += paired_refs(
            split, images, masks, partial(load_pair, labels=labels),
            lambda name, image, mask_dir=mask_dir: mask_dir / (name + MASK_SUFFIX),
            lambda name, mask, image_dir=image_dir: image_dir / (name + IMAGE_SUFFIX),
        )  # fmt: skip
    classes = ClassTable(CLASS_NAMES, CLASS_COLORS, params.data.ignore_index)
    return SourceData(classes, refs, len(refs), inputs=(root,))
