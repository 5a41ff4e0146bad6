"""Judge a registered version against the champion and move the champion alias if it wins.

Reading the champion, the gate (:mod:`pspnet.registry.gate`) and moving the alias run under
the promotion lock (:mod:`pspnet.registry.lock`), so two registrations against one store never
both judge against the same old champion. Scoring a champion can take minutes, so it happens
outside the lock for the champion as last seen; if the champion under the lock is another
one, the lock is given back, that one is scored, and the decision is made again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pspnet.config import RegisterConfig
from pspnet.errors import PspnetError
from pspnet.evaluate.scores import ImageScores
from pspnet.registry.champion import CACHED, Champion, Incomparable, get_champion
from pspnet.registry.gate import PROMOTED, REJECTED, GateResult, decide
from pspnet.registry.lock import ensure_held, promotion_lock

log = logging.getLogger(__name__)

#: How often the champion may change under our feet before we give up deciding.
MAX_DECISION_ATTEMPTS = 5

#: ``champion -> (its scores comparable with the challenger's, how they were obtained)``.
ChampionScorer = Callable[[Champion], tuple[ImageScores, str]]
#: What is known of a champion version: ``(scores, source, why it cannot be scored)``.
_Known = tuple[ImageScores | None, str | None, Incomparable | None]


@dataclass(frozen=True)
class RegistrationOutcome:
    """What the gate loop settled on: the decision, the champion it was judged against and how
    that champion's scores were obtained (``cached`` / ``re-evaluated``; None without champion)."""

    gate: GateResult
    before: Champion | None
    champion_scores: ImageScores | None
    scores_source: str | None


def _already_champion(scores: ImageScores, cfg: RegisterConfig) -> GateResult:
    value = scores.metric(cfg.metric)
    return GateResult(PROMOTED, f"already the {cfg.champion_alias}", cfg.metric, value, value)


def _score(champion: Champion, score_champion: ChampionScorer) -> _Known:
    try:
        return (*score_champion(champion), None)
    except Incomparable as err:
        return (None, None, err)


def decide_and_promote(
    client: Any, cfg: RegisterConfig, version: str, scores: ImageScores, score_champion: ChampionScorer
) -> RegistrationOutcome:
    """Judge ``version`` (its validation ``scores``) against the current champion, scored by
    ``score_champion``; move the champion alias to it if it wins (see the module docstring)."""
    known: dict[str, _Known] = {}
    for _ in range(MAX_DECISION_ATTEMPTS):
        seen = get_champion(client, cfg.model_name, cfg.champion_alias)
        if seen is not None and seen.version != version and seen.version not in known:
            known[seen.version] = _score(seen, score_champion)
        with promotion_lock(client, cfg.model_name, cfg.lock_timeout, cfg.lock_lease,
                            purpose=f"promoting {cfg.model_name} v{version}") as lease:
            before = get_champion(client, cfg.model_name, cfg.champion_alias)
            if before is not None and before.version == version:
                return RegistrationOutcome(_already_champion(scores, cfg), before, scores, CACHED)
            if before is not None and before.version not in known:
                log.info("the champion moved to v%s while v%s was being scored; deciding again", before.version,
                         seen.version if seen else None)
                continue
            champ_scores, source, incomparable = known[before.version] if before is not None else (None, None, None)
            if incomparable is not None:
                gate = GateResult(REJECTED, str(incomparable), cfg.metric, scores.metric(cfg.metric))
                return RegistrationOutcome(gate, before, None, None)
            gate = decide(scores, champ_scores, cfg, before.version if before else "")
            if gate.decision == PROMOTED:
                ensure_held(client, lease)
                client.set_registered_model_alias(cfg.model_name, cfg.champion_alias, version)
            return RegistrationOutcome(gate, before, champ_scores, source)
    raise PspnetError(
        f"the {cfg.champion_alias!r} alias of {cfg.model_name!r} kept changing while its champion was being scored "
        f"({MAX_DECISION_ATTEMPTS} attempts); other registrations are running. Re-run `register`."
    )
