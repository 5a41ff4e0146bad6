"""Held-out groups: the samples of whole groups (video sequences, scenes, cameras) of one split
move into a validation split of their own, so no held-out frame shares a group with a training
frame (:class:`pspnet.config.HoldoutConfig`).

Frames of one sequence look alike: a model scored on frames of sequences it trained on is scored
on what it has already seen. A sample's group is the first capture group of
``data.holdout.group_pattern`` matched on its id; ``prepare`` applies the split before it writes.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from typing import Any

from pspnet.config import HoldoutConfig
from pspnet.data.sources.base import SampleRef, SourceData
from pspnet.errors import ConfigError

#: How many sample ids an error message quotes.
IDS_QUOTED = 5


def sample_group(sample_id: str, pattern: re.Pattern[str]) -> str | None:
    """The group of ``sample_id`` under ``pattern`` (its first capture group), ``None`` if it does not match."""
    found = pattern.search(sample_id)
    return found.group(1) if found and found.group(1) else None


def groups_by_split(refs: list[SampleRef], pattern: re.Pattern[str]) -> dict[str, dict[str, int]]:
    """``{split: {group: samples}}``; ids the pattern does not match are left out."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for ref in refs:
        group = sample_group(ref.id, pattern)
        if group is not None:
            counts[ref.split][group] += 1
    return {split: dict(sorted(c.items())) for split, c in sorted(counts.items())}


def _check(refs: list[SampleRef], cfg: HoldoutConfig, pattern: re.Pattern[str], found: dict[str, int]) -> None:
    """Refuse a holdout that cannot be what the user meant: ungrouped samples, unknown groups, nothing left."""
    where = "data.holdout in params.yaml"
    ungrouped = [r.id for r in refs if r.split == cfg.from_split and sample_group(r.id, pattern) is None]
    if ungrouped:
        raise ConfigError(
            f"{where}: {len(ungrouped)} {cfg.from_split!r} sample id(s) do not match group_pattern "
            f"{cfg.group_pattern!r}, e.g. {ungrouped[:IDS_QUOTED]}. Fix: a group_pattern whose first ( ) "
            "captures the group of every id (samples are split by group, never by frame)."
        )
    unknown = sorted(set(cfg.groups) - set(found))
    if unknown:
        raise ConfigError(
            f"{where}: groups {unknown} have no {cfg.from_split!r} sample; its groups are {found}. "
            "Fix: list groups of that split in data.holdout.groups."
        )
    if set(found) <= set(cfg.groups):
        raise ConfigError(
            f"{where}: holding out {sorted(cfg.groups)} leaves no {cfg.from_split!r} sample. "
            "Fix: keep at least one group in that split."
        )


def hold_out(data: SourceData, cfg: HoldoutConfig) -> tuple[SourceData, dict[str, Any]]:
    """``data`` with the ``cfg.from_split`` samples of ``cfg.groups`` moved to ``cfg.split``, and
    the record of it for ``dataset.json`` (empty when no group is held out).

    The record lists every split's groups, so a reader sees which splits share groups (CamVid's
    standard val shares its sequence with 204 training frames).
    """
    if not cfg.groups:
        return data, {}
    pattern = re.compile(cfg.group_pattern)
    refs = list(data.samples)
    before = groups_by_split(refs, pattern)
    _check(refs, cfg, pattern, before.get(cfg.from_split, {}))
    held = set(cfg.groups)
    moved = [
        dataclasses.replace(r, split=cfg.split) if r.split == cfg.from_split and sample_group(r.id, pattern) in held else r
        for r in refs
    ]
    after = groups_by_split(moved, pattern)
    record = {
        "split": cfg.split,
        "from_split": cfg.from_split,
        "groups": sorted(held),
        "group_pattern": cfg.group_pattern,
        "samples": sum(r.split == cfg.split for r in moved),
        "groups_by_split": after,
    }
    return dataclasses.replace(data, samples=moved, total=len(moved)), record
