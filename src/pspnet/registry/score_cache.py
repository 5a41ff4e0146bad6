"""Per-image scores cached in a model's MLflow run, so the next gate on the same data and
protocol need not re-score that model. A score file is named by what makes scores
comparable (:func:`cache_key`); unversioned data is never cached."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pspnet.evaluate.scores import ImageScores

log = logging.getLogger(__name__)

#: Run artifact folder of ``register``'s files; scores are cached under ``<it>/scores``.
ARTIFACT_DIR = "registry"
SCORES_ARTIFACT_DIR = f"{ARTIFACT_DIR}/scores"
#: Digits of the SHA-256 that name a cached score file.
CACHE_KEY_CHARS = 16
#: Prefix of the scratch folders score files pass through.
SCRATCH_PREFIX = "pspnet-scores-"


def cache_key(scores: ImageScores) -> str:
    """Names a score file by what makes scores comparable: data version, protocol, images, classes."""
    text = json.dumps([scores.data_version, scores.protocol, list(scores.ids), list(scores.class_names)])
    return hashlib.sha256(text.encode()).hexdigest()[:CACHE_KEY_CHARS]


def cache_scores(client: Any, run_id: str, scores: ImageScores) -> None:
    """Attach ``scores`` to run ``run_id`` so the next gate on the same data need not re-score."""
    from mlflow.exceptions import MlflowException

    if not scores.data_version:  # unversioned data cannot be recognised again
        return
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as tmp:
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
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as tmp:
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
