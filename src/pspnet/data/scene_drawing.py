"""How a context scene is painted: its bands, skyline, objects and textures.

Keeps every shape and appearance constant beside the code that draws with it (splitting them
apart would scatter one drawing over two files). Sizes are fractions of the image height or
width, so the scenes look alike at any resolution; all randomness comes from the ``rng`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# -- Layout (fractions of the image height unless stated otherwise) --

#: Row of the horizon (bottom of the sky band).
HORIZON_FRAC_RANGE = (0.26, 0.36)
#: Height of the cue band (road or water).
CUE_BAND_FRAC_RANGE = (0.16, 0.24)
#: Probability that the cue band lies between the skyline and the sand (else at the bottom).
CUE_ABOVE_SAND_PROB = 0.5
#: Smallest gap between an object and either edge of the sand band.
OBJECT_MARGIN_FRAC = 0.05

# Buildings (road scenes only), standing on the horizon.
BUILDING_COUNT_RANGE = (2, 5)
#: Building width, as a fraction of the image width.
BUILDING_WIDTH_FRAC_RANGE = (0.08, 0.2)
#: Building height above the horizon.
BUILDING_HEIGHT_FRAC_RANGE = (0.08, 0.24)
BRICK_HEIGHT_FRAC = 0.035
#: Brick length, as a multiple of the brick height.
BRICK_ASPECT = 2.0

# Trees (both scenes), standing on the horizon.
TREE_COUNT_RANGE = (1, 3)
CANOPY_RADIUS_FRAC_RANGE = (0.05, 0.09)
#: Each canopy is this many overlapping discs around its centre.
CANOPY_DISC_COUNT_RANGE = (2, 4)
#: Disc radius (fraction of the canopy radius) and how far a disc centre strays (same unit).
CANOPY_DISC_RADIUS_RANGE = (0.7, 1.0)
CANOPY_SPREAD = 0.5
#: Trunk width and height, as fractions of the canopy radius.
TRUNK_WIDTH_OF_RADIUS = 0.35
TRUNK_HEIGHT_OF_RADIUS = 1.0

# Vehicles (car or boat: the same drawing) and persons, standing on the sand.
VEHICLE_COUNT_RANGE = (1, 3)
PERSON_COUNT_RANGE = (1, 2)
#: Object scale factor, drawn log-uniformly (then reduced if the object does not fit the sand).
OBJECT_SCALE_RANGE = (0.5, 2.0)
#: Vehicle width at scale 1, as a fraction of the image width.
VEHICLE_BASE_WIDTH_FRAC = 0.2
#: Vehicle height / width (hull and cabin together).
VEHICLE_ASPECT = 0.5
#: Share of the vehicle height taken by the cabin (the rest is the hull).
CABIN_HEIGHT_SHARE = 0.42
#: Cabin width as a share of the vehicle width, and its left edge's offset range (same unit).
CABIN_WIDTH_SHARE = 0.55
CABIN_OFFSET_SHARE_RANGE = (0.08, 0.37)
#: Windows: two per cabin, each this share of the cabin width and height.
WINDOW_WIDTH_SHARE = 0.32
WINDOW_HEIGHT_SHARE = 0.55
#: Dark stripe along the bottom of the hull, as a share of the hull height.
STRIPE_HEIGHT_SHARE = 0.2
#: Person height at scale 1; width, head radius and torso height as shares of that height.
#: Sized so that even a scale-0.5 person keeps a labelled core a few pixels wide inside its
#: ignore ring at the default 96x128: thinner people are below what an output-stride-8
#: network can resolve there, and the class would score 0 whatever the model.
PERSON_BASE_HEIGHT_FRAC = 0.27
PERSON_WIDTH_SHARE = 0.45
HEAD_RADIUS_SHARE = 0.13
TORSO_HEIGHT_SHARE = 0.4
#: The legs are narrower than the torso by this share of its width on each side.
LEGS_INSET_SHARE = 0.15

# -- Appearance (RGB 0..255) --

SKY_COLOR = (130, 185, 235)
#: The sky gets this much lighter (relative) from its top to the horizon.
SKY_GRADIENT = 0.25
BUILDING_COLORS = ((160, 80, 60), (175, 155, 130), (125, 115, 105), (190, 125, 85))
MORTAR_COLOR = (215, 210, 200)
CANOPY_COLORS = ((50, 120, 45), (70, 140, 50), (40, 100, 60))
TRUNK_COLOR = (100, 70, 40)
#: Relative brightness swing of the dappled canopy texture.
CANOPY_DAPPLE = 0.35
#: Side of the coarse cells of the smooth noise field, as a fraction of the image height.
NOISE_CELL_FRAC = 0.06
ROAD_COLOR = (95, 95, 100)
LANE_COLOR = (235, 235, 225)
#: Lane marking thickness (fraction of height) and dash length (fraction of width).
LANE_THICKNESS_FRAC = 0.02
LANE_DASH_FRAC = 0.06
WATER_COLOR = (45, 100, 185)
#: Waves: relative amplitude, vertical period (fraction of height), horizontal wobble period
#: (fraction of width) and wobble strength (in vertical periods).
WAVE_AMPLITUDE = 0.22
WAVE_PERIOD_FRAC = 0.045
WAVE_WOBBLE_PERIOD_FRAC = 0.25
WAVE_WOBBLE = 0.35
SAND_COLOR = (212, 192, 148)
#: Sand ripples: relative amplitude and period (fraction of height); grain: relative std.
RIPPLE_AMPLITUDE = 0.06
RIPPLE_PERIOD_FRAC = 0.08
SAND_GRAIN = 0.05
#: Ripple crests run diagonally: this many rows per column.
RIPPLE_SLOPE = 0.5
#: Relative std of the asphalt grain.
ROAD_GRAIN = 0.025
VEHICLE_BODY_COLORS = ((200, 35, 35), (240, 200, 45), (235, 235, 235), (35, 65, 160), (245, 125, 25), (70, 70, 70))
WINDOW_COLOR = (40, 50, 70)
STRIPE_COLOR = (25, 25, 25)
SKIN_COLORS = ((240, 200, 165), (200, 150, 110), (140, 95, 60))
SHIRT_COLORS = ((200, 40, 40), (40, 120, 200), (240, 240, 240), (40, 160, 70), (240, 200, 40))
PANTS_COLORS = ((40, 50, 90), (60, 60, 60), (120, 90, 60))
#: Every drawn element's colour is shifted by up to this much per channel.
ELEMENT_COLOR_JITTER = 14.0
#: Per-image brightness factor and per-channel colour gain.
BRIGHTNESS_RANGE = (0.8, 1.2)
COLOR_GAIN_RANGE = (0.92, 1.08)
#: Smallest size in pixels of a texture feature (brick, dash, wave period, noise cell).
MIN_FEATURE_PX = 2.0
#: Mortar lines between bricks are this many pixels wide.
MORTAR_PX = 1.0


@dataclass(frozen=True)
class BandLayout:
    """Rows of the bands: sky ``[0, horizon)``, cue ``[cue_top, cue_bottom)``, sand ``[sand_top, sand_bottom)``."""

    horizon: int
    cue_top: int
    cue_bottom: int
    sand_top: int
    sand_bottom: int


@dataclass(frozen=True)
class Grid:
    """The image plane: pixel-centre coordinates ``yy``, ``xx`` (float32 (H, W)) and its size."""

    yy: np.ndarray
    xx: np.ndarray
    height: int
    width: int

    @classmethod
    def of(cls, height: int, width: int) -> Grid:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        return cls(yy, xx, height, width)

    def box(self, top: float, bottom: float, left: float, right: float) -> np.ndarray:
        """Pixels whose centres lie in ``[top, bottom) x [left, right)``."""
        return (self.yy >= top) & (self.yy < bottom) & (self.xx >= left) & (self.xx < right)

    def disc(self, cy: float, cx: float, radius: float) -> np.ndarray:
        return (self.yy - cy) ** 2 + (self.xx - cx) ** 2 <= radius**2


@dataclass(frozen=True)
class Thing:
    """A countable object to draw on the sand: its pixels, colours and class."""

    mask: np.ndarray  # bool (H, W)
    colors: np.ndarray  # float32 (H, W, 3), meaningful where ``mask``
    label: int
    bottom: int


#: A region to paint: ``(mask bool (H, W), colours float32 (H, W, 3))``.
Part = tuple[np.ndarray, np.ndarray]

# -- Small helpers --


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """An integer in the closed range ``bounds``."""
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _jittered(rng: np.random.Generator, color: tuple[int, int, int]) -> np.ndarray:
    """``color`` shifted by up to :data:`ELEMENT_COLOR_JITTER` per channel."""
    shift = rng.uniform(-ELEMENT_COLOR_JITTER, ELEMENT_COLOR_JITTER, 3)
    return (np.asarray(color, np.float64) + shift).astype(np.float32)


def _pick(rng: np.random.Generator, palette: tuple[tuple[int, int, int], ...]) -> tuple[int, int, int]:
    return palette[int(rng.integers(len(palette)))]


def _shade(color: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """(H, W, 3) image of ``color`` scaled per pixel by ``factor`` (H, W)."""
    return factor[..., None].astype(np.float32) * color[None, None, :]


def _smooth_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random field in [0, 1]: coarse uniform noise, bilinearly upsampled."""
    cell = max(MIN_FEATURE_PX, NOISE_CELL_FRAC * height)
    coarse = rng.random((int(np.ceil(height / cell)) + 2, int(np.ceil(width / cell)) + 2), dtype=np.float32)
    y = np.arange(height, dtype=np.float32) / cell
    x = np.arange(width, dtype=np.float32) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


# -- Scene parts --


def band_layout(
    rng: np.random.Generator,
    height: int,
    horizon_frac: tuple[float, float] = HORIZON_FRAC_RANGE,
    cue_band_frac: tuple[float, float] = CUE_BAND_FRAC_RANGE,
) -> BandLayout:
    """Draw the band rows (fractions of ``height``): the cue band lies above or below the sand band."""
    horizon = round(_uniform(rng, horizon_frac) * height)
    cue_height = round(_uniform(rng, cue_band_frac) * height)
    if rng.random() < CUE_ABOVE_SAND_PROB:
        return BandLayout(horizon, horizon, horizon + cue_height, horizon + cue_height, height)
    return BandLayout(horizon, height - cue_height, height, horizon, height - cue_height)


def sky(rng: np.random.Generator, grid: Grid, horizon: int) -> np.ndarray:
    """Sky colours: lighter towards the horizon."""
    factor = 1.0 + SKY_GRADIENT * np.clip(grid.yy / max(horizon, 1), 0, 1)
    return _shade(_jittered(rng, SKY_COLOR), factor)


def sand(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Sand colours: faint diagonal ripples plus grain."""
    period = RIPPLE_PERIOD_FRAC * grid.height
    phase = rng.uniform(0, 2 * np.pi)
    ripple = RIPPLE_AMPLITUDE * np.sin(2 * np.pi * (grid.yy + RIPPLE_SLOPE * grid.xx) / period + phase)
    grain = SAND_GRAIN * rng.standard_normal(grid.yy.shape, dtype=np.float32)
    return _shade(_jittered(rng, SAND_COLOR), 1.0 + ripple + grain)


def road(rng: np.random.Generator, grid: Grid, layout: BandLayout) -> np.ndarray:
    """Asphalt with a dashed lane marking along the middle of the cue band."""
    grain = ROAD_GRAIN * rng.standard_normal(grid.yy.shape, dtype=np.float32)
    colors = _shade(_jittered(rng, ROAD_COLOR), 1.0 + grain)
    middle = (layout.cue_top + layout.cue_bottom) / 2
    half = max(MIN_FEATURE_PX, LANE_THICKNESS_FRAC * grid.height) / 2
    dash = max(MIN_FEATURE_PX, LANE_DASH_FRAC * grid.width)
    offset = rng.uniform(0, 2 * dash)
    lane = (np.abs(grid.yy - middle) <= half) & (((grid.xx + offset) // dash) % 2 == 0)
    colors[lane] = _jittered(rng, LANE_COLOR)
    return colors


def water(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Water with wobbling horizontal waves."""
    period = max(MIN_FEATURE_PX, WAVE_PERIOD_FRAC * grid.height)
    wobble_period = WAVE_WOBBLE_PERIOD_FRAC * grid.width
    phase, wobble_phase = rng.uniform(0, 2 * np.pi, 2)
    wobble = WAVE_WOBBLE * np.sin(2 * np.pi * grid.xx / wobble_period + wobble_phase)
    waves = WAVE_AMPLITUDE * np.sin(2 * np.pi * (grid.yy / period + wobble) + phase)
    return _shade(_jittered(rng, WATER_COLOR), 1.0 + waves)


def buildings(rng: np.random.Generator, grid: Grid, horizon: int) -> list[Part]:
    """A few brick buildings standing on the horizon."""
    brick_h = max(MIN_FEATURE_PX, BRICK_HEIGHT_FRAC * grid.height)
    brick_w = BRICK_ASPECT * brick_h
    parts = []
    for _ in range(_integer(rng, BUILDING_COUNT_RANGE)):
        bw = _uniform(rng, BUILDING_WIDTH_FRAC_RANGE) * grid.width
        bh = _uniform(rng, BUILDING_HEIGHT_FRAC_RANGE) * grid.height
        left = rng.uniform(-bw / 2, grid.width - bw / 2)
        row = np.floor((grid.yy - horizon) / brick_h)
        bond = (row % 2) * brick_w / 2  # every other row of bricks is offset by half a brick
        mortar = ((grid.yy - horizon) % brick_h < MORTAR_PX) | ((grid.xx - left + bond) % brick_w < MORTAR_PX)
        wall, joints = _jittered(rng, _pick(rng, BUILDING_COLORS)), _jittered(rng, MORTAR_COLOR)
        colors = np.where(mortar[..., None], joints, wall).astype(np.float32)
        parts.append((grid.box(horizon - bh, horizon, left, left + bw), colors))
    return parts


def trees(rng: np.random.Generator, grid: Grid, horizon: int) -> list[Part]:
    """A few trees (a dappled canopy of overlapping discs on a trunk) standing on the horizon."""
    dapple = _smooth_noise(rng, grid.height, grid.width)
    parts = []
    for _ in range(_integer(rng, TREE_COUNT_RANGE)):
        radius = _uniform(rng, CANOPY_RADIUS_FRAC_RANGE) * grid.height
        cx = rng.uniform(0, grid.width)
        trunk_top = horizon - TRUNK_HEIGHT_OF_RADIUS * radius - radius / 2
        half_trunk = TRUNK_WIDTH_OF_RADIUS * radius / 2
        trunk = grid.box(trunk_top, horizon, cx - half_trunk, cx + half_trunk)
        canopy = np.zeros(grid.yy.shape, dtype=bool)
        for _ in range(_integer(rng, CANOPY_DISC_COUNT_RANGE)):
            dy, dx = rng.uniform(-CANOPY_SPREAD * radius, CANOPY_SPREAD * radius, 2)
            canopy |= grid.disc(trunk_top + dy, cx + dx, radius * _uniform(rng, CANOPY_DISC_RADIUS_RANGE))
        leaves = _shade(_jittered(rng, _pick(rng, CANOPY_COLORS)), 1.0 + CANOPY_DAPPLE * (dapple - 0.5))
        colors = np.where(canopy[..., None], leaves, _jittered(rng, TRUNK_COLOR)).astype(np.float32)
        parts.append((canopy | trunk, colors))
    return parts


def _scale(rng: np.random.Generator) -> float:
    """An object scale, log-uniform in :data:`OBJECT_SCALE_RANGE`."""
    low, high = np.log(OBJECT_SCALE_RANGE[0]), np.log(OBJECT_SCALE_RANGE[1])
    return float(np.exp(rng.uniform(low, high)))


def _place(
    rng: np.random.Generator, grid: Grid, layout: BandLayout, obj_h: float, obj_w: float,
    gap: float = 0.0, skyline_cue: bool = True,
) -> tuple[float, float, float, float]:
    """Put an object box inside the sand band, shrunk if it does not fit, at least the margin
    from the band's edges and at least ``gap`` px from the cue band, and from the skyline when
    ``skyline_cue`` (the sand's top edge touches one of them, its bottom edge the cue band or
    the image border).

    Returns ``(top, left, box_height, box_width)``.
    """
    margin = OBJECT_MARGIN_FRAC * grid.height
    cue_below = layout.sand_bottom < grid.height
    above = max(margin, gap) if (skyline_cue or not cue_below) else margin
    below = max(margin, gap) if cue_below else margin
    room = max(1.0, layout.sand_bottom - layout.sand_top - above - below)
    shrink = min(1.0, room / obj_h, grid.width / obj_w)
    obj_h, obj_w = obj_h * shrink, obj_w * shrink
    lowest = layout.sand_top + above + obj_h
    # A sand band thinner than the margins (small images) leaves no range: the object sits at its top.
    bottom = rng.uniform(lowest, max(lowest, layout.sand_bottom - below))
    left = rng.uniform(0, grid.width - obj_w)
    return bottom - obj_h, left, obj_h, obj_w


def vehicle(
    rng: np.random.Generator, grid: Grid, layout: BandLayout, label: int, gap: float = 0.0, skyline_cue: bool = True
) -> Thing:
    """The car-or-boat: a hull with a dark bottom stripe and a cabin with two windows, at least
    ``gap`` px from the cues (:func:`_place`). Nothing in its drawing depends on ``label``.
    """
    obj_w = VEHICLE_BASE_WIDTH_FRAC * grid.width * _scale(rng)
    top, left, h, w = _place(rng, grid, layout, VEHICLE_ASPECT * obj_w, obj_w, gap, skyline_cue)
    bottom, hull_top = top + h, top + CABIN_HEIGHT_SHARE * h
    cabin_left = left + _uniform(rng, CABIN_OFFSET_SHARE_RANGE) * w
    cabin_w = CABIN_WIDTH_SHARE * w
    hull = grid.box(hull_top, bottom, left, left + w)
    cabin = grid.box(top, hull_top, cabin_left, cabin_left + cabin_w)
    stripe = grid.box(bottom - STRIPE_HEIGHT_SHARE * (bottom - hull_top), bottom, left, left + w)
    win_w, win_h = WINDOW_WIDTH_SHARE * cabin_w, WINDOW_HEIGHT_SHARE * (hull_top - top)
    gap = (cabin_w - 2 * win_w) / 3  # two windows, three equal gaps
    win_top = top + (hull_top - top - win_h) / 2
    first, second = cabin_left + gap, cabin_left + 2 * gap + win_w
    win_bottom = win_top + win_h
    windows = grid.box(win_top, win_bottom, first, first + win_w) | grid.box(win_top, win_bottom, second, second + win_w)
    colors = np.broadcast_to(_jittered(rng, _pick(rng, VEHICLE_BODY_COLORS)), grid.yy.shape + (3,)).copy()
    colors[stripe] = _jittered(rng, STRIPE_COLOR)
    colors[windows] = _jittered(rng, WINDOW_COLOR)
    return Thing(hull | cabin, colors, label, round(bottom))


def person(rng: np.random.Generator, grid: Grid, layout: BandLayout, label: int) -> Thing:
    """A standing person (class ``label``): head disc, torso and legs."""
    obj_h = PERSON_BASE_HEIGHT_FRAC * grid.height * _scale(rng)
    top, left, h, w = _place(rng, grid, layout, obj_h, PERSON_WIDTH_SHARE * obj_h)
    radius = HEAD_RADIUS_SHARE * h
    head = grid.disc(top + radius, left + w / 2, radius)
    torso_top = top + 2 * radius
    legs_top = torso_top + TORSO_HEIGHT_SHARE * h
    torso = grid.box(torso_top, legs_top, left, left + w)
    legs = grid.box(legs_top, top + h, left + LEGS_INSET_SHARE * w, left + (1 - LEGS_INSET_SHARE) * w)
    colors = np.empty(grid.yy.shape + (3,), dtype=np.float32)
    colors[head] = _jittered(rng, _pick(rng, SKIN_COLORS))
    colors[torso] = _jittered(rng, _pick(rng, SHIRT_COLORS))
    colors[legs] = _jittered(rng, _pick(rng, PANTS_COLORS))
    return Thing(head | torso | legs, colors, label, round(top + h))


def vehicles(
    rng: np.random.Generator, grid: Grid, layout: BandLayout, label: int, gap: float = 0.0, skyline_cue: bool = True
) -> list[Thing]:
    """A few vehicles (:data:`VEHICLE_COUNT_RANGE`), all of class ``label``, ``gap`` px clear of the cues."""
    return [vehicle(rng, grid, layout, label, gap, skyline_cue) for _ in range(_integer(rng, VEHICLE_COUNT_RANGE))]


def persons(rng: np.random.Generator, grid: Grid, layout: BandLayout, label: int) -> list[Thing]:
    """A few persons (:data:`PERSON_COUNT_RANGE`) of class ``label``."""
    return [person(rng, grid, layout, label) for _ in range(_integer(rng, PERSON_COUNT_RANGE))]


def finish(rng: np.random.Generator, image: np.ndarray, noise_std: float) -> np.ndarray:
    """Per-image brightness and colour jitter, Gaussian pixel noise, then uint8."""
    gain = _uniform(rng, BRIGHTNESS_RANGE) * rng.uniform(COLOR_GAIN_RANGE[0], COLOR_GAIN_RANGE[1], 3)
    image = image * gain.astype(np.float32)[None, None, :]
    if noise_std > 0:
        image = image + rng.normal(0.0, noise_std, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
