"""The ``folder`` source: users' own data (images/<split>, masks/<split>, one class file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pspnet.config import parse_params
from pspnet.data.classes import ClassTable
from tests.data.sources.convert import write_prepared
from pspnet.data.sources.base import (
    Expectations,
    SourceData,
    SourceFolders,
    palette_colors,
)
from pspnet.data.sources.folder import folder_source
from pspnet.errors import DataError

HEIGHT, WIDTH = 12, 16
#: Three classes, two with colours: the classes.txt of most tests.
CLASSES_TXT = "# label:color_rgb:parts:actions\nbackground:0,0,0::\n\nroad\ntraffic light: 250, 170, 30\n"
COLORS = ((10, 20, 30), (40, 50, 60), (70, 80, 90))
VOID = (255, 255, 255)


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def _image(name: str) -> np.ndarray:
    return _rng(name).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _ids(name: str, values: tuple[int, ...] = (0, 1, 2, 255)) -> np.ndarray:
    """A mask using every one of ``values``, the rest random among them."""
    mask = _rng(name).choice(np.array(values), (HEIGHT, WIDTH))
    mask.flat[: len(values)] = values
    return mask


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode == "P":
        image.putpalette([v for color in palette_colors(256) for v in color])
    elif mode:
        image = image.convert(mode)
    if mode:
        assert image.mode == mode
    image.save(path)
    return path


def _sample(root: Path, split: str, name: str, mask: np.ndarray, suffix: str = ".png", sub: str = "") -> None:
    _save(root / "images" / split / sub / f"{name}{suffix}", _image(name))
    _save(root / "masks" / split / sub / f"{name}.png", mask)


def _dataset(root: Path, class_file: str = "classes.txt", text: str = CLASSES_TXT) -> Path:
    """train: a, b (in a sub-folder); val: c; id masks of 0..2 and 255."""
    root.mkdir(parents=True, exist_ok=True)
    (root / class_file).write_text(text, encoding="utf-8")
    _sample(root, "train", "a", _ids("a").astype(np.uint8))
    _sample(root, "train", "b", _ids("b").astype(np.uint8), sub="site1")
    _sample(root, "val", "c", _ids("c").astype(np.uint8))
    return root


def _source(root: Path, **data: object) -> SourceData:
    params = parse_params({"data": {"source": {"name": "folder", "location": str(root)}, **data}})
    return folder_source(params, SourceFolders(root))


def _prepare(tmp_path: Path, root: Path, **data: object) -> tuple[SourceData, pd.DataFrame]:
    source = _source(root, **data)
    return source, write_prepared(tmp_path / "out", source, "folder", num_workers=2, max_failures=20)


def _written(tmp_path: Path, manifest: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    return {row.id: np.asarray(Image.open(tmp_path / "out" / getattr(row, column))) for row in manifest.itertuples()}


def _prepare_error(tmp_path: Path, root: Path) -> str:
    with pytest.raises(DataError) as err:
        _prepare(tmp_path, root)
    return str(err.value)


# --------------------------------------------------------------------------------------------
# Id masks, splits, images
# --------------------------------------------------------------------------------------------


def test_id_masks_images_and_splits(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    _sample(root, "test", "d.1", _ids("d.1").astype(np.uint8), suffix=".jpg")  # any other folder is a split
    _sample(root, "test", "e", _ids("e").astype(np.uint8), suffix=".bmp")
    _save(root / "images/val/p.png", _image("p"))
    _save(root / "masks/val/p.png", _ids("p", (0, 2, 255)).astype(np.uint8), "P")  # palette: index = id
    for junk in ("images/train/._a.png", "masks/train/._a.png", "images/val/.ipynb_checkpoints/c-checkpoint.png"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"hidden files are skipped")

    source, manifest = _prepare(tmp_path, root)

    assert list(zip(manifest["id"], manifest["split"])) == [
        ("a", "train"), ("b", "train"), ("c", "val"), ("p", "val"), ("d.1", "test"), ("e", "test"),
    ]  # fmt: skip
    assert source.total == 6 and source.expect == Expectations() and source.inputs == (root,)
    assert source.classes == ClassTable(
        ("background", "road", "traffic light"), ((0, 0, 0), palette_colors(3)[1], (250, 170, 30)), 255
    )
    masks = _written(tmp_path, manifest, "mask")
    for name in ("a", "b", "c", "d.1", "e"):
        np.testing.assert_array_equal(masks[name], _ids(name))
    np.testing.assert_array_equal(masks["p"], _ids("p", (0, 2, 255)))
    images = _written(tmp_path, manifest, "image")
    for name in ("a", "b", "c", "e", "p"):  # PNG copied, BMP converted to PNG: pixels unchanged
        np.testing.assert_array_equal(images[name], _image(name))
    assert manifest.set_index("id").loc["e", "image"] == "images/e.png"
    assert (tmp_path / "out/images/d.1.jpg").read_bytes() == (root / "images/test/d.1.jpg").read_bytes()


def test_extra_ignore_ids(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root).mkdir()
    (root / "classes.yaml").write_text("classes: [sky, sea, sand]\nignore: [254, 7]\n")
    for split, name in (("train", "a"), ("val", "b")):
        _sample(root, split, name, _ids(name, (0, 1, 2, 7, 255, 254)).astype(np.uint8))

    _, manifest = _prepare(tmp_path, root)

    for name, mask in _written(tmp_path, manifest, "mask").items():
        raw = _ids(name, (0, 1, 2, 7, 255, 254))
        np.testing.assert_array_equal(mask, np.where(raw > 2, 255, raw))


def test_16_bit_masks_are_refused(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    _save(root / "masks/val/c.png", _ids("c").astype(np.uint16))
    with Image.open(root / "masks/val/c.png") as mask:
        assert mask.mode == "I;16"

    message = _prepare_error(tmp_path, root)

    assert (
        f"  - {root / 'masks/val/c.png'}: label image is 16-bit (mode I;16); class-id masks must be 8-bit. "
        "Fix: save it as an 8-bit single-channel PNG (mode L) of class ids." in message
    )


def test_another_ignore_index(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    for split, name in (("train", "a"), ("train", "b"), ("val", "c")):
        sub = "site1" if name == "b" else ""
        _save(root / "masks" / split / sub / f"{name}.png", _ids(name, (0, 1, 2, 3)).astype(np.uint8))

    source, manifest = _prepare(tmp_path, root, ignore_index=3)

    assert source.classes.ignore_index == 3
    np.testing.assert_array_equal(_written(tmp_path, manifest, "mask")["a"], _ids("a", (0, 1, 2, 3)))


# --------------------------------------------------------------------------------------------
# Colour masks
# --------------------------------------------------------------------------------------------


def _color_mask(name: str, colors: tuple[tuple[int, int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """An RGB mask drawing ids 0..len(colors)-1 in ``colors``; (mask, ids)."""
    ids = _ids(name, tuple(range(len(colors))))
    return np.array(colors, dtype=np.uint8)[ids], ids


def test_color_masks(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    classes = {"classes": [{"name": f"c{i}", "color": list(c)} for i, c in enumerate(COLORS)], "ignore": [list(VOID)]}
    (root / "classes.json").write_text(json.dumps(classes))
    rgb_a, ids_a = _color_mask("a", (*COLORS, VOID))
    rgb_b, ids_b = _color_mask("b", COLORS)
    _save(root / "images/train/a.png", _image("a"))
    _save(root / "masks/train/a.png", rgb_a)
    _save(root / "images/val/b.png", _image("b"))
    _save(root / "masks/val/b.png", rgb_b, "RGBA")  # alpha is not used

    source, manifest = _prepare(tmp_path, root)

    assert source.classes.names == ("c0", "c1", "c2") and source.classes.colors == COLORS
    masks = _written(tmp_path, manifest, "mask")
    np.testing.assert_array_equal(masks["a"], np.where(ids_a == 3, 255, ids_a))
    np.testing.assert_array_equal(masks["b"], ids_b)


def test_unknown_colors_are_listed_by_pixel_count(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "classes.csv").write_text(
        "id,name,r,g,b\n" + "".join(f"{i},c{i},{r},{g},{b}\n" for i, (r, g, b) in enumerate(COLORS))
    )
    mask, _ = _color_mask("a", COLORS)
    mask[0, :] = (1, 2, 3)  # 16 px
    mask[1, :3] = (9, 9, 9)  # 3 px
    for split, name in (("train", "a"), ("val", "b")):
        _save(root / f"images/{split}/{name}.png", _image(name))
        _save(root / f"masks/{split}/{name}.png", mask)
    many = mask.copy()
    many[2, :12] = [(200, i, 0) for i in range(12)]  # 14 unknown colours in all
    _save(root / "masks/val/b.png", many)

    message = _prepare_error(tmp_path, root)

    mask_a, mask_b = root / "masks/train/a.png", root / "masks/val/b.png"
    assert (
        f"  - {mask_a}: unknown mask colour(s) (1, 2, 3) x16 px, (9, 9, 9) x3 px; the known colours are those in {root / 'classes.csv'}"
        in message
    )
    assert "single-channel" not in message.splitlines()[1]
    line_b = next(line for line in message.splitlines() if line.startswith(f"  - {mask_b}:"))
    assert line_b.count(" px") == 10 and "and 4 more" in line_b


def test_grey_rgb_masks_get_a_hint(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    _save(root / "masks/train/a.png", _ids("a").astype(np.uint8), "RGB")  # ids saved as RGB
    (root / "classes.txt").write_text("x:1,1,1\ny:2,2,2\nz:3,3,3\n")

    message = _prepare_error(tmp_path, root)

    assert f"{root / 'masks/train/a.png'}: unknown mask colour(s) (" in message and "(255, 255, 255) x" in message
    assert "save it as a single-channel PNG" in message


def test_color_masks_need_a_color_for_every_class(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")  # 'road' has no colour in CLASSES_TXT
    _save(root / "masks/val/c.png", _color_mask("c", COLORS)[0])

    message = _prepare_error(tmp_path, root)

    assert (
        f"  - {root / 'masks/val/c.png'}: colour (RGB) mask where a class-id mask is expected: class(es) 'road' of "
        f"{root / 'classes.txt'} have no colour. Fix: save the mask as an 8-bit single-channel PNG of class ids" in message
    )


# --------------------------------------------------------------------------------------------
# Class file formats
# --------------------------------------------------------------------------------------------

NAMES = ("background", "road", "traffic light")
PALETTE = palette_colors(3)


@pytest.mark.parametrize(
    ("file", "text", "colors"),
    [
        ("classes.txt", "background\nroad\ntraffic light\n", PALETTE),
        ("classes.txt", CLASSES_TXT, ((0, 0, 0), PALETTE[1], (250, 170, 30))),
        ("classes.csv", "id,name\n1,road\n0,background\n2,traffic light\n", PALETTE),
        ("classes.csv", "\ufeffID, Name, R, G, B\n0,background,1,2,3\n2,traffic light,7,8,9\n1,road,4,5,6\n", ((1, 2, 3), (4, 5, 6), (7, 8, 9))),
        ("classes.json", json.dumps(NAMES), PALETTE),
        ("classes.json", json.dumps([{"name": "background", "color": [1, 2, 3]}, "road", {"name": "traffic light"}]), ((1, 2, 3), PALETTE[1], PALETTE[2])),
        ("classes.yaml", "- background\n- road\n- traffic light\n", PALETTE),
        ("classes.yml", "classes:\n  - {name: background, color: [1, 2, 3]}\n  - {name: road, color: [4, 5, 6]}\n  - {name: traffic light, color: [7, 8, 9]}\nignore: [254]\n", ((1, 2, 3), (4, 5, 6), (7, 8, 9))),
    ],
)  # fmt: skip
def test_class_file_formats(tmp_path: Path, file: str, text: str, colors: tuple[tuple[int, int, int], ...]) -> None:
    source = _source(_dataset(tmp_path / "data", file, text))
    assert source.classes == ClassTable(NAMES, colors, 255)


@pytest.mark.parametrize(
    ("file", "text", "where", "problem"),
    [
        ("classes.txt", "a\nb\n\na\n", "", "class name 'a' twice (classes 0 and 2)"),
        ("classes.yaml", "[a, b, a]", "", "class name 'a' twice (classes 0 and 2)"),
        ("classes.txt", "a:1,2,3\nb:1,2,3\n", "", "classes 'a' and 'b' have the same colour (1, 2, 3)"),
        ("classes.txt", "a\nb:1,2\n", ":2", "colour [1, 2] is not three integers 0..255"),
        ("classes.txt", "a\nb:1,x,3\n", ":2", "colour value 'x' is not an integer"),
        ("classes.txt", "a:1,2,300\n", ":1", "colour [1, 2, 300] is not three integers"),
        ("classes.txt", "# nothing\n", "", "no classes"),
        ("classes.csv", "id,label\n0,a\n", ":1", "header ['id', 'label'] is not id,name nor id,name,r,g,b"),
        ("classes.csv", "id,name\n0,a\n0,b\n", ":3", "id 0 again (first on line 2)"),
        ("classes.csv", "id,name\n0,a\n2,b\n", "", "class ids must be 0..1 without gaps; 1 is missing"),
        ("classes.csv", "id,name,r,g,b\n0,a,1,2\n", ":2", "4 fields, the header has 5"),
        ("classes.json", '["a", "b",]', "", "cannot parse it (Expecting value: line 1 column 11"),
        ("classes.yaml", "classes: [a, b\n", "", "cannot parse it ("),
        ("classes.yaml", "[a, no, c]", ": classes[1]", "class name False is not a non-empty text"),
        ("classes.yaml", "classes: [a]\nignored: [3]\n", "", "keys ['classes', 'ignored'], expected 'classes' and optionally 'ignore'"),
        ("classes.json", '[{"name": "a", "colour": [1, 2, 3]}]', ": classes[0]", "keys ['colour', 'name'], expected 'name' and optionally 'color'"),
        ("classes.yaml", "classes: [a, b]\nignore: [1]\n", "", "ignore id 1 is class 'b'"),
        ("classes.yaml", "classes: [a, b]\nignore: [300]\n", ": ignore[0]", "ignore id 300 is outside 0..255"),
        ("classes.yaml", "classes: [{name: a, color: [0, 0, 0]}]\nignore: [[0, 0, 0]]\n", "", "ignore colour (0, 0, 0) is the colour of class 'a'"),
        ("classes.yaml", "name: a\n", "", "keys ['name'], expected 'classes'"),
    ],
)  # fmt: skip
def test_malformed_class_files_name_the_file_and_entry(
    tmp_path: Path, file: str, text: str, where: str, problem: str
) -> None:
    root = _dataset(tmp_path / "data", file, text)
    with pytest.raises(DataError) as err:
        _source(root)
    assert str(err.value).startswith(f"{root / file}{where}: {problem}")
    assert "Fix: " in str(err.value)


def test_class_file_must_be_exactly_one(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    (root / "classes.json").write_text('["a"]')
    with pytest.raises(DataError, match=r"2 class files \(classes.json, classes.txt\)") as err:
        _source(root)
    assert str(err.value).startswith(f"{root}: ")

    (root / "classes.json").unlink()
    (root / "classes.txt").unlink()
    with pytest.raises(
        DataError, match="no class file; data.source.name 'folder' needs exactly one of classes.yaml"
    ) as err:
        _source(root)
    assert str(err.value).startswith(f"{root}: ")


def test_too_many_classes_for_the_ignore_index(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    with pytest.raises(DataError, match="3 classes, but data.ignore_index is 2") as err:
        _source(root, ignore_index=2)
    assert str(err.value).startswith(str(root / "classes.txt"))


# --------------------------------------------------------------------------------------------
# Layout and sample failures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["masks", "masks/val", "images/val"])
def test_missing_folder(tmp_path: Path, folder: str) -> None:
    root = _dataset(tmp_path / "data")
    for path in sorted((root / folder).rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / folder).rmdir()
    with pytest.raises(DataError, match="folder not found; data.source.name 'folder' expects this layout") as err:
        _source(root)
    assert str(err.value).startswith(f"{root / folder}: ")


def test_layout_mistakes(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    (root / "masks/test").mkdir()
    with pytest.raises(DataError, match=f"{root / 'masks/test'}: mask split folder without {root / 'images/test'}"):
        _source(root)
    (root / "images/test").mkdir()
    assert [r.split for r in _source(root).samples] == ["train", "train", "val"]  # an empty split: validate judges it
    _save(root / "images/stray.jpg", _image("s"))
    with pytest.raises(DataError, match=f"{root / 'images/stray.jpg'}: file outside a split folder"):
        _source(root)


def test_unpaired_files_are_all_reported(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    (root / "masks/train/site1/b.png").unlink()
    _save(root / "masks/val/orphan.png", _ids("o").astype(np.uint8))

    message = _prepare_error(tmp_path, root)

    assert "has 2 problem(s)" in message
    assert (
        f"  - {root / 'images/train/site1/b.png'}: no mask {root / 'masks/train/site1/b.png'}. Fix: add the mask"
        in message
    )
    assert f"  - {root / 'masks/val/orphan.png'}: no image named 'orphan' in {root / 'images/val'}. Fix:" in message


def test_unknown_id_and_wrong_size(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    _save(root / "masks/train/a.png", _ids("a", (0, 1, 2, 3, 9)).astype(np.uint8))
    _save(root / "masks/val/c.png", np.zeros((HEIGHT + 1, WIDTH), dtype=np.uint8))

    message = _prepare_error(tmp_path, root)

    assert (
        f"  - {root / 'masks/train/a.png'}: unknown label id(s) 3, 9; this dataset's ids are 0..2 (classes of classes.txt), ignored: 255."
        in message
    )
    assert (
        f"  - {root / 'masks/val/c.png'}: mask is 16x13 (WxH) but its image {root / 'images/val/c.png'} is 16x12"
        in message
    )


def test_names_must_be_unique_across_splits(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    _sample(root, "val", "a", _ids("a").astype(np.uint8), suffix=".jpg")
    message = _prepare_error(tmp_path, root)
    assert (
        f"  - {root / 'images/val/a.jpg'}: same sample id 'a' as {root / 'images/train/a.png'}, "
        f"{root / 'masks/train/a.png'}. Fix: rename or remove one of them" in message
    )


def test_same_name_twice_in_a_split(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    _save(root / "images/train/site1/a.jpg", _image("a"))
    message = _prepare_error(tmp_path, root)
    assert f"  - {root / 'images/train/site1/a.jpg'}: same sample id 'a' as {root / 'images/train/a.png'}" in message
