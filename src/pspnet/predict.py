"""Segment image files with a trained or registered PSPNet (``pspnet predict``).

Inputs
    Any mix of image files, folders and glob patterns. A folder contributes the images directly
    in it (with ``recursive``: in its subfolders too, hidden folders and symbolic links to
    folders left out); a glob is expanded here with :mod:`glob` (``**`` included), so it works
    quoted as well as expanded by the shell. Folders and globs pick files whose suffix is one of
    :data:`IMAGE_SUFFIXES` (any case) and skip hidden files; a file named explicitly is read
    whatever its suffix. The same file reached twice (two inputs, a symbolic link) counts once;
    images are processed in sorted path order. A folder or glob outside the output folder never
    picks up files inside it, so a re-run does not segment its own masks; no output may replace
    an input image.

Model
    A checkpoint path (``models/checkpoint.pt``) or any MLflow model URI (default
    ``models:/<register.model_name>@<register.champion_alias>``), loaded with
    :func:`pspnet.registry.segmenter.load_segmenter` against the project's MLflow store
    (:func:`pspnet.tracking.store.setup_mlflow`; ``MLFLOW_TRACKING_URI`` wins). Images are
    normalised with the model's own ``input_mean`` / ``input_std``, not with today's params.

Inference
    :func:`pspnet.evaluate.inference.predict_logits` under the ``evaluate`` section of
    params.yaml, with any of :data:`INFERENCE_OPTIONS` overridden: ``whole`` or ``slide`` mode,
    flip, multi-scale. Images of the same size run together, up to ``batch_size`` per pass;
    images of any size work: a pass smaller than :data:`~pspnet.registry.segmenter.MIN_SIDE` (a tiny image, window or
    test scale) is edge-padded and cropped back, as the registered model's serving code does.
    A progress bar counts images.

Outputs (in ``out_dir``, every file written atomically)
    ``<name>.png``: class ids (8-bit greyscale when the model has at most 256 classes, else
    16-bit); ``<name>_overlay.png``: the class colours blended over the image; optionally a JSON
    summary (per image: paths, size, the share of the pixels of each class present; plus the
    model, the classes and the inference settings). ``<name>`` is the image's stem; images that
    share a stem get their parent folders (then their suffix) prepended / appended until the
    names differ (``day__frame1``, ``night__frame1``), see :func:`output_names`.

Errors
    Inputs that do not exist, match nothing or would be overwritten, and bad options are
    :class:`~pspnet.errors.ConfigError` (exit 2). An unreadable image is a
    :class:`~pspnet.errors.DataError` (exit 3) naming the file, found by reading every image's
    header before the model is loaded; with ``skip_bad`` it is reported, listed in the summary
    and left out instead. Failing is the default because a batch job that silently leaves out
    images is worse than one that stops and names the file.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError

from pspnet import atomic_files
from pspnet.config import EvaluateConfig, Params
from pspnet.errors import ConfigError, DataError, PspnetError

if TYPE_CHECKING:
    from pspnet.registry.segmenter import Segmenter

log = logging.getLogger(__name__)

#: Suffixes (compared lower-case) of the files that folders and globs contribute.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Characters that make an input a glob pattern (when no file or folder has that exact name).
GLOB_CHARACTERS = frozenset("*?[")
#: Names starting with this are hidden: skipped by folders and globs.
HIDDEN_PREFIX = "."
#: Suffix of every written image.
PNG_SUFFIX = ".png"
#: Appended to an image's output name for its overlay file.
OVERLAY_TAG = "_overlay"
#: Joins parent folder names to a stem when stems collide (``day__frame1``).
PARENT_SEPARATOR = "__"
#: Joins the source suffix to a name when folders alone do not tell images apart (``frame1_jpg``).
SUFFIX_SEPARATOR = "_"
#: Joins a counter to a name that is still taken (``frame1-2``), the last resort.
COPY_SEPARATOR = "-"
#: First counter a still-taken name gets.
FIRST_COPY = 2
#: Class ids fit 8-bit masks up to this many classes, 16-bit ones up to :data:`MAX_16BIT_CLASSES`.
MAX_8BIT_CLASSES = 256
MAX_16BIT_CLASSES = 65536
#: PIL modes of 16-bit greyscale images (``I;16``, ``I;16B``...), rescaled by 255 / 65535 on reading.
GREY16_MODE_PREFIX = "I;16"
MAX_8BIT_VALUE = 255
MAX_16BIT_VALUE = 65535
#: ``ignore_index`` for overlays: predictions have no ignore pixels, every id gets its colour.
NO_IGNORE = -1
#: Values of the model's ``input_mean`` / ``input_std`` are fractions of this.
PIXEL_SCALE = 255.0
#: ``--device`` values (see :func:`pspnet.device.resolve_device`).
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Fields of :class:`~pspnet.config.EvaluateConfig` a caller may override -> the CLI option.
INFERENCE_OPTIONS: dict[str, str] = {
    "mode": "--mode",
    "flip": "--flip/--no-flip",
    "scales": "--scales",
    "crop_size": "--crop-size",
    "base_size": "--base-size",
    "batch_size": "--batch-size",
}
#: The :class:`~pspnet.config.EvaluateConfig` fields recorded as the inference settings.
INFERENCE_FIELDS = ("mode", "batch_size", "crop_size", "stride_rate", "flip", "scales", "base_size")
#: Errors PIL raises for a file it cannot decode (UnidentifiedImageError is an OSError).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class PredictOptions:
    """What :func:`predict` segments and how; ``None`` falls back to params.yaml.

    ``inference`` overrides fields of the ``evaluate`` section (keys of :data:`INFERENCE_OPTIONS`;
    ``None`` values are ignored). ``alpha`` defaults to ``evaluate.overlay_alpha``, ``device``
    to ``train.device``, ``model`` to the registered champion.
    """

    inputs: tuple[str, ...]
    out_dir: Path
    model: str | None = None
    recursive: bool = False
    overlay: bool = True
    alpha: float | None = None
    summary: Path | None = None
    skip_bad: bool = False
    device: str | None = None
    inference: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageJob:
    """One image to segment: its path, its output name and its ``(height, width)``."""

    path: Path
    name: str
    size: tuple[int, int]


# --------------------------------------------------------------------------- options


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.75,1.0,1.25"`` -> ``(0.75, 1.0, 1.25)``; anything but positive numbers is a ConfigError."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"--scales {text!r}: give positive numbers separated by commas, e.g. 0.75,1.0,1.25.")
    return values


def inference_config(base: EvaluateConfig, overrides: Mapping[str, Any]) -> EvaluateConfig:
    """``base`` (params.yaml's ``evaluate``) with the non-``None`` ``overrides``, validated."""
    unknown = sorted(set(overrides) - set(INFERENCE_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown inference setting(s) {unknown}; accepted: {sorted(INFERENCE_OPTIONS)}.")
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return EvaluateConfig.model_validate({**base.model_dump(), **given})
    except ValidationError as err:
        problems = []
        for error in err.errors():
            key = str(error["loc"][0]) if error["loc"] else ""
            where = INFERENCE_OPTIONS[key] if key in given else f"evaluate.{key} in params.yaml"
            problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("invalid inference settings: " + "; ".join(problems) + ". Fix the value named.") from None


def overlay_alpha(alpha: float | None, cfg: EvaluateConfig) -> float:
    """The overlay opacity: ``alpha`` when given (0..1), else ``evaluate.overlay_alpha``."""
    if alpha is None:
        return cfg.overlay_alpha
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha {alpha}: the overlay opacity must be between 0 and 1.")
    return alpha


def pick_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> a torch device (``cuda`` without a GPU is a ConfigError)."""
    from pspnet.device import resolve_device

    if name not in DEVICE_CHOICES:
        raise ConfigError(f"--device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}.")
    try:
        return resolve_device(name)
    except ConfigError:
        raise ConfigError("--device cuda: no CUDA device is available here; use --device auto or --device cpu.") from None


# --------------------------------------------------------------------------- inputs


def is_glob(text: str) -> bool:
    """Whether ``text`` holds a glob wildcard (``*``, ``?`` or ``[``)."""
    return any(char in GLOB_CHARACTERS for char in text)


def _is_hidden(name: str) -> bool:
    return name.startswith(HIDDEN_PREFIX)


def _has_image_suffix(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _inside(path: Path, folder: Path | None) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both resolved); False for no folder."""
    return folder is not None and path.resolve().is_relative_to(folder)


def images_in_folder(folder: Path, recursive: bool, exclude: Path | None = None) -> list[Path]:
    """Image files (by suffix, hidden ones skipped) in ``folder``; with ``recursive`` in its
    non-hidden subfolders too. Nothing under ``exclude`` (a resolved folder) is returned."""
    found: list[Path] = []
    for top, dirs, files in os.walk(folder):
        here = Path(top)
        dirs[:] = [d for d in dirs if not _is_hidden(d) and not _inside(here / d, exclude)] if recursive else []
        found += [here / f for f in files if not _is_hidden(f) and _has_image_suffix(Path(f))]
    return [path for path in found if not _inside(path, exclude)]


def glob_base(pattern: str) -> Path:
    """The folder a glob pattern searches from: its leading components without wildcards."""
    parts = Path(os.path.expanduser(pattern)).parts
    first_wildcard = next((i for i, part in enumerate(parts) if is_glob(part)), len(parts))
    return Path(*parts[:first_wildcard]) if first_wildcard else Path(".")


def _exclusion(base: Path, out_dir: Path | None) -> Path | None:
    """``out_dir`` when an input searching from ``base`` must skip it; ``None`` when ``base``
    itself lies in ``out_dir`` (the user pointed at it: the overwrite check guards the inputs)."""
    return None if out_dir is None or _inside(base, out_dir) else out_dir


def _glob_matches(pattern: str, recursive: bool, exclude: Path | None) -> list[Path]:
    """The images a glob pattern stands for: matched image files, and the images of matched folders."""
    found: list[Path] = []
    for match in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
        path = Path(match)
        if _inside(path, exclude):
            continue
        if path.is_dir():
            found += images_in_folder(path, recursive, exclude)
        elif _has_image_suffix(path) and not _is_hidden(path.name):
            found.append(path)
    return found


def expand_input(text: str, recursive: bool = False, out_dir: Path | None = None) -> list[Path]:
    """The image files one input stands for (see the module docstring); a path that does not
    exist and is no glob is a :class:`ConfigError`. ``out_dir`` (resolved) is skipped by a
    folder or glob that searches from outside it."""
    path = Path(text).expanduser()
    if path.is_dir():
        return images_in_folder(path, recursive, _exclusion(path, out_dir))
    if path.is_file():
        return [path]
    if is_glob(text):
        return _glob_matches(text, recursive, _exclusion(glob_base(text), out_dir))
    raise ConfigError(
        f"{text}: no such file or folder. Check the path; glob patterns (quoted or not) such as "
        "'photos/*.jpg' are expanded by pspnet."
    )


def find_images(inputs: Sequence[str], recursive: bool = False, out_dir: Path | None = None) -> list[Path]:
    """Every image the ``inputs`` stand for: absolute paths, sorted, each file once; folders
    and globs skip ``out_dir`` unless they search from inside it.

    An input that yields nothing is a warning; all of them yielding nothing is a
    :class:`ConfigError` naming the inputs.
    """
    if not inputs:
        raise ConfigError("no input given: name image files, folders or glob patterns, e.g. pspnet predict photos/ --out masks.")
    out_dir = out_dir.resolve() if out_dir is not None else None
    found: list[Path] = []
    for text in inputs:
        matches = expand_input(text, recursive, out_dir)
        if not matches:
            log.warning("%s: no images (%s) found here", text, ", ".join(sorted(IMAGE_SUFFIXES)))
        found += matches
    if not found:
        hint = "" if recursive else " Add --recursive to search subfolders."
        raise ConfigError(
            f"no images found in {', '.join(repr(t) for t in inputs)}: folders and globs pick hidden-free files "
            f"ending in {', '.join(sorted(IMAGE_SUFFIXES))} (any case).{hint}"
        )
    unique: dict[Path, Path] = {}
    for path in sorted({Path(os.path.abspath(p)) for p in found}, key=str):
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


# --------------------------------------------------------------------------- output names


def _qualified_name(path: Path, depth: int, with_suffix: bool) -> str:
    """``path``'s stem behind its last ``depth`` parent folder names, plus its suffix if asked."""
    parents = path.parent.relative_to(path.anchor).parts
    parts = [*(parents[-depth:] if depth else ()), path.stem]
    name = PARENT_SEPARATOR.join(parts)
    return f"{name}{SUFFIX_SEPARATOR}{path.suffix.lstrip('.')}" if with_suffix and path.suffix else name


def _all_differ(names: Sequence[str]) -> bool:
    """Whether ``names`` differ pairwise, ignoring case (case-insensitive file systems)."""
    return len({name.casefold() for name in names}) == len(names)


def _distinguish(paths: Sequence[Path]) -> list[str]:
    """Names for images sharing a stem: the fewest parent folders that tell them apart, then
    also the suffix (same folder, ``x.png`` and ``x.jpg``)."""
    deepest = max(len(p.parent.relative_to(p.anchor).parts) for p in paths)
    attempts = [(depth, False) for depth in range(1, deepest + 1)] + [(depth, True) for depth in range(deepest + 1)]
    for depth, with_suffix in attempts:
        names = [_qualified_name(p, depth, with_suffix) for p in paths]
        if _all_differ(names):
            return names
    return names  # only case differs: output_names numbers them


def _output_files(name: str) -> tuple[str, str]:
    """The mask and overlay file names of output name ``name``."""
    return f"{name}{PNG_SUFFIX}", f"{name}{OVERLAY_TAG}{PNG_SUFFIX}"


def output_names(images: Sequence[Path]) -> list[str]:
    """One output name per image, so that no two written files collide (case ignored).

    The image's stem when no other image has it; otherwise :func:`_distinguish`'s names. A name
    whose mask or overlay file is still taken (``a__b`` from ``a/b.png`` next to ``a__b.png``,
    ``x_overlay.png`` next to ``x.png``) gets ``-2``, ``-3``... in image order. Deterministic
    for a given list of images.
    """
    names = [path.stem for path in images]
    by_stem: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(images):
        by_stem[path.stem.casefold()].append(index)
    for indices in by_stem.values():
        if len(indices) > 1:
            for index, name in zip(indices, _distinguish([images[i] for i in indices])):
                names[index] = name
    taken: set[str] = set()
    unique: list[str] = []
    for name in names:
        candidate, copy = name, FIRST_COPY
        while any(f.casefold() in taken for f in _output_files(candidate)):
            candidate, copy = f"{name}{COPY_SEPARATOR}{copy}", copy + 1
        taken.update(f.casefold() for f in _output_files(candidate))
        unique.append(candidate)
    return unique


def check_no_overwrite(images: Sequence[Path], names: Sequence[str], out_dir: Path) -> None:
    """A :class:`ConfigError` when a mask or overlay would replace one of the input images."""
    inputs = {path.resolve(): path for path in images}
    for name in names:
        for file_name in _output_files(name):
            target = (out_dir / file_name).resolve()
            if target in inputs:
                raise ConfigError(
                    f"--out {out_dir}: writing {target} would overwrite the input image {inputs[target]}. "
                    "Choose an output folder that holds no input images."
                )


# --------------------------------------------------------------------------- reading images


def _unreadable(path: Path, err: BaseException) -> DataError:
    return DataError(
        f"{path}: cannot read this image ({type(err).__name__}: {err}). Fix or remove the file, "
        "or pass --skip-bad to leave unreadable images out."
    )


def read_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the image's header (no pixel decoding); unreadable: DataError."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except IMAGE_ERRORS as err:
        raise _unreadable(path, err) from None
    return height, width


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` converted to RGB; 16-bit greyscale rescaled to 0..255 (PIL would clip it)."""
    if img.mode.startswith(GREY16_MODE_PREFIX):
        grey = np.asarray(img, dtype=np.float64) * (MAX_8BIT_VALUE / MAX_16BIT_VALUE)
        return Image.fromarray(np.rint(grey).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL asks palette transparency to go through RGBA
    return img.convert("RGB")


def load_rgb(path: Path) -> np.ndarray:
    """The image as ``(H, W, 3)`` uint8 RGB: greyscale (8- or 16-bit), palette (transparency
    included), RGBA, CMYK... converted; alpha dropped. Pixels as stored: EXIF orientation is
    not applied (as in training). Unreadable: :class:`DataError` naming the file."""
    try:
        with Image.open(path) as img:
            return np.array(_to_rgb(img), dtype=np.uint8)
    except IMAGE_ERRORS as err:
        raise _unreadable(path, err) from None


def scan_images(images: Sequence[Path], names: Sequence[str], skip_bad: bool) -> tuple[list[ImageJob], list[dict[str, str]]]:
    """Read every header: the jobs, and the images left out (``skip_bad``) with their error.

    Without ``skip_bad`` the first unreadable image raises, before any model is loaded.
    """
    jobs: list[ImageJob] = []
    skipped: list[dict[str, str]] = []
    for path, name in zip(images, names):
        try:
            jobs.append(ImageJob(path, name, read_size(path)))
        except DataError as err:
            if not skip_bad:
                raise
            log.warning("skipped: %s", err)
            skipped.append({"image": str(path), "error": str(err)})
    return jobs, skipped


def plan_batches(jobs: Sequence[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """Same-size jobs grouped, up to ``batch_size`` per batch; sizes in order of first appearance."""
    groups: dict[tuple[int, int], list[ImageJob]] = {}
    for job in jobs:
        groups.setdefault(job.size, []).append(job)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


# --------------------------------------------------------------------------- model and inference


def class_colors(segmenter: Segmenter) -> tuple[tuple[int, int, int], ...]:
    """The model's class colours; the Pascal VOC colour map when it records none (or too few)."""
    from pspnet.data.sources.base import palette_colors

    if len(segmenter.class_colors) >= segmenter.num_classes:
        return segmenter.class_colors
    log.info("%s records no colour for every class; overlays use the Pascal VOC colour map", segmenter.source)
    return palette_colors(segmenter.num_classes)


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float], device: torch.device) -> torch.Tensor:
    """uint8 RGB ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` on ``device``, ``(x - mean) / std``
    with ``mean`` / ``std`` fractions of 255 (the same arithmetic as the exported model's)."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    mean_t = torch.tensor([m * PIXEL_SCALE for m in mean], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor([s * PIXEL_SCALE for s in std], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def predict_ids(segmenter: Segmenter, images: np.ndarray, cfg: EvaluateConfig, device: torch.device) -> np.ndarray:
    """Class ids int64 ``(N, H, W)`` for uint8 RGB ``(N, H, W, 3)`` under ``cfg``'s test-time protocol."""
    from pspnet.evaluate.inference import predict_logits

    x = normalise(images, segmenter.input_mean, segmenter.input_std, device)
    scores = predict_logits(segmenter.model, x, cfg)
    if scores.shape[1] != segmenter.num_classes:
        raise PspnetError(
            f"{segmenter.source}: the model outputs {scores.shape[1]} classes but records "
            f"{segmenter.num_classes} class names; re-register or re-train it."
        )
    return scores.argmax(dim=1).cpu().numpy()


# --------------------------------------------------------------------------- writing


def mask_image(ids: np.ndarray, num_classes: int) -> Image.Image:
    """Class ids as a greyscale image: mode ``L`` up to 256 classes, else 16-bit ``I;16``."""
    if num_classes <= MAX_8BIT_CLASSES:
        return Image.fromarray(ids.astype(np.uint8))
    if num_classes <= MAX_16BIT_CLASSES:
        return Image.fromarray(ids.astype(np.uint16))
    raise PspnetError(f"{num_classes} classes do not fit a 16-bit mask (at most {MAX_16BIT_CLASSES}).")


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as a PNG atomically."""
    with atomic_files.atomic_path(path, suffix=PNG_SUFFIX) as tmp:
        image.save(tmp, format="PNG")


def class_shares(ids: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Share of the pixels of each class present in ``ids`` (absent classes left out; sums to 1)."""
    counts = np.bincount(ids.ravel(), minlength=len(class_names))
    shares: dict[str, float] = {}
    for index in np.flatnonzero(counts):
        name = class_names[index]
        shares[name] = shares.get(name, 0.0) + float(counts[index]) / ids.size
    return shares


def write_outputs(job: ImageJob, rgb: np.ndarray, ids: np.ndarray, out_dir: Path, segmenter: Segmenter,
                  colors: Sequence[Sequence[int]], alpha: float | None) -> dict[str, Any]:
    """Write ``job``'s mask (and overlay unless ``alpha`` is None); its summary record."""
    from pspnet.evaluate.plots import blend

    mask_name, overlay_name = _output_files(job.name)
    save_png(mask_image(ids, segmenter.num_classes), out_dir / mask_name)
    overlay = None
    if alpha is not None:
        overlay = out_dir / overlay_name
        save_png(Image.fromarray(blend(rgb, ids, colors, NO_IGNORE, alpha)), overlay)
    height, width = job.size
    return {
        "image": str(job.path),
        "mask": str(out_dir / mask_name),
        "overlay": str(overlay) if overlay else None,
        "height": height,
        "width": width,
        "class_shares": class_shares(ids, segmenter.class_names),
    }


# --------------------------------------------------------------------------- the run


def _load_batch(batch: Sequence[ImageJob], skip_bad: bool, skipped: list[dict[str, str]]) -> tuple[list[ImageJob], list[np.ndarray]]:
    """Decode a batch: the jobs that loaded and their RGB arrays (failures skipped or raised)."""
    jobs, arrays = [], []
    for job in batch:
        try:
            rgb = load_rgb(job.path)
            if rgb.shape[:2] != job.size:
                raise DataError(f"{job.path}: decoded as {rgb.shape[1]}x{rgb.shape[0]} but its header says "
                                f"{job.size[1]}x{job.size[0]}. Re-save the file, or pass --skip-bad.")
        except DataError as err:
            if not skip_bad:
                raise
            log.warning("skipped: %s", err)
            skipped.append({"image": str(job.path), "error": str(err)})
            continue
        jobs.append(job)
        arrays.append(rgb)
    return jobs, arrays


def run_batches(jobs: Sequence[ImageJob], segmenter: Segmenter, cfg: EvaluateConfig, device: torch.device,
                out_dir: Path, alpha: float | None, skip_bad: bool, skipped: list[dict[str, str]]) -> Iterator[dict[str, Any]]:
    """Segment ``jobs`` batch by batch and write their files; yields one record per image."""
    from tqdm import tqdm

    colors = class_colors(segmenter)
    with tqdm(total=len(jobs), desc="predict", unit="img") as bar:
        for batch in plan_batches(jobs, cfg.batch_size):
            loaded, arrays = _load_batch(batch, skip_bad, skipped)
            if loaded:
                ids = predict_ids(segmenter, np.stack(arrays), cfg, device)
                for job, rgb, image_ids in zip(loaded, arrays, ids):
                    yield write_outputs(job, rgb, image_ids, out_dir, segmenter, colors, alpha)
            bar.update(len(batch))


def inference_settings(cfg: EvaluateConfig, device: torch.device) -> dict[str, Any]:
    """The test-time settings the masks were made with (for the summary)."""
    settings = {key: value for key, value in cfg.model_dump(mode="json").items() if key in INFERENCE_FIELDS}
    return {**settings, "device": str(device)}


def check_out_dir(out_dir: Path) -> None:
    """A ConfigError when ``out_dir`` exists and is not a folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a folder; name a folder for the masks.")


def make_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` (and its parents); a ConfigError naming it when that fails."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out_dir}: cannot create this folder ({err}).") from None


def predict(params: Params, root: Path, options: PredictOptions) -> dict[str, Any]:
    """Segment the images ``options`` names and write masks, overlays and the summary.

    Options are checked and every image header read before the model loads, so mistakes cost
    nothing. Returns a short summary: counts, output folder, summary file, model, device.
    """
    started = time.perf_counter()
    cfg = inference_config(params.evaluate, options.inference)
    alpha = overlay_alpha(options.alpha, cfg) if options.overlay else None
    device = pick_device(options.device or params.train.device)
    out_dir = Path(os.path.abspath(options.out_dir.expanduser()))
    check_out_dir(out_dir)
    images = find_images(options.inputs, options.recursive, out_dir)
    names = output_names(images)
    check_no_overwrite(images, names, out_dir)
    jobs, skipped = scan_images(images, names, options.skip_bad)
    if not jobs:
        raise DataError(f"none of the {len(images)} image(s) found could be read; see the warnings above.")
    from pspnet.registry.segmenter import load_model, model_source

    source = model_source(options.model, params)
    loaded = load_model(source, params, root)
    segmenter = replace(loaded, model=loaded.model.to(device))
    make_out_dir(out_dir)
    log.info("predicting %d image(s) with %s on %s into %s", len(jobs), segmenter.source, device, out_dir)
    records = sorted(run_batches(jobs, segmenter, cfg, device, out_dir, alpha, options.skip_bad, skipped),
                     key=lambda record: record["image"])
    summary_path = None
    if options.summary is not None:
        summary_path = Path(os.path.abspath(options.summary.expanduser()))
        atomic_files.write_json(summary_path, {
            "model": segmenter.source,
            "class_names": list(segmenter.class_names),
            "inference": inference_settings(cfg, device),
            "overlay_alpha": alpha,
            "images": records,
            "skipped": skipped,
        })
    return {
        "images": len(records),
        "skipped": len(skipped),
        "overlays": len(records) if alpha is not None else 0,
        "out_dir": str(out_dir),
        "summary": str(summary_path) if summary_path else None,
        "model": segmenter.source,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 2),
    }
