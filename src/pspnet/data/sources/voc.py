"""Pascal VOC 2012 segmentation (Everingham et al.), optionally with the SBD augmentation
(Hariharan et al. 2011) that makes the standard ``train_aug`` training set.

VOC layout; ``data.source.location`` is the ``VOC2012`` folder itself, or ``VOCdevkit/``, or the
folder holding ``VOCdevkit/`` (``VOC2012`` is found inside)::

    VOC2012/
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png           palette PNG: the palette index is the class id
        ImageSets/Segmentation/train.txt     one id per line (1,464 ids)
        ImageSets/Segmentation/val.txt       (1,449 ids)   [trainval.txt, test.txt: not used]

SBD layout; ``data.source.sbd_location`` is the release's ``dataset/`` folder, or
``benchmark_RELEASE/`` (``dataset/`` is found inside)::

    dataset/
        img/<id>.jpg
        cls/<id>.mat                         struct GTcls, field Segmentation: uint8 class ids
        train.txt val.txt                    one id per line (8,498 / 2,857 ids)

Labels: ids 0..20 are the 21 classes (0 = background, a real class); 255, VOC's border ring
around objects and its "difficult" regions, becomes ``data.ignore_index``. Any other id is an
error naming the file. SBD masks hold 0..20 only and are mapped the same way.

Splits: ``train`` and ``val`` are VOC's lists (``test`` has no public masks). With SBD, ``train``
becomes ``train_aug``: (SBD train + SBD val + VOC train) minus VOC val, 10,582 ids; the split
keeps the name ``train``, which the pipeline trains on. Each ``train_aug`` id takes VOC's mask
(``SegmentationClass/<id>.png``, with its ignored border) when it exists, else SBD's
``cls/<id>.mat``, and VOC's ``JPEGImages/<id>.jpg`` when it exists, else SBD's ``img/<id>.jpg``.
``val`` stays VOC val.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from scipy.io.matlab import MatReadError

from pspnet.config import Params
from pspnet.data.classes import ClassTable
from pspnet.data.sources.base import (
    Expectations,
    ImageData,
    LabelMap,
    SampleRef,
    SourceData,
    SourceFolders,
    broken_pair,
    check_same_size,
    load_pair,
    palette_colors,
    read_list,
    require_dir,
    require_file,
    shifted_map,
)
from pspnet.errors import DataError

NAME = "voc"
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CLASS_COLORS = palette_colors(len(CLASS_NAMES))
#: VOC's border / "difficult" id, ignored.
BORDER_ID = 255
ACCEPTED_IDS = "0..20 (255 = border, ignored)"
SPLITS = ("train", "val")
TRAIN_SPLIT = "train"
VAL_SPLIT = "val"
#: VOC images are at most 500 pixels on their longer side.
MAX_SIDE = 500
IMAGE_SUFFIX = ".jpg"
MASK_SUFFIX = ".png"
MAT_SUFFIX = ".mat"
#: Where VOC2012 may sit below ``data.source.location`` (first existing wins, else the location itself).
VOC_NESTING = ("VOCdevkit/VOC2012", "VOC2012")
IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClass"
LIST_DIR = "ImageSets/Segmentation"
#: The SBD release's ``dataset/`` folder, when ``sbd_location`` is ``benchmark_RELEASE/``.
SBD_NESTING = "dataset"
SBD_IMAGE_DIR = "img"
SBD_MASK_DIR = "cls"
SBD_LISTS = ("train.txt", "val.txt")
SBD_STRUCT = "GTcls"
SBD_FIELD = "Segmentation"
LAYOUT = (
    "  VOC2012/ (or VOCdevkit/ or its parent): JPEGImages/<id>.jpg  SegmentationClass/<id>.png\n"
    "  ImageSets/Segmentation/train.txt val.txt"
)
SBD_LAYOUT = "  dataset/ (or benchmark_RELEASE/): img/<id>.jpg  cls/<id>.mat  train.txt val.txt"


@dataclass(frozen=True)
class _Folders:
    """The folders samples are read from; ``sbd`` is SBD's ``dataset/`` or ``None``."""

    images: Path
    masks: Path
    sbd: Path | None


def _voc_root(location: Path) -> Path:
    """The VOC2012 folder at or below ``location``."""
    return next((location / n for n in VOC_NESTING if (location / n).is_dir()), location)


def _sbd_root(location: Path) -> Path:
    """SBD's ``dataset/`` folder at or below ``location``, its sub-folders and lists checked."""
    root = location / SBD_NESTING if (location / SBD_NESTING).is_dir() else location
    for relative in (SBD_IMAGE_DIR, SBD_MASK_DIR):
        if not (root / relative).is_dir():
            raise DataError(
                f"{root / relative}: folder not found; the SBD release (data.source.sbd_location = {location}) "
                f"has this layout:\n{SBD_LAYOUT}\nFix: point data.source.sbd_location at SBD's dataset/ folder."
            )
    for listing in SBD_LISTS:
        require_file(root / listing, NAME, "an SBD split list")
    return root


def read_sbd_mask(path: Path) -> np.ndarray:
    """The class-id array of an SBD ``cls/*.mat`` file (``GTcls.Segmentation``)."""
    try:
        mat = loadmat(path, struct_as_record=False, squeeze_me=True)
    except (OSError, ValueError, NotImplementedError, MatReadError) as err:
        raise DataError(f"{path}: cannot read the MATLAB file ({err}). Fix: replace or remove the file.") from None
    struct = mat.get(SBD_STRUCT)
    segmentation = getattr(struct, SBD_FIELD, None)
    is_mask = isinstance(segmentation, np.ndarray) and segmentation.ndim == 2
    if not is_mask or not np.issubdtype(segmentation.dtype, np.integer):
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(
            f"{path}: no {SBD_STRUCT}.{SBD_FIELD} integer (H, W) array (variables: {found}); expected an SBD "
            f"class mask from {SBD_MASK_DIR}/. Fix: replace the file with the release's own."
        )
    return segmentation


def load_sbd_pair(image_file: Path, mat_file: Path, labels: LabelMap) -> tuple[ImageData, np.ndarray]:
    """Image file as is, SBD mask mapped by ``labels``, sizes checked."""
    mask = labels(read_sbd_mask(mat_file), mat_file)
    check_same_size(image_file, mask, image_file, mat_file)
    return image_file, mask


def _sample(sample_id: str, split: str, listed_in: Path, folders: _Folders, labels: LabelMap) -> SampleRef:
    """The sample ``sample_id``: VOC's image and mask, else SBD's (see the module doc)."""
    fix = f"restore it or remove {sample_id!r} from the list"
    image = folders.images / f"{sample_id}{IMAGE_SUFFIX}"
    sbd_image = folders.sbd / SBD_IMAGE_DIR / f"{sample_id}{IMAGE_SUFFIX}" if folders.sbd else None
    if not image.is_file():
        if sbd_image is None or not sbd_image.is_file():
            return broken_pair(sample_id, split, image, f"image not found{f' (nor {sbd_image})' if sbd_image else ''} "
                               f"(listed in {listed_in})", fix)  # fmt: skip
        image = sbd_image
    mask = folders.masks / f"{sample_id}{MASK_SUFFIX}"
    if mask.is_file():
        return SampleRef(sample_id, split, partial(load_pair, image, mask, labels), (str(image), str(mask)))
    mat = folders.sbd / SBD_MASK_DIR / f"{sample_id}{MAT_SUFFIX}" if folders.sbd else None
    if mat is None or not mat.is_file():
        return broken_pair(sample_id, split, mask, f"label image not found{f' (nor {mat})' if mat else ''} "
                           f"(listed in {listed_in})", fix)  # fmt: skip
    return SampleRef(sample_id, split, partial(load_sbd_pair, image, mat, labels), (str(image), str(mat)))


def voc_source(params: Params, folders: SourceFolders) -> SourceData:
    """List VOC 2012's samples (``train`` = ``train_aug`` when SBD is given); see the module doc."""
    root = _voc_root(folders.dataset(NAME))
    sbd = _sbd_root(folders.sbd) if folders.sbd is not None else None
    voc_only = _Folders(require_dir(root, IMAGE_DIR, NAME, LAYOUT), require_dir(root, MASK_DIR, NAME, LAYOUT), None)
    list_dir = require_dir(root, LIST_DIR, NAME, LAYOUT)
    lists = {s: require_file(list_dir / f"{s}.txt", NAME, f"the VOC {s} split list") for s in SPLITS}
    val_ids = read_list(lists[VAL_SPLIT])
    labels = shifted_map(len(CLASS_NAMES), params.data.ignore_index, ignore_ids=(BORDER_ID,), accepted=ACCEPTED_IDS)

    # Each train id with the list it came from (the first that names it); val is VOC's alone.
    train: dict[str, Path] = {}
    for listing in [*(sbd / n for n in SBD_LISTS), lists[TRAIN_SPLIT]] if sbd else [lists[TRAIN_SPLIT]]:
        for sample_id in read_list(listing):
            train.setdefault(sample_id, listing)
    if sbd:
        train = {i: train[i] for i in sorted(set(train) - set(val_ids))}
    with_sbd = _Folders(voc_only.images, voc_only.masks, sbd)
    refs = [_sample(i, TRAIN_SPLIT, listing, with_sbd, labels) for i, listing in train.items()]
    refs += [_sample(i, VAL_SPLIT, lists[VAL_SPLIT], voc_only, labels) for i in val_ids]
    classes = ClassTable(CLASS_NAMES, CLASS_COLORS, params.data.ignore_index)
    inputs = (root,) if sbd is None else (root, sbd)
    return SourceData(classes, refs, len(refs), Expectations(max_side=MAX_SIDE), inputs)
