"""Helpers shared by the services."""

from __future__ import annotations

import logging
from typing import Any

from securenow.server.domain.accounts import Principal
from securenow.server.domain.errors import AlreadyExists, Unavailable
from securenow.server.storage.idempotency_repo import IdempotencyKey, PriorRequest
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import Database, UnitOfWork

log = logging.getLogger(__name__)


def reads_of(db: Database, principal: Principal) -> UnitOfWork:
    """Where `principal` reads alerts, incidents and location trails: an agency (its API
    key or a dispatcher) through row-level security, everyone else directly."""
    if principal.agency_id is not None and not principal.is_admin:
        return db.agency_reader(principal.agency_id, principal.user_id)
    return db.reader()


async def replayed_resource(
    uow: UnitOfWork, principal: Principal, operation: str, key: IdempotencyKey | None, new_id: str
) -> str | None:
    """Claims the request id for `new_id`. Returns the id of the resource an earlier
    request with the same id created (the caller returns that instead), or None."""
    if key is None:
        return None
    prior = await uow.idempotency.claim(principal.id, operation, key, new_id)
    return None if prior is None else same_request(prior, key)


def same_request(prior: PriorRequest, key: IdempotencyKey) -> str:
    """The resource of an earlier request with this request_id; ALREADY_EXISTS when
    that request was a different one."""
    if prior.fingerprint != key.fingerprint:
        raise request_id_reused()
    return prior.resource_id


def request_id_reused() -> AlreadyExists:
    return AlreadyExists(
        "request_id was already used with a different request",
        reason="REQUEST_ID_REUSED",
        metadata={"field": "request_id"},
    )


async def forget_sessions(live: LiveState, session_ids: list[str]) -> None:
    """Marks cached sessions revoked after they were revoked in Postgres. If Redis is down
    the cache entries expire with their TTL (a minute by default)."""
    try:
        await live.drop_sessions(session_ids)
    except Unavailable:
        log.warning("could not drop cached sessions; they expire with the cache TTL")


async def replace_sessions(live: LiveState, states: dict[str, dict[str, Any]]) -> None:
    """Caches the new state of live sessions after a committed change (a new role)."""
    try:
        await live.replace_sessions(states)
    except Unavailable:
        log.warning("could not update cached sessions; they expire with the cache TTL")


async def take_off_duty(live: LiveState, provider_id: str, *, reason: str) -> None:
    """Takes a provider off duty after a change committed in Postgres; when Redis is down
    the duty sweep (maintenance) and the checks on reads keep it from being offered."""
    try:
        await live.take_provider_off_duty(provider_id, reason)
    except Unavailable:
        log.warning("could not take provider %s off duty (%s): Redis unavailable", provider_id, reason)
