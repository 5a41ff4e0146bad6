"""The ``validate`` stage: a Great Expectations gate between ``prepare`` and ``train``.

It profiles every sample (:mod:`pspnet.data.profile`) and checks four tables with Great
Expectations 1.x (ephemeral context, pandas data source, whole-dataframe batches, one
expectation suite, validation definition and checkpoint per table):

- ``samples``: one row per sample of the manifest, plus one per sample ``prepare`` rejected
  (``rejected.csv``; check ``source_converts``): paths inside the prepared folder, files within
  ``data.max_image_pixels`` and decoding, RGB image, 8-bit single-channel mask, equal sizes,
  label values within the classes or the ignore index, unique ids, known splits;
- ``splits``: one row per required split: it holds at least ``min_samples_per_split``;
- ``classes``: one row per class: it appears in at least one train mask
  (when ``require_all_classes_in_train``);
- ``shift``: one row per comparison of class histograms (every split against train, and each
  split against the previous data version): Jensen-Shannon distance at most
  ``shift_threshold``. A flagged shift is a warning unless ``fail_on_shift``.

The suite learns what to expect from the source's definition (``dataset.json``, written by
``prepare``): its class set (``classes.json``) bounds the label values, and its image sizes
(exact sizes, or bounds on the sides) become expectations on every image.

Each table's key column is ``id`` (sample id, split name, class name), so
``unexpected_index_column_names=["id"]`` names every offending row. It writes
``reports/validation/summary.json``, ``reports/validation/quarantine.csv`` and the Data Docs
site (``data_docs/index.html``, with the per-sample table beside it as
``data_docs/profile.csv``), then raises :class:`DataError` listing every failure with its fix
if anything failed: the report is always on disk first.

``validate.quarantine: true`` turns failing samples from gate failures into a quarantine list
(:mod:`pspnet.data.quarantine`) that train / evaluate / register skip; the dataset-level
tables are then computed on the samples that remain, and still fail the gate.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd

from pspnet import atomic_files
from pspnet.config import Params
from pspnet.data.classes import CLASSES_FILE, ClassTable
from pspnet.data.manifest import REJECTED_FILE, load_dataset_record, read_rejected
from pspnet.data.profile import SINGLE_CHANNEL_MASK_MODES, problem_list, profile_dataset, rejected_rows
from pspnet.data.quarantine import effective_version, write_quarantine
from pspnet.layout import QUARANTINE_FILE, VALIDATION_DIR
from pspnet.data.quarantine import SEPARATOR as QUARANTINE_SEPARATOR
from pspnet.data.shift import (
    load_history,
    record_version,
    split_histograms,
    split_shift,
    version_shift,
)
from pspnet.data.sources.base import Expectations
from pspnet.errors import DataError

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.json"
PROFILE_FILE = "profile.csv"
DOCS_DIR = "data_docs"
#: Name of our Data Docs site (the default ephemeral context's own site is ``local_site``).
DOCS_SITE_NAME = "pspnet_validation"
#: GE result format: every offending row, named by its ``id`` column.
RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]}
#: The three tables the gate validates, in order.
SAMPLES_TABLE, SPLITS_TABLE, CLASSES_TABLE, SHIFT_TABLE = "samples", "splits", "classes", "shift"
#: Names of the Great Expectations expectation classes the gate uses.
IN_SET, BETWEEN, UNIQUE = "ExpectColumnValuesToBeInSet", "ExpectColumnValuesToBeBetween", "ExpectColumnValuesToBeUnique"

#: Renders, for a failing row (a dict of its columns), what is wrong and how to fix it.
Explain = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Check:
    """One expectation of the gate and how to explain a row that fails it.

    ``expectation`` names a GE expectation class, built with ``column`` and ``kwargs``.
    ``explain`` is ``None`` for the sample checks whose explanation the profile's ``problems``
    column already gives.
    """

    name: str
    table: str
    column: str
    description: str
    expectation: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    explain: Explain | None = None

    def build(self) -> Any:
        """The GE expectation (imported lazily: importing GE takes seconds)."""
        import great_expectations as gx

        kind = getattr(gx.expectations, self.expectation)
        return kind(column=self.column, description=self.description, meta={"check": self.name}, **self.kwargs)


def sample_checks(params: Params) -> list[Check]:
    """The per-sample expectations (table ``samples``, the profile)."""
    known = sorted(set(params.validate_.known_splits) | set(params.validate_.required_splits))

    def unknown_split(row: dict[str, Any]) -> str:
        return (
            f"split {row['split']!r} is not one of {known}. "
            "Fix: correct it in manifest.csv, or add it to validate.known_splits in params.yaml"
        )

    true = {"value_set": [True]}
    return [
        Check(
            "source_converts",
            SAMPLES_TABLE,
            "source_ok",
            f"prepare converted the source sample (else it is listed in {REJECTED_FILE})",
            IN_SET,
            true,
        ),
        Check("unique_ids", SAMPLES_TABLE, "id", "sample ids are unique", UNIQUE),
        Check(
            "known_split", SAMPLES_TABLE, "split", f"split is one of {known}", IN_SET, {"value_set": known}, unknown_split
        ),
        Check("paths_inside", SAMPLES_TABLE, "paths_inside", "manifest paths stay inside the prepared folder", IN_SET, true),
        Check(
            "image_pixel_limit",
            SAMPLES_TABLE,
            "image_within_limit",
            f"image declares at most data.max_image_pixels ({params.data.max_image_pixels:,}) pixels",
            IN_SET,
            true,
        ),
        Check(
            "mask_pixel_limit",
            SAMPLES_TABLE,
            "mask_within_limit",
            f"mask declares at most data.max_image_pixels ({params.data.max_image_pixels:,}) pixels",
            IN_SET,
            true,
        ),
        Check("image_decodes", SAMPLES_TABLE, "image_readable", "image file exists and decodes", IN_SET, true),
        Check("mask_decodes", SAMPLES_TABLE, "mask_readable", "mask file exists and decodes", IN_SET, true),
        Check("image_rgb", SAMPLES_TABLE, "image_mode", "image is RGB", IN_SET, {"value_set": ["RGB"]}),
        Check(
            "mask_single_channel",
            SAMPLES_TABLE,
            "mask_mode",
            "mask is 8-bit single-channel (class ids)",
            IN_SET,
            {"value_set": list(SINGLE_CHANNEL_MASK_MODES)},
        ),
        Check("sizes_match", SAMPLES_TABLE, "sizes_match", "image and mask have the same size", IN_SET, true),
        Check("labels_valid", SAMPLES_TABLE, "labels_valid", "mask values are class ids or the ignore index", IN_SET, true),
    ]


def source_checks(expect: Expectations, source: str) -> list[Check]:
    """Expectations from the source's definition: the image sizes it ships."""

    def fix(row: dict[str, Any]) -> str:
        return (
            f"image {row['image']} is {row['image_size']} (HxW), but {source} images are {what}. "
            "Fix: the file is truncated or not from this dataset; replace or remove it, or pick the right data.source.name"
        )

    checks = []
    if expect.image_sizes is not None:
        sizes = [f"{h}x{w}" for h, w in expect.image_sizes]
        what = " or ".join(sizes)
        checks.append(
            Check("image_size", SAMPLES_TABLE, "image_size", f"image size (HxW) is {what}", IN_SET, {"value_set": sizes}, fix)
        )
    if expect.min_side is not None or expect.max_side is not None:
        what = f"between {expect.min_side or 1} and {expect.max_side or 'any'} px on each side"
        for column, bound in (("image_min_side", {"min_value": expect.min_side}), ("image_max_side", {"max_value": expect.max_side})):
            if next(iter(bound.values())) is not None:
                checks.append(Check(column, SAMPLES_TABLE, column, f"image sides are {what}", BETWEEN, bound, fix))
    return checks


def shift_checks(params: Params) -> list[Check]:
    """Class histograms do not drift apart (table ``shift``)."""
    threshold = params.validate_.shift_threshold

    def shifted(row: dict[str, Any]) -> str:
        changes = json.loads(row["top_changes"])
        moved = ", ".join(f"{c['class']} {c['reference_share']:.3f}->{c['share']:.3f}" for c in changes)
        return (
            f"class distribution shift {row['id']}: Jensen-Shannon distance {row['js_distance']:.3f} > "
            f"{threshold} (largest changes: {moved}). Check that the data is what you meant; raise "
            "validate.shift_threshold if this shift is expected"
        )

    return [
        Check(
            "class_shift",
            SHIFT_TABLE,
            "js_distance",
            f"class histograms within Jensen-Shannon distance {threshold}",
            BETWEEN,
            {"max_value": threshold},
            shifted,
        )
    ]


def dataset_checks(params: Params) -> list[Check]:
    """The dataset-level expectations (tables ``splits`` and ``classes``)."""
    minimum = params.validate_.min_samples_per_split

    def split_too_small(row: dict[str, Any]) -> str:
        return (
            f"split {row['id']!r} has {row['num_samples']} sample(s), at least {minimum} required "
            "(validate.required_splits, validate.min_samples_per_split). "
            "Fix: add samples to it in the source, or change those parameters"
        )

    def class_unseen(row: dict[str, Any]) -> str:
        return (
            f"class {row['id']!r} (id {row['class_id']}) appears in no train mask, so it cannot be learnt. "
            "Fix: add train samples that contain it, or set validate.require_all_classes_in_train: false"
        )

    checks = [
        Check(
            "split_sizes",
            SPLITS_TABLE,
            "num_samples",
            f"every required split has at least {minimum} sample(s)",
            BETWEEN,
            {"min_value": minimum},
            split_too_small,
        )
    ]
    if params.validate_.require_all_classes_in_train:
        checks.append(
            Check(
                "classes_in_train",
                CLASSES_TABLE,
                "train_masks",
                "every class appears in at least one train mask",
                BETWEEN,
                {"min_value": 1},
                class_unseen,
            )
        )
    return checks


# --------------------------------------------------------------------------------------------
# Dataset-level tables
# --------------------------------------------------------------------------------------------


def split_table(profile: pd.DataFrame, required: tuple[str, ...]) -> pd.DataFrame:
    """One row per required split: ``id`` (split name), ``num_samples``."""
    counts = profile["split"].value_counts()
    return pd.DataFrame({"id": list(required), "num_samples": [int(counts.get(s, 0)) for s in required]})


@dataclass(frozen=True)
class LabelSums:
    """Per split, per label value: pixels over every decodable mask, and masks holding the label.

    Summed in one pass over the profile's ``label_counts`` (time linear in the samples, memory
    in splits x label values; no per-(sample, label) table)."""

    pixels: dict[str, dict[int, int]]
    masks: dict[str, dict[int, int]]

    @classmethod
    def of(cls, profile: pd.DataFrame) -> LabelSums:
        pixels: dict[str, dict[int, int]] = {}
        masks: dict[str, dict[int, int]] = {}
        for split, cell in zip(profile["split"], profile["label_counts"]):
            counts = json.loads(cell)
            if not counts:
                continue
            split_pixels = pixels.setdefault(split, {})
            split_masks = masks.setdefault(split, {})
            for label, count in counts.items():
                value = int(label)
                split_pixels[value] = split_pixels.get(value, 0) + int(count)
                split_masks[value] = split_masks.get(value, 0) + 1
        return cls(pixels, masks)


def class_table(profile: pd.DataFrame, classes: ClassTable, sums: LabelSums | None = None) -> pd.DataFrame:
    """One row per class: ``id`` (name), ``class_id``, ``train_masks``, ``train_pixels``."""
    sums = sums or LabelSums.of(profile)
    masks, total = sums.masks.get("train", {}), sums.pixels.get("train", {})
    return pd.DataFrame(
        {
            "id": list(classes.names),
            "class_id": list(range(classes.num_classes)),
            "train_masks": [masks.get(c, 0) for c in range(classes.num_classes)],
            "train_pixels": [total.get(c, 0) for c in range(classes.num_classes)],
        }
    )


def class_coverage(profile: pd.DataFrame, classes: ClassTable, sums: LabelSums | None = None) -> list[dict[str, Any]]:
    """Per class: train masks containing it, and its pixels and pixel share in every split."""
    sums = sums or LabelSums.of(profile)
    # Splits with labelled (non-ignore) pixels, in name order, and their labelled pixel totals.
    split_totals = {
        split: sum(n for label, n in counts.items() if label != classes.ignore_index)
        for split, counts in sorted(sums.pixels.items())
        if any(label != classes.ignore_index for label in counts)
    }
    table = class_table(profile, classes, sums)
    coverage = []
    for row in table.to_dict("records"):
        cid = row["class_id"]
        counts = {s: sums.pixels[s].get(cid, 0) for s in split_totals}
        coverage.append(
            {
                "class_id": cid,
                "name": row["id"],
                "train_masks": row["train_masks"],
                "pixels_per_split": counts,
                "pixel_share_per_split": {s: round(counts[s] / max(split_totals[s], 1), 6) for s in counts},
            }
        )
    return coverage


# --------------------------------------------------------------------------------------------
# Great Expectations
# --------------------------------------------------------------------------------------------


def _context(docs_dir: Path) -> Any:
    """An in-memory GE context (no analytics, no progress bars) with one Data Docs site in ``docs_dir``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.add_data_docs_site(
        site_name=DOCS_SITE_NAME,
        site_config={
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return context


def _run_table(context: Any, datasource: Any, table: str, frame: pd.DataFrame, checks: list[Check]) -> list[Any]:
    """Validate ``frame`` against ``checks`` through a checkpoint that updates the Data Docs."""
    import great_expectations as gx

    asset = datasource.add_dataframe_asset(name=table)
    batch = asset.add_batch_definition_whole_dataframe(name=f"{table}_all")
    suite = context.suites.add(gx.ExpectationSuite(name=f"pspnet_{table}"))
    for check in checks:
        suite.add_expectation(check.build())
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"pspnet_{table}_validation", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"pspnet_{table}_checkpoint",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE_NAME])],
            result_format=RESULT_FORMAT,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    return [r for run in result.run_results.values() for r in run.results]


def _raised(info: Any) -> str | None:
    """The message of an exception GE caught while evaluating an expectation, if any."""
    if isinstance(info, dict):
        if info.get("raised_exception"):
            return str(info.get("exception_message") or "unknown error")
        for value in info.values():
            message = _raised(value)
            if message:
                return message
    return None


@dataclass
class Outcome:
    """The result of one check: did it pass, which rows (ids) failed, or what error GE hit."""

    check: Check
    success: bool
    #: Rows that failed (GE's count: a duplicated id counts once per row).
    unexpected_count: int
    #: Their ids, each once, in table order.
    unexpected_ids: list[str]
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check.name,
            "table": self.check.table,
            "column": self.check.column,
            "description": self.check.description,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "unexpected_ids": self.unexpected_ids,
            "error": self.error,
        }


def _outcomes(results: list[Any], checks: list[Check]) -> list[Outcome]:
    """Match GE results back to our checks (through the expectation's ``meta.check``)."""
    by_name = {c.name: c for c in checks}
    outcomes = []
    for result in results:
        check = by_name[result.expectation_config.meta["check"]]
        ids = [str(entry["id"]) for entry in result.result.get("unexpected_index_list") or []]
        error = _raised(result.exception_info)
        count = int(result.result.get("unexpected_count") or len(ids))
        outcomes.append(Outcome(check, bool(result.success) and error is None, count, list(dict.fromkeys(ids)), error))
    return outcomes


class ExpectationRunner:
    """One GE context whose Data Docs site is built in ``docs_dir``; tables are validated one
    call at a time (the dataset-level tables depend on which samples failed)."""

    def __init__(self, docs_dir: Path) -> None:
        self.context = _context(docs_dir)
        self.datasource = self.context.data_sources.add_pandas(name="pspnet")

    def run(self, tables: dict[str, pd.DataFrame], checks: list[Check]) -> list[Outcome]:
        """Validate every table with its checks."""
        outcomes = []
        for table, frame in tables.items():
            table_checks = [c for c in checks if c.table == table]
            if table_checks:
                outcomes += _outcomes(_run_table(self.context, self.datasource, table, frame, table_checks), table_checks)
        return outcomes


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def failing_samples(profile: pd.DataFrame, outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Every sample id some sample check failed, in manifest order, with its problems and fixes."""
    failed_checks: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.check.table == SAMPLES_TABLE:
            for sample_id in outcome.unexpected_ids:
                failed_checks.setdefault(sample_id, []).append(outcome)
    failures: list[dict[str, Any]] = []
    if not failed_checks:
        return failures
    # Group only the failing rows: a groupby over every sample costs ~0.3 ms per id (6 s at 20,000).
    failing_rows = profile[profile["id"].isin(list(failed_checks))]
    for sample_id, rows in failing_rows.groupby("id", sort=False):
        first = rows.iloc[0].to_dict()
        problems = list(dict.fromkeys(p for cell in rows["problems"] for p in problem_list(cell)))
        for outcome in failed_checks[sample_id]:
            if outcome.check.explain is not None:
                problems.append(outcome.check.explain(first))
        if not problems:  # cannot happen while profile and checks agree; never hide a failure
            problems = [f"failed: {o.check.description}" for o in failed_checks[sample_id]]
        names = [o.check.name for o in failed_checks[sample_id]]
        failures.append({"id": sample_id, "split": first["split"], "failed_checks": names, "problems": problems})
    return failures


def failed_dataset_checks(tables: dict[str, pd.DataFrame], outcomes: list[Outcome]) -> list[str]:
    """One line per failing row of a dataset-level table, or per check GE could not evaluate."""
    lines = []
    for outcome in outcomes:
        if outcome.error:
            check = outcome.check
            lines.append(f"check {check.name!r} ({check.description}) could not be evaluated: {outcome.error}")
        if outcome.check.table == SAMPLES_TABLE or outcome.success or outcome.check.explain is None:
            continue
        frame = tables[outcome.check.table]
        for row in frame[frame["id"].isin(outcome.unexpected_ids)].to_dict("records"):
            lines.append(outcome.check.explain(row))
    return lines


def error_message(
    failures: list[dict[str, Any]],
    dataset_failures: list[str],
    limit: int,
    report: str,
    docs: str,
    prepared: str = "the dataset",
    note: str = "",
) -> str:
    """The :class:`DataError` text: each failing sample with its fixes, then each failed dataset check.

    At most ``limit`` of each are listed; the rest are counted ("... and N more"). ``note`` is
    added to the first line.
    """
    lines = [
        f"data validation of {prepared} failed: {len(failures)} failing sample(s), "
        f"{len(dataset_failures)} failed dataset-level check(s) (prepared file paths are relative to {prepared}, "
        f"the source files of samples prepare rejected to the project root). Report: {report}; Data Docs: {docs}{note}"
    ]
    if failures:
        lines.append("Failing samples:")
        for failure in failures[:limit]:
            lines.append(f"  - {failure['id']} ({failure['split']}): " + "; ".join(failure["problems"]))
        if len(failures) > limit:
            lines.append(f"  ... and {len(failures) - limit} more (all are listed in {report})")
    if dataset_failures:
        lines.append("Failed dataset-level checks:")
        lines += [f"  - {line}" for line in dataset_failures[:limit]]
        if len(dataset_failures) > limit:
            lines.append(f"  ... and {len(dataset_failures) - limit} more (all are listed in {report})")
    return "\n".join(lines)


def _write_profile(path: Path, profile: pd.DataFrame) -> None:
    with atomic_files.atomic_path(path) as tmp:
        profile.to_csv(tmp, index=False)


def _fail_early(report_dir: Path, prepared: str, err: DataError) -> NoReturn:
    """The dataset cannot even be profiled: write a summary saying why, an empty quarantine list,
    drop stale docs, re-raise."""
    shutil.rmtree(report_dir / DOCS_DIR, ignore_errors=True)
    write_quarantine(report_dir / QUARANTINE_FILE, [])
    atomic_files.write_json(report_dir / SUMMARY_FILE, {"success": False, "prepared": prepared, "error": str(err)})
    raise err


def _sample_files(row: dict[str, Any], prepared: str) -> str:
    """The files of a samples-table row: the source files of a rejected sample, else the prepared ones."""
    if not row["source_ok"]:
        return str(row["source_files"])
    return QUARANTINE_SEPARATOR.join(f"{prepared}/{row[k]}" for k in ("image", "mask"))


def quarantine_rows(samples: pd.DataFrame, failures: list[dict[str, Any]], prepared: str) -> list[dict[str, str]]:
    """The ``quarantine.csv`` rows of the failing samples (every row of a repeated id)."""
    by_id = {f["id"]: f for f in failures}
    return [
        {
            "id": row["id"],
            "split": row["split"],
            "files": _sample_files(row, prepared),
            "problems": QUARANTINE_SEPARATOR.join(by_id[row["id"]]["problems"]),
        }
        for row in samples[samples["id"].isin(by_id)].to_dict("records")
    ]


def _with_size_columns(profile: pd.DataFrame) -> pd.DataFrame:
    """Add ``image_size`` ("HxW", "unreadable"; missing for samples prepare rejected: their
    check is ``source_converts``), ``image_min_side`` and ``image_max_side`` to the samples table."""
    heights, widths = profile["image_height"], profile["image_width"]
    return profile.assign(
        image_size=[
            (f"{h}x{w}" if pd.notna(h) else "unreadable") if ok else None
            for h, w, ok in zip(heights, widths, profile["source_ok"])
        ],
        image_min_side=pd.concat([heights, widths], axis=1).min(axis=1, skipna=False).astype("Int64"),
        image_max_side=pd.concat([heights, widths], axis=1).max(axis=1, skipna=False).astype("Int64"),
    )


def _shift_frame(shifts: list[dict[str, Any]]) -> pd.DataFrame:
    """The ``shift`` table: ``id``, ``js_distance`` (NaN: not comparable), ``top_changes`` (JSON)."""
    return pd.DataFrame(
        {
            "id": [s["id"] for s in shifts],
            "js_distance": pd.array([s["js_distance"] for s in shifts], dtype="Float64"),
            "top_changes": [json.dumps(s["top_changes"]) for s in shifts],
        }
    )


def validate(params: Params, root: Path) -> dict[str, Any]:
    """Stage ``validate``: run the gate on ``root / params.paths.prepared``.

    Writes ``<reports>/validation/summary.json``, ``<reports>/validation/quarantine.csv``
    (see :mod:`pspnet.data.quarantine`) and ``<reports>/validation/data_docs/`` (the GE site,
    built in a temp folder and swapped in whole, plus ``profile.csv``). The samples table holds
    the manifest's samples and those ``prepare`` rejected. With ``validate.quarantine`` the
    failing samples are quarantined instead of failing the gate, and the dataset-level tables
    are computed on the samples that remain. Returns a short summary; raises
    :class:`DataError` (after writing the report) if the gate failed.
    """
    start = time.perf_counter()
    cfg = params.validate_
    root = Path(root).resolve()
    prepared_dir = root / params.paths.prepared
    report_dir = root / params.paths.reports / VALIDATION_DIR
    report_rel = f"{params.paths.reports}/{VALIDATION_DIR}"
    try:
        classes = ClassTable.load(prepared_dir / CLASSES_FILE)
        profile = profile_dataset(
            prepared_dir, classes, num_workers=cfg.num_workers, max_pixels=params.data.max_image_pixels
        )
        rejected = read_rejected(prepared_dir)
    except DataError as err:
        _fail_early(report_dir, params.paths.prepared, err)

    dataset = load_dataset_record(prepared_dir)
    expect = Expectations.from_json(dataset.get("expect", {}))
    samples = _with_size_columns(pd.concat([profile, rejected_rows(rejected)], ignore_index=True) if len(rejected) else profile)
    history_path = report_dir / HISTORY_FILE
    with atomic_files.atomic_dir(report_dir / DOCS_DIR) as docs_tmp:
        runner = ExpectationRunner(docs_tmp)
        checks = sample_checks(params) + source_checks(expect, dataset.get("source", "this source"))
        sample_outcomes = runner.run({SAMPLES_TABLE: samples}, checks)
        failures = failing_samples(samples, sample_outcomes)
        quarantined = [f["id"] for f in failures] if cfg.quarantine else []
        kept = profile[~profile["id"].isin(quarantined)]
        sums = LabelSums.of(kept)
        coverage = class_coverage(kept, classes, sums)
        histograms = split_histograms(coverage)
        shifts = split_shift(histograms, classes.names) + version_shift(
            load_history(history_path), dataset.get("version"), histograms, classes.names
        )
        tables = {
            SPLITS_TABLE: split_table(kept, cfg.required_splits),
            CLASSES_TABLE: class_table(kept, classes, sums),
            SHIFT_TABLE: _shift_frame(shifts),
        }
        dataset_level = dataset_checks(params) + shift_checks(params)
        outcomes = sample_outcomes + runner.run(tables, dataset_level)
        checks += dataset_level
        _write_profile(docs_tmp / PROFILE_FILE, samples)
    tables[SAMPLES_TABLE] = samples

    def counts(outcome: Outcome) -> bool:
        """Does this outcome decide the gate? (Quarantined sample failures and shift warnings do not.)"""
        if outcome.check.table == SHIFT_TABLE:
            return cfg.fail_on_shift
        return outcome.check.table != SAMPLES_TABLE or not cfg.quarantine or outcome.error is not None

    gate = [o for o in outcomes if counts(o)]
    warnings = failed_dataset_checks(tables, [o for o in outcomes if o not in gate and o.check.table == SHIFT_TABLE])
    for warning in warnings:
        log.warning("validate: %s", warning)
    gate_failures = [] if cfg.quarantine else failures
    dataset_failures = failed_dataset_checks(tables, gate)
    success = all(o.success for o in gate) and not gate_failures and not dataset_failures
    quarantine_file = report_dir / QUARANTINE_FILE
    write_quarantine(quarantine_file, quarantine_rows(samples, failures, params.paths.prepared) if cfg.quarantine else [])
    if quarantined:
        log.warning(
            "validate: %d failing sample(s) quarantined (validate.quarantine: true), listed in %s/%s: %s",
            len(quarantined), report_rel, QUARANTINE_FILE, ", ".join(quarantined[: cfg.max_failures_listed]),
        )  # fmt: skip
    summary = {
        "success": success,
        "prepared": params.paths.prepared,
        "source": dataset.get("source"),
        "data_version": dataset.get("version"),
        "training_data_version": effective_version(dataset.get("version"), quarantined),
        "num_samples": len(profile),
        "num_rejected": len(rejected),
        "num_samples_used": len(kept),
        "counts_per_split": {str(k): int(v) for k, v in profile["split"].value_counts(sort=False).items()},
        "counts_per_split_used": {str(k): int(v) for k, v in kept["split"].value_counts(sort=False).items()},
        "image_sizes": {str(k): int(v) for k, v in samples["image_size"][: len(profile)].value_counts().items()},
        "image_conversions": dataset.get("image_conversions", {}),
        "expectations": [o.to_json() for o in outcomes],
        "failing_samples": failures,
        "quarantine": {
            "enabled": cfg.quarantine,
            "file": f"{report_rel}/{QUARANTINE_FILE}",
            "count": len(quarantined),
            "ids": quarantined,
        },
        "failed_dataset_checks": dataset_failures,
        "warnings": warnings,
        "class_coverage": coverage,
        "class_histograms": histograms,
        "distribution_shift": shifts,
        "data_docs": f"{report_rel}/{DOCS_DIR}/index.html",
        "profile": f"{report_rel}/{DOCS_DIR}/{PROFILE_FILE}",
    }
    if success:
        record_version(
            history_path,
            {"version": dataset.get("version"), "source": dataset.get("source"), "num_samples": len(kept),
             "histograms": histograms},
            cfg.history_limit,
        )  # fmt: skip
    atomic_files.write_json(report_dir / SUMMARY_FILE, summary)
    if not success:
        note = f"; {len(quarantined)} sample(s) quarantined, listed in {report_rel}/{QUARANTINE_FILE}" if quarantined else ""
        raise DataError(
            error_message(
                gate_failures,
                dataset_failures,
                cfg.max_failures_listed,
                f"{report_rel}/{SUMMARY_FILE}",
                summary["data_docs"],
                params.paths.prepared,
                note,
            )
        )
    return {
        "success": True,
        "num_samples": len(profile),
        "num_samples_used": len(kept),
        "counts_per_split": summary["counts_per_split"],
        "rejected": len(rejected),
        "quarantined": len(quarantined),
        "expectations": len(outcomes),
        "warnings": len(warnings),
        "summary": f"{report_rel}/{SUMMARY_FILE}",
        "data_docs": summary["data_docs"],
        "seconds": round(time.perf_counter() - start, 2),
    }
