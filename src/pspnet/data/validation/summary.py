"""The validation summary (``summary.json``): the gate's verdict, counts, every check's outcome,
the failing samples, the quarantine, class coverage and distribution shift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from pspnet.data.quarantine import effective_version
from pspnet.data.validation.gate import GateResult, PreparedData


@dataclass(frozen=True)
class ReportLinks:
    """Where the summary says the other reports are, as the project names them (relative paths)."""

    quarantine: str
    data_docs: str
    profile: str


def _counts(values: pd.Series, sort: bool = True) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts(sort=sort).items()}


def validation_summary(
    prepared: str, data: PreparedData, result: GateResult, quarantine_enabled: bool, links: ReportLinks
) -> dict[str, Any]:
    """The summary of one gate run on ``prepared`` (the prepared folder as the project names it)."""
    record, profile, kept = data.record, data.profile, result.kept
    return {
        "success": result.success,
        "prepared": prepared,
        "source": record.get("source"),
        "data_version": data.version,
        "training_data_version": effective_version(data.version, result.quarantined),
        "num_samples": len(profile),
        "num_rejected": len(data.rejected),
        "num_samples_used": len(kept),
        "counts_per_split": _counts(profile["split"], sort=False),
        "counts_per_split_used": _counts(kept["split"], sort=False),
        "image_sizes": _counts(result.samples["image_size"][: len(profile)]),
        "image_conversions": record.get("image_conversions", {}),
        "expectations": [o.to_json() for o in result.outcomes],
        "failing_samples": result.failures,
        "quarantine": {
            "enabled": quarantine_enabled,
            "file": links.quarantine,
            "count": len(result.quarantined),
            "ids": result.quarantined,
        },
        "failed_dataset_checks": result.dataset_failures,
        "warnings": result.warnings,
        "class_coverage": result.coverage,
        "class_histograms": result.histograms,
        "distribution_shift": result.shifts,
        "data_docs": links.data_docs,
        "profile": links.profile,
    }
