"""The class file of a ``folder`` dataset: ``classes.txt``, ``.csv``, ``.json`` or ``.yaml`` (``.yml``).

Class id = position in the file, from 0; colours (R, G, B) are optional for id masks and required
for colour masks; only the mapping form of JSON / YAML may declare extra ``ignore`` ids and colours.
The formats: docs/datasets.md, "The folder source".
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pspnet.errors import DataError

CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json", "classes.csv", "classes.txt")
#: The largest id an (8-bit) mask can store; extra ignore ids beyond it are refused.
MAX_MASK_ID = 255
CHANNEL_MAX = 255
TXT_COMMENT = "#"
TXT_FIELD_SEP = ":"
COLOR_SEP = ","
CSV_COLUMNS = ("id", "name")
CSV_COLOR_COLUMNS = ("r", "g", "b")
MAPPING_KEYS = ("classes", "ignore")
ENTRY_KEYS = ("name", "color")

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassSpec:
    """What the class file declares: names, colours (``None``: not given), extra ignore values."""

    file: Path
    names: tuple[str, ...]
    colors: tuple[RGB | None, ...]
    ignore_ids: tuple[int, ...] = ()
    ignore_colors: tuple[RGB, ...] = ()


def input_error(where: str, problem: str, fix: str) -> DataError:
    """The error of a dataset file: ``"<where>: <problem>. Fix: <fix>."``."""
    return DataError(f"{where}: {problem}. Fix: {fix}.")


def _color(value: Any, where: str) -> RGB:
    """``[r, g, b]`` (three integers 0..255) as a tuple, else an error at ``where``."""
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == len(CSV_COLOR_COLUMNS)
    if ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= CHANNEL_MAX for v in value):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise input_error(
        where, f"colour {value!r} is not three integers 0..{CHANNEL_MAX}", "write it as R, G, B, e.g. 128, 64, 128"
    )


def _int(text: str, where: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise input_error(where, f"{what} {text!r} is not an integer", f"write the {what} as a whole number") from None


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise input_error(
            where, f"class name {value!r} is not a non-empty text", "write the name (quote it in YAML: 'no', '1')"
        )
    return value.strip()


def _read_txt(path: Path) -> ClassSpec:
    names: list[str] = []
    colors: list[RGB | None] = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith(TXT_COMMENT):
            continue
        fields = line.split(TXT_FIELD_SEP)
        where = f"{path}:{number}"
        names.append(_name(fields[0], where))
        channels = fields[1].strip() if len(fields) > 1 else ""
        colors.append(
            _color([_int(c, where, "colour value") for c in channels.split(COLOR_SEP)], where) if channels else None
        )
    return ClassSpec(path, tuple(names), tuple(colors))


def _read_csv(path: Path) -> ClassSpec:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = [h.strip().lower() for h in next(reader, [])]
        with_colors = header == [*CSV_COLUMNS, *CSV_COLOR_COLUMNS]
        if header != list(CSV_COLUMNS) and not with_colors:
            raise input_error(
                f"{path}:1",
                f"header {header} is not {','.join(CSV_COLUMNS)} nor {','.join(CSV_COLUMNS + CSV_COLOR_COLUMNS)}",
                "make the first line exactly one of those two",
            )
        by_id: dict[int, tuple[str, RGB | None, int]] = {}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise input_error(where, f"{len(row)} fields, the header has {len(header)}", f"write {','.join(header)}")
            class_id = _int(row[0], where, "id")
            if class_id in by_id:
                raise input_error(
                    where, f"id {class_id} again (first on line {by_id[class_id][2]})", "give each class its own id"
                )
            color = _color([_int(c, where, "colour value") for c in row[2:]], where) if with_colors else None
            by_id[class_id] = (_name(row[1], where), color, reader.line_num)
    missing = sorted(set(range(len(by_id))) - set(by_id))
    if missing:
        raise input_error(
            str(path),
            f"class ids must be 0..{len(by_id) - 1} without gaps; {missing[0]} is missing",
            "number the classes from 0",
        )
    rows = [by_id[i] for i in range(len(by_id))]
    return ClassSpec(path, tuple(r[0] for r in rows), tuple(r[1] for r in rows))


def _read_structured(path: Path) -> ClassSpec:
    """``classes.json`` / ``classes.yaml``: a list of entries, or ``{classes: [...], ignore: [...]}``."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise input_error(str(path), f"cannot parse it ({' '.join(str(err).split())})", "correct the syntax") from None
    ignore: Any = []
    if isinstance(raw, dict):
        unknown = sorted(str(k) for k in set(raw) - set(MAPPING_KEYS))
        if unknown or "classes" not in raw:
            raise input_error(
                str(path), f"keys {sorted(map(str, raw))}, expected 'classes' and optionally 'ignore'", "use those keys"
            )
        raw, ignore = raw["classes"], raw.get("ignore") or []
    if not isinstance(raw, list) or not isinstance(ignore, list):
        raise input_error(
            str(path),
            "expected a list of classes (or a mapping with 'classes': [...], 'ignore': [...])",
            "see the folder layout doc",
        )
    names: list[str] = []
    colors: list[RGB | None] = []
    for index, entry in enumerate(raw):
        where = f"{path}: classes[{index}]"
        if isinstance(entry, dict):
            unknown = sorted(str(k) for k in set(entry) - set(ENTRY_KEYS))
            if unknown or "name" not in entry:
                raise input_error(
                    where, f"keys {sorted(map(str, entry))}, expected 'name' and optionally 'color'", "use those keys"
                )
            names.append(_name(entry["name"], where))
            colors.append(_color(entry["color"], where) if entry.get("color") is not None else None)
        else:
            names.append(_name(entry, where))
            colors.append(None)
    ignore_ids: list[int] = []
    ignore_colors: list[RGB] = []
    for index, value in enumerate(ignore):
        where = f"{path}: ignore[{index}]"
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= MAX_MASK_ID:
                raise input_error(where, f"ignore id {value} is outside 0..{MAX_MASK_ID}", "list mask ids your masks can hold")
            ignore_ids.append(value)
        else:
            ignore_colors.append(_color(value, where))
    return ClassSpec(path, tuple(names), tuple(colors), tuple(ignore_ids), tuple(ignore_colors))


READERS = {
    ".txt": _read_txt,
    ".csv": _read_csv,
    ".json": _read_structured,
    ".yaml": _read_structured,
    ".yml": _read_structured,
}


def _check_spec(spec: ClassSpec, ignore_index: int) -> None:
    """Names unique, given colours unique, ignore values not classes, K below ``ignore_index``."""
    path = spec.file
    if not spec.names:
        raise input_error(str(path), "no classes", "list the class names, one per class (id = position from 0)")
    first: dict[str, int] = {}
    for class_id, name in enumerate(spec.names):
        if name in first:
            raise input_error(
                str(path), f"class name {name!r} twice (classes {first[name]} and {class_id})", "make the names unique"
            )
        first[name] = class_id
    owner: dict[RGB, int] = {}
    for class_id, color in enumerate(spec.colors):
        if color is None:
            continue
        if color in owner:
            raise input_error(
                str(path),
                f"classes {spec.names[owner[color]]!r} and {spec.names[class_id]!r} have the same colour {color}",
                "give every class its own colour (colour masks are mapped by colour)",
            )
        owner[color] = class_id
    for color in spec.ignore_colors:
        if color in owner:
            raise input_error(
                str(path),
                f"ignore colour {color} is the colour of class {spec.names[owner[color]]!r}",
                "remove one of them",
            )
    for value in spec.ignore_ids:
        if value < len(spec.names):
            raise input_error(
                str(path),
                f"ignore id {value} is class {spec.names[value]!r}",
                f"ignore ids must be {len(spec.names)} or more",
            )
    if len(spec.names) > ignore_index:
        raise input_error(
            str(path),
            f"{len(spec.names)} classes, but data.ignore_index is {ignore_index} (class ids must stay below it)",
            "set data.ignore_index in params.yaml above the last class id",
        )


def read_class_file(root: Path, ignore_index: int, source: str) -> ClassSpec:
    """The checked class declaration of the dataset at ``root`` (exactly one class file) of
    source ``source`` (named in the error)."""
    found = [root / name for name in CLASS_FILES if (root / name).is_file()]
    if len(found) != 1:
        problem = f"{len(found)} class files ({', '.join(p.name for p in found)})" if found else "no class file"
        raise input_error(
            str(root),
            f"{problem}; data.source.name {source!r} needs exactly one of {', '.join(CLASS_FILES)}",
            "keep exactly one",
        )
    spec = READERS[found[0].suffix](found[0])
    _check_spec(spec, ignore_index)
    return spec
