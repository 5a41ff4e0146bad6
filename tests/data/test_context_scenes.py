"""The context-scenes generator: deterministic, valid labels, ignore rings, car == boat locally."""

from __future__ import annotations

import numpy as np
import pytest

from pspnet.config import SyntheticConfig
from pspnet.data import context_scenes as syn
from pspnet.data import scene_drawing

HEIGHT, WIDTH = 48, 64
THINGS = (syn.CAR, syn.BOAT, syn.PERSON)
STUFF = (syn.SKY, syn.BUILDING, syn.TREE, syn.ROAD, syn.WATER, syn.SAND)
#: Samples per scene type for the appearance statistics (80 keeps the test under a second).
STATS_SAMPLES = 80


def _sample(seed: int, scene: str | None = None, border_ignore: int = 1) -> tuple[np.ndarray, np.ndarray]:
    return syn.generate_sample(np.random.default_rng(seed), HEIGHT, WIDTH, border_ignore=border_ignore, scene=scene)


def _neighbourhood(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (chessboard) of a True pixel of ``mask``."""
    return syn._local_extreme(mask.astype(np.uint8), radius, np.maximum).astype(bool)


def test_class_table_is_consistent() -> None:
    assert len(syn.CLASS_NAMES) == len(syn.CLASS_COLORS) == 9
    assert len(set(syn.CLASS_COLORS)) == len(syn.CLASS_COLORS)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in syn.CLASS_COLORS)
    from pspnet.data.classes import ClassTable

    with pytest.raises(ValueError, match=r"look-alike classes \['ship'\]"):
        ClassTable(("car", "boat"), ((0, 0, 0), (1, 1, 1)), lookalikes=(("car", "ship"),))


def test_same_seed_same_sample_and_different_seed_different() -> None:
    image_a, mask_a = _sample(7)
    image_b, mask_b = _sample(7)
    image_c, mask_c = _sample(8)
    assert image_a.dtype == np.uint8 and image_a.shape == (HEIGHT, WIDTH, 3)
    assert mask_a.dtype == np.uint8 and mask_a.shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(image_a, image_c)


def test_split_samples_do_not_depend_on_order() -> None:
    cfg = SyntheticConfig(seed=3, train_size=6, val_size=2, height=HEIGHT, width=WIDTH)
    streamed = list(syn.iter_split(cfg, "train"))
    assert [s[0] for s in streamed] == [f"train_{i:04d}" for i in range(6)]
    image, mask = syn.generate_one(cfg, "train", 4)  # alone, out of order
    np.testing.assert_array_equal(image, streamed[4][1])
    np.testing.assert_array_equal(mask, streamed[4][2])
    val_image, _ = syn.generate_one(cfg, "val", 4)
    assert not np.array_equal(val_image, image)
    other_seed, _ = syn.generate_one(cfg.model_copy(update={"seed": 4}), "train", 4)
    assert not np.array_equal(other_seed, image)


@pytest.mark.parametrize("seed", range(8))
def test_labels_are_classes_or_ignore(seed: int) -> None:
    _, mask = _sample(seed)
    assert set(np.unique(mask).tolist()) <= set(range(len(syn.CLASS_NAMES))) | {syn.IGNORE_INDEX}


def test_custom_ignore_index() -> None:
    _, mask = syn.generate_sample(np.random.default_rng(0), HEIGHT, WIDTH, ignore_index=200)
    assert 200 in mask and syn.IGNORE_INDEX not in mask


@pytest.mark.parametrize("seed", range(6))
def test_scene_type_decides_cue_and_vehicle_label(seed: int) -> None:
    _, road = _sample(seed, scene=syn.SCENE_ROAD)
    _, water = _sample(seed, scene=syn.SCENE_WATER)
    assert syn.ROAD in road and syn.WATER not in road and syn.BOAT not in road and syn.BUILDING in road
    assert syn.WATER in water and syn.ROAD not in water and syn.CAR not in water and syn.BUILDING not in water
    assert (syn.CAR in road) and (syn.BOAT in water)


def test_vehicle_drawing_does_not_depend_on_its_label() -> None:
    grid = scene_drawing.Grid.of(HEIGHT, WIDTH)
    layout = scene_drawing.band_layout(np.random.default_rng(0), HEIGHT)
    car = scene_drawing.vehicle(np.random.default_rng(1), grid, layout, syn.CAR)
    boat = scene_drawing.vehicle(np.random.default_rng(1), grid, layout, syn.BOAT)
    np.testing.assert_array_equal(car.mask, boat.mask)
    np.testing.assert_array_equal(car.colors[car.mask], boat.colors[boat.mask])
    assert (car.label, boat.label) == (syn.CAR, syn.BOAT)


def _object_stats(scene: str, first_seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean RGB, 8-bin luminance histogram and mean area of the scene's vehicle pixels."""
    cls = syn.SCENE_VEHICLE_CLASS[scene]
    pixels, areas = [], []
    for seed in range(first_seed, first_seed + STATS_SAMPLES):
        image, mask = _sample(seed, scene=scene)
        pixels.append(image[mask == cls])
        areas.append(int((mask == cls).sum()))
    rgb = np.concatenate(pixels).astype(np.float64)
    hist = np.histogram(rgb.mean(axis=1), bins=8, range=(0, 256))[0] / len(rgb)
    return rgb.mean(axis=0), hist, float(np.mean(areas))


def test_car_and_boat_look_alike_but_are_labelled_apart() -> None:
    car_mean, car_hist, car_area = _object_stats(syn.SCENE_ROAD, 0)
    boat_mean, boat_hist, boat_area = _object_stats(syn.SCENE_WATER, 10_000)
    # Independent draws of the same distribution: differences are sampling noise only.
    assert np.abs(car_mean - boat_mean).max() < 30
    assert 0.5 * np.abs(car_hist - boat_hist).sum() < 0.2
    assert 0.7 < car_area / boat_area < 1.4
    # The same statistic tells really different appearances apart (sand is not a vehicle).
    image, mask = _sample(0, scene=syn.SCENE_ROAD)
    sand = image[mask == syn.SAND].mean(axis=1)
    sand_hist = np.histogram(sand, bins=8, range=(0, 256))[0] / len(sand)
    assert 0.5 * np.abs(car_hist - sand_hist).sum() > 0.4


@pytest.mark.parametrize("scene", syn.SCENES)
def test_vehicles_stand_on_the_same_neutral_ground(scene: str) -> None:
    """Within 2 px of a car or boat there is only sand, other objects or ignore: no cue."""
    allowed = {syn.SAND, syn.CAR, syn.BOAT, syn.PERSON, syn.IGNORE_INDEX}
    for seed in range(10):
        _, mask = _sample(seed, scene=scene)
        vehicle = np.isin(mask, [syn.CAR, syn.BOAT])
        assert set(np.unique(mask[_neighbourhood(vehicle, 2)]).tolist()) <= allowed


@pytest.mark.parametrize("seed", range(6))
def test_object_outlines_are_ignored(seed: int) -> None:
    _, mask = _sample(seed, border_ignore=1)
    assert (mask == syn.IGNORE_INDEX).any()
    # A labelled object pixel never touches another label: the ring separates them.
    padded = np.pad(mask, 1, mode="edge")
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbour = padded[1 + dy : 1 + dy + HEIGHT, 1 + dx : 1 + dx + WIDTH]
            thing = np.isin(mask, THINGS)
            assert np.all((neighbour[thing] == mask[thing]) | (neighbour[thing] == syn.IGNORE_INDEX))
    # Every ignore pixel lies on an object.
    _, no_ring = _sample(seed, border_ignore=0)
    assert np.isin(no_ring[mask == syn.IGNORE_INDEX], THINGS).all()
    assert syn.IGNORE_INDEX not in no_ring


def test_wider_border_ignores_more() -> None:
    counts = [int((_sample(5, border_ignore=b)[1] == syn.IGNORE_INDEX).sum()) for b in (0, 1, 2)]
    assert counts[0] == 0 < counts[1] < counts[2]


def test_outline_ring_of_a_square() -> None:
    instances = np.zeros((12, 12), dtype=np.int32)
    instances[1:11, 1:11] = 1
    assert syn.outline_ring(instances, 1).sum() == 36  # the 10x10 square's perimeter
    assert syn.outline_ring(instances, 2).sum() == 100 - 36
    assert not syn.outline_ring(np.ones((5, 5), np.int32), 1).any()  # the image border is no outline


def test_unknown_scene_is_refused() -> None:
    with pytest.raises(ValueError, match="scene"):
        _sample(0, scene="desert")


def _row_gap(mask: np.ndarray, classes: tuple[int, ...], cues: tuple[int, ...]) -> float:
    """Fewest rows between a pixel of ``classes`` and a pixel of ``cues`` (inf when one is absent)."""
    rows = np.nonzero(np.isin(mask, classes).any(axis=1))[0]
    cue_rows = np.nonzero(np.isin(mask, cues).any(axis=1))[0]
    if rows.size == 0 or cue_rows.size == 0:
        return float("inf")
    return float(np.abs(rows[:, None] - cue_rows[None, :]).min())


@pytest.mark.parametrize("scene", syn.SCENES)
def test_cue_gap_keeps_every_vehicle_beyond_reach_of_the_cues(scene: str) -> None:
    """Cue band and skyline (buildings) span the width, so a row gap is the Euclidean distance."""
    gap = 20
    closest = []
    for seed in range(12):
        _, mask = syn.generate_sample(np.random.default_rng(seed), 120, 128, scene=scene, cue_gap=gap)
        assert np.isin(mask, (syn.CAR, syn.BOAT)).any()
        for cues in ((syn.ROAD, syn.WATER), (syn.BUILDING,)):
            closest.append(_row_gap(mask, (syn.CAR, syn.BOAT), cues))
    assert min(closest) >= gap
    # Without the gap vehicles touch the cue band's neighbourhood in some scenes.
    near = [_row_gap(syn.generate_sample(np.random.default_rng(s), 120, 128, scene=scene)[1], (syn.CAR, syn.BOAT),
                     (syn.ROAD, syn.WATER)) for s in range(12)]
    assert min(near) < gap


def test_no_gap_is_the_default() -> None:
    image, mask = _sample(3)
    image0, mask0 = syn.generate_sample(np.random.default_rng(3), HEIGHT, WIDTH, scene=None, cue_gap=0)
    np.testing.assert_array_equal(image, image0)
    np.testing.assert_array_equal(mask, mask0)


def test_a_gap_too_wide_for_the_scene_is_refused_with_the_largest_that_fits() -> None:
    from pspnet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.synthetic.cue_gap 30 .* at most \d+"):
        list(syn.iter_split(SyntheticConfig(height=96, width=128, train_size=1, val_size=1, cue_gap=30), "train"))
    assert len(list(syn.iter_split(SyntheticConfig(height=96, width=128, train_size=1, val_size=1, cue_gap=12), "train"))) == 1


def test_without_the_skyline_cue_the_band_is_the_only_cue_and_the_gap_can_grow() -> None:
    """The context-hard layout: no buildings, a low sky, a thin band, vehicles far from it."""
    cfg = SyntheticConfig(height=192, width=256, train_size=8, val_size=1, cue_gap=100, skyline_cue=False,
                          horizon_frac=(0.10, 0.14), cue_band_frac=(0.12, 0.16))
    for _, _, mask in syn.iter_split(cfg, "train"):
        assert not (mask == syn.BUILDING).any()
        assert _row_gap(mask, (syn.CAR, syn.BOAT), (syn.ROAD, syn.WATER)) >= 100
    from pspnet.errors import ConfigError

    with pytest.raises(ConfigError, match="cue_gap 100"):  # with the skyline cue it must clear both
        syn.check_cue_gap(cfg.model_copy(update={"skyline_cue": True}))


def test_band_fractions_must_be_ranges_that_leave_sand() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a range"):
        SyntheticConfig(horizon_frac=(0.3, 0.2))
    with pytest.raises(ValidationError, match="no room for the sand band"):
        SyntheticConfig(horizon_frac=(0.5, 0.6), cue_band_frac=(0.3, 0.4))
