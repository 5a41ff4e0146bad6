"""The ablation's statistics and its report: what each component of PSPNet is shown to be worth.

Each :class:`Comparison` pairs two rows of the study (a baseline without the component, a
variant with it) on one dataset. Over the seeds both rows ran, it reports each seed's val mIoU,
their mean and standard deviation, and the promotion gate's paired bootstrap over validation
images (:func:`pspnet.registry.gate.seed_paired_bootstrap`: one resample of the images applied
to every seed's pair): the gain and its one-sided lower confidence bound. A comparison is
"shown" only when that bound is above zero. Beside mIoU it reports the look-alike confusion
rates (``evaluate.confused_pairs``) of both rows: the context metric that says why.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pspnet.comparison import over_seeds
from pspnet.config import RegisterConfig
from pspnet.evaluate.scores import ImageScores
from pspnet.registry.gate import seed_paired_bootstrap

#: Headline metric compared (the gate's default).
METRIC = "miou"


@dataclass(frozen=True)
class Comparison:
    """``variant`` (with the component) against ``baseline`` (without it), both row names;
    ``same_protocol`` False when the two differ in their test-time protocol on purpose."""

    name: str
    question: str
    baseline: str
    variant: str
    same_protocol: bool = True


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("ppm", "pyramid pooling module: dilated FCN -> PSPNet", "fcn", "pspnet"),
    Comparison("aux", "auxiliary loss: none -> 0.4", "aux0", "pspnet"),
    Comparison("pooling", "PPM pooling: max -> average", "max", "pspnet"),
    Comparison("pyramid", "pyramid: bin 1 only -> bins 1, 2, 3, 6", "bins1", "pspnet"),
    Comparison("test-time", "testing: single scale -> flip + scales", "pspnet", "pspnet-msflip", same_protocol=False),
)


def scores_file(scores_dir: Path, experiment: str) -> Path:
    """Where a run's per-image validation scores are kept for the bootstrap."""
    return scores_dir / f"{experiment}.npz"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else math.nan)


def _confusions(baseline: Sequence[Mapping[str, Any]], variant: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{pair: {"baseline": [rate per seed], "variant": [...]}}`` for the pairs both rows report."""
    pairs = [p for p in (baseline[0].get("confusion") or {}) if p in (variant[0].get("confusion") or {})]
    return {p: {"baseline": [r["confusion"][p] for r in baseline], "variant": [r["confusion"][p] for r in variant]} for p in pairs}


def compare(
    results: Sequence[Mapping[str, Any]], scores_dir: Path, gate: RegisterConfig, comparisons: Sequence[Comparison] = COMPARISONS
) -> list[dict[str, Any]]:
    """One record per (dataset, comparison) whose two rows ran with at least one common seed."""
    by_key = {(r["dataset"], r["row"], r["seed"]): r for r in results}
    records = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        for comp in comparisons:
            seeds = sorted(s for d, row, s in by_key if d == dataset and row == comp.baseline
                           and (d, comp.variant, s) in by_key)
            if not seeds:
                continue
            base = [by_key[(dataset, comp.baseline, s)] for s in seeds]
            var = [by_key[(dataset, comp.variant, s)] for s in seeds]
            pairs = [(ImageScores.load(scores_file(scores_dir, v["experiment"])),
                      ImageScores.load(scores_file(scores_dir, b["experiment"]))) for v, b in zip(var, base, strict=True)]
            boot = seed_paired_bootstrap(pairs, METRIC, gate.bootstrap_samples, gate.confidence, gate.bootstrap_seed,
                                         same_protocol=comp.same_protocol)
            base_mean, base_std = _mean_std([b[METRIC] for b in base])
            var_mean, var_std = _mean_std([v[METRIC] for v in var])
            records.append({
                "name": comp.name, "question": comp.question, "dataset": dataset,
                "baseline": comp.baseline, "variant": comp.variant, "seeds": seeds,
                "baseline_miou": [b[METRIC] for b in base], "variant_miou": [v[METRIC] for v in var],
                "baseline_mean": base_mean, "baseline_std": base_std, "variant_mean": var_mean, "variant_std": var_std,
                "gain": boot.gain, "lower_bound": boot.lower_bound, "confidence": boot.confidence,
                "bootstrap_samples": boot.samples, "val_images": len(pairs[0][0].ids),
                "shown": bool(math.isfinite(boot.lower_bound) and boot.lower_bound > 0),
                "context": _confusions(base, var),
            })
    return records


def _context_cell(context: Mapping[str, Any]) -> str:
    cells = []
    for pair, rates in context.items():
        base = [r for r in rates["baseline"] if r is not None]
        var = [r for r in rates["variant"] if r is not None]
        if base and var:
            cells.append(f"{pair}: {statistics.fmean(base):.3f} -> {statistics.fmean(var):.3f}")
    return "; ".join(cells) or "-"


def comparison_lines(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """The comparisons as a Markdown table."""
    if not comparisons:
        return ["No comparison has both of its rows yet."]
    conf = f"{comparisons[0]['confidence']:.0%}"
    lines = [
        f"| dataset | comparison | seeds | without (mIoU) | with (mIoU) | gain | {conf} lower bound | shown | look-alike confusion, without -> with |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for c in comparisons:
        lines.append(
            f"| {c['dataset']} | {c['question']} | {', '.join(map(str, c['seeds']))} | "
            f"{over_seeds(c['baseline_miou'])} | {over_seeds(c['variant_miou'])} | "
            f"{c['gain']:+.4f} | {c['lower_bound']:+.4f} | {'shown' if c['shown'] else 'not shown'} | {_context_cell(c['context'])} |"
        )
    return lines


def erf_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Effective receptive field radii of every run that measured one."""
    measured = [r for r in results if r.get("erf")]
    if not measured:
        return []
    lines = ["| dataset | row | seed | input | r50 (px) | r95 (px) |", "| --- | --- | ---: | --- | ---: | ---: |"]
    for r in measured:
        erf = r["erf"]
        lines.append(f"| {r['dataset']} | {r['row']} | {r['seed']} | {erf['height']}x{erf['width']} | {erf['r50']:.1f} | {erf['r95']:.1f} |")
    return lines
