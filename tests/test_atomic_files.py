"""Atomic writes: a reader never sees a half-written file; a failure keeps the old content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pspnet import atomic_files


def test_write_json_creates_parents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    atomic_files.write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_write_keeps_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_atomic_path_keeps_the_suffix_for_format_sniffing_libraries(tmp_path: Path) -> None:
    with atomic_files.atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png"
        tmp.write_bytes(b"x")


def test_atomic_dir_replaces_whole_tree_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic_files.atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise ValueError("failed half-way")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with atomic_files.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
