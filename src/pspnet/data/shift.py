"""Class distribution shift: between splits of one dataset, and between data versions.

A split's *class histogram* is the share of its labelled pixels that each class holds (ignore
excluded). Two histograms are compared with the Jensen-Shannon distance (base 2: 0 = the same
distribution, 1 = disjoint classes), the symmetric, bounded measure scipy provides; the
classes whose share moved most are listed so a flag says *what* changed.

``validate`` compares every split with ``train`` (a val set drawn from another distribution
makes its mIoU mean little) and the current data version with the previous one it validated
(``history.json``: new data that looks unlike the old deserves a look before retraining).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from pspnet import atomic_files

#: How many classes a comparison lists (largest share change first).
TOP_CHANGES = 5
#: Digits kept for shares and distances in the reports.
DIGITS = 6


def split_histograms(coverage: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """``{split: shares}`` from ``validate``'s class coverage (one entry per class, in id order,
    each with its ``pixel_share_per_split``)."""
    splits = sorted({s for entry in coverage for s in entry["pixel_share_per_split"]})
    return {s: [entry["pixel_share_per_split"].get(s, 0.0) for entry in coverage] for s in splits}


def compare(reference: Sequence[float], current: Sequence[float], names: Sequence[str]) -> dict[str, Any]:
    """Jensen-Shannon distance of two histograms and the classes whose share changed most."""
    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape:
        return {"js_distance": None, "note": f"class count changed ({len(ref)} -> {len(cur)})", "top_changes": []}
    if ref.sum() == 0 or cur.sum() == 0:
        return {"js_distance": None, "note": "one side has no labelled pixels", "top_changes": []}
    distance = float(jensenshannon(ref, cur, base=2))
    order = np.argsort(-np.abs(cur - ref))[:TOP_CHANGES]
    changes = [
        {"class": names[i], "reference_share": round(float(ref[i]), DIGITS), "share": round(float(cur[i]), DIGITS)}
        for i in order
        if cur[i] != ref[i]
    ]
    return {"js_distance": round(distance, DIGITS), "top_changes": changes}


def split_shift(histograms: Mapping[str, Sequence[float]], names: Sequence[str], reference: str = "train") -> list[dict[str, Any]]:
    """One comparison per split other than ``reference``, each named ``"train->val"`` etc."""
    if reference not in histograms:
        return []
    return [
        {"id": f"{reference}->{split}", **compare(histograms[reference], shares, names)}
        for split, shares in histograms.items()
        if split != reference
    ]


def load_history(path: Path) -> list[dict[str, Any]]:
    """The validated data versions, oldest first (empty when there is no readable history)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def version_shift(
    history: Sequence[Mapping[str, Any]], version: str | None, histograms: Mapping[str, Sequence[float]], names: Sequence[str]
) -> list[dict[str, Any]]:
    """Each split of this version against the same split of the newest *other* version validated."""
    previous = next((e for e in reversed(history) if e.get("version") != version), None)
    if previous is None:
        return []
    old = previous.get("histograms", {})
    return [
        {"id": f"{previous.get('version')}->{version}:{split}", "split": split, "previous_version": previous.get("version"),
         **compare(old[split], shares, names)}
        for split, shares in histograms.items()
        if split in old
    ]  # fmt: skip


def shrunk_splits(
    history: Sequence[Mapping[str, Any]], version: str | None, sizes: Mapping[str, int], max_shrink: float
) -> list[str]:
    """One warning per split that lost more than ``max_shrink`` of its samples since the newest
    other version validated (a partial copy or an interrupted sync looks like new data)."""
    previous = next((e for e in reversed(history) if e.get("version") != version), None)
    old = (previous or {}).get("split_sizes") or {}
    lines = []
    for split, before in old.items():
        now = int(sizes.get(split, 0))
        if before and (before - now) / before > max_shrink:
            lines.append(
                f"split {split!r} has {now} sample(s), {1 - now / before:.0%} fewer than the {before} of data version "
                f"{previous.get('version')} validated before. Fix: check that the source is complete (a partial copy or "
                "an interrupted sync?); raise validate.max_split_shrink if the samples were removed on purpose"
            )
    return lines


def record_version(path: Path, entry: Mapping[str, Any], limit: int) -> None:
    """Append ``entry`` to the history (replacing an entry of the same version); keep ``limit``."""
    history = [e for e in load_history(path) if e.get("version") != entry.get("version")]
    history.append(dict(entry))
    atomic_files.write_json(path, history[-limit:])
