"""The model card: one Markdown page per registered version.

Logged with the version (run artifact ``registry/model_card.md``, and the version's
description, which the MLflow UI renders) and written to ``reports/model_card.md``. It states
what a user needs before trusting the model: the data version it was trained and scored on,
its parameters, its metrics, per-class IoU against the champion, the classes it is weak on,
the gate's decision, and the test split's scores when the ``test`` stage produced them (shown
apart, labelled as test: the gate never sees them).
"""

from __future__ import annotations

import math
from typing import Any

from pspnet.config import Params
from pspnet.evaluate.scores import ImageScores
from pspnet.registry.gate import GateResult

#: Parameter sections shown in the card (what shapes the model).
CARD_SECTIONS = ("model", "train", "evaluate")


def _num(value: float | None, digits: int = 4, sign: str = "") -> str:
    """``value`` with ``digits`` decimals (``sign="+"``: always signed); whole numbers as such; n/a if undefined."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:{sign}.{digits}f}"


def weak_classes(scores: ImageScores, threshold: float) -> list[tuple[str, float]]:
    """Classes with a validation IoU below ``threshold``, weakest first (absent classes skipped)."""
    pairs = [(n, float(v)) for n, v in zip(scores.class_names, scores.class_iou, strict=True) if math.isfinite(v)]
    return sorted([p for p in pairs if p[1] < threshold], key=lambda p: p[1])


def _split_table(splits: dict[str, dict[str, Any]]) -> list[str]:
    """One row of scores per split: images, mIoU, mAcc, allAcc."""
    lines = ["| split | images | mIoU | mAcc | allAcc |", "|---|---|---|---|---|"]
    for name, summary in splits.items():
        lines.append(f"| {name} | {summary.get('num_images')} | {_num(summary.get('miou'))} | "
                     f"{_num(summary.get('macc'))} | {_num(summary.get('allacc'))} |")
    return lines


def _extra_split_lines(splits: dict[str, dict[str, Any]]) -> list[str]:
    """The scores of the splits evaluated beside val (e.g. held-out sequences: new footage)."""
    if not splits:
        return []
    return ["", "Other splits (`evaluate.extra_splits`; a held-out split shares no group with training):", "",
            *_split_table(splits)]


def _test_lines(test: dict[str, Any] | None) -> list[str]:
    """The test split's scores (the ``test`` stage's), labelled as such."""
    if not test:
        return []
    return ["", "## Metrics (test split)", "",
            "Scored apart from val by the `test` stage (`pspnet evaluate --split test`); reported only, never "
            "compared by the promotion gate, which judges val.", "",
            *_split_table({str(test.get("split")): test})]


def model_card(
    *,
    model_name: str,
    version: str,
    run_id: str,
    params: Params,
    data: dict[str, str],
    metrics: dict[str, Any],
    scores: ImageScores,
    champion_scores: ImageScores | None,
    gate: GateResult,
    champion_version: str | None,
    test: dict[str, Any] | None = None,
) -> str:
    """The card's Markdown (see the module docstring)."""
    cfg = params.register_
    lines = [
        f"# {model_name} v{version}",
        "",
        f"**Gate decision: {gate.decision}.** {gate.reason}.",
        "",
        f"- MLflow run: `{run_id}`; model: `models:/{model_name}/{version}`",
        f"- Use: `pspnet predict IMAGES --out DIR --model models:/{model_name}/{version}`, or "
        f"`mlflow models serve -m models:/{model_name}/{version} --env-manager local`",
        "",
        "## Data",
        "",
        f"- Validation data version: `{scores.data_version or 'unversioned'}`, {len(scores.ids)} images",
        f"- Test-time protocol: `{scores.protocol}`",
    ]
    lines += [f"- {key}: `{value}`" for key, value in sorted(data.items())]
    lines += ["", "## Metrics (validation)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_num(v)} |" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines += _extra_split_lines(metrics.get("splits") or {})
    lines += _test_lines(test)
    if gate.bootstrap is not None:
        boot = gate.bootstrap
        lines += [
            "",
            f"Against champion v{champion_version}: {gate.metric} gain {_num(boot.gain, sign='+')}, "
            f"{boot.confidence:.0%} lower bound {_num(boot.lower_bound, sign='+')} ({boot.samples} paired bootstrap "
            f"resamples; challenger ahead in {_num(100 * boot.win_rate, 1)}% of them).",
        ]
    header = "| class | IoU |" + (" champion IoU | change |" if champion_scores is not None else "")
    lines += ["", "## Per-class IoU", "", header, "|---|---|" + ("---|---|" if champion_scores is not None else "")]
    for i, name in enumerate(scores.class_names):
        row = f"| {name} | {_num(scores.class_iou[i])} |"
        if champion_scores is not None:
            delta = scores.class_iou[i] - champion_scores.class_iou[i]
            row += f" {_num(champion_scores.class_iou[i])} | {_num(delta, sign='+')} |"
        lines.append(row)
    weak = weak_classes(scores, cfg.weak_class_iou)
    lines += ["", f"## Known weak classes (IoU below {cfg.weak_class_iou:g})", ""]
    lines += [f"- {name}: {_num(iou)}" for name, iou in weak] or ["- none"]
    lines += ["", "## Parameters", ""]
    dumped = params.model_dump(mode="json", by_alias=True)
    for section in CARD_SECTIONS:
        values = ", ".join(f"{k}={v}" for k, v in dumped[section].items())
        lines.append(f"- **{section}**: {values}")
    return "\n".join(lines) + "\n"
