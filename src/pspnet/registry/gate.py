"""The promotion gate: does a challenger beat the champion by more than noise, without
breaking a class?

Both models are scored on the same validation images under the same test-time protocol
(:class:`~pspnet.evaluate.scores.ImageScores`: per-image intersection / union counts). The
challenger is promoted only if all of these hold:

(a) its metric (mIoU) beats the champion's by at least ``register.min_improvement``; and the
    **paired bootstrap** agrees that the gain is real: resample the validation images with
    replacement ``register.bootstrap_samples`` times, recompute both models' mIoU on each
    resample from the summed counts (the same images for both: paired), and require the
    one-sided lower confidence bound of the gain, the ``1 - register.confidence`` quantile of
    the resampled gains, to be above zero;
(b) no class loses more than ``register.max_class_drop`` IoU against the champion (classes
    that one model never predicts and the data never shows, IoU undefined, are skipped).

The first version (no champion) is promoted. Everything here is pure numpy on the counts;
:mod:`pspnet.registry.promotion` fetches the scores and acts on the decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pspnet.config import RegisterConfig
from pspnet.errors import PspnetError
from pspnet.evaluate.metrics import iou_from_sums, mean_iou
from pspnet.evaluate.scores import ImageScores

PROMOTED = "promoted"
REJECTED = "rejected"
#: Resamples per matrix product: bounds memory to ``chunk x images`` counts.
BOOTSTRAP_CHUNK = 256


@dataclass(frozen=True)
class Bootstrap:
    """Paired bootstrap of the gain ``challenger - champion``: point value and one-sided lower bound."""

    gain: float
    lower_bound: float
    confidence: float
    samples: int
    #: Share of resamples in which the challenger scored higher.
    win_rate: float


@dataclass(frozen=True)
class GateResult:
    """The decision, its reason (one sentence per failed condition), and every number behind it."""

    decision: str
    reason: str
    metric: str
    challenger_metric: float
    champion_metric: float | None = None
    bootstrap: Bootstrap | None = None
    #: IoU lost per class (champion - challenger; negative = gained), classes comparable in both.
    class_drops: dict[str, float] = field(default_factory=dict)
    worst_class: str | None = None
    worst_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_comparable(challenger: ImageScores, champion: ImageScores, protocol: bool = True) -> None:
    """Raise unless both scores cover the same images, classes, data version and (with
    ``protocol``) test-time protocol."""
    problems = []
    if challenger.class_names != champion.class_names:
        problems.append(f"classes differ ({list(challenger.class_names)} vs {list(champion.class_names)})")
    if challenger.ids != champion.ids:
        problems.append(f"images differ ({len(challenger.ids)} vs {len(champion.ids)} ids, or another order)")
    if challenger.data_version != champion.data_version:
        problems.append(f"data versions differ ({challenger.data_version!r} vs {champion.data_version!r})")
    if protocol and challenger.protocol != champion.protocol:
        problems.append(f"test-time protocols differ ({challenger.protocol!r} vs {champion.protocol!r})")
    if problems:
        raise PspnetError("the challenger and champion scores are not comparable: " + "; ".join(problems))


def paired_bootstrap(
    challenger: ImageScores, champion: ImageScores, metric: str, samples: int, confidence: float, seed: int
) -> Bootstrap:
    """Resample images (the same for both models) and return the gain's lower confidence bound."""
    return seed_paired_bootstrap([(challenger, champion)], metric, samples, confidence, seed)


def seed_paired_bootstrap(
    pairs: Sequence[tuple[ImageScores, ImageScores]], metric: str, samples: int, confidence: float, seed: int,
    same_protocol: bool = True,
) -> Bootstrap:
    """:func:`paired_bootstrap` of the mean gain over several ``(challenger, champion)`` pairs (one
    per training seed) scored on the same images: each resample draws one multiset of images and
    applies it to every pair, so the bound covers image sampling, with the seeds averaged.
    ``same_protocol=False`` compares test-time protocols themselves (e.g. flip + scales)."""
    if not pairs:
        raise ValueError("seed_paired_bootstrap needs at least one (challenger, champion) pair")
    for challenger, champion in pairs:
        check_comparable(challenger, champion, protocol=same_protocol)
        check_comparable(challenger, pairs[0][0])
    n = len(pairs[0][0].ids)
    gain = float(np.mean([c.metric(metric) - b.metric(metric) for c, b in pairs]))
    if n == 0:
        return Bootstrap(gain, math.nan, confidence, 0, math.nan)
    rng = np.random.default_rng(seed)
    gains = []
    for start in range(0, samples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, samples - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size)  # (size, n): times each image is drawn
        per_pair = [
            mean_iou(iou_from_sums(weights @ c.inter, weights @ c.union), metric)
            - mean_iou(iou_from_sums(weights @ b.inter, weights @ b.union), metric)
            for c, b in pairs
        ]
        gains.append(np.mean(per_pair, axis=0))
    resampled = np.concatenate(gains)
    resampled = resampled[np.isfinite(resampled)]
    if resampled.size == 0:
        return Bootstrap(gain, math.nan, confidence, samples, math.nan)
    lower = float(np.quantile(resampled, 1.0 - confidence))
    return Bootstrap(gain, lower, confidence, samples, float((resampled > 0).mean()))


def class_drops(challenger: ImageScores, champion: ImageScores) -> dict[str, float]:
    """IoU lost per class (champion - challenger) over the whole split, where both are defined."""
    check_comparable(challenger, champion)
    drops = champion.class_iou - challenger.class_iou
    return {name: float(d) for name, d in zip(challenger.class_names, drops, strict=True) if math.isfinite(d)}


def decide(challenger: ImageScores, champion: ImageScores | None, cfg: RegisterConfig, champion_version: str = "") -> GateResult:
    """Apply the gate of the module docstring; ``champion`` None means there is no champion yet."""
    metric = cfg.metric
    value = challenger.metric(metric)
    if not math.isfinite(value):
        return GateResult(REJECTED, f"the challenger's {metric} is not a finite number ({value})", metric, value)
    if champion is None:
        return GateResult(PROMOTED, "first version: no champion yet", metric, value)
    base = champion.metric(metric)
    boot = paired_bootstrap(challenger, champion, metric, cfg.bootstrap_samples, cfg.confidence, cfg.bootstrap_seed)
    drops = class_drops(challenger, champion)
    worst = max(drops, key=drops.__getitem__) if drops else None
    worst_drop = drops[worst] if worst is not None else None
    who = f"champion v{champion_version}" if champion_version else "the champion"
    failures = []
    if not boot.gain >= cfg.min_improvement:
        failures.append(
            f"{metric} {value:.4f} vs {base:.4f} of {who}: the gain {boot.gain:+.4f} is below the margin "
            f"{cfg.min_improvement:g} (register.min_improvement)"
        )
    elif not boot.lower_bound > 0:
        failures.append(
            f"{metric} {value:.4f} vs {base:.4f} of {who}: the gain {boot.gain:+.4f} is within noise, its "
            f"{cfg.confidence:.0%} lower bound from a paired bootstrap over {len(challenger.ids)} validation "
            f"images is {boot.lower_bound:+.4f}, not above 0"
        )
    if worst_drop is not None and worst_drop > cfg.max_class_drop:
        idx = challenger.class_names.index(worst)
        failures.append(
            f"class {worst!r} loses {worst_drop:.4f} IoU ({champion.class_iou[idx]:.4f} -> "
            f"{challenger.class_iou[idx]:.4f}), more than register.max_class_drop {cfg.max_class_drop:g}"
        )
    if failures:
        decision, reason = REJECTED, "; ".join(failures)
    else:
        decision = PROMOTED
        reason = (
            f"{metric} {value:.4f} beats {base:.4f} of {who} by {boot.gain:+.4f} (margin {cfg.min_improvement:g}; "
            f"{cfg.confidence:.0%} lower bound {boot.lower_bound:+.4f} > 0); no class loses more than "
            f"{cfg.max_class_drop:g} IoU"
        )
    return GateResult(decision, reason, metric, value, base, boot, drops, worst, worst_drop)
