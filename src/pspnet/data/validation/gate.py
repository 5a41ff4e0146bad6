"""The gate itself: check every sample, then the dataset-level tables on the samples that remain,
and decide whether the data may go on to ``train``.

With ``validate.quarantine`` failing samples are set aside instead of failing the gate; the
dataset-level tables are then computed without them and still decide. A class distribution
shift is a warning unless ``validate.fail_on_shift``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pspnet.config import Params, ValidateConfig
from pspnet.data.classes import CLASSES_FILE, ClassTable
from pspnet.data.manifest import read_rejected
from pspnet.data.profile import profile_dataset
from pspnet.data.shift import shrunk_splits, split_histograms, split_shift, version_shift
from pspnet.data.sources.base import Expectations
from pspnet.data.validation.checks import (
    CLASSES_TABLE,
    EMPTY_MASKS,
    SAMPLES_TABLE,
    SHIFT_TABLE,
    SPLITS_TABLE,
    Outcome,
    dataset_checks,
    sample_checks,
    shift_checks,
    source_checks,
)
from pspnet.data.validation.expectations import ExpectationRunner
from pspnet.data.validation.report import failed_dataset_checks, failing_samples
from pspnet.data.validation.tables import (
    LabelSums,
    class_coverage,
    class_table,
    samples_table,
    shift_table,
    split_table,
)

#: What ``dataset.json`` names the source when it does not say (a dataset prepared before the record existed).
UNKNOWN_SOURCE = "this source"


@dataclass(frozen=True)
class PreparedData:
    """What the gate reads of a prepared dataset."""

    classes: ClassTable
    #: One row per manifest sample (:func:`pspnet.data.profile.profile_dataset`).
    profile: pd.DataFrame
    #: The samples ``prepare`` rejected (``rejected.csv``).
    rejected: pd.DataFrame
    #: The dataset's record (``dataset.json``; empty when there is none).
    record: Mapping[str, Any]

    @property
    def version(self) -> str | None:
        return self.record.get("version")


def profile_prepared(prepared_dir: Path, params: Params) -> tuple[ClassTable, pd.DataFrame, pd.DataFrame]:
    """The class table, the per-sample profile and the rejected samples of ``prepared_dir``;
    raises :class:`~pspnet.errors.DataError` when the dataset cannot even be profiled."""
    classes = ClassTable.load(prepared_dir / CLASSES_FILE)
    profile = profile_dataset(
        prepared_dir, classes, num_workers=params.validate_.num_workers, max_pixels=params.data.max_image_pixels
    )
    return classes, profile, read_rejected(prepared_dir)


@dataclass
class GateResult:
    """Everything one run of the gate found, and its verdict."""

    #: The samples table: the profile plus the rejected samples, with the image size columns.
    samples: pd.DataFrame
    #: The profile's rows the dataset-level tables were computed on (all but the quarantined).
    kept: pd.DataFrame
    outcomes: list[Outcome]
    #: Every failing sample with its problems and fixes (quarantined or not).
    failures: list[dict[str, Any]]
    #: The ids set aside (only with ``validate.quarantine``).
    quarantined: list[str]
    coverage: list[dict[str, Any]]
    histograms: dict[str, list[float]]
    shifts: list[dict[str, Any]]
    #: Failures reported without failing the gate (class distribution shifts, by default).
    warnings: list[str]
    #: The failing samples that fail the gate (none with quarantine).
    gate_failures: list[dict[str, Any]]
    dataset_failures: list[str]
    success: bool


def decides_gate(outcome: Outcome, cfg: ValidateConfig) -> bool:
    """Does this outcome decide the gate? (Quarantined sample failures and warnings do not.)"""
    if outcome.check.table == SHIFT_TABLE:
        return cfg.fail_on_shift
    if is_warning(outcome, cfg):
        return False
    return outcome.check.table != SAMPLES_TABLE or not cfg.quarantine or outcome.error is not None


def is_warning(outcome: Outcome, cfg: ValidateConfig) -> bool:
    """A sample check reported as a warning, not a failure: empty masks under ``validate.empty_masks: warn``."""
    return outcome.check.name == EMPTY_MASKS and cfg.empty_masks == "warn" and outcome.error is None


def empty_mask_warnings(outcome: Outcome, limit: int) -> list[str]:
    """The warning line of the samples whose masks hold no labelled pixel (none when there are none)."""
    ids = outcome.unexpected_ids
    if not ids:
        return []
    shown = ", ".join(ids[:limit]) + (f" ... and {len(ids) - limit} more" if len(ids) > limit else "")
    return [(
        f"{len(ids)} sample(s) have a mask with no labelled pixel (every pixel is the ignore index), so they train and "
        f"score nothing: {shown}. Fix: annotate or remove them; validate.empty_masks: reject fails the gate on them"
    )]


def _dataset_tables(
    kept: pd.DataFrame, data: PreparedData, required: tuple[str, ...], history: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, pd.DataFrame], list[dict[str, Any]], dict[str, list[float]], list[dict[str, Any]]]:
    """The ``splits``, ``classes`` and ``shift`` tables of ``kept``, with the class coverage,
    histograms and shift comparisons (against ``train`` and the newest other version of ``history``)."""
    classes = data.classes
    sums = LabelSums.of(kept)
    coverage = class_coverage(kept, classes, sums)
    histograms = split_histograms(coverage)
    shifts = split_shift(histograms, classes.names) + version_shift(history, data.version, histograms, classes.names)
    tables = {
        SPLITS_TABLE: split_table(kept, required),
        CLASSES_TABLE: class_table(kept, classes, sums),
        SHIFT_TABLE: shift_table(shifts),
    }
    return tables, coverage, histograms, shifts


def run_gate(params: Params, data: PreparedData, docs_dir: Path, history: Sequence[Mapping[str, Any]]) -> GateResult:
    """Run every check on ``data`` (building the Data Docs site in ``docs_dir``) and decide.

    ``history`` is the validated data versions, oldest first (:func:`pspnet.data.shift.load_history`).
    """
    cfg = params.validate_
    samples = samples_table(data.profile, data.rejected)
    runner = ExpectationRunner(docs_dir)
    expect = Expectations.from_json(data.record.get("expect", {}))
    checks = sample_checks(params) + source_checks(expect, data.record.get("source", UNKNOWN_SOURCE))
    sample_outcomes = runner.run({SAMPLES_TABLE: samples}, checks)
    soft = [o for o in sample_outcomes if is_warning(o, cfg)]
    failures = failing_samples(samples, [o for o in sample_outcomes if o not in soft])
    quarantined = [f["id"] for f in failures] if cfg.quarantine else []
    kept = data.profile[~data.profile["id"].isin(quarantined)]
    tables, coverage, histograms, shifts = _dataset_tables(kept, data, cfg.required_splits, history)
    outcomes = sample_outcomes + runner.run(tables, dataset_checks(params) + shift_checks(params))
    tables[SAMPLES_TABLE] = samples

    gate = [o for o in outcomes if decides_gate(o, cfg)]
    warnings = [line for o in soft for line in empty_mask_warnings(o, cfg.max_failures_listed)]
    sizes = kept["split"].value_counts().to_dict()
    warnings += shrunk_splits(history, data.version, sizes, cfg.max_split_shrink)
    warnings += failed_dataset_checks(tables, [o for o in outcomes if o not in gate and o.check.table == SHIFT_TABLE])
    gate_failures = [] if cfg.quarantine else failures
    dataset_failures = failed_dataset_checks(tables, gate)
    success = all(o.success for o in gate) and not gate_failures and not dataset_failures
    return GateResult(
        samples, kept, outcomes, failures, quarantined, coverage, histograms, shifts,
        warnings, gate_failures, dataset_failures, success,
    )  # fmt: skip


def history_entry(data: PreparedData, result: GateResult) -> dict[str, Any]:
    """The record of a validated data version in the history the next run compares with."""
    return {
        "version": data.version,
        "source": data.record.get("source"),
        "num_samples": len(result.kept),
        "split_sizes": {str(k): int(v) for k, v in result.kept["split"].value_counts().items()},
        "histograms": result.histograms,
    }
