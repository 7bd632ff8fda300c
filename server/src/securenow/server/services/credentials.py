"""Ends long-lived streams whose credential stopped being good.

A unary call is authenticated when it arrives; a stream (WatchSos, StreamDispatch,
WatchDispatch) can stay open for hours, so the credential it was opened with is
checked again every few seconds: a revoked API key or stopped department; a
signed-out, revoked or expired session, a suspended or deleted account; for a
dispatcher's stream, a user who no longer belongs to the agency; for an admin's
stream, a user who is no longer an admin. One query per kind of credential covers
every open stream of this process, however many there are.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.enums import Role, UserStatus
from securenow.server.domain.errors import DomainError, PermissionDenied, Unauthenticated, Unavailable
from securenow.server.storage.accounts_repo import SessionState
from securenow.server.storage.postgres import Database

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 2.0
DISPATCHER_ROLES = (Role.POLICE, Role.SECURITY_AGENCY)


@dataclass
class _Watcher:
    principal: Principal
    on_end: Callable[[DomainError], None]
    agency_id: str | None


class CredentialMonitor:
    def __init__(self, db: Database, *, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self._db = db
        self._interval = interval
        self._watchers: dict[int, _Watcher] = {}
        self._ids = itertools.count()

    def register(
        self, principal: Principal, on_end: Callable[[DomainError], None], *, agency_id: str | None = None
    ) -> int:
        """Watches the credential a stream was opened with; once it stops being good,
        `on_end` is called (once) with the error that ends the stream. With `agency_id`
        (a dispatcher's stream), a user's account must also still be a dispatcher of
        that agency."""
        token = next(self._ids)
        self._watchers[token] = _Watcher(principal, on_end, agency_id)
        return token

    def unregister(self, token: int) -> None:
        self._watchers.pop(token, None)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self._interval)
            except TimeoutError:
                pass
            if stop.is_set() or not self._watchers:
                continue
            try:
                await self.check()
            except Unavailable as exc:
                log.warning("credential check skipped: %s", exc)  # streams keep their last verdict
            except Exception:
                log.exception("credential check failed")

    async def check(self) -> None:
        watchers = list(self._watchers.items())
        keys = {w.principal.id for _, w in watchers if w.principal.kind is PrincipalKind.API_KEY}
        sessions = {w.principal.session_id for _, w in watchers if w.principal.session_id is not None}
        if not keys and not sessions:
            return
        async with self._db.reader() as uow:
            dead_keys = await uow.agency.unusable_api_keys(sorted(keys)) if keys else {}
            states = await uow.accounts.session_states(sorted(sessions)) if sessions else {}
        for token, w in watchers:
            error: DomainError | None
            if w.principal.kind is PrincipalKind.API_KEY:
                revoked = dead_keys.get(w.principal.id)
                if revoked is None:
                    error = None
                elif revoked:
                    error = Unauthenticated("the API key was revoked", reason="API_KEY_REVOKED")
                else:
                    error = Unauthenticated("the department is not active", reason="DEPARTMENT_INACTIVE")
            elif w.principal.session_id is not None:
                error = _session_problem(states.get(w.principal.session_id), w.principal, w.agency_id)
            else:
                continue
            if error is not None and self._watchers.pop(token, None) is not None:
                log.info("ending a stream of %s: %s", w.principal.kind.value, error.reason)
                w.on_end(error)


def _session_problem(state: SessionState | None, principal: Principal, agency_id: str | None) -> DomainError | None:
    if state is None or not state.live or state.user_status is not UserStatus.ACTIVE:
        return Unauthenticated("the session has ended; sign in again", reason="SESSION_ENDED")
    if principal.is_admin and state.role is not Role.ADMIN:
        # The stream was opened with an admin's reach (any alert): it ends with the role.
        return PermissionDenied("no longer an admin", reason="ROLE_CHANGED")
    if agency_id is not None and (state.agency_id != agency_id or state.role not in DISPATCHER_ROLES):
        return PermissionDenied("no longer a dispatcher of this agency", reason="NOT_AN_AGENCY_MEMBER")
    return None
