"""Stage ``validate``: the Great Expectations gate between ``prepare`` and ``train``
(:mod:`pspnet.data.validation`).

Writes ``<reports>/validation/``: ``summary.json``, ``quarantine.csv`` (a header only unless
``validate.quarantine``), ``history.json`` (on success) and the Data Docs site ``data_docs/``
(built in a temp folder and swapped in whole, with ``profile.csv``). The report is on disk
before a failed gate raises :class:`DataError`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, NoReturn

from pspnet import atomic_files
from pspnet.config import Params
from pspnet.data.manifest import load_dataset_record
from pspnet.data.quarantine import write_quarantine
from pspnet.data.shift import load_history, record_version
from pspnet.data.validation.gate import (
    PreparedData,
    history_entry,
    profile_prepared,
    run_gate,
)
from pspnet.data.validation.report import error_message, quarantine_rows
from pspnet.data.validation.summary import ReportLinks, validation_summary
from pspnet.errors import DataError
from pspnet.layout import (
    DATA_DOCS_DIR,
    QUARANTINE_FILE,
    VALIDATION_DIR,
    VALIDATION_PROFILE_FILE,
    VALIDATION_SUMMARY_FILE,
    Layout,
)

log = logging.getLogger(__name__)

#: The Data Docs site's front page (Great Expectations names it).
DATA_DOCS_INDEX = "index.html"


def _fail_early(layout: Layout, prepared: str, err: DataError) -> NoReturn:
    """The dataset cannot even be profiled: write a summary saying why, an empty quarantine list,
    drop stale docs, re-raise."""
    shutil.rmtree(layout.data_docs, ignore_errors=True)
    write_quarantine(layout.quarantine, [])
    atomic_files.write_json(layout.validation_summary, {"success": False, "prepared": prepared, "error": str(err)})
    raise err


def _report_names(params: Params) -> tuple[str, ReportLinks]:
    """The summary's name and the other reports' as the project names them (under ``paths.reports``)."""
    folder = f"{params.paths.reports}/{VALIDATION_DIR}"
    links = ReportLinks(
        quarantine=f"{folder}/{QUARANTINE_FILE}",
        data_docs=f"{folder}/{DATA_DOCS_DIR}/{DATA_DOCS_INDEX}",
        profile=f"{folder}/{DATA_DOCS_DIR}/{VALIDATION_PROFILE_FILE}",
    )
    return f"{folder}/{VALIDATION_SUMMARY_FILE}", links


def run(params: Params, root: Path) -> dict[str, Any]:
    """Stage ``validate``: run the gate on ``root / params.paths.prepared``.

    The samples table holds the manifest's samples and those ``prepare`` rejected. With
    ``validate.quarantine`` the failing samples are quarantined instead of failing the gate.
    Returns a short summary; raises :class:`DataError` (after writing the report) if the gate failed.
    """
    start = time.perf_counter()
    cfg = params.validate_
    layout = Layout(Path(root).resolve(), params.paths)
    prepared = params.paths.prepared
    summary_name, links = _report_names(params)
    try:
        classes, profile, rejected = profile_prepared(layout.prepared, params)
    except DataError as err:
        _fail_early(layout, prepared, err)
    data = PreparedData(classes, profile, rejected, load_dataset_record(layout.prepared))
    with atomic_files.atomic_dir(layout.data_docs) as docs_tmp:
        result = run_gate(params, data, docs_tmp, load_history(layout.validation_history))
        with atomic_files.atomic_path(docs_tmp / VALIDATION_PROFILE_FILE) as tmp:
            result.samples.to_csv(tmp, index=False)

    for warning in result.warnings:
        log.warning("validate: %s", warning)
    write_quarantine(layout.quarantine, quarantine_rows(result.samples, result.failures, prepared) if cfg.quarantine else [])
    quarantined = result.quarantined
    if quarantined:
        log.warning(
            "validate: %d failing sample(s) quarantined (validate.quarantine: true), listed in %s: %s",
            len(quarantined), links.quarantine, ", ".join(quarantined[: cfg.max_failures_listed]),
        )  # fmt: skip
    summary = validation_summary(prepared, data, result, cfg.quarantine, links)
    if result.success:
        record_version(layout.validation_history, history_entry(data, result), cfg.history_limit)
    atomic_files.write_json(layout.validation_summary, summary)
    if not result.success:
        note = f"; {len(quarantined)} sample(s) quarantined, listed in {links.quarantine}" if quarantined else ""
        message = error_message(
            result.gate_failures, result.dataset_failures, cfg.max_failures_listed, summary_name, links.data_docs, prepared, note
        )
        raise DataError(message)
    return {
        "success": True,
        "num_samples": len(profile),
        "num_samples_used": len(result.kept),
        "counts_per_split": summary["counts_per_split"],
        "rejected": len(rejected),
        "quarantined": len(quarantined),
        "expectations": len(result.outcomes),
        "warnings": len(result.warnings),
        "summary": summary_name,
        "data_docs": links.data_docs,
        "seconds": round(time.perf_counter() - start, 2),
    }
