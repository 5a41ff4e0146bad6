"""The embedded "context scenes" dataset: seeded, procedural road and water scenes.

It mimics the paper's motivating example (a boat taken for a car): one and the same vehicle
drawing is labelled ``car`` in a road scene and ``boat`` in a water scene, with sand around it
in both, so only the global scene (the cue band, the skyline) tells them apart, which is what
the pyramid pooling module is for. Each sample has its own random stream, seeded by ``(seed,
split, index)`` (:func:`sample_seed`). How a scene is painted: :mod:`pspnet.data.scene_drawing`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from pspnet.config import SyntheticConfig
from pspnet.errors import ConfigError
from pspnet.data.scene_drawing import (
    CUE_BAND_FRAC_RANGE,
    HORIZON_FRAC_RANGE,
    OBJECT_SCALE_RANGE,
    VEHICLE_ASPECT,
    VEHICLE_BASE_WIDTH_FRAC,
    Grid,
    band_layout,
    buildings,
    finish,
    persons,
    road,
    sand,
    sky,
    trees,
    vehicles,
    water,
)

# --------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------

#: Class ``i`` of the dataset is ``CLASS_NAMES[i]``.
CLASS_NAMES: tuple[str, ...] = ("sky", "building", "tree", "road", "water", "sand", "car", "boat", "person")
#: Display colour (RGB) of each class in masks and overlays; not the colour it is rendered with.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (70, 130, 180),  # sky: steel blue
    (70, 70, 70),  # building: dark grey
    (107, 142, 35),  # tree: olive green
    (128, 64, 128),  # road: purple
    (0, 160, 160),  # water: teal
    (230, 200, 140),  # sand: beige
    (0, 0, 142),  # car: navy
    (255, 140, 0),  # boat: orange
    (220, 20, 60),  # person: crimson
)
SKY, BUILDING, TREE, ROAD, WATER, SAND, CAR, BOAT, PERSON = range(len(CLASS_NAMES))
#: Classes drawn alike and told apart by the scene alone.
LOOKALIKES: tuple[tuple[str, str], ...] = (("car", "boat"),)
#: The label of pixels that no loss or metric counts (object outlines).
IGNORE_INDEX = 255

#: The two scene types and, for each, the class of its cue band and of its vehicles.
SCENE_ROAD = "road"
SCENE_WATER = "water"
SCENES: tuple[str, ...] = (SCENE_ROAD, SCENE_WATER)
SCENE_CUE_CLASS: dict[str, int] = {SCENE_ROAD: ROAD, SCENE_WATER: WATER}
SCENE_VEHICLE_CLASS: dict[str, int] = {SCENE_ROAD: CAR, SCENE_WATER: BOAT}

#: The splits this dataset has, in order.
SPLITS: tuple[str, ...] = ("train", "val")
#: Sample ids carry the index zero-padded to at least this many digits.
ID_DIGITS = 4

# --------------------------------------------------------------------------------------------
# The ignore ring along object outlines
# --------------------------------------------------------------------------------------------


def _local_extreme(values: np.ndarray, radius: int, reduce: np.ufunc) -> np.ndarray:
    """Separable (2r+1)x(2r+1) max or min filter with edge padding."""
    out = values
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        length = out.shape[axis]
        windows = [np.take(padded, np.arange(k, k + length), axis=axis) for k in range(2 * radius + 1)]
        out = reduce.reduce(np.stack(windows), axis=0)
    return out


def outline_ring(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels of an instance within ``width`` px (chessboard distance) of its outline.

    ``instances`` holds 0 for background and a positive id per object. A pixel is in the ring
    when it belongs to an object and some pixel within ``width`` of it belongs to a different
    object or to the background. The image border does not count as an outline.
    """
    if width <= 0:
        return np.zeros(instances.shape, dtype=bool)
    high = _local_extreme(instances, width, np.maximum)
    low = _local_extreme(instances, width, np.minimum)
    return (instances > 0) & ((high != instances) | (low != instances))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate_sample(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    border_ignore: int = 1,
    noise_std: float = 6.0,
    ignore_index: int = IGNORE_INDEX,
    scene: str | None = None,
    cue_gap: int = 0,
    skyline_cue: bool = True,
    horizon_frac: tuple[float, float] = HORIZON_FRAC_RANGE,
    cue_band_frac: tuple[float, float] = CUE_BAND_FRAC_RANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: ``(image uint8 (H, W, 3), mask uint8 (H, W))``.

    ``mask`` holds class ids (:data:`CLASS_NAMES`) and ``ignore_index`` in a ring of
    ``border_ignore`` px along the inside of every object's (vehicle's or person's) outline.
    ``scene`` is ``"road"`` or ``"water"``; ``None`` draws it at random. Vehicles keep
    ``cue_gap`` px from the cue band, and from the skyline when ``skyline_cue`` (road scenes
    get buildings only then). The fractions set the rows of the horizon and the cue band.
    """
    if scene is None:
        scene = SCENES[int(rng.integers(len(SCENES)))]
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {list(SCENES)}, got {scene!r}")
    grid = Grid.of(height, width)
    layout = band_layout(rng, height, horizon_frac, cue_band_frac)
    image = np.empty((height, width, 3), dtype=np.float32)
    label = np.empty((height, width), dtype=np.uint8)

    def paint(where: np.ndarray, colors: np.ndarray, cls: int) -> None:
        image[where] = colors[where]
        label[where] = cls

    paint(grid.yy < layout.horizon, sky(rng, grid, layout.horizon), SKY)
    paint(grid.yy >= layout.horizon, sand(rng, grid), SAND)
    cue = (grid.yy >= layout.cue_top) & (grid.yy < layout.cue_bottom)
    paint(cue, road(rng, grid, layout) if scene == SCENE_ROAD else water(rng, grid), SCENE_CUE_CLASS[scene])
    if scene == SCENE_ROAD and skyline_cue:
        for mask, colors in buildings(rng, grid, layout.horizon):
            paint(mask, colors, BUILDING)
    for mask, colors in trees(rng, grid, layout.horizon):
        paint(mask, colors, TREE)

    things = vehicles(rng, grid, layout, SCENE_VEHICLE_CLASS[scene], cue_gap, skyline_cue) + persons(rng, grid, layout, PERSON)
    instances = np.zeros((height, width), dtype=np.int32)
    for number, thing in enumerate(sorted(things, key=lambda t: t.bottom), start=1):  # farther (higher) first
        paint(thing.mask, thing.colors, thing.label)
        instances[thing.mask] = number
    label[outline_ring(instances, border_ignore)] = ignore_index
    return finish(rng, image, noise_std), label


def check_cue_gap(cfg: SyntheticConfig) -> None:
    """Refuse a ``cue_gap`` that leaves no room for the smallest vehicle in the thinnest sand band."""
    thinnest_sand = cfg.height * (1.0 - cfg.horizon_frac[1] - cfg.cue_band_frac[1])
    smallest_vehicle = VEHICLE_BASE_WIDTH_FRAC * cfg.width * OBJECT_SCALE_RANGE[0] * VEHICLE_ASPECT
    gaps = 2 if cfg.skyline_cue else 1  # between two cues, or off the cue band only
    if thinnest_sand - gaps * cfg.cue_gap < smallest_vehicle:
        largest = max(0, int((thinnest_sand - smallest_vehicle) // gaps))
        raise ConfigError(
            f"data.synthetic.cue_gap {cfg.cue_gap} px leaves no room for a vehicle between the cues of a "
            f"{cfg.height}x{cfg.width} scene. Fix: set cue_gap to at most {largest}, or raise data.synthetic.height."
        )


def split_sizes(cfg: SyntheticConfig) -> dict[str, int]:
    """Number of samples of each split, in :data:`SPLITS` order."""
    return {"train": cfg.train_size, "val": cfg.val_size}


def sample_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The random stream of one sample: independent of every other sample's."""
    return np.random.SeedSequence([seed, zlib.crc32(split.encode("utf-8")), index])


def sample_id(split: str, index: int, count: int) -> str:
    """``train_0007``: zero-padded (to :data:`ID_DIGITS` digits or more) so ids sort in index order."""
    digits = max(ID_DIGITS, len(str(count - 1)))
    return f"{split}_{index:0{digits}d}"


def sample_scene(index: int) -> str:
    """Scene types alternate with the index, so every split holds both (nearly equally)."""
    return SCENES[index % len(SCENES)]


def generate_one(
    cfg: SyntheticConfig, split: str, index: int, ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of ``split``: the same arrays whenever and wherever it is generated."""
    rng = np.random.default_rng(sample_seed(cfg.seed, split, index))
    return generate_sample(
        rng,
        cfg.height,
        cfg.width,
        border_ignore=cfg.border_ignore,
        noise_std=cfg.noise_std,
        ignore_index=ignore_index,
        scene=sample_scene(index),
        cue_gap=cfg.cue_gap,
        skyline_cue=cfg.skyline_cue,
        horizon_frac=cfg.horizon_frac,
        cue_band_frac=cfg.cue_band_frac,
    )


def iter_split(
    cfg: SyntheticConfig, split: str, ignore_index: int = IGNORE_INDEX
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(sample_id, image, mask)`` for every sample of ``split``, in index order."""
    check_cue_gap(cfg)
    sizes = split_sizes(cfg)
    if split not in sizes:
        raise ValueError(f"unknown split {split!r}; the synthetic dataset has {list(sizes)}")
    count = sizes[split]
    for index in range(count):
        image, mask = generate_one(cfg, split, index, ignore_index)
        yield sample_id(split, index, count), image, mask
