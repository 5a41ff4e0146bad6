"""The promotion lock: one registration at a time reads the champion, gates and moves the alias.

MLflow has no compare-and-set on aliases; the lock is a lease on the one atomic primitive
every MLflow registry has: creating a registered model whose name is taken fails. **acquire**
creates ``<model_name>.promotion-lock`` tagged with the holder, a random token and the expiry
(waiting with backoff up to ``register.lock_timeout``); **release** deletes it if it still
carries our token; an expired lease (a crashed holder, ``register.lock_lease``) is broken by
the next registration, and a holder re-checks its lease (:func:`ensure_held`) right before
moving the alias. Expiry times are the holder's wall clock (UTC).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pspnet.config import PROMOTION_LOCK_SUFFIX
from pspnet.errors import PspnetError

log = logging.getLogger(__name__)

#: The lock of model ``m`` is the registered model ``m`` + this (config refuses model names ending so).
LOCK_SUFFIX = PROMOTION_LOCK_SUFFIX
# Tags of the lock (set atomically with its creation).
TAG_TOKEN = "lock.token"
TAG_HOLDER = "lock.holder"
TAG_PURPOSE = "lock.purpose"
TAG_ACQUIRED = "lock.acquired_at"
TAG_EXPIRES = "lock.expires_at"
#: First and largest pause between attempts while the lock is taken (seconds); jittered.
FIRST_DELAY = 0.2
MAX_DELAY = 5.0
#: Reads of a tagless model under the lock's name before it is called foreign (torn reads, see read_lease).
TORN_READ_ATTEMPTS = 3
#: While waiting, say so again this often (seconds).
WAIT_LOG_EVERY = 30.0
#: MLflow error codes: the name is taken / there is no such registered model.
_TAKEN = "RESOURCE_ALREADY_EXISTS"
_ABSENT = "RESOURCE_DOES_NOT_EXIST"


@dataclass(frozen=True)
class Lease:
    """A promotion lock as read from the store (ours or another holder's)."""

    name: str
    token: str
    holder: str
    purpose: str
    acquired_at: datetime
    expires_at: datetime

    def expired(self, now: datetime | None = None) -> bool:
        return (now or _now()) >= self.expires_at

    def describe(self) -> str:
        return (f"{self.holder} ({self.purpose}) since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC, "
                f"lease until {self.expires_at:%H:%M:%S} UTC")


def lock_name(model_name: str) -> str:
    """The registered model that is ``model_name``'s promotion lock."""
    return f"{model_name}{LOCK_SUFFIX}"


def holder_id() -> str:
    """This process, as the lock names its holder."""
    return f"{socket.gethostname()} pid {os.getpid()}"


def _now() -> datetime:
    return datetime.now(UTC)


def _read_tags(client: Any, name: str) -> dict[str, str] | None:
    """The tags of registered model ``name``, or ``None`` when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(name).tags or {})
    except MlflowException as err:
        if err.error_code == _ABSENT:
            return None
        raise


def read_lease(client: Any, name: str) -> Lease | None:
    """The lease held under ``name``, or ``None`` when nobody holds it.

    A model without the lock's tags is read again a few times before it is called foreign: the
    SQL store reads a model and its tags in two queries, so a lock deleted between them reads
    as a tagless model for an instant.
    """
    for attempt in range(TORN_READ_ATTEMPTS):
        tags = _read_tags(client, name)
        if tags is None:
            return None
        try:
            return Lease(
                name=name,
                token=tags[TAG_TOKEN],
                holder=tags.get(TAG_HOLDER, "?"),
                purpose=tags.get(TAG_PURPOSE, "?"),
                acquired_at=datetime.fromisoformat(tags[TAG_ACQUIRED]),
                expires_at=datetime.fromisoformat(tags[TAG_EXPIRES]),
            )
        except (KeyError, ValueError):
            if attempt + 1 < TORN_READ_ATTEMPTS:
                time.sleep(FIRST_DELAY)
    raise PspnetError(
        f"registered model {name!r} exists but is not a promotion lock (its tags {sorted(tags)} lack "
        f"{TAG_TOKEN} / {TAG_EXPIRES}). The name is reserved for the lock: rename or delete that model "
        f"(MlflowClient().delete_registered_model({name!r}))."
    )


def _delete(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as err:
        if err.error_code != _ABSENT:
            raise


def break_expired(client: Any, seen: Lease) -> bool:
    """Delete the expired lease ``seen`` if it is still the one in the store; True if deleted."""
    current = read_lease(client, seen.name)
    if current is None or current.token != seen.token or not current.expired():
        return False
    log.warning("breaking the expired promotion lock %s held by %s", seen.name, seen.describe())
    _delete(client, seen.name)
    return True


def acquire(client: Any, model_name: str, timeout: float, lease_seconds: float, purpose: str = "") -> Lease:
    """Take ``model_name``'s promotion lock, waiting up to ``timeout`` seconds (see the module doc)."""
    from mlflow.exceptions import MlflowException

    name = lock_name(model_name)
    started = time.monotonic()
    delay = FIRST_DELAY
    next_log = 0.0
    while True:
        token = uuid.uuid4().hex
        now = _now()
        lease = Lease(name, token, holder_id(), purpose, now, now + timedelta(seconds=lease_seconds))
        tags = {
            TAG_TOKEN: token,
            TAG_HOLDER: lease.holder,
            TAG_PURPOSE: purpose,
            TAG_ACQUIRED: lease.acquired_at.isoformat(),
            TAG_EXPIRES: lease.expires_at.isoformat(),
        }
        try:
            client.create_registered_model(
                name, tags=tags,
                description=(f"Promotion lock of {model_name!r}, held by {lease.holder} ({purpose}). Deleted when "
                             "that registration ends; a lease past its expiry is broken by the next registration."),
            )
            return lease
        except MlflowException as err:
            if err.error_code != _TAKEN:
                raise
        current = read_lease(client, name)
        if current is None:
            continue  # released between our attempt and our look
        if current.token == token:
            return lease  # our create went through; its reply was lost and the retry saw it taken
        if current.expired():
            break_expired(client, current)
            continue
        waited = time.monotonic() - started
        if waited >= timeout:
            raise PspnetError(
                f"the promotion lock of {model_name!r} ({name}) is held by {current.describe()}; waited "
                f"{waited:.0f} s (register.lock_timeout). Another registration is promoting against the same "
                f"store: re-run when it has finished. If that holder is gone, the lock is broken automatically "
                f"once its lease ends, or delete it now: MlflowClient().delete_registered_model({name!r})."
            )
        if waited >= next_log:
            log.info("waiting for the promotion lock %s: held by %s", name, current.describe())
            next_log = waited + WAIT_LOG_EVERY
        time.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, timeout - waited)))
        delay = min(delay * 2, MAX_DELAY)


def ensure_held(client: Any, lease: Lease) -> None:
    """Raise unless ``lease`` is still in the store and unexpired (call right before acting on it)."""
    current = read_lease(client, lease.name)
    if current is None or current.token != lease.token or lease.expired():
        raise PspnetError(
            f"lost the promotion lock {lease.name} (its lease expired or was broken: held since "
            f"{lease.acquired_at:%H:%M:%S} UTC, lease until {lease.expires_at:%H:%M:%S} UTC); the alias was not "
            "moved. Re-run `register`; raise register.lock_lease if registrations take this long."
        )


def release(client: Any, lease: Lease) -> None:
    """Give the lock back, unless it is no longer ours (then only say so)."""
    current = read_lease(client, lease.name)
    if current is None or current.token != lease.token:
        log.warning("the promotion lock %s was no longer held by this registration at release", lease.name)
        return
    _delete(client, lease.name)


@contextmanager
def promotion_lock(client: Any, model_name: str, timeout: float, lease_seconds: float, purpose: str = "") -> Iterator[Lease]:
    """Hold ``model_name``'s promotion lock for the body (released on any exit, errors included)."""
    lease = acquire(client, model_name, timeout, lease_seconds, purpose)
    log.info("holding the promotion lock %s", lease.name)
    try:
        yield lease
    finally:
        from mlflow.exceptions import MlflowException

        try:
            release(client, lease)
        except MlflowException as err:  # never hide the body's own error; the lease expires anyway
            log.warning("could not release the promotion lock %s (%s); it expires at %s UTC",
                        lease.name, err, f"{lease.expires_at:%H:%M:%S}")
