"""The ``register`` stage: log the trained model, register it as the challenger, promote it
only if it passes the gate.

Steps:

1. read ``models/checkpoint.pt``, the per-image validation scores ``metrics/per_image.npz``
   and ``metrics/eval.json`` (written by ``evaluate``; they must be of the current prepared
   data and ``evaluate`` protocol) and the run reference ``models/mlflow_run.json``;
2. reopen that run and log the model (:mod:`pspnet.registry.packaging`: a pyfunc mapping RGB
   images of any size to class maps, around a ``torch.export`` program). The logged model is
   loaded back and must reproduce the checkpoint's class map on a probe image of another size
   before it is registered;
3. register it as a new version of ``register.model_name`` (class names / colours as version
   tags) and point the alias ``register.challenger_alias`` at it;
4. score the champion on the SAME validation images and protocol: its scores are cached in its
   run (``registry/scores/<key>.npz``, the key naming data version and protocol); when the
   data version or protocol changed it is re-evaluated (loaded from the registry like any
   consumer would) and the new scores cached;
5. the gate (:mod:`pspnet.registry.gate`: margin + paired bootstrap + per-class drop) decides;
   the alias ``register.champion_alias`` moves only on promotion. Reading the champion, the
   gate and moving the alias run under the promotion lock (:mod:`pspnet.registry.lock`), so
   concurrent registrations against one store are serialised there; if the champion under
   the lock is not the one that was scored, it is scored and the decision made again;
6. record the decision and its numbers as version tags, in ``reports/registry.json`` (atomic
   write) and in the model card (``reports/model_card.md``, the run's
   ``registry/model_card.md``, the version's description).

Re-running after a crash (or a retry) does not log a second copy: a version that already holds
this run's checkpoint (same run id and checkpoint SHA-256) is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pspnet import atomic_files
from pspnet.config import Params
from pspnet.errors import PspnetError
from pspnet.evaluate.metrics import json_float
from pspnet.evaluate.scores import ImageScores
from pspnet.registry.gate import PROMOTED, REJECTED, GateResult, decide
from pspnet.registry.lock import ensure_held, promotion_lock
from pspnet.tracking.runs import RUN_REF_FILE, RunRef, dataset_tags
from pspnet.tracking.store import setup_mlflow

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
EVAL_METRICS_FILE = "eval.json"
REPORT_FILE = "registry.json"
CARD_FILE = "model_card.md"
#: Run artifact folder of this stage's files; scores are cached under ``<it>/scores``.
ARTIFACT_DIR = "registry"
SCORES_ARTIFACT_DIR = f"{ARTIFACT_DIR}/scores"

# Version tags written by this stage.
TAG_DECISION = "decision"
TAG_REASON = "decision_reason"
TAG_METRIC_NAME = "metric_name"
TAG_METRIC_VALUE = "metric_value"
TAG_PREV_VERSION = "previous_champion_version"
TAG_PREV_METRIC = "previous_champion_metric"
TAG_GAIN = "gate.gain"
TAG_LOWER_BOUND = "gate.lower_bound"
TAG_WORST_CLASS = "gate.worst_class"
TAG_WORST_DROP = "gate.worst_class_drop"
TAG_DATA_VERSION = "data.version"
TAG_PROTOCOL = "evaluate.protocol"
TAG_CHECKPOINT_SHA = "checkpoint_sha256"
TAG_NUM_CLASSES = "num_classes"
TAG_CLASS_NAMES = "class_names"
TAG_CLASS_COLORS = "class_colors"

#: MLflow caps tag values at 5000 characters (SQL store); longer values are cut.
_MAX_TAG_CHARS = 5000
#: Model version descriptions are capped the same way; a longer card points to the artifact.
_MAX_DESCRIPTION_CHARS = 5000
#: How often the champion may change under our feet before we give up deciding.
_MAX_DECISION_ATTEMPTS = 5
#: Largest share of probe pixels whose class may differ between the logged model and the
#: checkpoint (float rounding in the exported graph can flip near-ties, nothing more).
_PROBE_MAX_MISMATCH = 0.001
#: Digits of the SHA-256 that name a cached score file.
_CACHE_KEY_CHARS = 16


@dataclass(frozen=True)
class Champion:
    """The version holding the champion alias."""

    version: str
    run_id: str | None


class Incomparable(PspnetError):
    """The champion cannot be scored on the current data (e.g. it predicts other classes)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_eval_metrics(path: Path) -> dict[str, Any]:
    """``metrics/eval.json`` (a JSON object), for the model card."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PspnetError(f"{path}: evaluation metrics not found. Run the `evaluate` stage first.") from None
    except ValueError as err:
        raise PspnetError(f"{path}: not valid JSON ({err}). Re-run `evaluate`.") from None
    if not isinstance(raw, dict):
        raise PspnetError(f"{path}: expected a JSON object of metrics, got {type(raw).__name__}.")
    return raw


def get_champion(client: Any, model_name: str, alias: str) -> Champion | None:
    """The version behind ``alias``; ``None`` if there is none (or no such model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return Champion(version=str(mv.version), run_id=mv.run_id or None)


def cache_key(scores: ImageScores) -> str:
    """Names a score file by what makes scores comparable: data version, protocol, images, classes."""
    text = json.dumps([scores.data_version, scores.protocol, list(scores.ids), list(scores.class_names)])
    return hashlib.sha256(text.encode()).hexdigest()[:_CACHE_KEY_CHARS]


def cache_scores(client: Any, run_id: str, scores: ImageScores) -> None:
    """Attach ``scores`` to run ``run_id`` so the next gate on the same data need not re-score."""
    from mlflow.exceptions import MlflowException

    if not scores.data_version:  # unversioned data cannot be recognised again
        return
    with tempfile.TemporaryDirectory(prefix="pspnet-scores-") as tmp:
        path = Path(tmp) / f"{cache_key(scores)}.npz"
        scores.save(path)
        try:
            client.log_artifact(run_id, str(path), SCORES_ARTIFACT_DIR)
        except MlflowException as err:  # a cache: losing it costs time, not correctness
            log.warning("could not cache scores in run %s: %s", run_id, err)


def cached_scores(run_id: str | None, like: ImageScores) -> ImageScores | None:
    """Scores cached in run ``run_id`` for the same data / protocol / images as ``like``, if any."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not run_id or not like.data_version:
        return None
    with tempfile.TemporaryDirectory(prefix="pspnet-scores-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{SCORES_ARTIFACT_DIR}/{cache_key(like)}.npz", dst_path=tmp
            )
        except (MlflowException, OSError):
            return None
        scores = ImageScores.load(Path(path))
    same = (scores.ids, scores.class_names, scores.data_version, scores.protocol) == (
        like.ids, like.class_names, like.data_version, like.protocol
    )
    return scores if same else None


def score_champion(params: Params, root: Path, model_name: str, champion: Champion, like: ImageScores) -> ImageScores:
    """Score the champion on the current val split under the current protocol (``like``'s)."""
    from pspnet.device import resolve_device
    from pspnet.evaluate.scores import score_dataset
    from pspnet.evaluate.stage import split_dataset
    from pspnet.registry.segmenter import load_segmenter

    uri = f"models:/{model_name}/{champion.version}"
    segmenter = load_segmenter(uri)
    if segmenter.class_names != like.class_names:
        raise Incomparable(
            f"champion v{champion.version} predicts classes {list(segmenter.class_names)}, the current data has "
            f"{list(like.class_names)}; it cannot be scored on this data. If the new class set is intended, "
            f"move the alias by hand: MlflowClient().set_registered_model_alias({model_name!r}, "
            f"{params.register_.champion_alias!r}, <version>)"
        )
    model_cfg = params.model.model_copy(update={"input_mean": segmenter.input_mean, "input_std": segmenter.input_std})
    dataset = split_dataset(params, root, model_cfg)
    ids = [str(i) for i in dataset.ids]
    if tuple(ids) != like.ids:
        raise PspnetError(
            f"the val split has {len(ids)} images but metrics/per_image.npz covers {len(like.ids)} (or another "
            "order); re-run `evaluate`."
        )
    device = resolve_device(params.train.device)
    context = {"data_version": like.data_version, "protocol": like.protocol}
    log.info("re-evaluating champion v%s on data version %s (%s)", champion.version, like.data_version, like.protocol)
    scored = score_dataset(
        segmenter.model.to(device), dataset, ids, like.class_names, params.data.ignore_index, params.evaluate,
        device, context, num_workers=params.train.num_workers, desc=f"champion v{champion.version}",
    )
    return scored.images


def champion_scores(params: Params, root: Path, client: Any, champion: Champion, like: ImageScores) -> tuple[ImageScores, str]:
    """The champion's scores comparable with ``like``: ``(scores, "cached" | "re-evaluated")``."""
    cached = cached_scores(champion.run_id, like)
    if cached is not None:
        return cached, "cached"
    scores = score_champion(params, root, params.register_.model_name, champion, like)
    if champion.run_id:
        cache_scores(client, champion.run_id, scores)
    return scores, "re-evaluated"


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


def probe_logged_model(model_uri: str, ckpt: Any, size: tuple[int, int]) -> None:
    """Load the logged model back as a pyfunc (the serving path) and check that it reproduces the
    checkpoint's class map on a random image of ``size`` (neither the export example's size nor
    its batch)."""
    import mlflow.pyfunc
    import torch

    from pspnet.model.export import SegmentationModel

    h, w = size
    image = np.random.default_rng(0).integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
    try:
        served = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(image))
    except Exception as err:  # noqa: BLE001 - any failure means the artefact is unusable
        raise PspnetError(
            f"the logged model {model_uri} rejects a (1, {h}, {w}, 3) image: {type(err).__name__}: "
            f"{str(err)[:500]}. Its input shapes were probably frozen at export."
        ) from None
    if served.shape != (1, h, w):
        raise PspnetError(f"the logged model maps a (1, {h}, {w}, 3) image to {served.shape}, expected (1, {h}, {w}).")
    cfg = ckpt.model_cfg
    reference = SegmentationModel(ckpt.model, cfg.input_mean, cfg.input_std)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(image).permute(0, 3, 1, 2).float()).argmax(1).numpy()
    mismatch = float((served != expected).mean())
    if mismatch > _PROBE_MAX_MISMATCH:
        raise PspnetError(
            f"the logged model {model_uri} disagrees with the checkpoint on {mismatch:.2%} of a probe image's "
            "pixels; the export is broken. Report this with the model's encoder and torch version."
        )


def class_tags(ckpt: Any) -> dict[str, str]:
    names = json.dumps(list(ckpt.meta.get("class_names", [])))
    colors = json.dumps([list(c) for c in ckpt.meta.get("class_colors", [])])
    return {
        TAG_NUM_CLASSES: str(int(ckpt.num_classes)),
        TAG_CLASS_NAMES: names[:_MAX_TAG_CHARS],
        TAG_CLASS_COLORS: colors[:_MAX_TAG_CHARS],
    }


@dataclass(frozen=True)
class Outcome:
    """What the gate loop settled on: the decision, the champion it was judged against and how
    that champion's scores were obtained (``cached`` / ``re-evaluated``; None without champion)."""

    gate: GateResult
    before: Champion | None
    champion_scores: ImageScores | None
    scores_source: str | None


def _already_champion(scores: ImageScores, cfg: Any, alias: str) -> GateResult:
    value = scores.metric(cfg.metric)
    return GateResult(PROMOTED, f"already the {alias}", cfg.metric, value, value)


def _decide_and_promote(params: Params, root: Path, client: Any, version: str, scores: ImageScores) -> Outcome:
    """Judge ``version`` against the current champion; move the alias if it wins.

    Reading the champion, the gate and moving the alias run under the promotion lock
    (:mod:`pspnet.registry.lock`), so two registrations against one store never both judge
    against the same old champion. Scoring a champion can take minutes (re-evaluation), so it
    happens outside the lock, for the champion as last seen; if the champion under the lock is
    another one, the lock is given back, that one is scored, and the decision is made again.
    """
    cfg = params.register_
    known: dict[str, tuple[ImageScores | None, str | None, Incomparable | None]] = {}
    for _ in range(_MAX_DECISION_ATTEMPTS):
        seen = get_champion(client, cfg.model_name, cfg.champion_alias)
        if seen is not None and seen.version != version and seen.version not in known:
            try:
                known[seen.version] = (*champion_scores(params, root, client, seen, scores), None)
            except Incomparable as err:
                known[seen.version] = (None, None, err)
        with promotion_lock(client, cfg.model_name, cfg.lock_timeout, cfg.lock_lease,
                            purpose=f"promoting {cfg.model_name} v{version}") as lease:
            before = get_champion(client, cfg.model_name, cfg.champion_alias)
            if before is not None and before.version == version:
                return Outcome(_already_champion(scores, cfg, cfg.champion_alias), before, scores, "cached")
            if before is not None and before.version not in known:
                log.info("the champion moved to v%s while v%s was being scored; deciding again", before.version,
                         seen.version if seen else None)
                continue
            champ_scores, source, incomparable = known[before.version] if before is not None else (None, None, None)
            if incomparable is not None:
                gate = GateResult(REJECTED, str(incomparable), cfg.metric, scores.metric(cfg.metric))
                return Outcome(gate, before, None, None)
            gate = decide(scores, champ_scores, cfg, before.version if before else "")
            if gate.decision == PROMOTED:
                ensure_held(client, lease)
                client.set_registered_model_alias(cfg.model_name, cfg.champion_alias, version)
            return Outcome(gate, before, champ_scores, source)
    raise PspnetError(
        f"the {cfg.champion_alias!r} alias of {cfg.model_name!r} kept changing while its champion was being scored "
        f"({_MAX_DECISION_ATTEMPTS} attempts); other registrations are running. Re-run `register`."
    )


def load_current_scores(params: Params, root: Path, ckpt: Any) -> ImageScores:
    """``metrics/per_image.npz``, checked to be of the current data, protocol and classes."""
    from pspnet.evaluate.stage import PER_IMAGE_NPZ, data_version, inference_tag

    path = root / params.paths.metrics / PER_IMAGE_NPZ
    scores = ImageScores.load(path)
    version, protocol = data_version(root / params.paths.prepared), inference_tag(params.evaluate)
    if (scores.data_version, scores.protocol) != (version, protocol):
        raise PspnetError(
            f"{path} scores data version {scores.data_version!r} under {scores.protocol!r}, but the current data is "
            f"{version!r} and evaluate asks for {protocol!r}. Re-run `evaluate` (dvc repro does)."
        )
    names = tuple(ckpt.meta.get("class_names") or scores.class_names)
    if names != scores.class_names:
        raise PspnetError(f"{path} scores classes {list(scores.class_names)} but the checkpoint predicts {list(names)}. Re-run `evaluate`.")
    return scores


def _gate_tags(outcome: Outcome, scores: ImageScores) -> dict[str, str]:
    gate = outcome.gate
    boot = gate.bootstrap
    values = {
        TAG_DECISION: gate.decision,
        TAG_REASON: gate.reason,
        TAG_METRIC_NAME: gate.metric,
        TAG_METRIC_VALUE: repr(gate.challenger_metric),
        TAG_PREV_VERSION: outcome.before.version if outcome.before else "",
        TAG_PREV_METRIC: repr(gate.champion_metric) if gate.champion_metric is not None else "",
        TAG_GAIN: repr(boot.gain) if boot else "",
        TAG_LOWER_BOUND: repr(boot.lower_bound) if boot else "",
        TAG_WORST_CLASS: gate.worst_class or "",
        TAG_WORST_DROP: repr(gate.worst_drop) if gate.worst_drop is not None else "",
        TAG_DATA_VERSION: scores.data_version,
        TAG_PROTOCOL: scores.protocol,
    }
    return {k: v[:_MAX_TAG_CHARS] for k, v in values.items()}


def register(params: Params, root: Path) -> dict:
    """Log and register the trained model as the challenger; promote it if it passes the gate.

    Writes ``reports/registry.json`` and ``reports/model_card.md`` and returns the report:
    model name, version, run id, URIs, decision, reason, the gate's numbers, the champion
    before and after.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pspnet.model.checkpoint import load_checkpoint
    from pspnet.registry.card import model_card
    from pspnet.registry.packaging import log_segmentation_model

    root = Path(root)
    cfg = params.register_
    models_dir = root / params.paths.models
    ckpt_path = models_dir / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        raise PspnetError(f"{ckpt_path}: no checkpoint. Run the `train` stage first.")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    scores = load_current_scores(params, root, ckpt)
    eval_metrics = read_eval_metrics(root / params.paths.metrics / EVAL_METRICS_FILE)
    run_ref = RunRef.load(models_dir / RUN_REF_FILE)
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
        info = log_segmentation_model(ckpt, run_ref.run_id, checkpoint_sha, cfg.export_example_size)
        logged_model_uri = info.model_uri
        probe_logged_model(logged_model_uri, ckpt, cfg.probe_size)
        tags = {TAG_CHECKPOINT_SHA: checkpoint_sha, **class_tags(ckpt)}
        # Creates the registered model on first use (and tolerates a concurrent creation).
        mv = mlflow.register_model(logged_model_uri, cfg.model_name, tags=tags)
    version = str(mv.version)
    client.set_registered_model_alias(cfg.model_name, cfg.challenger_alias, version)
    cache_scores(client, run_ref.run_id, scores)

    outcome = _decide_and_promote(params, root, client, version, scores)
    gate = outcome.gate
    for key, val in _gate_tags(outcome, scores).items():
        client.set_model_version_tag(cfg.model_name, version, key, val)
    after = get_champion(client, cfg.model_name, cfg.champion_alias)
    if gate.decision == PROMOTED and (after is None or after.version != version):
        log.warning("version %s was promoted but %s now points at %s (a concurrent registration)",
                    version, cfg.champion_alias, after.version if after else None)

    data = dataset_tags(root / params.paths.prepared)
    card = model_card(
        model_name=cfg.model_name, version=version, run_id=run_ref.run_id,
        params=params.model_copy(update={"model": ckpt.model_cfg}), data=data, metrics=eval_metrics,
        scores=scores, champion_scores=outcome.champion_scores, gate=gate,
        champion_version=outcome.before.version if outcome.before else None,
    )
    description = card if len(card) <= _MAX_DESCRIPTION_CHARS else (
        card[: _MAX_DESCRIPTION_CHARS - 200] + f"\n\n(cut: the whole card is the run artifact {ARTIFACT_DIR}/{CARD_FILE})\n"
    )
    client.update_model_version(cfg.model_name, version, description=description)

    report = {
        "model_name": cfg.model_name,
        "version": version,
        "run_id": run_ref.run_id,
        "model_uri": f"models:/{cfg.model_name}/{version}",
        "logged_model_uri": logged_model_uri,
        "challenger_alias": cfg.challenger_alias,
        "champion_alias": cfg.champion_alias,
        "champion_uri": f"models:/{cfg.model_name}@{cfg.champion_alias}",
        "decision": gate.decision,
        "reason": gate.reason,
        "metric": cfg.metric,
        "metric_value": gate.challenger_metric,
        "gate": {
            "min_improvement": cfg.min_improvement,
            "confidence": cfg.confidence,
            "bootstrap_samples": cfg.bootstrap_samples,
            "max_class_drop": cfg.max_class_drop,
            **{k: v for k, v in gate.to_dict().items() if k not in ("decision", "reason", "metric")},
        },
        "data_version": scores.data_version,
        "protocol": scores.protocol,
        "num_val_images": len(scores.ids),
        "previous_champion_version": outcome.before.version if outcome.before else None,
        "previous_champion_metric": gate.champion_metric,
        "previous_champion_scores": outcome.scores_source,
        "champion_version": after.version if after else None,
        "checkpoint_sha256": checkpoint_sha,
        "num_classes": int(ckpt.num_classes),
        "class_names": list(ckpt.meta.get("class_names", [])),
    }
    report = _json_safe(report)
    for name, payload in ((REPORT_FILE, report), (CARD_FILE, card)):
        try:
            if isinstance(payload, str):
                client.log_text(run_ref.run_id, payload, f"{ARTIFACT_DIR}/{name}")
            else:
                client.log_dict(run_ref.run_id, payload, f"{ARTIFACT_DIR}/{name}")
        except MlflowException as err:  # the files on disk are what counts; the run copies are a convenience
            log.warning("could not attach %s to run %s: %s", name, run_ref.run_id, err)
    reports = root / params.paths.reports
    atomic_files.write_json(reports / REPORT_FILE, report)
    atomic_files.write_text(reports / CARD_FILE, card)
    log.info("register: v%s %s: %s", version, gate.decision, gate.reason)
    return report


def _json_safe(value: Any) -> Any:
    """``value`` with numpy scalars made plain and NaN / inf made None (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    return json_float(value) if isinstance(value, float) else value
