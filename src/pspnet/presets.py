"""Named experiments: a preset of parameters run through the pipeline (``pspnet experiment``).

A preset is a YAML file under ``configs/`` holding only the keys that differ from
``params.yaml`` (same sections and names), e.g. ``configs/camvid-cpu.yaml``. Running it
merges and validates it over ``params.yaml``, checks the MLflow tracking store, brings its
data source under DVC (``pspnet import-data``), writes the merged ``params.yaml``, runs
``dvc repro`` (not ``dvc exp run``), writes ``<out>.md`` / ``<out>.json`` (command, data
version, val mIoU, per-class IoU, timings, MLflow run) and puts ``params.yaml`` back, even on
failure.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pspnet import atomic_files
from pspnet.config import (
    DEFAULT_PARAMS_FILE,
    Params,
    deep_merge,
    flatten,
    load_params,
    parse_params,
)
from pspnet.data.classes import CLASSES_FILE, ClassTable
from pspnet.data.manifest import load_dataset_record
from pspnet.errors import ConfigError, PspnetError
from pspnet.evaluate.plots import plot_learning_curve
from pspnet.layout import PRESETS_DIR, RESULTS_DIR, Layout
from pspnet.ops import import_data as data_import
from pspnet.ops.dvc import format_value, run_streamed
from pspnet.tracking.runs import RUN_NAME_ENV
from pspnet.tracking.store import check_tracking_store

#: ``pspnet experiment camvid-cpu`` reads ``<PRESETS_DIR>/camvid-cpu.yaml``; the report goes to
#: ``<RESULTS_DIR>/<preset>.md`` / ``.json`` by default.
PRESET_SUFFIX = ".yaml"
#: Metrics copied from ``metrics/eval.json`` into a report.
EVAL_KEYS = ("miou", "miou_absent_as_zero", "macc", "allacc")
README_FILE = "README.md"
#: A README span that :func:`sync_readme` fills from ``RESULTS_DIR/<name>.json``.
RESULT_SPAN = re.compile(r"<!-- result:([\w.-]+) -->")


# --------------------------------------------------------------------------------------------
# The workspace: params.yaml kept safe, dvc repro, what the run left
# --------------------------------------------------------------------------------------------


@contextmanager
def params_restored(root: Path) -> Iterator[Path]:
    """Save ``params.yaml`` (after checking it loads) and put it back on exit, even on failure
    or SIGTERM (``kill``)."""
    params_file = root / DEFAULT_PARAMS_FILE
    load_params(params_file)

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the `finally` below

    previous = signal.signal(signal.SIGTERM, terminated) if threading.current_thread() is threading.main_thread() else None
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / DEFAULT_PARAMS_FILE
        shutil.copy2(params_file, saved)
        try:
            yield params_file
        finally:
            atomic_files.write_bytes(params_file, saved.read_bytes())
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PspnetError(f"{path}: cannot read the experiment's results ({err}).") from None


def run_repro(root: Path, name: str) -> float:
    """``dvc repro`` in ``root``, its MLflow runs tagged with ``name``; its wall time in seconds."""
    return run_streamed(root, ["repro"], {RUN_NAME_ENV: name})


def _in_order(per_class: dict[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``per_class`` with the classes of ``order`` first, in that order."""
    return {name: per_class[name] for name in order if name in per_class} | per_class


def workspace_results(root: Path) -> dict[str, Any]:
    """What the last run left in the workspace: eval metrics, per-class IoU, training figures."""
    layout = Layout(root, load_params(root / DEFAULT_PARAMS_FILE).paths)
    evaluation = read_json(layout.eval_metrics)
    training = read_json(layout.train_metrics)
    try:  # in class-id order, as the dataset defines them
        order: tuple[str, ...] = ClassTable.load(layout.prepared / CLASSES_FILE).names
    except PspnetError:
        order = ()
    per_class = _in_order(evaluation.get("per_class_iou", {}), order)
    return {
        **{k: evaluation.get(k) for k in EVAL_KEYS},
        "per_class_iou": per_class,
        "confusion": evaluation.get("confusion", {}),  # look-alike pairs (evaluate.confused_pairs)
        # Splits scored beside val (evaluate.extra_splits), e.g. held-out sequences.
        "splits": {name: {**{k: split.get(k) for k in (*EVAL_KEYS, "num_images")},
                          "per_class_iou": _in_order(split.get("per_class_iou") or {}, order)}
                   for name, split in (evaluation.get("splits") or {}).items()},
        "train_seconds": training.get("seconds"),
        "epochs": training.get("epochs"),
        "device": training.get("device"),
        "amp": training.get("amp"),
        "mlflow_run_id": read_json(layout.run_ref).get("run_id"),
        "curve": _curve_rows(layout.train_curve),
    }


def _curve_rows(path: Path) -> list[dict[str, float]]:
    """``train_curve.csv`` as rows of numbers (none when the run scored no curve)."""
    if not path.is_file():
        return []
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in rows]


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def preset_path(root: Path, preset: str) -> Path:
    """``configs/<preset>.yaml``, or ``preset`` itself when it is a path to a file."""
    candidate = Path(preset)
    path = candidate if candidate.suffix else root / PRESETS_DIR / f"{preset}{PRESET_SUFFIX}"
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        known = sorted(p.stem for p in (root / PRESETS_DIR).glob(f"*{PRESET_SUFFIX}"))
        raise ConfigError(f"{path}: no such preset. Known presets in {PRESETS_DIR}/: {known}.")
    return path


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=2", "evaluate.scales=[1.0]"]`` -> ``{"train.epochs": 2, ...}`` (YAML values)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2.")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err}).") from None
    return overrides


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 0.01}`` -> ``{"train": {"lr": 0.01}}``."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_preset(
    root: Path, preset: str, overrides: Mapping[str, Any] | None = None
) -> tuple[Path, dict[str, Any], Params]:
    """(preset file, its flattened settings with ``overrides`` on top, params.yaml with them
    applied, validated)."""
    path = preset_path(root, preset)
    try:
        overlay = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(overlay, dict):
        raise ConfigError(f"{path}: a preset is a mapping of params.yaml sections, got {type(overlay).__name__}.")
    settings = flatten(overlay) | dict(overrides or {})
    base = yaml.safe_load((root / DEFAULT_PARAMS_FILE).read_text(encoding="utf-8")) or {}
    params = parse_params(deep_merge(base, unflatten(settings)), f"{path} (+ --set, over {DEFAULT_PARAMS_FILE})")
    return path, settings, params


def _split_lines(splits: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The table of the splits scored beside val (held-out groups: the score new footage gets)."""
    if not splits:
        return []
    rows = [f"| {name} | {s['num_images']} | {s['miou']:.4f} | {s['macc']:.4f} | {s['allacc']:.4f} |" for name, s in splits.items()]
    return ["| split (beside val) | images | mIoU | mAcc | allAcc |", "| --- | ---: | ---: | ---: | ---: |", *rows, ""]


def _per_class_lines(per_class: Mapping[str, Any], splits: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per-class IoU of val, and of each other split beside it."""
    others = [name for name, split in splits.items() if split.get("per_class_iou")]

    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    rows = [f"| {name} | {cell(value)} |" + "".join(f" {cell(splits[o]['per_class_iou'].get(name))} |" for o in others)
            for name, value in per_class.items()]
    head = "| class | IoU |" if not others else "| class | val |" + "".join(f" {o} |" for o in others)
    return ["Per-class IoU (val):" if not others else "Per-class IoU:", "", head,
            "| --- | ---: |" + " ---: |" * len(others), *rows]


def _curve_lines(report: Mapping[str, Any]) -> list[str]:
    """Time to accuracy: the learning curve's figure and points (mIoU against training minutes)."""
    rows = report.get("curve") or []
    if not rows:
        return []
    splits = [k for k in rows[0] if k not in ("epoch", "train_minutes")]
    table = [f"| {int(r['epoch'])} | {r['train_minutes']:.1f} |" + "".join(f" {r[s]:.4f} |" if s in r else " |" for s in splits)
             for r in rows]
    return [
        ("Time to accuracy (the learning curve: whole image, single scale, no flip, on the evenly spaced "
         "subset of each split that `train.curve_images` sets; `_raw`: the weights before averaging):"),
        "", f"![learning curve]({report['curve_figure']})", "",
        "| epoch | training minutes |" + "".join(f" {s} |" for s in splits),
        "| ---: | ---: |" + " ---: |" * len(splits), *table, "",
    ]


def render_report(report: Mapping[str, Any]) -> str:
    """A preset run as Markdown: what ran, the headline metrics and the per-class IoU."""
    per_class = report.get("per_class_iou") or {}
    splits = report.get("splits") or {}
    headline = "".join(f", {name} mIoU {split['miou']:.4f}" for name, split in splits.items())
    lines = [
        f"# {report['preset']}: val mIoU {report['miou']:.4f}{headline}",
        "",
        (f"Run on {report['date']} ({report['machine']}, device {report.get('device')}, bfloat16 autocast "
         f"{'on' if report.get('amp') else 'off'}); run name `{report['experiment']}` (MLflow tag `pspnet.run_name`), MLflow run "
        f"`{report['mlflow_run_id']}`, data version `{report['data_version']}`."),
        "",
        "| val mIoU | mIoU (absent = 0) | mAcc | allAcc | epochs | train time | wall time |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        (f"| {report['miou']:.4f} | {report['miou_absent_as_zero']:.4f} | {report['macc']:.4f} | "
        f"{report['allacc']:.4f} | {report['epochs']} | {report['train_seconds'] / 60:.1f} min | "
        f"{report['wall_seconds'] / 60:.1f} min |"),
        "",
        *_split_lines(splits),
        *_curve_lines(report),
        *_per_class_lines(per_class, splits),
        "",
        "Settings (over `params.yaml`):",
        "",
        "```yaml",
        yaml.safe_dump(report["settings"], sort_keys=False).rstrip(),
        "```",
        "",
        "Reproduce (from the project root):",
        "",
        "```",
        report["command"],
        "```",
        "",
        "which ran:",
        "",
        "```",
        report["dvc_command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def readme_line(report: Mapping[str, Any], report_path: str) -> str:
    """A preset's headline for the README, from its report: the numbers are never typed by hand."""
    splits = "".join(f", {name} mIoU **{split['miou']:.3f}**" for name, split in (report.get("splits") or {}).items())
    return (f"`pspnet experiment {report['preset']}` ({report['epochs']} epochs, {report['train_seconds'] / 60:.1f} training "
            f"minutes, {report['machine']}): val mIoU **{report['miou']:.3f}**{splits} ([report]({report_path}), "
            f"run of {report['date']}).")


def sync_readme(root: Path) -> list[str]:
    """Rewrite each ``<!-- result:NAME -->...<!-- /result -->`` span of ``root/README.md`` from
    ``RESULTS_DIR/NAME.json``; returns the names rewritten."""
    readme = Path(root) / README_FILE
    text = readme.read_text(encoding="utf-8")
    names = RESULT_SPAN.findall(text)
    for name in names:
        report_path = f"{RESULTS_DIR}/{name}"
        line = readme_line(read_json(Path(root) / f"{report_path}.json"), f"{report_path}.md")
        text = re.sub(rf"(<!-- result:{re.escape(name)} -->).*?(<!-- /result -->)", lambda m, line=line: f"{m[1]}{line}{m[2]}", text, flags=re.DOTALL)
    atomic_files.write_text(readme, text)
    return names


def run_preset(
    root: Path, preset: str, name: str | None = None, out: str | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Run a preset (with ``overrides`` on top) end to end (see the module doc); returns the report."""
    root = Path(root).resolve()
    path, settings, params = load_preset(root, preset, overrides)
    check_tracking_store(params.mlflow, root)  # before any import or stage: fail now, not after training
    stem = path.stem
    name = name or f"{stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    out_path = root / (out or f"{RESULTS_DIR}/{stem}")
    with params_restored(root) as params_file:
        imported = data_import.import_data(params, root)
        merged = params.model_dump(mode="json", by_alias=True)
        atomic_files.write_text(params_file, f"# {stem}: params.yaml + {path.relative_to(root)} (restored after the run)\n" + yaml.safe_dump(merged, sort_keys=False))
        seconds = run_repro(root, name)
        results = workspace_results(root)
        dataset = load_dataset_record(root / params.paths.prepared)
    report = {
        "preset": stem,
        "experiment": name,
        "date": f"{datetime.now(UTC):%Y-%m-%d}",
        "machine": f"{os.cpu_count()} CPU cores" + (", CUDA" if params.train.device == "cuda" else ""),
        "command": shlex.join(["pspnet", "experiment", stem, *(f"--set={k}={format_value(v)}" for k, v in (overrides or {}).items())]),
        "dvc_command": "dvc repro  # with params.yaml = params.yaml + the settings above",
        "settings": settings,
        "data_version": dataset.get("version"),
        "imports": imported["inputs"],
        **results,
        "wall_seconds": round(seconds, 1),
    }
    if report["curve"]:
        figure = plot_learning_curve(Layout(root, params.paths).train_curve, out_path.with_name(f"{out_path.name}-curve.png"),
                                     title=f"{stem}: mIoU against training minutes")
        report["curve_figure"] = figure.name
    atomic_files.write_json(out_path.with_suffix(".json"), report)
    atomic_files.write_text(out_path.with_suffix(".md"), render_report(report))
    readme = root / README_FILE
    if out is None and readme.is_file() and f"<!-- result:{stem} -->" in readme.read_text(encoding="utf-8"):
        sync_readme(root)  # the canonical report changed: so does the README's figure
    return {**{k: report[k] for k in ("experiment", "miou", "data_version")}, "report": str(out_path.with_suffix(".md"))}
