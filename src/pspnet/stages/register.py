"""Stage ``register``: log the trained model, register it as the challenger, promote it only
if it passes the gate.

Reads the checkpoint, the run reference and ``evaluate``'s scores (which must be of the
current data and protocol); logs and registers the model (:mod:`pspnet.registry.logged_model`,
reusing the version of a retry), points the challenger alias at it, judges it against the
champion scored on the same images (:mod:`pspnet.registry.promotion`), and records the
decision as version tags, in ``reports/registry.json`` and in the model card. The ``test``
stage's scores (``metrics/test/eval.json``) are read for the model card only: the gate sees
val's per-image scores and nothing else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pspnet import atomic_files
from pspnet.config import Params
from pspnet.errors import PspnetError
from pspnet.evaluate.scores import ImageScores
from pspnet.evaluate.scoring import data_version, inference_tag
from pspnet.layout import Layout
from pspnet.registry.card import model_card
from pspnet.registry.champion import champion_scores, get_champion, set_alias
from pspnet.registry.gate import PROMOTED
from pspnet.registry.logged_model import find_existing_version, register_checkpoint, sha256_file
from pspnet.registry.promotion import decide_and_promote
from pspnet.registry.report import attach_to_run, card_description, registration_report
from pspnet.registry.score_cache import cache_scores
from pspnet.registry.tags import gate_tags
from pspnet.tracking.runs import RunRef, dataset_tags
from pspnet.tracking.store import setup_mlflow

log = logging.getLogger(__name__)


def read_eval_metrics(path: Path, stage: str = "evaluate") -> dict[str, Any]:
    """``metrics/eval.json`` (or the ``stage`` that wrote ``path``: a JSON object), for the model card."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PspnetError(f"{path}: evaluation metrics not found. Run the `{stage}` stage first.") from None
    except ValueError as err:
        raise PspnetError(f"{path}: not valid JSON ({err}). Re-run `{stage}`.") from None
    if not isinstance(raw, dict):
        raise PspnetError(f"{path}: expected a JSON object of metrics, got {type(raw).__name__}.")
    return raw


def read_test_metrics(layout: Layout, run_id: str, version: str, protocol: str) -> dict[str, Any] | None:
    """The ``test`` stage's scores for the model card, when they are of this run, data version and
    protocol; None when the stage skipped or has not run, or (warned) when they are stale."""
    path = layout.test_metrics
    if not path.is_file():
        return None
    record = read_eval_metrics(path, stage="test")
    if record.get("skipped"):
        return None
    scored = (record.get("run_id"), record.get("data_version"), record.get("protocol"))
    if scored != (run_id, version, protocol):
        log.warning("%s scores run %s, data %r under %r, not this model's (run %s, data %r, %r): left off the model "
                    "card. Re-run `pspnet evaluate --split test` (or the test stage).", path, *scored, run_id, version, protocol)
        return None
    return record


def load_current_scores(params: Params, layout: Layout, ckpt: Any) -> ImageScores:
    """``metrics/per_image.npz``, checked to be of the current data, protocol and classes."""
    path = layout.per_image_scores
    scores = ImageScores.load(path)
    version, protocol = data_version(layout.prepared), inference_tag(params.evaluate)
    if (scores.data_version, scores.protocol) != (version, protocol):
        raise PspnetError(
            f"{path} scores data version {scores.data_version!r} under {scores.protocol!r}, but the current data is "
            f"{version!r} and evaluate asks for {protocol!r}. Re-run `evaluate` (dvc repro does)."
        )
    names = tuple(ckpt.meta.get("class_names") or scores.class_names)
    if names != scores.class_names:
        raise PspnetError(f"{path} scores classes {list(scores.class_names)} but the checkpoint predicts {list(names)}. Re-run `evaluate`.")
    return scores


def _open_store(params: Params, root: Path, run_ref: RunRef, layout: Layout) -> Any:
    """An MLflow client of the project's store, which must hold the run ``train`` recorded."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    setup_mlflow(params.mlflow, root)
    client = MlflowClient()
    try:
        client.get_run(run_ref.run_id)
    except MlflowException as err:
        raise PspnetError(
            f"MLflow run {run_ref.run_id} (from {layout.run_ref}, logged to {run_ref.tracking_uri}) "
            f"is not in the current tracking store: {err}. Re-run `train`, or point MLFLOW_TRACKING_URI at that store."
        ) from None
    return client


def _challenger(client: Any, params: Params, ckpt: Any, run_id: str, checkpoint_sha: str) -> tuple[str, str]:
    """Register the checkpoint (or reuse a retry's version) and make it the challenger:
    ``(version, logged model URI)``."""
    cfg = params.register_
    mv = find_existing_version(client, cfg.model_name, run_id, checkpoint_sha)
    if mv is not None:
        log.info("reusing version %s of %s (same run and checkpoint)", mv.version, cfg.model_name)
        logged_model_uri = mv.source
    else:
        mv, logged_model_uri = register_checkpoint(ckpt, run_id, checkpoint_sha, cfg.model_name, params)
    version = str(mv.version)
    set_alias(client, cfg.model_name, cfg.challenger_alias, version)
    return version, logged_model_uri


def run(params: Params, root: Path) -> dict[str, Any]:
    """Stage ``register``: log and register the trained model as the challenger; promote it if
    it passes the gate.

    Writes ``reports/registry.json`` and ``reports/model_card.md`` and returns the report:
    model name, version, run id, URIs, decision, reason, the gate's numbers, the champion
    before and after.
    """
    from pspnet.model.checkpoint import load_checkpoint

    root = Path(root)
    layout = Layout(root, params.paths)
    cfg = params.register_
    if not layout.checkpoint.is_file():
        raise PspnetError(f"{layout.checkpoint}: no checkpoint. Run the `train` stage first.")
    ckpt = load_checkpoint(layout.checkpoint, map_location="cpu")
    scores = load_current_scores(params, layout, ckpt)
    eval_metrics = read_eval_metrics(layout.eval_metrics)
    run_ref = RunRef.load(layout.run_ref)
    test_metrics = read_test_metrics(layout, run_ref.run_id, scores.data_version, scores.protocol)
    checkpoint_sha = sha256_file(layout.checkpoint)
    client = _open_store(params, root, run_ref, layout)

    version, logged_model_uri = _challenger(client, params, ckpt, run_ref.run_id, checkpoint_sha)
    cache_scores(client, run_ref.run_id, scores)
    outcome = decide_and_promote(
        client, cfg, version, scores, lambda champion: champion_scores(params, root, client, champion, scores)
    )
    gate, before = outcome.gate, outcome.before
    for key, val in gate_tags(gate, before.version if before else None, scores).items():
        client.set_model_version_tag(cfg.model_name, version, key, val)
    after = get_champion(client, cfg.model_name, cfg.champion_alias)
    if gate.decision == PROMOTED and (after is None or after.version != version):
        log.warning("version %s was promoted but %s now points at %s (a concurrent registration)",
                    version, cfg.champion_alias, after.version if after else None)

    card = model_card(
        model_name=cfg.model_name, version=version, run_id=run_ref.run_id,
        params=params.model_copy(update={"model": ckpt.model_cfg}), data=dataset_tags(layout.prepared),
        metrics=eval_metrics, scores=scores, champion_scores=outcome.champion_scores, gate=gate,
        champion_version=before.version if before else None, test=test_metrics,
    )
    client.update_model_version(cfg.model_name, version, description=card_description(card))
    report = registration_report(
        cfg=cfg, version=version, run_id=run_ref.run_id, logged_model_uri=logged_model_uri, outcome=outcome,
        after=after, scores=scores, checkpoint_sha=checkpoint_sha, ckpt=ckpt,
    )
    attach_to_run(client, run_ref.run_id, report, card)
    atomic_files.write_json(layout.registry_report, report)
    atomic_files.write_text(layout.model_card, card)
    log.info("register: v%s %s: %s", version, gate.decision, gate.reason)
    return report
