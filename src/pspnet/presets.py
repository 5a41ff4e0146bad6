"""Named experiments: a preset of parameters run through the pipeline (``pspnet experiment``).

A preset is a YAML file under ``configs/`` holding only the keys that differ from
``params.yaml`` (same sections and names), e.g. ``configs/camvid-cpu.yaml``. Running it:

1. merges the preset (and any ``--set KEY=VALUE``) over ``params.yaml`` and validates the
   result (an unknown key or a bad value names the preset file and stops before anything runs),
   then checks that the MLflow tracking store answers
   (:func:`pspnet.tracking.store.check_tracking_store`; an unreachable server stops it here);
2. brings the preset's data source under DVC (:func:`pspnet.ops.import_data.import_data`:
   ``dvc import-url`` the first time, ``dvc update`` after, so new files are picked up);
3. writes the merged parameters to ``params.yaml`` and runs ``dvc repro``, so DVC reruns
   exactly the stages whose inputs changed and ``dvc.lock`` records the data version used;
4. writes ``<out>.md`` / ``<out>.json``: the exact command, the data version, the val mIoU and
   the per-class IoU, timings and the MLflow run;
5. puts ``params.yaml`` back as it was (even on failure); the workspace outputs stay those of
   the preset's run.

Presets run with ``dvc repro``, not ``dvc exp run``: with DVC 3.67 a workspace experiment
deleted ``data/raw/camvid`` before prepare ran whenever its ``.dvc`` file was not committed
yet (the state right after a first ``import-data``). The ablation study
(:mod:`pspnet.ablation`), whose data is the embedded set, runs its rows as ``dvc exp run``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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
    flatten,
    load_params,
    parse_params,
)
from pspnet.data.classes import CLASSES_FILE, ClassTable
from pspnet.data.manifest import load_dataset_record
from pspnet.errors import ConfigError, PspnetError
from pspnet.tracking.runs import RUN_NAME_ENV, RUN_REF_FILE
from pspnet.tracking.store import check_tracking_store
from pspnet.ops.environment import tool_env

log = logging.getLogger(__name__)

#: Where presets live (``pspnet experiment camvid-cpu`` reads ``configs/camvid-cpu.yaml``).
PRESETS_DIR = "configs"
PRESET_SUFFIX = ".yaml"
#: Where the report goes by default: ``docs/results/<preset>.md`` / ``.json``.
RESULTS_DIR = "docs/results"
#: Metrics copied from ``metrics/eval.json`` into a report.
EVAL_KEYS = ("miou", "miou_absent_as_zero", "macc", "allacc")


# --------------------------------------------------------------------------------------------
# dvc exp run
# --------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A value as ``dvc exp run -S`` parses it (YAML flow syntax)."""
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value


def exp_run_command(name: str, settings: Mapping[str, Any]) -> list[str]:
    """``dvc exp run -n <name> -S key=value ...`` as an argument list (without ``python -m``)."""
    cmd = ["dvc", "exp", "run", "-n", name]
    for key, value in settings.items():
        cmd += ["-S", f"{key}={format_value(value)}"]
    return cmd


def run_streamed(root: Path, command: Sequence[str], env: Mapping[str, str] | None = None) -> float:
    """Run ``dvc ...`` (``command[0] == "dvc"``) in ``root`` with its output streaming through;
    its wall time in seconds, or a :class:`PspnetError` naming the command and its exit code."""
    log.info("running: %s", shlex.join(command))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *command], cwd=root, env={**tool_env(), **(env or {})}, check=False)
    if proc.returncode != 0:
        raise PspnetError(f"`{shlex.join(command)}` exited with {proc.returncode}; its output above says why.")
    return time.perf_counter() - start


def run_experiment(root: Path, name: str, settings: Mapping[str, Any]) -> float:
    """Run one workspace experiment (``dvc exp run``); its wall time in seconds."""
    return run_streamed(root, exp_run_command(name, settings))


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
    return run_streamed(root, ["dvc", "repro"], {RUN_NAME_ENV: name})


def workspace_results(root: Path) -> dict[str, Any]:
    """What the last run left in the workspace: eval metrics, per-class IoU, training figures."""
    params = load_params(root / DEFAULT_PARAMS_FILE)
    metrics_dir = root / params.paths.metrics
    evaluation = read_json(metrics_dir / "eval.json")
    training = read_json(metrics_dir / "train.json")
    per_class = evaluation.get("per_class_iou", {})
    try:  # in class-id order, as the dataset defines them
        order = ClassTable.load(root / params.paths.prepared / CLASSES_FILE).names
        per_class = {name: per_class[name] for name in order if name in per_class} | per_class
    except PspnetError:
        pass
    return {
        **{k: evaluation.get(k) for k in EVAL_KEYS},
        "per_class_iou": per_class,
        "train_seconds": training.get("seconds"),
        "epochs": training.get("epochs"),
        "device": training.get("device"),
        "amp": training.get("amp"),
        "mlflow_run_id": read_json(root / params.paths.models / RUN_REF_FILE).get("run_id"),
    }


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


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
    params = parse_params(_merge(base, unflatten(settings)), f"{path} (+ --set, over {DEFAULT_PARAMS_FILE})")
    return path, settings, params


def render_report(report: Mapping[str, Any]) -> str:
    """A preset run as Markdown: what ran, the headline metrics and the per-class IoU."""
    per_class = report.get("per_class_iou") or {}
    lines = [
        f"# {report['preset']}: val mIoU {report['miou']:.4f}",
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
        "Per-class IoU (val):",
        "",
        "| class | IoU |",
        "| --- | ---: |",
        *(f"| {name} | {value:.4f} |" for name, value in per_class.items()),
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


def run_preset(
    root: Path, preset: str, name: str | None = None, out: str | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Run a preset (with ``overrides`` on top) end to end (see the module doc); returns the report."""
    from pspnet.ops.import_data import import_data

    root = Path(root).resolve()
    path, settings, params = load_preset(root, preset, overrides)
    check_tracking_store(params.mlflow, root)  # before any import or stage: fail now, not after training
    stem = path.stem
    name = name or f"{stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    out_path = root / (out or f"{RESULTS_DIR}/{stem}")
    with params_restored(root) as params_file:
        imported = import_data(params, root)
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
    atomic_files.write_json(out_path.with_suffix(".json"), report)
    atomic_files.write_text(out_path.with_suffix(".md"), render_report(report))
    return {**{k: report[k] for k in ("experiment", "miou", "data_version")}, "report": str(out_path.with_suffix(".md"))}
