"""The paper's ablations in miniature, as DVC experiments: ``pspnet ablation`` / ``make ablation``.

Each row (:data:`ROWS`: the FCN baseline, PSPNet, PSPNet tested with flip + scales, no
auxiliary loss, max pooling, a single-bin pyramid) is one ``dvc exp run -n <name> -S key=value
...`` in the workspace, with the same seed, data and training budget, and sets every studied
key (plus a preset's keys, ``--preset``: the dataset), so its result does not depend on the
rows before it. After each row its per-image val scores are kept (``<out>-scores/``) and the
effective receptive field of its model is measured; results are saved after each row to
``<out>.json`` (``--resume`` continues; rows of several datasets share one report) and rendered
with the comparisons' statistics (:mod:`pspnet.ablation_report`) to ``<out>.md``;
``params.yaml`` is put back afterwards, even on failure.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pspnet import atomic_files, receptive_fields
from pspnet.ablation_report import comparison_lines, compare, erf_lines, scores_file
from pspnet.config import DEFAULT_PARAMS_FILE, RegisterConfig, load_params
from pspnet.errors import ConfigError, PspnetError
from pspnet.evaluate.plots import plot_receptive_fields
from pspnet.evaluate.receptive_field import ReceptiveField
from pspnet.evaluate.scores import ImageScores
from pspnet.layout import Layout
from pspnet.ops import import_data as data_import
from pspnet.ops.dvc import apply_experiment, exp_run_args, experiment_names, run_experiment
from pspnet.presets import EVAL_KEYS, load_preset, params_restored, read_json, workspace_results
from pspnet.tracking.store import check_tracking_store

log = logging.getLogger(__name__)

#: Scales of the multi-scale row: the paper's set trimmed to what 96x128 images support
#: (0.5 leaves 6x8 features at output stride 8, too coarse to say anything).
MS_SCALES = (0.75, 1.0, 1.25, 1.5)
#: Where the study's table and its JSON twin go (``.md`` / ``.json`` added).
DEFAULT_OUT = "docs/ablation"


@dataclass(frozen=True)
class Row:
    """One ablation row: a name, what it tests, and its ``-S`` overrides of the studied keys."""

    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    #: A row whose trained model this one only re-tests (its training keys are the same).
    retests: str | None = None


#: The studied keys at the paper's setting; each row overrides some of them.
BASELINE: dict[str, Any] = {
    "model.ppm": True,
    "model.ppm_bins": [1, 2, 3, 6],
    "model.aux_weight": 0.4,
    "model.ppm_pooling": "avg",
    "evaluate.flip": False,
    "evaluate.scales": [1.0],
}

ROWS: tuple[Row, ...] = (
    Row("fcn", "dilated FCN baseline (no PPM)", {"model.ppm": False}),
    Row("pspnet", "PSPNet: PPM avg 1,2,3,6 + aux 0.4", {}),
    # The workspace is given the `pspnet` row's model first (`dvc exp apply`), so DVC reruns only
    # evaluate and register (the run cache cannot restore the train stage: it has uncached outputs).
    Row("pspnet-msflip", "PSPNet tested with flip + scales " + "/".join(str(s) for s in MS_SCALES),
        {"evaluate.flip": True, "evaluate.scales": list(MS_SCALES)}, retests="pspnet"),
    Row("aux0", "PSPNet without the auxiliary loss", {"model.aux_weight": 0.0}),
    Row("max", "PSPNet with max pooling in the PPM", {"model.ppm_pooling": "max"}),
    Row("bins1", "PSPNet with a one-bin pyramid (global pooling only)", {"model.ppm_bins": [1]}),
)
ROW_NAMES = tuple(r.name for r in ROWS)
ROWS_BY_NAME = {r.name: r for r in ROWS}


#: Dataset name of rows run on ``params.yaml``'s own data (no ``--preset``).
DEFAULT_DATASET = "context-scenes"


def row_settings(row: Row, seed: int, preset: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every key the row's experiment sets: the preset's, the studied keys (baseline + the row's
    overrides) and the seed."""
    return {**(preset or {}), **BASELINE, **row.overrides, "train.seed": seed}


def experiment_name(row: Row, seed: int, dataset: str = DEFAULT_DATASET) -> str:
    prefix = "abl" if dataset == DEFAULT_DATASET else f"abl-{dataset}"
    return f"{prefix}-{row.name}-s{seed}"


def dvc_command(row: Row, seed: int, preset: Mapping[str, Any] | None = None, dataset: str = DEFAULT_DATASET) -> list[str]:
    """The ``dvc exp run`` argument list of ``row`` (what the report prints, minus the python -m)."""
    return ["dvc", *exp_run_args(experiment_name(row, seed, dataset), row_settings(row, seed, preset))]


def collect_row(root: Path, row: Row, seed: int, seconds: float, dataset: str, preset: Mapping[str, Any], scores_dir: Path) -> dict[str, Any]:
    """The study's record of one finished row, read from the workspace's metric files; its
    per-image scores and ERF map are kept in ``scores_dir``."""
    results = workspace_results(root)
    name = experiment_name(row, seed, dataset)
    params = load_params(root / DEFAULT_PARAMS_FILE)
    layout = Layout(root, params.paths)
    scores_dir.mkdir(parents=True, exist_ok=True)
    ImageScores.load(layout.per_image_scores)  # readable, or the row fails naming the file
    atomic_files.write_bytes(scores_file(scores_dir, name), layout.per_image_scores.read_bytes())
    erf = receptive_fields.measure(params, root, layout.checkpoint)
    with atomic_files.atomic_path(scores_dir / f"{name}-erf.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, erf.weights.astype(np.float32))  # float32: half the bytes, far finer than the figure needs
    return {
        "dataset": dataset,
        "row": row.name,
        "description": row.description,
        "experiment": name,
        "seed": seed,
        "command": shlex.join(dvc_command(row, seed, preset, dataset)),
        "settings": row_settings(row, seed, preset),
        **{k: results[k] for k in (*EVAL_KEYS, "per_class_iou", "train_seconds", "epochs")},
        "confusion": results["confusion"],
        "erf": erf.summary(),
        "wall_seconds": round(seconds, 1),
    }


def run_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """One line per row and seed, then the per-class IoU of each dataset."""
    lines = [
        "| dataset | row | what | seed | val mIoU | mAcc | allAcc | worst class (IoU) | train s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        per_class = r.get("per_class_iou") or {}
        worst = min(per_class.items(), key=lambda kv: kv[1] if kv[1] is not None else 2.0) if per_class else ("-", None)
        worst_iou = f"{worst[1]:.3f}" if worst[1] is not None else "-"
        lines.append(
            f"| {r['dataset']} | {r['row']} | {r['description']} | {r['seed']} | {r['miou']:.4f} | {r['macc']:.4f} | "
            f"{r['allacc']:.4f} | {worst[0]} ({worst_iou}) | {r['train_seconds']:.0f} |"
        )
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        classes = list(rows[0].get("per_class_iou") or {})
        if not classes:
            continue
        lines += ["", f"Per-class IoU, {dataset}:", "", "| row | seed | " + " | ".join(classes) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in classes) + " |"]
        for r in rows:
            pc = r.get("per_class_iou") or {}
            lines.append(f"| {r['row']} | {r['seed']} | " + " | ".join(
                f"{pc[c]:.3f}" if pc.get(c) is not None else "-" for c in classes) + " |")
    return lines


def render_markdown(report: Mapping[str, Any], erf_figures: Sequence[str] = ()) -> str:
    """The study: comparisons with their statistics, the receptive fields, every run, the commands."""
    results = report["results"]
    lines = ["Comparisons (mean ± sample std over seeds; gain and lower bound: paired bootstrap over val "
             "images, one resample applied to every seed's pair):", "", *comparison_lines(report["comparisons"])]
    erf = erf_lines(results)
    if erf:
        lines += ["", "Effective receptive field of each trained model (radius around the centre pixel holding "
                  "50% / 95% of the input-gradient mass):", "", *erf]
        lines += [f"\n![effective receptive fields]({name})" for name in erf_figures]
    lines += ["", "Runs:", "", *run_lines(results)]
    lines += ["", "Commands (run from the project root, in this order):", "", "```"]
    lines += [r["command"] for r in results]
    lines += ["```", ""]
    return "\n".join(lines)


def _erf_figures(out: Path, results: Sequence[dict[str, Any]], scores_dir: Path) -> list[str]:
    """Per dataset, the ERF maps of the FCN and PSPNet rows of the lowest seed both ran."""
    names = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        runs = {(r["row"], r["seed"]): r for r in results if r["dataset"] == dataset and r.get("erf")}
        seeds = sorted(s for row, s in runs if row == "fcn" and ("pspnet", s) in runs)
        if not seeds:
            continue
        fields = {}
        for row in ("fcn", "pspnet"):
            r = runs[(row, seeds[0])]
            fields[f"{row} (seed {seeds[0]})"] = ReceptiveField(
                np.load(scores_dir / f"{r['experiment']}-erf.npy"), tuple(r["erf"]["centre"]))
        figure = out.with_name(f"{out.name}-erf-{dataset}.png")
        plot_receptive_fields(fields, figure, title=f"Effective receptive field, {dataset}")
        names.append(figure.name)
    return names


def _save(out: Path, results: list[dict[str, Any]], scores_dir: Path, gate: RegisterConfig) -> None:
    report = {"comparisons": compare(results, scores_dir, gate), "results": results}
    atomic_files.write_json(out.with_suffix(".json"), report)
    atomic_files.write_text(out.with_suffix(".md"), render_markdown(report, _erf_figures(out, results, scores_dir)))


def _fixed_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings every row of a dataset shares: all but the studied keys and the seed."""
    return {k: v for k, v in settings.items() if k not in BASELINE and k != "train.seed"}


def check_same_setup(results: Sequence[Mapping[str, Any]], dataset: str, settings: Mapping[str, Any], report: Path) -> None:
    """Refuse to add rows to ``report`` whose data or budget differ from its rows of ``dataset``:
    those rows are compared with each other."""
    wanted = _fixed_settings(settings)
    for r in results:
        if r.get("dataset", DEFAULT_DATASET) != dataset or (had := _fixed_settings(r["settings"])) == wanted:
            continue
        keys = sorted(k for k in had.keys() | wanted.keys() if had.get(k) != wanted.get(k))
        diff = ", ".join(f"{k}: {had.get(k)!r} there, {wanted.get(k)!r} now" for k in keys)
        raise ConfigError(f"{report}: its {dataset} rows ran with other settings ({diff}); rows of one dataset are "
                          "compared with each other, so use the same --preset and --set, or write another report (--out).")


def _restore_model(root: Path, row: Row, seed: int, dataset: str) -> None:
    """Put the model of the row that ``row`` re-tests in the workspace (``dvc exp apply``), so that
    DVC reruns only evaluate; an experiment of another commit is not applied (it would bring that
    commit's files), and the row trains the same model again instead."""
    name = experiment_name(ROWS_BY_NAME[row.retests], seed, dataset)
    if name in experiment_names(root):
        apply_experiment(root, name)
    else:
        log.info("no experiment %s on this commit: row %s trains its model again", name, row.name)


def run_ablation(
    root: Path, seeds: Sequence[int] = (0,), rows: Sequence[str] = ROW_NAMES, out: str | None = None,
    resume: bool = False, preset: str | None = None, overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the ``rows`` x ``seeds`` experiments one after the other; see the module docstring."""
    out = out or DEFAULT_OUT
    root = Path(root).resolve()
    unknown = [r for r in rows if r not in ROW_NAMES]
    if unknown:
        raise ConfigError(f"unknown ablation row(s) {unknown}; known: {list(ROW_NAMES)}.")
    if overrides and preset is None:
        raise ConfigError("--set changes a preset's settings: name one with --preset (e.g. --preset context-hard).")
    dataset, preset_settings, params = DEFAULT_DATASET, {}, load_params(root / DEFAULT_PARAMS_FILE)
    if preset is not None:
        path, preset_settings, params = load_preset(root, preset, overrides)
        dataset = path.stem
    check_tracking_store(params.mlflow, root)  # before the first row, not after it
    selected = [r for r in ROWS if r.name in rows]
    out_path = root / out
    scores_dir = out_path.with_name(f"{out_path.name}-scores")
    results: list[dict[str, Any]] = []
    if resume and out_path.with_suffix(".json").is_file():
        results = read_json(out_path.with_suffix(".json")).get("results", [])
    check_same_setup(results, dataset, preset_settings, out_path.with_suffix(".json"))
    done = {(r.get("dataset", DEFAULT_DATASET), r["row"], r["seed"]) for r in results}
    with params_restored(root):
        if preset is not None:
            data_import.import_data(params, root)
        plan = [(row, seed) for seed in seeds for row in selected if (dataset, row.name, seed) not in done]
        for i, (row, seed) in enumerate(plan, 1):
            log.info("ablation %d/%d: %s, row %s, seed %d", i, len(plan), dataset, row.name, seed)
            try:
                if row.retests is not None:
                    _restore_model(root, row, seed, dataset)
                seconds = run_experiment(root, experiment_name(row, seed, dataset), row_settings(row, seed, preset_settings))
            except PspnetError as err:
                raise PspnetError(f"ablation row {row.name!r} (seed {seed}): {err} The rows before it are in {out_path.with_suffix('.json')}.") from None
            results.append(collect_row(root, row, seed, seconds, dataset, preset_settings, scores_dir))
            results.sort(key=lambda r: (r["dataset"], r["seed"], ROW_NAMES.index(r["row"])))
            _save(out_path, results, scores_dir, params.register_)
    return {"rows": len(results), "report": str(out_path.with_suffix(".md"))}
