"""DVC figures: the whole embedded pipeline through ``dvc repro`` with tiny parameters (its wall
time minus the train stage's own training time is the pipeline's overhead), then the no-op
``dvc repro`` against the same on a one-stage pipeline (DVC's own floor).

The project is a copy of this one's pipeline definition (``dvc.yaml``, ``params.yaml`` with
the overrides below, ``src/`` for the stages' code dependencies) in a temp folder with
``dvc init --no-scm``; its MLflow store is the copy's own ``mlflow.db``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from bench.timing import Progress, figure, ratio, run_measured, subprocess_env
from pspnet.config import deep_merge

#: Overrides that make the full pipeline short: a handful of small images, one epoch.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "data": {"synthetic": {"train_size": 16, "val_size": 8, "height": 48, "width": 64}},
    "train": {"epochs": 1, "batch_size": 4, "crop_size": [48, 64], "log_every_n_steps": 1},
    "evaluate": {"num_overlays": 1},
}
#: What DVC prints when no stage had to run.
UP_TO_DATE = "Data and pipelines are up to date."
DVC_TIMEOUT_S = 1200.0
#: The peer pipeline: one stage, one dependency, one output.
PEER_DVC_YAML = {"stages": {"copy": {"cmd": "cp in.txt out.txt", "deps": ["in.txt"], "outs": ["out.txt"]}}}


def tiny_project(repo: Path, dest: Path, overrides: dict[str, Any]) -> Path:
    dest.mkdir(parents=True)
    shutil.copy2(repo / "dvc.yaml", dest / "dvc.yaml")
    (dest / "data" / "raw").mkdir(parents=True)
    readme = repo / "data" / "raw" / "README.md"
    if readme.is_file():
        shutil.copy2(readme, dest / "data" / "raw" / "README.md")
    shutil.copytree(repo / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = deep_merge(yaml.safe_load((repo / "params.yaml").read_text()), overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def dvc_pipeline(settings: dict[str, Any], progress: Progress, repo: Path, work: Path, pycache: Path | None) -> dict[str, Any]:
    """Full ``dvc repro`` (wall, training time, overhead), then no-op repros of ours and the peer."""
    env = subprocess_env(pycache)
    target = settings.get("target") or []
    project = tiny_project(repo, work / "dvc" / "project", deep_merge(TINY_PARAMS, settings.get("overrides", {})))
    peer = work / "dvc" / "peer"
    peer.mkdir(parents=True)
    (peer / "dvc.yaml").write_text(yaml.safe_dump(PEER_DVC_YAML))
    (peer / "in.txt").write_text("bench\n")
    for folder in (project, peer):  # no analytics: DVC_NO_ANALYTICS is set in env
        run_measured(["dvc", "init", "--no-scm", "-q"], folder, env, DVC_TIMEOUT_S).check()
    what = " ".join(target) or "the whole pipeline"
    progress.step(f"full dvc repro of {what} (tiny parameters)", 0.0)
    full = run_measured(["dvc", "repro", *target], project, env, DVC_TIMEOUT_S).check()
    stages = [line.split("'")[1] for line in full.stdout.splitlines() if line.startswith("Running stage '")]
    train_json = project / "metrics" / "train.json"
    train_s = float(json.loads(train_json.read_text())["seconds"]) if train_json.is_file() else 0.0
    run_measured(["dvc", "repro"], peer, env, DVC_TIMEOUT_S).check()
    ours_s: list[float] = []
    peer_s: list[float] = []
    for r in range(settings["runs"]):
        progress.step(f"no-op dvc repro, ours then the one-stage peer ({r + 1}/{settings['runs']})", (r + 1) / (settings["runs"] + 1))
        noop = run_measured(["dvc", "repro", *target], project, env, DVC_TIMEOUT_S).check()
        if UP_TO_DATE not in noop.stdout:
            raise RuntimeError(f"the second dvc repro ran stages:\n{noop.stdout[-2000:]}")
        ours_s.append(noop.wall_s)
        peer_s.append(run_measured(["dvc", "repro"], peer, env, DVC_TIMEOUT_S).check().wall_s)
    ours_fig, peer_fig = figure(ours_s, "s"), figure(peer_s, "s")
    overhead = full.wall_s - train_s
    shutil.rmtree(work / "dvc", ignore_errors=True)
    return {
        "settings": {**settings, "params_overrides": deep_merge(TINY_PARAMS, settings.get("overrides", {})),
                     "target": what, "stages_run": stages},  # fmt: skip
        "full_run_s": full.wall_s,
        "full_run_runs": 1,
        "train_stage_training_s": train_s,
        "pipeline_overhead_s": overhead,
        "overhead_per_stage_s": overhead / max(len(stages), 1),
        "overhead_vs_training": overhead / train_s if train_s > 0 else None,
        "noop_repro_s": ours_fig,
        "peer_noop_repro_s": peer_fig,
        "ratio_noop_vs_peer": ratio(ours_fig, peer_fig, paired=True),
    }
