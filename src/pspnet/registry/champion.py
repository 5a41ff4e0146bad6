"""The champion: the version behind ``register.champion_alias``, and its scores on the
current validation images and protocol (cached in its run, or re-scored from the registry
like any consumer would load it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pspnet.config import Params
from pspnet.errors import PspnetError
from pspnet.evaluate.scores import ImageScores
from pspnet.registry.score_cache import cache_scores, cached_scores

log = logging.getLogger(__name__)

#: How the champion's scores were obtained (``registry.json``'s ``previous_champion_scores``).
CACHED = "cached"
RE_EVALUATED = "re-evaluated"


@dataclass(frozen=True)
class Champion:
    """The version holding the champion alias."""

    version: str
    run_id: str | None


class Incomparable(PspnetError):
    """The champion cannot be scored on the current data (e.g. it predicts other classes)."""


#: Tries of an alias write that lost a race with another registration's (see :func:`set_alias`).
ALIAS_WRITE_TRIES = 3
#: How a unique-constraint violation reads in the store's error: SQLite, PostgreSQL, MySQL.
UNIQUE_VIOLATION_MARKERS = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def set_alias(client: Any, model_name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``. MLflow's alias write is a read-then-insert, not atomic: two
    registrations setting the same alias at once can fail on the store's unique constraint (seen
    on SQLite). The loser's retry finds the row and updates it, so the alias ends on the last writer."""
    import mlflow

    for attempt in range(1, ALIAS_WRITE_TRIES + 1):
        try:
            client.set_registered_model_alias(model_name, alias, version)
            return
        except mlflow.exceptions.MlflowException as err:
            if attempt == ALIAS_WRITE_TRIES or not any(m in str(err) for m in UNIQUE_VIOLATION_MARKERS):
                raise
            log.info("alias %s of %s: a concurrent write won the race; writing again", alias, model_name)


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


def score_champion(params: Params, root: Path, champion: Champion, like: ImageScores) -> ImageScores:
    """Score the champion on the current val split under the current protocol (``like``'s)."""
    from pspnet.device import resolve_device
    from pspnet.evaluate.scoring import score_split, split_dataset
    from pspnet.layout import Layout
    from pspnet.registry.segmenter import load_segmenter

    model_name = params.register_.model_name
    segmenter = load_segmenter(f"models:/{model_name}/{champion.version}")
    if segmenter.class_names != like.class_names:
        raise Incomparable(
            f"champion v{champion.version} predicts classes {list(segmenter.class_names)}, the current data has "
            f"{list(like.class_names)}; it cannot be scored on this data. If the new class set is intended, "
            f"move the alias by hand: MlflowClient().set_registered_model_alias({model_name!r}, "
            f"{params.register_.champion_alias!r}, <version>)"
        )
    layout = Layout(root, params.paths)
    model_cfg = params.model.model_copy(update={"input_mean": segmenter.input_mean, "input_std": segmenter.input_std})
    dataset = split_dataset(params, layout.prepared, layout.quarantine, model_cfg)
    if tuple(str(i) for i in dataset.ids) != like.ids:
        raise PspnetError(
            f"the val split has {len(dataset)} images but metrics/per_image.npz covers {len(like.ids)} (or another "
            "order); re-run `evaluate`."
        )
    device = resolve_device(params.train.device)
    log.info("re-evaluating champion v%s on data version %s (%s)", champion.version, like.data_version, like.protocol)
    scored = score_split(
        segmenter.model, dataset, like.class_names, params.data.ignore_index, params.evaluate, device,
        like.data_version, num_workers=params.train.num_workers, desc=f"champion v{champion.version}",
    )
    return scored.images


def champion_scores(params: Params, root: Path, client: Any, champion: Champion, like: ImageScores) -> tuple[ImageScores, str]:
    """The champion's scores comparable with ``like``: ``(scores, CACHED | RE_EVALUATED)``."""
    cached = cached_scores(champion.run_id, like)
    if cached is not None:
        return cached, CACHED
    scores = score_champion(params, root, champion, like)
    if champion.run_id:
        cache_scores(client, champion.run_id, scores)
    return scores, RE_EVALUATED
