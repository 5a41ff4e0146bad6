"""The paper's ablations in miniature, as DVC experiments: ``pspnet ablation`` / ``make ablation``.

Each row (:data:`ROWS`: the FCN baseline, PSPNet, PSPNet tested with flip + scales, no
auxiliary loss, max pooling) is one ``dvc exp run -n <name> -S key=value ...`` in the
workspace, with the same seed, data and training budget, and sets every studied key, so its
result does not depend on the rows before it. Results are saved after each row to
``<out>.json`` (``--resume`` continues) and rendered to ``<out>.md``; ``params.yaml`` is put
back afterwards, even on failure.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pspnet import atomic_files
from pspnet.config import DEFAULT_PARAMS_FILE, load_params
from pspnet.errors import ConfigError, PspnetError
from pspnet.ops.dvc import exp_run_args, run_experiment
from pspnet.presets import EVAL_KEYS, params_restored, read_json, workspace_results
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


#: The studied keys at the paper's setting; each row overrides some of them.
BASELINE: dict[str, Any] = {
    "model.ppm": True,
    "model.aux_weight": 0.4,
    "model.ppm_pooling": "avg",
    "evaluate.flip": False,
    "evaluate.scales": [1.0],
}

ROWS: tuple[Row, ...] = (
    Row("fcn", "dilated FCN baseline (no PPM)", {"model.ppm": False}),
    Row("pspnet", "PSPNet: PPM avg 1,2,3,6 + aux 0.4", {}),
    # Right after `pspnet`: the workspace then holds that model, so DVC reruns only evaluate and
    # register (the run cache cannot restore the train stage: it has uncached outputs).
    Row("pspnet-msflip", "PSPNet tested with flip + scales " + "/".join(str(s) for s in MS_SCALES),
        {"evaluate.flip": True, "evaluate.scales": list(MS_SCALES)}),
    Row("aux0", "PSPNet without the auxiliary loss", {"model.aux_weight": 0.0}),
    Row("max", "PSPNet with max pooling in the PPM", {"model.ppm_pooling": "max"}),
)
ROW_NAMES = tuple(r.name for r in ROWS)


def row_settings(row: Row, seed: int) -> dict[str, Any]:
    """Every studied key for ``row`` (baseline + the row's overrides) and the seed."""
    return {**BASELINE, **row.overrides, "train.seed": seed}


def experiment_name(row: Row, seed: int) -> str:
    return f"abl-{row.name}-s{seed}"


def dvc_command(row: Row, seed: int) -> list[str]:
    """The ``dvc exp run`` argument list of ``row`` (what the report prints, minus the python -m)."""
    return ["dvc", *exp_run_args(experiment_name(row, seed), row_settings(row, seed))]


def collect_row(root: Path, row: Row, seed: int, seconds: float) -> dict[str, Any]:
    """The study's record of one finished row, read from the workspace's metric files."""
    results = workspace_results(root)
    return {
        "row": row.name,
        "description": row.description,
        "experiment": experiment_name(row, seed),
        "seed": seed,
        "command": shlex.join(dvc_command(row, seed)),
        "settings": row_settings(row, seed),
        **{k: results[k] for k in (*EVAL_KEYS, "per_class_iou", "train_seconds", "epochs")},
        "wall_seconds": round(seconds, 1),
    }


def render_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The study as a Markdown table (one line per row and seed) plus the per-class IoU and the
    exact commands."""
    lines = [
        "| row | what | seed | val mIoU | mAcc | allAcc | worst class (IoU) | train s |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        per_class = r.get("per_class_iou") or {}
        worst = min(per_class.items(), key=lambda kv: kv[1]) if per_class else ("-", float("nan"))
        lines.append(
            f"| {r['row']} | {r['description']} | {r['seed']} | {r['miou']:.4f} | {r['macc']:.4f} | "
            f"{r['allacc']:.4f} | {worst[0]} ({worst[1]:.3f}) | {r['train_seconds']:.0f} |"
        )
    classes = list((results[0].get("per_class_iou") or {}).keys()) if results else []
    if classes:
        lines += ["", "Per-class IoU:", "", "| row | seed | " + " | ".join(classes) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in classes) + " |"]
        for r in results:
            pc = r.get("per_class_iou") or {}
            lines.append(f"| {r['row']} | {r['seed']} | " + " | ".join(f"{pc.get(c, float('nan')):.3f}" for c in classes) + " |")
    lines += ["", "Commands (run from the project root, in this order):", "", "```"]
    lines += [r["command"] for r in results]
    lines += ["```", ""]
    return "\n".join(lines)


def _save(out: Path, results: list[dict[str, Any]]) -> None:
    atomic_files.write_json(out.with_suffix(".json"), {"results": results})
    atomic_files.write_text(out.with_suffix(".md"), render_markdown(results))


def run_ablation(
    root: Path, seeds: Sequence[int] = (0,), rows: Sequence[str] = ROW_NAMES, out: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """Run the ``rows`` x ``seeds`` experiments one after the other; see the module docstring."""
    out = out or DEFAULT_OUT
    root = Path(root).resolve()
    unknown = [r for r in rows if r not in ROW_NAMES]
    if unknown:
        raise ConfigError(f"unknown ablation row(s) {unknown}; known: {list(ROW_NAMES)}.")
    check_tracking_store(load_params(root / DEFAULT_PARAMS_FILE).mlflow, root)  # before the first row, not after it
    selected = [r for r in ROWS if r.name in rows]
    out_path = root / out
    results: list[dict[str, Any]] = []
    if resume and out_path.with_suffix(".json").is_file():
        results = read_json(out_path.with_suffix(".json")).get("results", [])
    done = {(r["row"], r["seed"]) for r in results}
    with params_restored(root):
        plan = [(row, seed) for seed in seeds for row in selected if (row.name, seed) not in done]
        for i, (row, seed) in enumerate(plan, 1):
            log.info("ablation %d/%d: row %s, seed %d", i, len(plan), row.name, seed)
            try:
                seconds = run_experiment(root, experiment_name(row, seed), row_settings(row, seed))
            except PspnetError as err:
                raise PspnetError(f"ablation row {row.name!r} (seed {seed}): {err} The rows before it are in {out_path.with_suffix('.json')}.") from None
            results.append(collect_row(root, row, seed, seconds))
            results.sort(key=lambda r: (r["seed"], ROW_NAMES.index(r["row"])))
            _save(out_path, results)
    return {"rows": len(results), "report": str(out_path.with_suffix(".md"))}
