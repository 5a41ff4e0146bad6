"""The class table (``classes.json``): class names, display colours and the ignore index.

It is written once by ``prepare`` and read by every later stage, so the class list has one
source of truth on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pspnet import atomic_files
from pspnet.errors import ConfigError, DataError

CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class ClassTable:
    """Class ``i`` is ``names[i]``, drawn as ``colors[i]`` (RGB 0..255); ``ignore_index`` is never a
    class. ``lookalikes``: pairs of class names that only context tells apart (the dataset's own
    knowledge; evaluation reports how often they are confused)."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255
    lookalikes: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError(f"{len(self.names)} class names but {len(self.colors)} colours")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names must be unique: {list(self.names)}")
        unknown = sorted({name for pair in self.lookalikes for name in pair} - set(self.names))
        if unknown:
            raise ValueError(f"look-alike classes {unknown} are not among the classes {list(self.names)}")
        if self.ignore_index < len(self.names):
            raise ConfigError(
                f"data.ignore_index {self.ignore_index} collides with class id {self.ignore_index} of "
                f"{len(self.names)} classes. Fix: set data.ignore_index in params.yaml to a value of at least "
                f"{len(self.names)} (255 is the usual choice)."
            )

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_json(self) -> dict:
        out = {
            "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(zip(self.names, self.colors))],
            "ignore_index": self.ignore_index,
        }
        if self.lookalikes:  # only then: other datasets' files (and data versions) stay as they were
            out["lookalikes"] = [list(pair) for pair in self.lookalikes]
        return out

    def save(self, path: str | Path) -> None:
        atomic_files.write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> ClassTable:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            entries = sorted(raw["classes"], key=lambda e: e["id"])
            if [e["id"] for e in entries] != list(range(len(entries))):
                raise ValueError("class ids must be 0..N-1 without gaps")
            return cls(
                names=tuple(str(e["name"]) for e in entries),
                colors=tuple(tuple(int(v) for v in e["color"]) for e in entries),  # type: ignore[misc]
                ignore_index=int(raw["ignore_index"]),
                lookalikes=tuple((str(a), str(b)) for a, b in raw.get("lookalikes", [])),
            )
        except FileNotFoundError:
            raise DataError(f"{path}: class table not found. Run the `prepare` stage first (dvc repro prepare).") from None
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: malformed class table ({err}). Re-run `prepare` to rewrite it.") from None


def load_classes(prepared_dir: str | Path, ignore_index: int) -> ClassTable:
    """The class table of a prepared dataset, checked against the configured ``data.ignore_index``."""
    path = Path(prepared_dir) / CLASSES_FILE
    table = ClassTable.load(path)
    if table.ignore_index != ignore_index:
        raise ConfigError(
            f"data.ignore_index is {ignore_index} but {path} says {table.ignore_index}; "
            "re-run `prepare` or fix params.yaml."
        )
    return table
