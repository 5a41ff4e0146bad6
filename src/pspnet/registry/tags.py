"""Model version tags written by ``register`` (and ``import-weights``): what a version was made
from, what it predicts, and the gate's decision with its numbers."""

from __future__ import annotations

import json
from typing import Any

from pspnet.evaluate.scores import ImageScores
from pspnet.registry.gate import GateResult

TAG_DECISION = "decision"
TAG_REASON = "decision_reason"
TAG_METRIC_NAME = "metric_name"
TAG_METRIC_VALUE = "metric_value"
TAG_PREV_VERSION = "previous_champion_version"
TAG_PREV_METRIC = "previous_champion_metric"
TAG_GAIN = "gate.gain"
TAG_LOWER_BOUND = "gate.lower_bound"
TAG_WORST_CLASS = "gate.worst_class"
TAG_WORST_DROP = "gate.worst_class_drop"
TAG_DATA_VERSION = "data.version"
TAG_PROTOCOL = "evaluate.protocol"
TAG_CHECKPOINT_SHA = "checkpoint_sha256"
TAG_NUM_CLASSES = "num_classes"
TAG_CLASS_NAMES = "class_names"
TAG_CLASS_COLORS = "class_colors"

#: MLflow caps tag values at 5000 characters (SQL store); longer values are cut.
MAX_TAG_CHARS = 5000


def class_tags(ckpt: Any) -> dict[str, str]:
    """What a checkpoint predicts: number of classes, their names and colours (JSON)."""
    names = json.dumps(list(ckpt.meta.get("class_names", [])))
    colors = json.dumps([list(c) for c in ckpt.meta.get("class_colors", [])])
    return {
        TAG_NUM_CLASSES: str(int(ckpt.num_classes)),
        TAG_CLASS_NAMES: names[:MAX_TAG_CHARS],
        TAG_CLASS_COLORS: colors[:MAX_TAG_CHARS],
    }


def gate_tags(gate: GateResult, previous_version: str | None, scores: ImageScores) -> dict[str, str]:
    """The gate's decision and numbers against champion ``previous_version`` (None: there was none)."""
    boot = gate.bootstrap
    values = {
        TAG_DECISION: gate.decision,
        TAG_REASON: gate.reason,
        TAG_METRIC_NAME: gate.metric,
        TAG_METRIC_VALUE: repr(gate.challenger_metric),
        TAG_PREV_VERSION: previous_version or "",
        TAG_PREV_METRIC: repr(gate.champion_metric) if gate.champion_metric is not None else "",
        TAG_GAIN: repr(boot.gain) if boot else "",
        TAG_LOWER_BOUND: repr(boot.lower_bound) if boot else "",
        TAG_WORST_CLASS: gate.worst_class or "",
        TAG_WORST_DROP: repr(gate.worst_drop) if gate.worst_drop is not None else "",
        TAG_DATA_VERSION: scores.data_version,
        TAG_PROTOCOL: scores.protocol,
    }
    return {k: v[:MAX_TAG_CHARS] for k, v in values.items()}
