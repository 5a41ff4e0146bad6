"""Finding and reading the images of ``pspnet predict``: folders, globs, duplicates, output
names that never collide, every PIL image mode read as RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.errors import ConfigError
from pspnet.predict.inputs import find_images, load_rgb, output_names


def test_inputs_folders_globs_and_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rel in ("a/x.png", "a/x.JPG", "a/sub/y.jpeg", "a/.secret/z.png", "b/x.png", "b/X.tif", "c/notes.txt",
                "a/x_overlay.png", "a/out/old.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    top = sorted(str(tmp_path / p) for p in ("a/x.JPG", "a/x.png", "a/x_overlay.png"))
    assert [str(p) for p in find_images(["a"])] == top  # no subfolders, hidden skipped, any case
    everything = find_images(["a", "a/x.png", "*/x.png", "a/*", "b", "c"], recursive=True, out_dir=Path("a/out"))
    rels = [p.relative_to(tmp_path).as_posix() for p in everything]
    assert rels == ["a/sub/y.jpeg", "a/x.JPG", "a/x.png", "a/x_overlay.png", "b/X.tif", "b/x.png"]
    assert find_images(["c/notes.txt"]) == [tmp_path / "c/notes.txt"]  # named explicitly: taken as given
    # The output folder is skipped only by inputs searching from outside it.
    assert tmp_path / "a/out/old.png" in find_images(["a"], recursive=True, out_dir=Path("a"))
    assert tmp_path / "a/sub/y.jpeg" in find_images(["a/*"], recursive=True, out_dir=Path("."))
    assert [p.name for p in find_images(["a/**/*.jpeg"])] == ["y.jpeg"]

    names = output_names(everything)
    # Four stems "x" (case ignored): folders alone leave a/x.JPG and a/x.png alike, so the suffix joins.
    assert names == ["y", "a__x_JPG", "a__x_png", "x_overlay", "b__X_tif", "b__x_png"]
    files = [f.casefold() for n in names for f in (f"{n}.png", f"{n}_overlay.png")]
    assert len(set(files)) == len(files), "no two written files may collide, case ignored"
    assert output_names([Path("/d/day/f.png"), Path("/d/night/f.png")]) == ["day__f", "night__f"]
    assert output_names([Path("/p/a/k/f.png"), Path("/p/b/k/f.png")]) == ["a__k__f", "b__k__f"]
    assert output_names([Path("/d/f.png"), Path("/d/f.jpg")]) == ["f_png", "f_jpg"]
    assert output_names([Path("/d/f.png"), Path("/d/f_overlay.png")]) == ["f", "f_overlay-2"]

    with pytest.raises(ConfigError, match="missing.png: no such file or folder"):
        find_images(["a", "missing.png"])
    with pytest.raises(ConfigError, match=r"no images found in 'c', 'nothing\*\.png'.*--recursive"):
        find_images(["c", "nothing*.png"])


def test_image_modes_become_rgb(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    rgba = np.dstack([np.full((3, 4, 3), 7, np.uint8), np.zeros((3, 4), np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    palette = Image.new("P", (4, 3))
    palette.putpalette([10, 20, 30, 40, 50, 60])
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "grey.png"), np.dstack([grey] * 3))
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgba.png"), np.full((3, 4, 3), 7))
    assert load_rgb(tmp_path / "palette.png").shape == (3, 4, 3)
    Image.fromarray(np.array([[0, 257, 65535]], dtype=np.uint16)).save(tmp_path / "grey16.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "grey16.png")[..., 0], [[0, 1, 255]])
