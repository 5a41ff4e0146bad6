"""Stage ``train``: train PSPNet on the prepared train split (:class:`pspnet.train.trainer.Trainer`)
and track it in MLflow.

Writes the checkpoint, the :class:`~pspnet.tracking.runs.RunRef` that ``evaluate`` and
``register`` reopen, ``train.json``, ``train_history.csv`` and ``train_curve.csv`` (paths: :class:`pspnet.layout.Layout`),
each atomically and only once training finished, so a failed run leaves the previous outputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from pspnet import atomic_files
from pspnet.config import Params
from pspnet.data.classes import ClassTable, load_classes
from pspnet.data.quarantine import effective_version, excluded_ids
from pspnet.device import resolve_device
from pspnet.errors import PspnetError
from pspnet.evaluate.scoring import SPLIT
from pspnet.layout import CHECKPOINT_FILE, Layout
from pspnet.model.checkpoint import save_checkpoint
from pspnet.ops.dvc_lock import locked_out_md5
from pspnet.tracking.datasets import log_dataset_input, prepared_dataset
from pspnet.tracking.metrics_buffer import MetricsBuffer
from pspnet.tracking.runs import RunRef, dataset_tags, run_label, run_name, run_tags, unique_run_name
from pspnet.tracking.store import setup_mlflow
from pspnet.train.curve import CurvePoint, curve_csv
from pspnet.train.distributed import Distributed, torchrun_command
from pspnet.train.loop import EpochStats, history_csv
from pspnet.train.signals import SIGNAL_EXIT_BASE, TrainingInterrupted, stop_requests
from pspnet.train.trainer import Trainer, TrainingInputs

log = logging.getLogger(__name__)


def run(params: Params, root: Path) -> dict[str, Any]:
    """Stage ``train``: train per ``params`` on ``root/params.paths.prepared`` (train split).

    Under ``torchrun`` this process is one rank of a data-parallel run (only rank 0 logs and
    writes); with ``train.nproc_per_node`` > 1 outside it, ``torchrun`` is started with that
    many processes and rank 0's summary returned.
    """
    root = Path(root)
    ctx = Distributed.from_env()
    if params.train.nproc_per_node > 1 and not ctx.enabled:
        return _run_under_torchrun(params, root)
    # Rank 0 alone talks to MLflow: it fails before training if the store is unusable (torchrun
    # then stops the other ranks).
    experiment_id = setup_mlflow(params.mlflow, root) if ctx.is_main else ""
    device = ctx.device(resolve_device(params.train.device))
    ctx.start(device)
    try:
        return _train(params, root, ctx, device, experiment_id)
    finally:
        ctx.stop()


def _run_under_torchrun(params: Params, root: Path) -> dict[str, Any]:
    """``pspnet train`` as ``train.nproc_per_node`` processes under torchrun on this machine,
    with these very params (a temporary copy); returns the summary rank 0 wrote."""
    nproc = params.train.nproc_per_node
    with tempfile.TemporaryDirectory(prefix="pspnet-ddp-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        atomic_files.write_text(params_file, yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False))
        command = torchrun_command(nproc, params_file, root)
        log.info("train.nproc_per_node=%d: starting %s", nproc, " ".join(command))
        done = subprocess.run(command, cwd=root, check=False)
    if done.returncode > SIGNAL_EXIT_BASE:
        raise TrainingInterrupted(
            f"distributed training stopped by a signal (torchrun exit code {done.returncode}); rank 0 saved the "
            "training state. Run the train stage again to continue (train.resume: auto).",
            done.returncode - SIGNAL_EXIT_BASE,
        )
    if done.returncode != 0:
        raise PspnetError(
            f"distributed training ({nproc} processes under torchrun) failed with exit code {done.returncode}; "
            "the error is in the log above (torchrun names the failed rank)."
        )
    layout = Layout(root, params.paths)
    ref = RunRef.load(layout.run_ref)
    return {**json.loads(layout.train_metrics.read_text(encoding="utf-8")), "run_id": ref.run_id,
            "checkpoint": str(Path(params.paths.models) / CHECKPOINT_FILE)}  # fmt: skip


class MlflowEvents:
    """The trainer's reports (:class:`pspnet.train.trainer.TrainingEvents`) as metrics of the
    run, through a :class:`~pspnet.tracking.metrics_buffer.MetricsBuffer` (training never waits
    on the tracking server, and an outage loses nothing)."""

    def __init__(self, metrics: MetricsBuffer) -> None:
        self.metrics = metrics

    def first_step(self, seconds: float, global_step: int) -> None:
        self.metrics.log({"first_step_seconds": seconds}, global_step)

    def steps_logged(self, mean_loss: float, lr: float, global_step: int) -> None:
        self.metrics.log({"step_loss": mean_loss, "step_lr": lr}, global_step)

    def epoch_end(self, stats: EpochStats) -> None:
        self.metrics.log(
            {"train_loss": stats.loss, "lr": stats.lr, "epoch_seconds": stats.seconds, "images_per_second": stats.images_per_second},
            stats.epoch,
        )

    def curve_point(self, point: CurvePoint) -> None:
        self.metrics.log({f"curve_{split}_miou": miou for split, miou in point.miou.items()}, point.epoch)


def _open_run(run_id: str | None, experiment_id: str, tags: dict[str, str], name: str, system_metrics_interval: float) -> Any:
    """The MLflow run to log into: the interrupted run ``run_id`` when resuming (if the store has
    it, name and all), else a new one named ``name`` (made unique in the experiment); MLflow's
    system metrics sampled every ``system_metrics_interval`` s (0: none)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    system_metrics = system_metrics_interval > 0
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval)
        mlflow.set_system_metrics_samples_before_logging(1)
    if run_id:
        try:
            mlflow.MlflowClient().get_run(run_id)
            return mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
        except MlflowException:
            log.warning("resume: MLflow run %s is not in this store; logging into a new run", run_id)
    return mlflow.start_run(experiment_id=experiment_id, tags=tags, run_name=unique_run_name(experiment_id, name),
                            log_system_metrics=system_metrics)


def _log_params_once(run_id: str, values: dict[str, Any]) -> None:
    """Log ``values`` as run params; a resumed run keeps its params and tags the changed ones."""
    import mlflow

    logged = mlflow.MlflowClient().get_run(run_id).data.params
    mlflow.log_params({k: v for k, v in values.items() if k not in logged})
    changed = {k: v for k, v in values.items() if k in logged and logged[k] != str(v)}
    if changed:
        mlflow.set_tags({f"resume.changed.{k}": str(v) for k, v in changed.items()})


def _prepared_input(root: Path, layout: Layout, params: Params) -> Any:
    """The prepared data as the run's MLflow dataset input (source: its DVC path and hash)."""
    relative = layout.prepared.relative_to(root) if layout.prepared.is_relative_to(root) else layout.prepared
    return prepared_dataset(layout.prepared, str(relative), locked_out_md5(root, "prepare", str(relative)),
                            name=params.data.source.name)


def _run_tags(root: Path, layout: Layout, trainer: Trainer) -> dict[str, str]:
    """Code, experiment and data tags; the quarantine's when samples were left out."""
    tags = run_tags(root) | dataset_tags(layout.prepared)
    excluded = trainer.inputs.excluded
    if excluded:
        tags |= {
            "data.quarantined": str(len(excluded)),
            "data.training_version": str(effective_version(trainer.data_version, excluded)),
        }
    return tags


def _train(params: Params, root: Path, ctx: Distributed, device: torch.device, experiment_id: str) -> dict[str, Any]:
    """The training run of one process (rank ``ctx.rank``); only rank 0 logs and writes."""
    import mlflow

    layout = Layout(root, params.paths)
    classes = load_classes(layout.prepared, params.data.ignore_index)
    excluded = excluded_ids(layout.quarantine, params.validate_.quarantine)  # samples `validate` set aside
    if SPLIT in params.train.splits and ctx.is_main:
        log.warning("train.splits %s includes %r: its scores now measure training data; judge this model on a held-out "
                    "split (data.holdout)", list(params.train.splits), SPLIT)  # fmt: skip
    trainer = Trainer(params, TrainingInputs(layout.prepared, classes, excluded, layout.train_state), ctx, device)
    tags = _run_tags(root, layout, trainer) if ctx.is_main else {}
    name = run_name(run_label(), params.model, params.train, tags.get("data.version"))
    run_context = (
        _open_run(trainer.resumed_run_id, experiment_id, tags, name, params.mlflow.system_metrics_interval)
        if ctx.is_main else contextlib.nullcontext(None)
    )
    with stop_requests() as stop, run_context as active:
        run_id = active.info.run_id if active is not None else ""
        if ctx.is_main:
            log_dataset_input(_prepared_input(root, layout, params))
            _log_params_once(run_id, params.to_flat_dict())  # every parameter, then what this run resolved
            _log_params_once(run_id, trainer.resolved_settings())
            if trainer.resumes:
                mlflow.set_tag("resumed_from_steps", ",".join(map(str, trainer.resumes)))
        cfg = params.mlflow
        metrics = MetricsBuffer(run_id, cfg.metrics_retry_seconds, cfg.outage_wait) if ctx.is_main else None
        try:
            history = trainer.fit(MlflowEvents(metrics), stop, run_id)
        except TrainingInterrupted:
            if metrics is not None:
                metrics.close()
                mlflow.end_run(status="KILLED")
            raise
        if metrics is None:  # rank 0 writes the outputs and closes the run
            return {"rank": ctx.rank, "final_loss": history[-1].loss, "steps": trainer.step}
        summary = trainer.summary()
        _save_outputs(layout, trainer, classes, summary, run_id)
        metrics.close()
        _log_outputs(layout, trainer, summary)
        ref = RunRef(run_id=run_id, experiment_id=experiment_id, tracking_uri=mlflow.get_tracking_uri())
        ref.save(layout.run_ref)
    trainer.clear_states()
    checkpoint = layout.checkpoint
    return {
        **summary,
        "run_id": ref.run_id,
        "checkpoint": str(checkpoint.relative_to(root)) if checkpoint.is_relative_to(root) else str(checkpoint),
    }


def _save_outputs(layout: Layout, trainer: Trainer, classes: ClassTable, summary: dict[str, Any], run_id: str) -> None:
    """Checkpoint, history, curve and summary, each atomically."""
    meta = {
        "class_names": list(classes.names),
        "class_colors": [list(c) for c in classes.colors],
        "ignore_index": classes.ignore_index,
        "epoch": trainer.params.train.epochs,
        "step": trainer.step,
        "final_loss": summary["final_loss"],
        "mlflow_run_id": run_id,
        "resumed_from_steps": trainer.resumes,
    }
    save_checkpoint(layout.checkpoint, trainer.final_model, trainer.params.model, classes.num_classes, meta)
    atomic_files.write_text(layout.train_history, history_csv(trainer.history))
    atomic_files.write_text(layout.train_curve, curve_csv(trainer.curve))
    atomic_files.write_json(layout.train_metrics, summary)


def _log_outputs(layout: Layout, trainer: Trainer, summary: dict[str, Any]) -> None:
    """The saved outputs and the final metrics in MLflow."""
    import mlflow

    mlflow.log_metrics({"final_loss": summary["final_loss"], "train_seconds": trainer.training_seconds})
    mlflow.log_artifact(str(layout.checkpoint), artifact_path="checkpoint")
    mlflow.log_artifact(str(layout.train_metrics), artifact_path="metrics")
    mlflow.log_artifact(str(layout.train_history), artifact_path="metrics")
    mlflow.log_artifact(str(layout.train_curve), artifact_path="metrics")
