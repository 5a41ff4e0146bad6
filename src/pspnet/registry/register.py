"""The ``register`` stage: log the trained model to MLflow, register it, promote it if it wins.

Steps:

1. read ``models/checkpoint.pt``, ``metrics/eval.json`` (the metric ``register.metric``) and the
   run reference ``models/mlflow_run.json`` written by ``train``;
2. reopen that run and log the model with ``mlflow.pytorch.log_model`` as a
   :class:`~pspnet.model.export.SegmentationModel` (raw RGB in, logits out, no aux head).
   MLflow 3 serialises it with ``torch.export`` ("pt2": a traced graph, loadable without
   pickle); the signature declares batch, height and width free (``-1``) so the graph is
   exported with dynamic shapes and accepts any image size. The logged model is loaded back
   and fed a probe image of another size and batch before it is registered;
3. register it as a new version of ``register.model_name`` with the class names / colours
   as version tags (they are also in the model's ``MLmodel`` metadata);
4. move the alias ``register.champion_alias`` to it only if its metric beats the champion's
   recorded metric by more than ``register.min_improvement`` (the first version becomes
   champion). The champion is re-read right before the alias is moved, and the decision is
   made again if it changed meanwhile;
5. record the decision as version tags and in ``reports/registry.json`` (atomic write).

Re-running after a crash (or a retry) does not log a second copy: a version that already holds
this run's checkpoint (same run id and checkpoint SHA-256) is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pspnet import io
from pspnet.config import Params
from pspnet.errors import ConfigError, PspnetError
from pspnet.registry.tracking import RUN_REF_FILE, RunRef, setup_mlflow

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
EVAL_METRICS_FILE = "eval.json"
REPORT_FILE = "registry.json"
#: Name of the model inside the run (MLflow 3 "logged model" name).
LOGGED_MODEL_NAME = "model"

PROMOTED = "promoted"
REJECTED = "rejected"

# Version tags written by this stage.
TAG_DECISION = "decision"
TAG_REASON = "decision_reason"
TAG_METRIC_NAME = "metric_name"
TAG_METRIC_VALUE = "metric_value"
TAG_PREV_VERSION = "previous_champion_version"
TAG_PREV_METRIC = "previous_champion_metric"
TAG_CHECKPOINT_SHA = "checkpoint_sha256"
TAG_NUM_CLASSES = "num_classes"
TAG_CLASS_NAMES = "class_names"
TAG_CLASS_COLORS = "class_colors"

#: MLflow caps tag values at 5000 characters (SQL store); longer class lists are cut.
_MAX_TAG_CHARS = 5000
#: How often the champion may change under our feet before we give up deciding.
_MAX_DECISION_ATTEMPTS = 5


@dataclass(frozen=True)
class Champion:
    """The version currently holding the champion alias, with its recorded metric (if known)."""

    version: str
    metric: float | None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_metric(path: Path, name: str) -> float:
    """The metric ``name`` from ``metrics/eval.json`` (a JSON object of numbers)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PspnetError(f"{path}: evaluation metrics not found. Run the `evaluate` stage first.") from None
    except ValueError as err:
        raise PspnetError(f"{path}: not valid JSON ({err}). Re-run `evaluate`.") from None
    if not isinstance(raw, dict):
        raise PspnetError(f"{path}: expected a JSON object of metrics, got {type(raw).__name__}.")
    if name not in raw:
        numeric = sorted(k for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise ConfigError(
            f"register.metric is {name!r} but {path} has no such metric; "
            f"available: {', '.join(numeric) or '(none)'}. Fix register.metric in params.yaml."
        )
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PspnetError(f"{path}: metric {name!r} is not a number: {value!r}.")
    return float(value)


def decide(value: float, champion: Champion | None, min_improvement: float = 0.0) -> tuple[str, str]:
    """Promotion rule: ``(decision, reason)``; higher metric is better.

    - no champion yet: promoted;
    - non-finite metric: rejected;
    - champion with no recorded metric: rejected (it cannot be compared; move the alias by hand);
    - otherwise promoted iff ``value > champion.metric + min_improvement``.
    """
    if not math.isfinite(value):
        return REJECTED, f"metric is not a finite number ({value})"
    if champion is None:
        return PROMOTED, "first version: no champion yet"
    if champion.metric is None:
        return REJECTED, (
            f"champion v{champion.version} has no recorded value of this metric, so it cannot be "
            "compared; move the alias by hand if this version should win"
        )
    if not math.isfinite(champion.metric):
        return PROMOTED, f"champion v{champion.version} has a non-finite metric ({champion.metric})"
    threshold = champion.metric + min_improvement
    if value > threshold:
        return PROMOTED, f"{value:.6g} beats champion v{champion.version} ({champion.metric:.6g})" + (
            f" by more than {min_improvement:g}" if min_improvement else ""
        )
    return REJECTED, f"{value:.6g} does not beat champion v{champion.version} ({champion.metric:.6g})" + (
        f" by more than {min_improvement:g}" if min_improvement else ""
    )


def _as_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def get_champion(client: Any, model_name: str, alias: str, metric: str) -> Champion | None:
    """The version behind ``alias`` and its recorded ``metric``; ``None`` if there is none.

    The metric is read from the version's own tags (written by this stage); for a version
    registered by other means, from its run's logged metric of the same name
    (or ``val_<name>``, as ``evaluate`` logs it).
    """
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    value: float | None = None
    if mv.tags.get(TAG_METRIC_NAME) == metric:
        value = _as_float(mv.tags.get(TAG_METRIC_VALUE))
    if value is None and mv.run_id:
        try:
            run_metrics = client.get_run(mv.run_id).data.metrics
        except MlflowException:
            run_metrics = {}
        # ``evaluate`` logs its metrics to the run with a ``val_`` prefix.
        value = run_metrics.get(metric, run_metrics.get(f"val_{metric}"))
    return Champion(version=str(mv.version), metric=value)


def _find_existing_version(client: Any, model_name: str, run_id: str, checkpoint_sha: str) -> Any | None:
    """A version of ``model_name`` already made from this run's checkpoint (a retry), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda m: int(m.version), reverse=True):
        if mv.name == model_name and mv.tags.get(TAG_CHECKPOINT_SHA) == checkpoint_sha:
            return mv
    return None


def _probe(model_uri: str, size: tuple[int, int], num_classes: int) -> None:
    """Load the logged model back as a pyfunc (the serving path, which loads the pt2 graph) and
    check that it maps a batch of 1 at ``size`` (neither the example's batch nor its size) to
    logits of the same size."""
    import mlflow.pyfunc
    import numpy as np

    h, w = size
    try:
        loaded = mlflow.pyfunc.load_model(model_uri)
        y = loaded.predict(np.zeros((1, 3, h, w), dtype=np.float32))
    except Exception as err:  # noqa: BLE001 - any failure means the artefact is unusable
        raise PspnetError(
            f"the logged model {model_uri} rejects a (1, 3, {h}, {w}) input: {type(err).__name__}: "
            f"{str(err)[:500]}. Its input shapes were probably frozen at export."
        ) from None
    if tuple(np.shape(y)) != (1, num_classes, h, w):
        raise PspnetError(
            f"the logged model maps (1, 3, {h}, {w}) to {tuple(np.shape(y))}, expected (1, {num_classes}, {h}, {w})."
        )


def _pip_requirements() -> list[str]:
    """Pinned requirements of the pt2 artefact (MLflow adds its own pin): loading needs only torch."""
    import torch
    from packaging.version import Version

    return [f"torch=={Version(torch.__version__).base_version}"]


def _log_model(params: Params, ckpt: Any, run_id: str, checkpoint_sha: str) -> Any:
    """Log the export wrapper to the run as a pt2 graph with dynamic batch/height/width."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from pspnet.model.export import SegmentationModel

    num_classes = int(ckpt.num_classes)
    model_cfg = ckpt.model_cfg
    wrapped = SegmentationModel(ckpt.model, model_cfg.input_mean, model_cfg.input_std).cpu()
    signature = ModelSignature(
        # Unnamed specs: a named one makes pyfunc pass a dict, which the pytorch flavour refuses.
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 3, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, num_classes, -1, -1))]),
    )
    h, w = params.register_.export_example_size
    # Batch 2: torch.export specialises size-1 dimensions, which would freeze the batch size.
    # Whole numbers keep the stored example JSON small.
    example = np.random.default_rng(0).integers(0, 256, size=(2, 3, h, w)).astype(np.float32)
    metadata = {
        "class_names": list(ckpt.meta.get("class_names", [])),
        "class_colors": [list(c) for c in ckpt.meta.get("class_colors", [])],
        "num_classes": num_classes,
        "input": "float32 RGB (N, 3, H, W), values 0..255, any N/H/W",
        "output": "float32 logits (N, C, H, W) at input size; argmax(1) is the class map",
        "encoder": model_cfg.encoder,
        "output_stride": model_cfg.output_stride,
        "checkpoint_sha256": checkpoint_sha,
    }
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            wrapped,
            name=LOGGED_MODEL_NAME,
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
            metadata=metadata,
            serialization_format="pt2",
            # MLflow's own check would load the model and run the example through it; _probe()
            # does that once, at another size and batch, and fails the stage if it breaks.
            validate_serving_input=False,
        )
    return info


def _class_tags(ckpt: Any) -> dict[str, str]:
    names = json.dumps(list(ckpt.meta.get("class_names", [])))
    colors = json.dumps([list(c) for c in ckpt.meta.get("class_colors", [])])
    return {
        TAG_NUM_CLASSES: str(int(ckpt.num_classes)),
        TAG_CLASS_NAMES: names[:_MAX_TAG_CHARS],
        TAG_CLASS_COLORS: colors[:_MAX_TAG_CHARS],
    }


def _decide_and_promote(
    client: Any, model_name: str, alias: str, metric: str, version: str, value: float, min_improvement: float
) -> tuple[str, str, Champion | None]:
    """Decide against the current champion; move the alias if promoted. Returns (decision, reason, before)."""
    for _ in range(_MAX_DECISION_ATTEMPTS):
        before = get_champion(client, model_name, alias, metric)
        if before is not None and before.version == version:
            return PROMOTED, f"already the champion ({alias})", before
        decision, reason = decide(value, before, min_improvement)
        if decision != PROMOTED:
            return decision, reason, before
        # Re-read right before moving the alias: another registration may have won meanwhile.
        again = get_champion(client, model_name, alias, metric)
        if again != before:
            log.info("champion changed from %s to %s while deciding; deciding again", before, again)
            continue
        client.set_registered_model_alias(model_name, alias, version)
        return decision, reason, before
    raise PspnetError(
        f"the {alias!r} alias of {model_name!r} kept changing while deciding ({_MAX_DECISION_ATTEMPTS} attempts); "
        "another registration is running. Re-run `register`."
    )


def register(params: Params, root: Path) -> dict:
    """Log, register and (maybe) promote the trained model; write ``reports/registry.json``.

    Returns the report: model name, version, run id, model URIs, decision and reason, metric
    values, and the champion version after the decision.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pspnet.model.checkpoint import load_checkpoint

    root = Path(root)
    cfg = params.register_
    models_dir = root / params.paths.models
    ckpt_path = models_dir / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        raise PspnetError(f"{ckpt_path}: no checkpoint. Run the `train` stage first.")
    value = read_metric(root / params.paths.metrics / EVAL_METRICS_FILE, cfg.metric)
    run_ref = RunRef.load(models_dir / RUN_REF_FILE)
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    checkpoint_sha = sha256_file(ckpt_path)

    setup_mlflow(params.mlflow, root)
    client = MlflowClient()
    try:
        client.get_run(run_ref.run_id)
    except MlflowException as err:
        raise PspnetError(
            f"MLflow run {run_ref.run_id} (from {models_dir / RUN_REF_FILE}, logged to {run_ref.tracking_uri}) "
            f"is not in the current tracking store: {err}. Re-run `train`, or point MLFLOW_TRACKING_URI at that store."
        ) from None

    mv = _find_existing_version(client, cfg.model_name, run_ref.run_id, checkpoint_sha)
    if mv is not None:
        log.info("reusing version %s of %s (same run and checkpoint)", mv.version, cfg.model_name)
        logged_model_uri = mv.source
    else:
        info = _log_model(params, ckpt, run_ref.run_id, checkpoint_sha)
        logged_model_uri = info.model_uri
        _probe(logged_model_uri, cfg.probe_size, int(ckpt.num_classes))
        tags = {TAG_CHECKPOINT_SHA: checkpoint_sha, **_class_tags(ckpt)}
        # Creates the registered model on first use (and tolerates a concurrent creation).
        mv = mlflow.register_model(logged_model_uri, cfg.model_name, tags=tags)
    version = str(mv.version)

    decision, reason, before = _decide_and_promote(
        client, cfg.model_name, cfg.champion_alias, cfg.metric, version, value, cfg.min_improvement
    )
    decision_tags = {
        TAG_DECISION: decision,
        TAG_REASON: reason[:_MAX_TAG_CHARS],
        TAG_METRIC_NAME: cfg.metric,
        TAG_METRIC_VALUE: repr(value),
        TAG_PREV_VERSION: before.version if before else "",
        TAG_PREV_METRIC: repr(before.metric) if before and before.metric is not None else "",
    }
    for key, val in decision_tags.items():
        client.set_model_version_tag(cfg.model_name, version, key, val)

    after = get_champion(client, cfg.model_name, cfg.champion_alias, cfg.metric)
    if decision == PROMOTED and (after is None or after.version != version):
        log.warning("version %s was promoted but %s now points at %s (a concurrent registration)",
                    version, cfg.champion_alias, after.version if after else None)

    report = {
        "model_name": cfg.model_name,
        "version": version,
        "run_id": run_ref.run_id,
        "model_uri": f"models:/{cfg.model_name}/{version}",
        "logged_model_uri": logged_model_uri,
        "champion_alias": cfg.champion_alias,
        "champion_uri": f"models:/{cfg.model_name}@{cfg.champion_alias}",
        "decision": decision,
        "reason": reason,
        "metric": cfg.metric,
        "metric_value": value,
        "min_improvement": cfg.min_improvement,
        "previous_champion_version": before.version if before else None,
        "previous_champion_metric": before.metric if before else None,
        "champion_version": after.version if after else None,
        "champion_metric": after.metric if after else None,
        "checkpoint_sha256": checkpoint_sha,
        "num_classes": int(ckpt.num_classes),
        "class_names": list(ckpt.meta.get("class_names", [])),
    }
    try:
        client.log_dict(run_ref.run_id, report, "registry/registry.json")
    except MlflowException as err:  # the report on disk is what counts; the run copy is a convenience
        log.warning("could not attach registry.json to run %s: %s", run_ref.run_id, err)
    io.write_json(root / params.paths.reports / REPORT_FILE, report)
    return report
