"""The bad-data catalogue: every kind of bad input must be rejected before training.

Each case is generated here as files of a ``folder`` source (or, for the prepared-data cases,
as edits of a prepared dataset), then the real ``prepare`` and ``validate`` run (real Great
Expectations). A case passes when ``validate`` raises :class:`DataError` whose text names the
sample and its file, the problem and a fix, and when the GE report (``summary.json``) lists the
sample. GE takes about a second per run, so the per-sample cases share one source (each bad
sample its own id, checked one by one); dataset-level cases, the image policy and the
quarantine each get their own run.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pspnet.config import Params, parse_params
from pspnet.data.dataset import SegmentationDataset
from pspnet.data.manifest import read_manifest
from pspnet.stages.prepare import run as prepare
from pspnet.data.quarantine import effective_version, excluded_ids
from pspnet.layout import Layout
from pspnet.errors import DataError
from tests.data.validation_run import run_validate
from pspnet.evaluate.scoring import split_dataset

HEIGHT, WIDTH = 16, 24
RAW = "data/raw/mine"
PREPARED = "data/prepared"
SUMMARY = "reports/validation/summary.json"
QUARANTINE = "reports/validation/quarantine.csv"
#: Class ids 0..2, no colours: masks must hold class ids (an RGB mask is not expected).
CLASSES = "background\nroad\ncar\n"


# --------------------------------------------------------------------------------------------
# Writing a folder source
# --------------------------------------------------------------------------------------------


def _rng(name: str) -> np.random.Generator:
    # crc32, not a sum of character codes: "t2" and "v0" summed alike and made a train image's twin in val
    return np.random.default_rng(zlib.crc32(name.encode()))


def _image(name: str, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return _rng(name).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _mask(name: str, values: tuple[int, ...] = (0, 1, 2, 255), height: int = HEIGHT) -> np.ndarray:
    """A uint8 mask holding each of ``values``, the rest random among them."""
    mask = _rng(name).choice(np.array(values, dtype=np.uint8), (height, WIDTH))
    mask.flat[: len(values)] = values
    return mask


def _save(path: Path, array: np.ndarray, mode: str | None = None, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **options)
    return path


def _pair(root: Path, split: str, name: str, suffix: str = ".png", values: tuple[int, ...] = (0, 1, 2, 255)) -> None:
    _save(root / "images" / split / f"{name}{suffix}", _image(name))
    _save(root / "masks" / split / f"{name}.png", _mask(name, values))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels and holds none: to the header
    check it is exactly a decompression bomb (a tiny file declaring a huge image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _good_source(project: Path) -> Path:
    """A clean source: train t0..t2 (every class), val v0, v1."""
    root = project / RAW
    root.mkdir(parents=True)
    (root / "classes.txt").write_text(CLASSES)
    for name in ("t0", "t1", "t2"):
        _pair(root, "train", name)
    for name in ("v0", "v1"):
        _pair(root, "val", name)
    return root


def _params(**overrides: dict) -> Params:
    data = {"source": {"name": "folder", "location": RAW}, "num_workers": 2, **overrides.get("data", {})}
    validate_cfg = {"max_failures_listed": 50, "num_workers": 2, **overrides.get("validate", {})}
    return parse_params({"data": data, "validate": validate_cfg})


@dataclass
class Run:
    """What ``prepare`` + ``validate`` left in one project."""

    root: Path
    error: DataError | None
    summary: dict

    @property
    def message(self) -> str:
        assert self.error is not None, "validate accepted the data"
        return str(self.error)

    def line(self, sample_id: str) -> str:
        """The error message's line of ``sample_id``."""
        lines = [line for line in self.message.splitlines() if line.strip().startswith(f"- {sample_id} (")]
        assert lines, f"sample {sample_id!r} is not listed in:\n{self.message}"
        return lines[0]

    def failure(self, sample_id: str) -> dict:
        """The GE report's (summary.json) entry of a failing sample."""
        found = [f for f in self.summary["failing_samples"] if f["id"] == sample_id]
        assert found, f"sample {sample_id!r} is not among the failing samples of {SUMMARY}"
        return found[0]

    def expectation(self, check: str) -> dict:
        return next(e for e in self.summary["expectations"] if e["check"] == check)

    def rejected(self) -> pd.DataFrame:
        return pd.read_csv(self.root / PREPARED / "rejected.csv", dtype=str, keep_default_na=False)


def _run(root: Path, params: Params, after_prepare: Callable[[Path], None] | None = None) -> Run:
    prepare(params, root)
    if after_prepare is not None:
        after_prepare(root / PREPARED)
    return Run(root, *run_validate(params, root))


# --------------------------------------------------------------------------------------------
# Per-sample cases of the source: all in one source, one id each
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One catalogue case: ``make(source root)`` plants sample ``id``; the rejection must carry
    ``check`` (rejected.csv) and name ``file`` (relative to the source), ``problem`` and ``fix``."""

    name: str
    id: str
    make: Callable[[Path], None]
    check: str
    file: str
    problem: str
    fix: str


def _truncated_jpeg(root: Path) -> None:
    path = _save(root / "images/train/trunc.jpg", _image("trunc", 64, 96), quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _save(root / "masks/train/trunc.png", np.zeros((64, 96), np.uint8))


def _not_an_image(root: Path) -> None:
    (root / "images/train/notimg.png").write_text("id,label\n1,road\n")
    _save(root / "masks/train/notimg.png", _mask("notimg"))


def _empty_file(root: Path) -> None:
    (root / "images/train/empty.png").write_bytes(b"")
    _save(root / "masks/train/empty.png", _mask("empty"))


def _image_without_mask(root: Path) -> None:
    _save(root / "images/train/nomask.png", _image("nomask"))


def _mask_without_image(root: Path) -> None:
    _save(root / "masks/val/noimage.png", _mask("noimage"))


def _size_mismatch(root: Path) -> None:
    _save(root / "images/train/size.png", _image("size"))
    _save(root / "masks/train/size.png", _mask("size", height=HEIGHT - 1))


def _label_out_of_range(root: Path) -> None:
    _pair(root, "train", "label", values=(0, 1, 2, 7))


def _rgb_mask(root: Path) -> None:
    _save(root / "images/train/rgbmask.png", _image("rgbmask"))
    _save(root / "masks/train/rgbmask.png", _mask("rgbmask"), "RGB")


def _mask_16_bit(root: Path) -> None:
    _save(root / "images/train/mask16.png", _image("mask16"))
    _save(root / "masks/train/mask16.png", _mask("mask16").astype(np.uint16))


def _transparent_rgba(root: Path) -> None:
    rgba = np.dstack([_image("rgba"), np.full((HEIGHT, WIDTH), 255, np.uint8)])
    rgba[0, :5, 3] = 0
    _save(root / "images/train/rgba.png", rgba)
    _save(root / "masks/train/rgba.png", _mask("rgba"))


def _image_16_bit(root: Path) -> None:
    _save(root / "images/train/img16.png", (_image("img16")[..., 0].astype(np.uint16) * 257))
    _save(root / "masks/train/img16.png", _mask("img16"))


def _cmyk_image(root: Path) -> None:
    _save(root / "images/train/cmyk.jpg", _image("cmyk"), "CMYK")
    _save(root / "masks/train/cmyk.png", _mask("cmyk"))


def _duplicate_id(root: Path) -> None:
    _pair(root, "val", "t0", suffix=".jpg")  # t0 is also a train sample


def _symlink_out(root: Path) -> None:
    secret = _save(root.parent / "outside/secret.png", _image("secret"))
    (root / "images/train/link.png").symlink_to(secret)
    _save(root / "masks/train/link.png", _mask("link"))


def _bomb(root: Path, name: str, width: int, height: int) -> None:
    (root / f"images/train/{name}.png").write_bytes(_png_header(width, height))
    _save(root / f"masks/train/{name}.png", _mask(name))


def _float_image(root: Path, name: str, edit: Callable[[np.ndarray], None]) -> None:
    array = _image(name).astype(np.float32) / 255
    edit(array)
    np.save(root / f"images/train/{name}.npy", array)
    _save(root / f"masks/train/{name}.png", _mask(name))


def _set_nan(array: np.ndarray) -> None:
    array[0, 0, 0] = np.nan
    array[1, 1, 1] = np.inf


def _scale_255(array: np.ndarray) -> None:
    array *= 255


def _exif_rotated(root: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 3  # viewers turn it 180 degrees
    _save(root / "images/train/exif.jpg", _image("exif"), exif=exif, quality=95)
    _save(root / "masks/train/exif.png", _mask("exif"))


DAMAGED = "replace it with an intact copy"
CASES = [
    Case("truncated JPEG", "trunc", _truncated_jpeg, "unreadable_file", "images/train/trunc.jpg", "image file is truncated", DAMAGED),
    Case("non-image file with an image extension", "notimg", _not_an_image, "not_an_image", "images/train/notimg.png",
         "not an image file", "replace it with the real image"),
    Case("empty file", "empty", _empty_file, "empty_file", "images/train/empty.png", "file is empty (0 bytes)",
         "replace it with the real file"),
    Case("image without mask", "nomask", _image_without_mask, "missing_pair", "images/train/nomask.png",
         "no mask", "add the mask"),
    Case("mask without image", "noimage", _mask_without_image, "missing_pair", "masks/val/noimage.png",
         "no image named 'noimage'", "add the image or remove the mask"),
    Case("image/mask size mismatch", "size", _size_mismatch, "size_mismatch", "masks/train/size.png",
         "mask is 24x15 (WxH) but its image", "the mask must have the image's size"),
    Case("label id out of range", "label", _label_out_of_range, "unknown_labels", "masks/train/label.png",
         "unknown label id(s) 7", "correct the mask"),
    Case("RGB mask where class ids are expected", "rgbmask", _rgb_mask, "mask_mode", "masks/train/rgbmask.png",
         "colour (RGB) mask where a class-id mask is expected", "save the mask as an 8-bit single-channel PNG"),
    Case("16-bit mask", "mask16", _mask_16_bit, "mask_depth", "masks/train/mask16.png", "label image is 16-bit",
         "save it as an 8-bit single-channel PNG"),
    Case("RGBA image with transparent pixels", "rgba", _transparent_rgba, "image_mode", "images/train/rgba.png",
         "5 of 384 pixels are (partly) transparent", "flatten it onto the background"),
    Case("16-bit grey image", "img16", _image_16_bit, "image_mode", "images/train/img16.png",
         "mode I;16 (16-bit grey), which has no exact RGB equivalent", "convert it to 8-bit RGB with the intensity scaling"),
    Case("CMYK image", "cmyk", _cmyk_image, "image_mode", "images/train/cmyk.jpg",
         "mode CMYK (CMYK), which has no exact RGB equivalent", "convert it to RGB with its colour profile"),
    Case("duplicate id", "t0", _duplicate_id, "duplicate_id", "images/val/t0.jpg", "same sample id 't0' as",
         "rename or remove one of them"),
    Case("symlink escaping the dataset root", "link", _symlink_out, "outside_root", "images/train/link.png",
         "outside the dataset folder", "copy the file into the dataset folder"),
    Case("decompression bomb", "bomb", lambda r: _bomb(r, "bomb", 8000, 8000), "too_large", "images/train/bomb.png",
         "declared image size 8000x8000 (WxH) = 64,000,000 pixels is above data.max_image_pixels", "downscale it"),
    Case("decompression bomb beyond PIL's own limit", "pilbomb", lambda r: _bomb(r, "pilbomb", 20000, 20000),
         "too_large", "images/train/pilbomb.png", "beyond PIL's own limit: Image size (400000000 pixels) exceeds",
         "downscale it"),
    Case("NaN / inf in a float image", "nan", lambda r: _float_image(r, "nan", _set_nan), "float_values",
         "images/train/nan.npy", "float image holds 1 NaN and 1 infinite value(s)", "replace NaN / inf values"),
    Case("float image outside [0, 1]", "range", lambda r: _float_image(r, "range", _scale_255), "float_values",
         "images/train/range.npy", "outside [0, 1]", "rescale"),
    Case("JPEG that viewers turn (EXIF orientation)", "exif", _exif_rotated, "exif_orientation", "images/train/exif.jpg",
         "EXIF orientation 3: viewers (and annotation tools) show these pixels rotated", "apply the rotation to the pixels"),
    Case("sample id that cannot be a file name", "bad name", lambda r: _pair(r, "train", "bad name"), "invalid_id",
         "images/train/bad name.png", "cannot be a file name", "rename the file"),
]  # fmt: skip


@pytest.fixture(scope="module")
def catalogue_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    project = tmp_path_factory.mktemp("catalogue")
    root = _good_source(project)
    for case in CASES:
        case.make(root)
    return _run(project, _params())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_bad_sample_is_rejected_by_validate(catalogue_run: Run, case: Case) -> None:
    line = catalogue_run.line(case.id)
    file = f"{RAW}/{case.file}"
    problem, _, fix = line.partition(" Fix: ")
    assert file in problem and case.problem in problem and case.fix in fix, line
    failure = catalogue_run.failure(case.id)
    assert "source_converts" in failure["failed_checks"]
    assert any(case.problem in p and file in p for p in failure["problems"])
    assert case.id in catalogue_run.expectation("source_converts")["unexpected_ids"]
    rows = catalogue_run.rejected()
    assert case.check in set(rows[rows["id"] == case.id]["check"])


def test_the_catalogue_run_keeps_only_the_good_samples(catalogue_run: Run) -> None:
    assert catalogue_run.error is not None and catalogue_run.error.exit_code == 3
    manifest = read_manifest(catalogue_run.root / PREPARED / "manifest.csv")
    assert sorted(manifest["id"]) == ["t0", "t1", "t2", "v0", "v1"]
    assert {f["id"] for f in catalogue_run.summary["failing_samples"]} == {c.id for c in CASES}
    assert catalogue_run.summary["num_rejected"] == len(CASES)  # t0's repetition is one of them
    # The repeated id fails the uniqueness check too, and nothing leaked from outside the dataset.
    assert catalogue_run.expectation("unique_ids")["unexpected_ids"] == ["t0"]
    assert not any("secret" in p.name for p in (catalogue_run.root / PREPARED / "images").iterdir())


# --------------------------------------------------------------------------------------------
# Per-sample cases of the prepared data (edited after prepare): validate's own checks
# --------------------------------------------------------------------------------------------


def _tamper(prepared: Path) -> None:
    """Plant, in a prepared dataset, the cases only the profile can see."""
    manifest = pd.read_csv(prepared / "manifest.csv", dtype=str, keep_default_na=False)
    outside = _save(prepared.parent / "elsewhere.png", _image("elsewhere"))
    rows = manifest.set_index("id")
    rows.loc["t1", "image"] = "../elsewhere.png"  # '..' out of the prepared folder
    rows.loc["t2", "mask"] = str(outside)  # absolute
    (prepared / "images/v0.png").unlink()
    (prepared / "images/v0.png").symlink_to(outside)  # a symlink out
    (prepared / "images/v1.png").write_bytes(_png_header(9000, 9000))  # a bomb
    _save(prepared / "masks/t0.png", _mask("t0").astype(np.uint16))  # 16-bit mask
    rows.reset_index().to_csv(prepared / "manifest.csv", index=False)


PREPARED_CASES = [
    ("'..' in a manifest path", "t1", "paths_inside", "image path '../elsewhere.png' in manifest.csv contains '..'"),
    ("absolute manifest path", "t2", "paths_inside", "in manifest.csv is absolute"),
    ("symlink out of the prepared folder", "v0", "paths_inside", "resolves (through a symlink) to"),
    ("decompression bomb among the prepared files", "v1", "image_pixel_limit", "declared image size 9000x9000"),
    ("16-bit prepared mask", "t0", "mask_single_channel", "mask masks/t0.png is mode 'I;16' (more than 8 bits"),
]


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    project = tmp_path_factory.mktemp("prepared")
    _good_source(project)
    return _run(project, _params(), _tamper)


@pytest.mark.parametrize(("name", "sample_id", "check", "words"), PREPARED_CASES, ids=[c[0] for c in PREPARED_CASES])
def test_each_bad_prepared_sample_is_rejected(prepared_run: Run, name: str, sample_id: str, check: str, words: str) -> None:
    line = prepared_run.line(sample_id)
    assert words in line and "Fix:" in line, line
    assert check in prepared_run.failure(sample_id)["failed_checks"]
    assert sample_id in prepared_run.expectation(check)["unexpected_ids"]


def test_the_dataset_refuses_paths_leaving_the_prepared_folder(prepared_run: Run) -> None:
    prepared = prepared_run.root / PREPARED
    with pytest.raises(DataError, match=r"sample 't1': image path '\.\./elsewhere\.png' contains '\.\.'.*Fix:"):
        SegmentationDataset(prepared, "train")
    val = SegmentationDataset(prepared, "val", exclude={"v0"})
    with pytest.raises(DataError, match=r"images/v1\.png: declared image size 9000x9000.*data\.max_image_pixels"):
        val.load_raw(0)


# --------------------------------------------------------------------------------------------
# Dataset-level cases: an empty split, a class missing from train
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    project = tmp_path_factory.mktemp("dataset")
    root = _good_source(project)
    for name in ("v0", "v1"):  # val: the folders are there, the samples are not
        (root / f"images/val/{name}.png").unlink()
        (root / f"masks/val/{name}.png").unlink()
    for name in ("t0", "t1", "t2"):  # 'car' (2) in no train mask
        _save(root / f"masks/train/{name}.png", _mask(name, (0, 1, 255)))
    return _run(project, _params())


def test_an_empty_split_is_rejected(dataset_run: Run) -> None:
    assert "split 'val' has 0 sample(s), at least 1 required" in dataset_run.message
    assert "Fix: add samples to it" in dataset_run.message
    assert dataset_run.expectation("split_sizes")["unexpected_ids"] == ["val"]


def test_a_class_missing_from_train_is_rejected(dataset_run: Run) -> None:
    assert "class 'car' (id 2) appears in no train mask" in dataset_run.message
    assert "Fix: add train samples that contain it" in dataset_run.message
    assert dataset_run.expectation("classes_in_train")["unexpected_ids"] == ["car"]


# --------------------------------------------------------------------------------------------
# Non-RGB images: converted exactly (and counted) or rejected, as configured; a good dataset passes
# --------------------------------------------------------------------------------------------


def _non_rgb_source(project: Path) -> Path:
    """The good source plus a grey JPEG, an opaque RGBA PNG, a float .npy and a float grey TIFF
    (both in [0, 1])."""
    root = _good_source(project)
    _save(root / "images/train/grey.jpg", _image("grey")[..., 0])
    _save(root / "masks/train/grey.png", _mask("grey"))
    _save(root / "images/train/opaque.png", np.dstack([_image("opaque"), np.full((HEIGHT, WIDTH), 255, np.uint8)]))
    _save(root / "masks/train/opaque.png", _mask("opaque"))
    np.save(root / "images/val/flt.npy", _image("flt").astype(np.float64) / 255)
    _save(root / "masks/val/flt.png", _mask("flt"))
    Image.fromarray(_image("ftif")[..., 1].astype(np.float32) / 255, "F").save(root / "images/val/ftif.tif")
    _save(root / "masks/val/ftif.png", _mask("ftif"))
    return root


def test_a_good_dataset_passes_with_exact_conversions_recorded(tmp_path: Path) -> None:
    root = _non_rgb_source(tmp_path)
    run = _run(tmp_path, _params())
    assert run.error is None and run.summary["success"] is True and run.summary["failing_samples"] == []
    prepared = tmp_path / PREPARED
    assert run.rejected().empty and list(run.rejected().columns) == ["id", "split", "files", "check", "problem", "fix"]
    assert run.summary["image_conversions"] == {"L": 2, "RGBA": 1}  # grey JPEG, float grey TIFF; RGBA
    record = json.loads((prepared / "dataset.json").read_text())
    assert record["image_conversions"] == {"L": 2, "RGBA": 1} and record["num_rejected"] == 0
    with Image.open(prepared / "images/grey.png") as grey, Image.open(root / "images/train/grey.jpg") as source:
        assert grey.mode == "RGB" and (np.asarray(grey) == np.asarray(source)[..., None]).all()
    np.testing.assert_array_equal(np.asarray(Image.open(prepared / "images/opaque.png")), _image("opaque"))
    np.testing.assert_array_equal(np.asarray(Image.open(prepared / "images/flt.png")), _image("flt"))  # x255, rounded
    np.testing.assert_array_equal(np.asarray(Image.open(prepared / "images/ftif.png"))[..., 2], _image("ftif")[..., 1])
    quarantine = pd.read_csv(tmp_path / QUARANTINE)
    assert quarantine.empty and list(quarantine.columns) == ["id", "split", "files", "problems"]


def test_non_rgb_images_are_rejected_when_configured(tmp_path: Path) -> None:
    _non_rgb_source(tmp_path)
    run = _run(tmp_path, _params(data={"non_rgb_images": "reject"}))
    for sample_id, file, mode in (
        ("grey", "images/train/grey.jpg", "mode L (8-bit grey)"),
        ("opaque", "images/train/opaque.png", "mode RGBA (RGB + alpha)"),
        ("ftif", "images/val/ftif.tif", "mode L (8-bit grey)"),  # decoded from float, still grey
    ):
        line = run.line(sample_id)
        assert f"{RAW}/{file}: image is {mode}, not RGB, and data.non_rgb_images is 'reject'" in line
        assert "Fix: convert it to 8-bit RGB, or set data.non_rgb_images: convert" in line
    assert {f["id"] for f in run.summary["failing_samples"]} == {"grey", "opaque", "ftif"}  # flt.npy is RGB data
    assert run.summary["image_conversions"] == {}


# --------------------------------------------------------------------------------------------
# Quarantine: bad samples set aside and recorded; dataset-level checks on what remains
# --------------------------------------------------------------------------------------------


def _mislabel(prepared: Path) -> None:
    """A failure only validate sees: a prepared val mask with label 9."""
    _save(prepared / "masks/v1.png", _mask("v1", (0, 1, 9)))


def test_quarantine_sets_bad_samples_aside_and_the_rest_is_used(tmp_path: Path) -> None:
    root = _good_source(tmp_path)
    _pair(root, "train", "t3")
    _label_out_of_range(root)  # rejected by prepare (train)
    _truncated_jpeg(root)  # rejected by prepare (train)
    _pair(root, "val", "v2")
    params = _params(validate={"quarantine": True})

    run = _run(tmp_path, params, _mislabel)

    assert run.error is None and run.summary["success"] is True
    bad = ["label", "trunc", "v1"]
    assert sorted(run.summary["quarantine"]["ids"]) == bad and run.summary["quarantine"]["count"] == 3
    assert sorted(f["id"] for f in run.summary["failing_samples"]) == bad  # the GE report lists them
    assert run.summary["counts_per_split_used"] == {"train": 4, "val": 2} and run.summary["num_samples_used"] == 6
    quarantine = pd.read_csv(tmp_path / QUARANTINE, dtype=str, keep_default_na=False).set_index("id")
    assert sorted(quarantine.index) == bad
    assert "unknown label id(s) 7" in quarantine.loc["label", "problems"] and "Fix:" in quarantine.loc["label", "problems"]
    assert quarantine.loc["label", "files"].startswith(f"{RAW}/images/train/label.png")
    assert quarantine.loc["v1", "files"] == f"{PREPARED}/images/v1.png | {PREPARED}/masks/v1.png"
    assert "holds label value(s) 9" in quarantine.loc["v1", "problems"]
    # The data version still names the prepared data; the version of what is used adds the list.
    version = run.summary["data_version"]
    assert run.summary["training_data_version"] == effective_version(version, bad) != version

    excluded = excluded_ids(Layout(tmp_path, params.paths).quarantine, params.validate_.quarantine)
    assert excluded == frozenset(bad)
    val = SegmentationDataset(tmp_path / PREPARED, "val", exclude=excluded)
    assert val.ids == ["v0", "v2"] and val.excluded == 1 and all(set(val[i][1].unique().tolist()) <= {0, 1, 2, 255} for i in range(len(val)))
    layout = Layout(tmp_path, params.paths)
    assert split_dataset(params, layout.prepared, layout.quarantine, params.model).ids == ["v0", "v2"]  # what evaluate and register score
    assert excluded_ids(Layout(tmp_path, _params().paths).quarantine, _params().validate_.quarantine) == frozenset()  # quarantine off: nothing is skipped
    with pytest.raises(DataError, match=r"split 'val' has no samples \(3 quarantined sample\(s\) left out\)"):
        SegmentationDataset(tmp_path / PREPARED, "val", exclude={"v0", "v1", "v2"})


def test_quarantine_still_fails_on_what_remains(tmp_path: Path) -> None:
    root = _good_source(tmp_path)
    for name in ("v0", "v1"):
        _save(root / f"masks/val/{name}.png", _mask(name, height=HEIGHT + 1))  # every val sample is bad
    for name in ("t1", "t2"):
        _save(root / f"masks/train/{name}.png", _mask(name, (0, 1, 255)))
    _save(root / "masks/train/t0.png", _mask("t0", (0, 1, 2, 255)), "RGB")  # the only train mask with 'car' is bad

    run = _run(tmp_path, _params(validate={"quarantine": True}))

    assert run.summary["success"] is False and sorted(run.summary["quarantine"]["ids"]) == ["t0", "v0", "v1"]
    assert "split 'val' has 0 sample(s), at least 1 required" in run.message
    assert "class 'car' (id 2) appears in no train mask" in run.message
    assert "3 sample(s) quarantined" in run.message and "Failing samples:" not in run.message
    assert len(pd.read_csv(tmp_path / QUARANTINE)) == 3


# --------------------------------------------------------------------------------------------
# Guards outside the gate
# --------------------------------------------------------------------------------------------


def test_max_image_pixels_is_configurable(tmp_path: Path) -> None:
    root = _good_source(tmp_path)
    _save(root / "images/train/big.png", _image("big", HEIGHT, WIDTH + 1))
    _save(root / "masks/train/big.png", np.zeros((HEIGHT, WIDTH + 1), np.uint8))
    run = _run(tmp_path, _params(data={"max_image_pixels": HEIGHT * WIDTH}))
    assert run.summary["num_rejected"] == 1
    assert "declared image size 25x16 (WxH) = 400 pixels is above data.max_image_pixels (384)" in run.line("big")


def test_links_that_stay_inside_are_fine(tmp_path: Path) -> None:
    """The dataset folder itself may be a link (data/raw/mine -> elsewhere), and its files may
    link into the project's DVC cache (DVC's ``cache.type: symlink``)."""
    real = _good_source(tmp_path / "store")
    (tmp_path / "data/raw").mkdir(parents=True)
    os.symlink(real, tmp_path / RAW)
    cached = _save(tmp_path / ".dvc/cache/files/md5/ab/cdef", _image("t1"), format="PNG")
    (real / "images/train/t1.png").unlink()
    (real / "images/train/t1.png").symlink_to(cached)
    result = prepare(_params(), tmp_path)
    assert result["rejected"] == 0 and result["num_samples"] == 5


def test_a_mask_with_no_labelled_pixel_is_named_as_a_warning_or_rejected(tmp_path: Path) -> None:
    """An all-ignore mask trains nothing: a warning naming it (default), or a failure naming its
    file with validate.empty_masks: reject. A mask holding one class pixel is not empty."""
    root = _good_source(tmp_path)
    _pair(root, "train", "void", values=(255,))
    _pair(root, "train", "onepixel", values=(255, 1))
    run = _run(tmp_path, _params())
    assert run.error is None and run.summary["success"] is True
    [warning] = [w for w in run.summary["warnings"] if "no labelled pixel" in w]
    assert warning.startswith("1 sample(s) have a mask with no labelled pixel") and ": void. Fix: annotate" in warning
    assert run.expectation("mask_labelled")["unexpected_ids"] == ["void"]

    rejected = _run(tmp_path, _params(validate={"empty_masks": "reject"}))
    line = rejected.line("void")
    assert "mask masks/void.png has no labelled pixel (every pixel is the ignore index 255)" in line, line
    assert "Fix: annotate it or remove the sample" in line
    assert rejected.failure("void")["failed_checks"] == ["mask_labelled"]
    assert [f["id"] for f in rejected.summary["failing_samples"]] == ["void"]


def test_an_image_copied_into_another_split_is_named_with_its_twin(tmp_path: Path) -> None:
    """Train/val leakage: a train image copied into val under another name (its mask redrawn).
    Both copies fail, each naming the other; byte-identical images within one split are fine."""
    root = _good_source(tmp_path)
    (root / "images/val/copy.png").write_bytes((root / "images/train/t1.png").read_bytes())
    _save(root / "masks/val/copy.png", _mask("copy"))
    (root / "images/train/again.png").write_bytes((root / "images/train/t2.png").read_bytes())
    _save(root / "masks/train/again.png", _mask("again"))
    run = _run(tmp_path, _params())
    assert "image images/copy.png is byte-identical to the image of t1 in another split" in run.line("copy")
    assert "image images/t1.png is byte-identical to the image of copy in another split" in run.line("t1")
    assert "Fix: remove one of the copies" in run.line("copy")
    assert run.expectation("image_unique_across_splits")["unexpected_ids"] == ["t1", "copy"]
    assert {f["id"] for f in run.summary["failing_samples"]} == {"t1", "copy"}


def test_a_new_version_that_lost_samples_is_named_as_a_warning(tmp_path: Path) -> None:
    """A partial copy (a sync cut short) looks like new data: the split that shrank by more than
    validate.max_split_shrink since the last validated version is named, with both counts."""
    root = _good_source(tmp_path)
    for name in ("t3", "t4", "t5"):
        _pair(root, "train", name)
    first = _run(tmp_path, _params())
    assert first.error is None and not [w for w in first.summary["warnings"] if "fewer than" in w]
    for name in ("t3", "t4", "t5"):
        (root / f"images/train/{name}.png").unlink()
        (root / f"masks/train/{name}.png").unlink()
    second = _run(tmp_path, _params())
    assert second.error is None
    [warning] = [w for w in second.summary["warnings"] if "fewer than" in w]
    assert warning.startswith("split 'train' has 3 sample(s), 50% fewer than the 6 of data version ")
    assert "Fix: check that the source is complete" in warning
