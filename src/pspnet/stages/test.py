"""Stage ``test``: score the trained checkpoint on the prepared data's labelled test split (CamVid
ships one), apart from val.

The score goes to its own files (``metrics/test/eval.json``, ``metrics/test/per_class_iou.csv``),
to ``test_*`` metrics in the MLflow run ``train`` opened, and, through ``register``, to the model
card. It never feeds the promotion gate: the gate compares the val scores of
``metrics/per_image.npz`` (and the champion re-scored on val), and no per-image test scores exist.

Off by default (``test.enabled: false``): a test split is for a rare, final look, not for choosing
recipes. The stage then only writes a record saying it skipped and why (no checkpoint loaded), so
``dvc repro`` stays fast. :func:`score_test` (``pspnet evaluate --split test``) scores it on
request, whatever ``test.enabled`` says.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pspnet import atomic_files
from pspnet.config import TEST_SPLIT, Params
from pspnet.data.manifest import load_dataset_record
from pspnet.errors import DataError
from pspnet.layout import Layout

log = logging.getLogger(__name__)

#: Why a disabled stage scored nothing (its metrics file says so).
SKIPPED_REASON = (
    f"test.enabled is false: the {TEST_SPLIT} split is scored only on request "
    f"(`pspnet evaluate --split {TEST_SPLIT}`, or test.enabled: true in params.yaml)"
)
#: The per-class CSV's columns (:func:`pspnet.evaluate.reports.write_per_class_csv`); a skip writes the header only.
PER_CLASS_HEADER = "class,iou,acc,pixels\n"


def _require_test_split(params: Params, layout: Layout) -> None:
    """Fail, naming what the prepared data holds and the fix, unless it has a test split."""
    from pspnet.evaluate.scoring import split_counts

    counts = split_counts(layout.prepared)
    if TEST_SPLIT in counts:
        return
    source = load_dataset_record(layout.prepared).get("source") or params.data.source.name
    held = ", ".join(f"{split} ({n})" for split, n in counts.items())
    raise DataError(
        f"{layout.prepared} (source {source!r}) has no '{TEST_SPLIT}' split to score; it holds {held}. Fix: prepare a "
        f"source that ships a labelled test split, e.g. data.source.name: camvid with test/ + testannot/ (and "
        f"test.txt) in its folder, then `dvc repro prepare`. The embedded synthetic data has none, and voc / "
        f"cityscapes keep their test labels private, so prepare leaves their test split out."
    )


def score_test(params: Params, root: Path) -> dict[str, Any]:
    """Score the trained checkpoint on the test split into ``metrics/test/`` and the train run
    (``pspnet evaluate --split test``; the stage when enabled). See the module docstring."""
    from pspnet.stages.evaluate import evaluate_apart

    root = Path(root)
    layout = Layout(root, params.paths)
    _require_test_split(params, layout)
    return evaluate_apart(params, root, TEST_SPLIT, layout.test_metrics, layout.test_per_class_iou)


def run(params: Params, root: Path) -> dict[str, Any]:
    """Stage ``test``: :func:`score_test` when ``test.enabled``; else record the skip in
    ``metrics/test/eval.json`` (and a header-only per-class CSV), so the stage's outputs exist."""
    if params.test.enabled:
        return score_test(params, root)
    layout = Layout(Path(root), params.paths)
    record = {"split": TEST_SPLIT, "skipped": True, "reason": SKIPPED_REASON}
    atomic_files.write_json(layout.test_metrics, record)
    atomic_files.write_text(layout.test_per_class_iou, PER_CLASS_HEADER)
    log.info("test: skipped (%s)", SKIPPED_REASON)
    return record
