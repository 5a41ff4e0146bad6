"""What ``register`` reports: the content of ``registry.json``, the model card as a version
description, and both attached to the model's run."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pspnet.config import RegisterConfig
from pspnet.evaluate.metrics import json_float
from pspnet.evaluate.scores import ImageScores
from pspnet.layout import MODEL_CARD_FILE, REGISTRY_REPORT_FILE
from pspnet.registry.champion import Champion
from pspnet.registry.promotion import RegistrationOutcome
from pspnet.registry.score_cache import ARTIFACT_DIR

log = logging.getLogger(__name__)

#: The tag the MLflow UI renders as a run's description.
RUN_DESCRIPTION_TAG = "mlflow.note.content"
#: Model version descriptions are capped like tags (5000 characters); a longer card points to the artifact.
MAX_DESCRIPTION_CHARS = 5000
#: Room left at the end of a cut description for the note saying where the whole card is.
DESCRIPTION_NOTE_ROOM = 200


def card_description(card: str) -> str:
    """The card as a version description: whole when it fits, else cut with a pointer to the run artifact."""
    if len(card) <= MAX_DESCRIPTION_CHARS:
        return card
    note = f"\n\n(cut: the whole card is the run artifact {ARTIFACT_DIR}/{MODEL_CARD_FILE})\n"
    return card[: MAX_DESCRIPTION_CHARS - DESCRIPTION_NOTE_ROOM] + note


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars made plain and NaN / inf made None (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    return json_float(value) if isinstance(value, float) else value


def registration_report(
    *,
    cfg: RegisterConfig,
    version: str,
    run_id: str,
    logged_model_uri: str,
    outcome: RegistrationOutcome,
    after: Champion | None,
    scores: ImageScores,
    checkpoint_sha: str,
    ckpt: Any,
) -> dict[str, Any]:
    """``registry.json``: the version, its URIs, the decision with the gate's numbers, the champion
    before and after (``after``), JSON-safe."""
    gate = outcome.gate
    report = {
        "model_name": cfg.model_name,
        "version": version,
        "run_id": run_id,
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
    return json_safe(report)


def attach_to_run(client: Any, run_id: str, report: dict[str, Any], card: str) -> None:
    """Copy the report and the card into the run (``registry/``) and show the card as the run's
    description (its Overview page); a failure only warns, the files on disk are what counts."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_tag(run_id, RUN_DESCRIPTION_TAG, card_description(card))
    except MlflowException as err:
        log.warning("could not set the description of run %s: %s", run_id, err)
    for name, payload in ((REGISTRY_REPORT_FILE, report), (MODEL_CARD_FILE, card)):
        try:
            if isinstance(payload, str):
                client.log_text(run_id, payload, f"{ARTIFACT_DIR}/{name}")
            else:
                client.log_dict(run_id, payload, f"{ARTIFACT_DIR}/{name}")
        except MlflowException as err:
            log.warning("could not attach %s to run %s: %s", name, run_id, err)
